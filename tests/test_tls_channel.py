"""The side-neutral TLS pieces: a :class:`Channel` for either side over
memory BIOs, the session's variables, and the relay in plaintext that
switches to TLS.  Real ``ssl`` objects on both sides; no server."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Iterator, List, Tuple

import pytest

from tests.fix_tls import Certs
from tests.util import read_until
from ucspi.environ import TlsFacts, apply, tls_changes
from ucspi.log import Log
from ucspi.tls.channel import Channel, HandshakeFailed
from ucspi.tls.relay import ClearEnd, Relay, handshake


def server_context(certs: Certs) -> ssl.SSLContext:
    from ucspi.tls.context import Setup
    setup = Setup(None, certs.certdir, None, None, None, None, False, {})
    return setup.build().default


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def shuttle(server: Channel, client: Channel) -> None:
    """Both handshakes, bytes carried by hand."""
    server_done = client_done = False
    for _ in range(20):
        client_done = client.handshake() or client_done
        server.feed(bytes(client.wire))
        client.wire.clear()
        server_done = server.handshake() or server_done
        client.feed(bytes(server.wire))
        server.wire.clear()
        if server_done and client_done:
            return
    raise AssertionError("no handshake")


def test_channel_both_sides_in_memory(certs: Certs) -> None:
    server = Channel(server_context(certs), server_side=True)
    client = Channel(client_context(), server_side=False, server_hostname="two.example")
    shuttle(server, client)
    facts = server.facts()
    assert facts.protocol == client.facts().protocol == "TLSv1.3"
    assert facts.cipher == client.facts().cipher and facts.bits >= 128
    assert facts.sni == "two.example" and facts.peer_cert is None
    assert client.facts().peer_cert is not None            # the server's certificate
    client.tls.write(b"hello")
    client.collect()
    server.feed(bytes(client.wire))
    assert server.tls.read(100) == b"hello"


def test_sni_names_stay_with_their_connection(certs: Certs) -> None:
    """Two handshakes of one context at the same time: each channel
    keeps the name its own client sent (once, this was shared)."""
    ctx = server_context(certs)
    first, second = Channel(ctx, True), Channel(ctx, True)
    one = Channel(client_context(), False, server_hostname="one.example")
    two = Channel(client_context(), False, server_hostname="two.example")
    one.handshake()
    two.handshake()
    first.feed(bytes(one.wire))
    second.feed(bytes(two.wire))
    first.handshake()
    second.handshake()
    assert first.facts().sni == "one.example" and second.facts().sni == "two.example"


def test_handshake_failure_lines_by_side(certs: Certs) -> None:
    server = Channel(server_context(certs), server_side=True)
    server.feed(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(HandshakeFailed) as info:
        server.handshake()
    assert info.value.lines[0] == "SSL_accept: decoded err: non-recoverable, fatal protocol error"
    client = Channel(client_context(), server_side=False)
    assert client.timed_out().lines == [
        "SSL_connect: decoded err: unprocessed data availabe for read"]


def test_tls_changes_pure() -> None:
    facts = TlsFacts("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", 128, None)
    env = apply({b"SSL_TLS_SNI_SERVERNAME": b"stale", b"PATH": b"/bin"},
                tls_changes(facts, "tcpserver, "))
    assert env == {b"PATH": b"/bin", b"TLS_PROVIDER": b"tcpserver, ",
                   b"SSL_PROTOCOL": b"TLSv1.2",
                   b"SSL_CIPHER": b"ECDHE-ECDSA-AES128-GCM-SHA256"}
    named = dict(tls_changes(TlsFacts("TLSv1.3", "x", 256, "a.example"), "p"))
    assert named[b"SSL_TLS_SNI_SERVERNAME"] == b"a.example"


# -- the relay: plaintext first, then TLS on the same socket ---------------------------------
Pipes = Tuple[int, int, int, int]


@pytest.fixture
def pipes() -> Iterator[Pipes]:
    to_r, to_w = os.pipe()       # relay -> program
    from_r, from_w = os.pipe()   # program -> relay
    yield to_r, to_w, from_r, from_w
    for fd in (to_r, from_w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_relay_in_clear_with_half_closes(pipes: Pipes) -> None:
    to_r, to_w, from_r, from_w = pipes
    ours, peer = socket.socketpair()
    relay = Relay(ClearEnd(ours), to_w, from_r, 10, Log(0))
    runner = threading.Thread(target=relay.run)
    runner.start()
    try:
        peer.sendall(b"up\n")
        assert read_until(to_r, b"\n") == b"up\n"
        os.write(from_w, b"down\n")
        assert peer.recv(100) == b"down\n"
        os.close(from_w)                           # the program's end of output
        assert peer.recv(100) == b""               # reaches the peer as EOF...
        peer.sendall(b"still\n")                   # ...which may still send
        assert read_until(to_r, b"\n") == b"still\n"
        peer.shutdown(socket.SHUT_WR)
        assert os.read(to_r, 100) == b""           # and its EOF reaches fd 0
    finally:
        runner.join(10)
        relay.close()
        peer.close()
        ours.close()
    assert not runner.is_alive()


def test_relay_switches_to_tls(certs: Certs, pipes: Pipes) -> None:
    """STARTTLS on a relayed connection: plaintext both ways, then the
    relay pauses before reading the peer's ClientHello, makes the
    handshake on the same socket and carries on through TLS."""
    to_r, to_w, from_r, from_w = pipes
    ours, peer = socket.socketpair()
    switch = threading.Event()
    relay = Relay(ClearEnd(ours), to_w, from_r, 10, Log(0))
    result: List[bool] = []

    def serve() -> None:
        if relay.run(pause=lambda r: switch.is_set()):
            chan = Channel(server_context(certs), server_side=True)
            handshake(chan, ours, 10)
            relay.upgrade(chan)
            result.append(relay.run())

    runner = threading.Thread(target=serve)
    runner.start()
    try:
        peer.sendall(b"STARTTLS\r\n")
        assert read_until(to_r, b"\n") == b"STARTTLS\r\n"
        os.write(from_w, b"220 go ahead\r\n")
        assert peer.recv(100) == b"220 go ahead\r\n"
        switch.set()
        with client_context().wrap_socket(peer, do_handshake_on_connect=True) as tls:
            tls.sendall(b"secret\n")
            assert read_until(to_r, b"\n") == b"secret\n"
            os.write(from_w, b"sealed\n")
            assert tls.recv(100) == b"sealed\n"
            os.close(from_w)
            tls.settimeout(10)
            assert tls.recv(100) == b""            # close_notify
    finally:
        runner.join(10)
        relay.close()
        ours.close()
    assert result == [False]
