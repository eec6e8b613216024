"""The PROXY protocol in the server (issue 12, design: proxy-protocol): real
HAProxy in front (``send-proxy`` and ``send-proxy-v2``, IPv4 and IPv6
clients), and loopback fakes for what HAProxy never sends.  The parser
itself, with its fuzzing, is ``test_proxy.py``."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Dict, Iterator, Tuple

import pytest

from tests.fix_haproxy import HAProxy, haproxy
from tests.fix_ident import FakeIdentd
from tests.fix_rules import ours_rules
from tests.fix_server import HOLD, OURS, clean_env, parse_env, read_all, read_some, run_once
from tests.proxy_build import build_v1, build_v2
from tests.util import read_until

#: prints the environment, then what the client sent
ENV_AND_DATA = ["sh", "-c", "env; echo END; exec cat"]


def proxied_env(**extra: str) -> Dict[str, str]:
    return clean_env(PROXY_FROM="127.0.0.1", **extra)


def exchange(server, data: bytes, source: "str | None" = None) -> bytes:  # type: ignore[no-untyped-def]
    """Connect, send ``data``, close our side, read until EOF."""
    with server.connect(source=source) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def env_of(data: bytes) -> Dict[str, str]:
    head, _, _ = data.partition(b"END\n")
    return parse_env(head + b"END\n")


@pytest.fixture
def proxy_pair(servers, tmp_path) -> Iterator[Tuple[object, HAProxy]]:  # type: ignore[no-untyped-def]
    server = servers(["-v", "-HR", "-l0"], env=proxied_env())
    with haproxy(str(tmp_path), server.port) as front:
        yield server, front


# -- through HAProxy ---------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", ["4", "6"])
def test_haproxy_gives_the_clients_address(proxy_pair, version, family) -> None:  # type: ignore[no-untyped-def]
    server, front = proxy_pair
    source = "127.0.0.2" if family == "4" else "::1"
    with front.connect(version, family, source) as sock:
        port = sock.getsockname()[1]
        env = parse_env(read_all(sock, 10))
    frontend_ip, frontend_port = front.address(version, family)
    assert env["TCPREMOTEIP"] == source and env["TCPREMOTEPORT"] == str(port)
    assert env["TCPLOCALIP"] == frontend_ip and env["TCPLOCALPORT"] == str(frontend_port)
    if family == "4":
        assert env["PROTO"] == "TCP" and "TCP6REMOTEIP" not in env
    else:
        assert env["PROTO"] == "TCP6" and env["TCP6REMOTEIP"] == "::1"
        assert env["TCP6LOCALPORT"] == str(frontend_port)
    pid = server.wait_pids(1)[0]
    ok = server.wait_log(rf"^tcpserver: ok {pid} ")[0]
    assert ok == f"tcpserver: ok {pid} 0:{frontend_ip}:{frontend_port} :{source}::{port}"
    assert f"tcpserver: pid {pid} from {source}" in server.lines()


def test_haproxy_rules_see_the_client(servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The proxy (127.0.0.1) is allowed, the client 127.0.0.2 denied; a
    rule for 127.0.0.3 sets a variable."""
    rules = ours_rules(str(tmp_path), b"127.0.0.2:deny\n127.0.0.3:allow,WHO=\"three\"\n"
                                      b"127.0.0.1:allow,WHO=\"proxy\"\n")
    assert rules.code == 0, rules.err
    server = servers(["-v", "-HR", "-l0", "-x", str(tmp_path / "test.cdb")], env=proxied_env())
    with haproxy(str(tmp_path), server.port) as front:
        for version in ("v1", "v2"):
            with front.connect(version, "4", "127.0.0.2") as sock:
                assert read_all(sock, 10) == b""
            with front.connect(version, "4", "127.0.0.3") as sock:
                assert parse_env(read_all(sock, 10))["WHO"] == "three"
    denied = server.wait_log(r"^tcpserver: deny 0 ", 2)
    assert all(":127.0.0.2::" in line for line in denied)


def test_haproxy_per_host_limit_by_client(servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``-C 1``: a second connection from the same client is refused,
    one from another client through the same proxy is not."""
    server = servers(["-HR", "-l0", "-C", "1"], prog=HOLD, env=proxied_env())
    with haproxy(str(tmp_path), server.port) as front:
        first = front.connect("v2", "4", "127.0.0.2")
        assert read_some(first, 10) == b"hi\n"
        second = front.connect("v1", "4", "127.0.0.2")
        assert read_all(second, 10) == b""
        server.wait_log(r"^tcpserver: end 127\.0\.0\.2 perIPlimit 1$")
        other = front.connect("v1", "6", "::1")
        assert read_some(other, 10) == b"hi\n"
        third = front.connect("v2", "4", "127.0.0.3")
        assert read_some(third, 10) == b"hi\n"
        server.remember()
        for sock in (first, second, other, third):
            sock.close()


def test_haproxy_dns_and_ident_ask_about_the_client(servers, tmp_path, dns_server) -> None:  # type: ignore[no-untyped-def]
    """PTR of the client's address (127.53.0.10 is www.example), ident
    to the client's address with the client's ports."""
    client_ip = "127.53.0.10"
    with FakeIdentd([b"1 , 2 : USERID : UNIX : realuser\r\n"], ip=client_ip) as identd:
        if identd.port != 113:
            pytest.skip("port 113 of the client's address is taken")
        server = servers(["-v", "-l0", "-t", "5"],
                         env=proxied_env(DNSCACHEIP=dns_server.ip))
        with haproxy(str(tmp_path), server.port) as front:
            with front.connect("v2", "4", client_ip) as sock:
                port = sock.getsockname()[1]
                env = parse_env(read_all(sock, 10))
        frontend_port = front.address("v2", "4")[1]
        assert env["TCPREMOTEHOST"] == "www.example"
        assert env["TCPREMOTEINFO"] == "realuser"
        assert identd.requests == [b"%d , %d\r\n" % (port, frontend_port)]


# -- loopback fakes ----------------------------------------------------------------
@pytest.fixture
def fake(servers):  # type: ignore[no-untyped-def]
    return servers(["-v", "-HR", "-l0"], prog=ENV_AND_DATA, env=proxied_env())


@pytest.mark.parametrize("header", [
    build_v1("192.0.2.1", 1111, "198.51.100.2", 2222),
    build_v2("192.0.2.1", 1111, "198.51.100.2", 2222, tlvs=[(0x04, b"x" * 300), (0xE0, b"")]),
])
def test_header_and_data_in_one_segment(fake, header) -> None:  # type: ignore[no-untyped-def]
    """Not a byte past the header is taken: the program reads the rest."""
    data = exchange(fake, header + b"DATA after header")
    env = env_of(data)
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == ("192.0.2.1", "1111")
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == ("198.51.100.2", "2222")
    assert data.endswith(b"END\nDATA after header")


@pytest.mark.parametrize("header", [build_v1(), build_v2(),
                                    build_v2("192.0.2.1", 1, "192.0.2.2", 2, local=True)])
def test_local_and_unknown_keep_the_sockets_addresses(fake, header) -> None:  # type: ignore[no-untyped-def]
    with fake.connect() as sock:
        sock.sendall(header + b"x")
        sock.shutdown(socket.SHUT_WR)
        port = sock.getsockname()[1]
        env = env_of(read_all(sock))
    assert env["TCPREMOTEIP"] == "127.0.0.1" and env["TCPREMOTEPORT"] == str(port)
    assert env["TCPLOCALPORT"] == str(fake.port)


def test_mapped_addresses_are_ipv4(servers) -> None:  # type: ignore[no-untyped-def]
    """design: mapped-addresses: ``::ffff:a.b.c.d`` in a header is an IPv4 client, unless -6."""
    header = build_v2("::ffff:192.0.2.1", 1, "::ffff:192.0.2.2", 2)
    for options, want in (([], ("TCP", "192.0.2.1")), (["-6"], ("TCP6", "::ffff:192.0.2.1"))):
        server = servers(["-HR", "-l0", *options], prog=ENV_AND_DATA, env=proxied_env())
        env = env_of(exchange(server, header))
        assert (env["PROTO"], env["TCPREMOTEIP"]) == want


@pytest.mark.parametrize("data, reason", [
    (b"PROXY TCP4 192.0.2.1 192.0.2.256 1 2\r\n", None),
    (b"PROXY TCP4 " + b"1" * 120, None),
    (b"GET / HTTP/1.0\r\n\r\n", "bad signature"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12), None),
])
def test_malformed_headers_are_dropped(fake, data, reason) -> None:  # type: ignore[no-untyped-def]
    with fake.connect() as sock:
        sock.sendall(data)
        try:
            assert read_all(sock) == b""
        except ConnectionResetError:      # closed with the client's bytes unread
            pass
    line = fake.wait_log(r"^tcpserver: warning: dropping connection, bad PROXY header ")[0]
    assert line.startswith("tcpserver: warning: dropping connection, "
                           "bad PROXY header from 127.0.0.1: ")
    if reason:
        assert line.endswith(": " + reason)
    assert not [x for x in fake.lines() if " ok " in x or "pid" in x]


def test_truncated_header_is_dropped(fake) -> None:  # type: ignore[no-untyped-def]
    with fake.connect() as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.1 ")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
    fake.wait_log(r"^tcpserver: warning: dropping connection, bad PROXY header from "
                  r"127\.0\.0\.1: truncated header$")


@pytest.mark.slow
def test_slow_header_does_not_hold_the_loop(fake) -> None:  # type: ignore[no-untyped-def]
    """One byte a second: others are served meanwhile; after 5 s the
    slow one is dropped."""
    header = build_v1("192.0.2.1", 1111, "198.51.100.2", 2222)
    dropped = r"bad PROXY header from 127\.0\.0\.1: no complete header within 5 seconds$"
    start = time.monotonic()
    slow = fake.connect()
    stop = threading.Event()

    def dribble() -> None:
        for byte in header[:-1]:
            try:
                slow.send(bytes([byte]))
            except OSError:
                return
            if stop.wait(1.0):
                return

    thread = threading.Thread(target=dribble)
    thread.start()
    try:
        for _ in range(3):
            data = exchange(fake, build_v1("192.0.2.7", 7, "192.0.2.8", 8))
            assert env_of(data)["TCPREMOTEIP"] == "192.0.2.7"
            # served while the slow header was still being waited for
            assert not [line for line in fake.lines() if re.search(dropped, line)]
        fake.wait_log(dropped, timeout=10)
        assert time.monotonic() - start >= 4.9         # its 5 s, from the accept
        assert read_all(slow) == b""
    finally:
        stop.set()
        thread.join()
        slow.close()


def test_untrusted_source_is_not_parsed(fake) -> None:  # type: ignore[no-untyped-def]
    """From 127.0.0.2 (not in PROXY_FROM) a header is data."""
    header = build_v1("192.0.2.1", 1111, "198.51.100.2", 2222)
    data = exchange(fake, header + b"hello", source="127.0.0.2")
    assert env_of(data)["TCPREMOTEIP"] == "127.0.0.2"
    assert data.endswith(b"END\n" + header + b"hello")


@pytest.mark.parametrize("value", ["10.0.0.0/33", "example.com", "1.2.3.4,,5.6.7.8",
                                   "::1/200", "127.0.0.1 ; ::1"])
def test_bad_proxy_from_is_a_usage_error(value: str) -> None:
    result = run_once(OURS, ["-HR", "-l0", "127.0.0.1", "0", "true"],
                      env=clean_env(PROXY_FROM=value))
    assert result.returncode == 100
    err = result.stderr.decode()
    assert err.startswith("tcpserver: fatal: PROXY_FROM wants ") and err.count("\n") == 1, err


def test_proxy_from_networks(servers) -> None:  # type: ignore[no-untyped-def]
    """CIDR and mapped entries; a source outside them is served as is."""
    server = servers(["-HR", "-l0"], prog=ENV_AND_DATA,
                     env=clean_env(PROXY_FROM=" 2001:db8::/32 , ::ffff:127.0.0.0/104"))
    data = exchange(server, build_v1("192.0.2.1", 1, "192.0.2.2", 2), source="127.0.0.5")
    assert env_of(data)["TCPREMOTEIP"] == "192.0.2.1"
    from ucspi.server.proxied import proxy_sources
    trusted = proxy_sources({"PROXY_FROM": "10.0.0.0/8,2001:db8::1"})
    assert trusted is not None
    assert "10.1.2.3" in trusted and "::ffff:10.1.2.3" in trusted and "11.0.0.1" not in trusted
    assert "2001:db8::1" in trusted and "2001:db8::2" not in trusted
    assert "fe80::1%lo" not in trusted and "junk" not in trusted
    assert proxy_sources({"PROXY_FROM": " "}) is None


def test_tls_after_the_header(servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Not a byte of the ClientHello is taken with the header: the relay
    handshakes on the same socket, and the program sees the header's
    client."""
    from tests.fix_tls import client_context, session_certs, tls_env
    certs = session_certs(str(tmp_path))
    server = servers(["-HRl0", "-n", certs.default], env=tls_env(PROXY_FROM="127.0.0.1"))
    raw = server.connect(timeout=10)
    raw.sendall(build_v2("192.0.2.9", 999, "192.0.2.10", 465))
    with client_context().wrap_socket(raw) as tls:
        data = read_until(tls, b"END\n")
    env = parse_env(data)
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["TCPLOCALPORT"]) == \
        ("192.0.2.9", "999", "465")
    assert env["SSL_PROTOCOL"].startswith("TLSv1.")
