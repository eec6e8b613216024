"""Attacks on a running server, in a bounded form (issue 18, "found by
the attack on the running server"): each scenario is a fixed number of
hostile clients for a fixed time, and what it shows is that the
well-behaved client beside them is still served and that the server's
cost for the hostile ones is bounded.

Times here are generous upper bounds (a loaded machine must not fail
them); what a scenario measures in seconds is for ``bench/``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Iterator, List

import pytest

from tests.fix_load import rss_kb
from tests.fix_server import Servers, children_of, parse_env
from tests.fix_tls import Certs, client_context, client_hello, read_tls, start_tls
from tests.util import wait_until

#: 15 client addresses of the attack, 20 stalled handshakes each (-C 20)
ATTACKERS = ["127.0.66.%d" % n for n in range(1, 16)]
STALLED = 300


@contextlib.contextmanager
def stalled_handshakes(port: int, count: int) -> Iterator[List[socket.socket]]:
    """``count`` clients that send half a ClientHello and stop."""
    half = client_hello()[:40]
    held: List[socket.socket] = []
    try:
        for n in range(count):
            sock = socket.socket()
            sock.bind((ATTACKERS[n % len(ATTACKERS)], 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(half)
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_stalled_handshakes_hold_no_slots(servers: Servers, certs: Certs) -> None:
    """300 clients that stall in their ClientHello from 15 addresses,
    against ``-c 40`` and the default ``-S`` (60 s): a well-behaved
    client is served at once, and the stalled ones cost the server no
    process and a bounded amount of memory."""
    server = start_tls(servers, certs, ["-c", "40"])
    before = rss_kb(server.pid)
    with stalled_handshakes(server.port, STALLED):
        assert wait_until(lambda: rss_kb(server.pid) > 0 and not children_of(server.pid))
        started = time.monotonic()
        good = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with client_context().wrap_socket(good) as sock:
            env = parse_env(read_tls(sock, timeout=30))
        took = time.monotonic() - started
        assert env["PROTO"] == "TCP" and "SSL_PROTOCOL" in env
        assert took < 20, took                   # the old server: -S, 60 s
        grown = rss_kb(server.pid) - before
        assert grown < 16 * 1024, grown          # about 10 kB each, measured: 4-6 MB
        # the good client's relay may still be ending; the stalled ones have none
        assert wait_until(lambda: [pid for pid, state in children_of(server.pid)
                                   if state != "Z"] == [])
    assert "Traceback" not in server.log()


def test_stalled_handshakes_give_way_when_descriptors_run_out(servers: Servers,
                                                              certs: Certs) -> None:
    """With few descriptors (a hard limit of 64), the stalled clients
    fill the descriptor budget; the next client makes the one that has
    waited longest give way, and is served."""
    server = start_tls(servers, certs, [], prefix=["prlimit", "--nofile=64:64"])
    with stalled_handshakes(server.port, 80):
        server.wait_log(r"^tcpserver: warning: dropping connection from 127\.0\.66\.\d+, "
                        r"no TLS handshake yet while the server needs room$")
        good = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with client_context().wrap_socket(good) as sock:
            env = parse_env(read_tls(sock, timeout=30))
        assert "SSL_PROTOCOL" in env
    assert "Traceback" not in server.log()
