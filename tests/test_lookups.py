"""tcpserver's DNS and ident lookups, end to end, against real servers.

The DNS tests use the dnsmasq of the ``dns_server`` fixture (port 53 of
its own address, given to the server as ``DNSCACHEIP``); clients bind
their source address to the 127.53.0.x address whose PTR record the test
wants.  The ident tests use oidentd (the ``identd`` fixture) and
scripted fakes on 127.113.x.y:113 (``tests/fix_ident.py``).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from typing import Dict, List, Optional

import pytest

from tests.fix_dns import RECORDS, DnsServer, dns_addresses
from tests.fix_ident import HANG, FakeIdentd, ident_listener
from tests.fix_server import OURS, PRINT_ENV, Server, Servers, clean_env, run_once, wait_until
from tests.util import missing

#: DNSREWRITEFILE: a file that does not exist, so /etc/dnsrewrite never leaks in
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"


def start(servers: Servers, args: List[str], dns: Optional[DnsServer] = None,
          host: str = "127.0.0.1", **env: str) -> Server:
    """Our server with ``-v`` (the tests read its log lines), printing
    the environment; ``DNSCACHEIP`` names ``dns`` when given."""
    if dns is not None:
        env.setdefault("DNSCACHEIP", dns.ip)
    return servers(["-v", *args], host=host, prog=PRINT_ENV, impl=OURS,
                   env=clean_env(DNSREWRITEFILE=NO_REWRITE, **env))


def ok_line(server: Server, local: str, remote: str) -> str:
    """Wait for the ``ok`` line of a connection; ``local`` is
    ``HOST:IP``, ``remote`` ``HOST:IP:INFO`` (regexes)."""
    return server.wait_log(rf"^tcpserver: ok \d+ {local}:{server.port} {remote}:\d+$")[0]


def test_remote_and_local_host_names(servers, dns_server) -> None:
    server = start(servers, ["-R"], dns_server)
    env = server.env()
    assert env["TCPREMOTEHOST"] == "localhost.example"
    assert env["TCPLOCALHOST"] == "localhost.example"
    assert "TCPPARANOID" not in env
    ok_line(server, r"localhost\.example:127\.0\.0\.1", r"localhost\.example:127\.0\.0\.1:")


def test_local_name_is_reused_for_a_minute(servers, dns_server) -> None:
    server = start(servers, ["-R", "-H"], dns_server)
    names = [server.env()["TCPLOCALHOST"] for _ in range(3)]
    assert names == ["localhost.example"] * 3


def test_odd_characters_are_escaped(servers, dns_server) -> None:
    server = start(servers, ["-R", "-l", "0"], dns_server)
    env = server.env(source="127.53.0.2")
    assert env["TCPREMOTEHOST"] == RECORDS["rendered"]["127.53.0.2"]
    env = server.env(source="127.53.0.5")
    assert env["TCPREMOTEHOST"] == "we\\045ird\\072na\\134001me.example"
    # the log shows the filtered form: no '%' and no ':' outside IPs
    ok_line(server, r"0:127\.0\.0\.1", r"we\\045ird\.example:127\.53\.0\.2:")


def test_paranoid(servers, dns_server) -> None:
    server = start(servers, ["-R", "-l", "0", "-p"], dns_server)
    env = server.env(source="127.53.0.3")
    assert "TCPREMOTEHOST" not in env
    assert env["TCPPARANOID"] == "mismatch.example"
    env = server.env(source="127.53.0.4")
    assert env["TCPREMOTEHOST"] == "mixed.example"
    assert "TCPPARANOID" not in env


def test_not_paranoid_keeps_the_name(servers, dns_server) -> None:
    server = start(servers, ["-R", "-l", "0", "-P"], dns_server)
    env = server.env(source="127.53.0.3")
    assert env["TCPREMOTEHOST"] == "mismatch.example"
    assert "TCPPARANOID" not in env


def test_no_ptr_record(servers, dns_server) -> None:
    server = start(servers, ["-R", "-l", "0"], dns_server, TCPREMOTEHOST="inherited")
    env = server.env(source="127.53.0.200")
    assert "TCPREMOTEHOST" not in env   # removed, not left inherited


def test_H_removes_remote_host(servers, dns_server) -> None:
    server = start(servers, ["-R", "-H"], dns_server, TCPREMOTEHOST="inherited")
    env = server.env()
    assert "TCPREMOTEHOST" not in env
    assert env["TCPLOCALHOST"] == "localhost.example"   # -H does not stop this one


@pytest.mark.parametrize("cacheip", [
    "{dns}",
    "127.53.0.250.{dns}",             # djbdns style: dot-joined quads
    "127.53.0.250 {dns}",             # documented style: blank-separated
])
def test_dnscacheip_forms(servers, dns_server, cacheip: str) -> None:
    # 127.53.0.250 has no server: the refusal moves on to the next one
    server = start(servers, ["-R", "-l", "0"], DNSCACHEIP=cacheip.format(dns=dns_server.ip))
    assert server.env(source="127.53.0.4")["TCPREMOTEHOST"] == "mixed.example"


def test_host_argument_qualified_with_localdomain(servers, dns_server) -> None:
    server = start(servers, ["-R", "-H", "-l", "0"], dns_server, host="www",
                   LOCALDOMAIN="example")
    env = server.env("127.53.0.10")
    assert env["TCPLOCALIP"] == "127.53.0.10"


def test_unknown_host_argument(dns_server) -> None:
    env = clean_env(DNSCACHEIP=dns_server.ip, DNSREWRITEFILE=NO_REWRITE)
    proc = run_once(OURS, ["nx.example", "0", "true"], env, timeout=60)
    assert proc.returncode == 111
    assert proc.stderr == b"tcpserver: fatal: no IP address for nx.example\n"


def test_remote_info_from_oidentd(servers, identd) -> None:
    server = start(servers, ["-H", "-l", "0", "-r"])
    env = server.env()
    assert env["TCPREMOTEINFO"] == identd.user
    assert env["TCP6REMOTEINFO"] == identd.user
    ok_line(server, r"0:127\.0\.0\.1", rf":127\.0\.0\.1:{identd.user}")


def test_ident_error_gives_empty_info(servers) -> None:
    with FakeIdentd([b"1 , 2 : ERROR : NO-USER\r\n"]) as fake:
        server = start(servers, ["-H", "-l", "0", "-r", "-t", "5"])
        env = server.env(source=fake.ip, timeout=30)
    assert env["TCPREMOTEINFO"] == ""


@pytest.mark.slow
def test_slow_ident_does_not_block_others(servers, identd) -> None:
    with FakeIdentd([HANG]) as fake:
        server = start(servers, ["-H", "-l", "0", "-r", "-t", "6"])
        slow: Dict[str, Optional[Dict[str, str]]] = {"env": None}
        started = time.monotonic()

        def ask_slow() -> None:
            slow["env"] = server.env(source=fake.ip, timeout=30)

        thread = threading.Thread(target=ask_slow)
        thread.start()
        # the server has taken the slow one and asked the fake about it
        assert wait_until(lambda: len(fake.requests) == 1), fake.requests
        quick = [server.env()["TCPREMOTEINFO"] for _ in range(5)]
        # all five were served while the slow one was still waiting
        assert thread.is_alive()
        thread.join(20)
        elapsed = time.monotonic() - started
    assert quick == [identd.user] * 5
    assert slow["env"] is not None and "TCPREMOTEINFO" not in slow["env"]
    assert 5.5 < elapsed < 20, elapsed   # -t 6 honoured (not the default 26 s)


#: ``SO_TIMESTAMPNS`` on Linux (the socket module does not name it)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _arrived(sock: socket.socket) -> float:
    """When the kernel received what ``sock`` reads next (its receive
    timestamp, ``SO_TIMESTAMPNS``), in seconds."""
    _, ancillary, _, _ = sock.recvmsg(1024, socket.CMSG_SPACE(16))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds + nanoseconds / 1e9
    raise AssertionError(f"no receive timestamp in {ancillary!r}")


def test_ident_query_goes_out_before_the_dns_query(servers) -> None:
    """The ident answer is the slow one (the client's host, or a forking
    identd), so its query is sent first and the PTR query waits behind
    it, not the other way round.  Both peers are sockets of the test
    that never answer; the kernel's receive timestamps give the order.
    The query is sent at once only when the connect has completed by
    the time it returns, which a loaded machine may delay: so three
    clients, and one query of the three sent first is enough (with the
    PTR query first, none ever is)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("receive timestamps are read the Linux way")
    ident_ip, ident = ident_listener(None, 8)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients: List[socket.socket] = []
    try:
        if ident.getsockname()[1] != 113:
            missing("port 113 on a fresh loopback address (root)")
        for ip in dns_addresses():
            try:
                dns.bind((ip, 53))
                break
            except OSError:
                continue
        else:
            missing("port 53 on a fresh loopback address")
        for sock in (ident, dns):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.settimeout(10)
        server = start(servers, ["-h", "-l", "0", "-r", "-t", "5"],
                       DNSCACHEIP=dns.getsockname()[0])
        order = []
        for _ in range(3):
            client = socket.socket()
            clients.append(client)
            client.bind((ident_ip, 0))
            client.connect(("127.0.0.1", server.port))
            dns_at = _arrived(dns)
            conn, _ = ident.accept()
            with conn:
                conn.settimeout(10)
                ident_at = _arrived(conn)
            order.append(ident_at < dns_at)
        assert any(order), order
    finally:
        for sock in (*clients, dns, ident):
            sock.close()
