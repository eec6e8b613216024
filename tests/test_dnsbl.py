"""DNSBL in the loop (issue 21, item 1): the lists asked during the
lookups step, a listed client answered with rblsmtpd's dialogue by the
server itself (no program), anti-lists, Spamhaus' error answers, rules
that exempt or refuse, failures both ways, IPv6, and real SMTP clients.
The lists are served by the suite's dnsmasq (tests/fix_dns.py RECORDS
"dnsbl"); silence comes from a fake server."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, List

import pytest

from tests.fix_dns import fake_dns_on_53
from tests.fix_server import PRINT_ENV, Server, Servers, children_of, clean_env, read_all
from tests.util import PYTHON, ROOT, wait_until

NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"
OPTS = ["-v", "-HRl0"]
UNLISTED, LISTED, A_ONLY, ANTI, SPAMHAUS, A_ERROR = (
    "127.0.80.1", "127.0.80.2", "127.0.80.3", "127.0.80.4", "127.0.80.5", "127.0.80.6")


def server(servers: Servers, dns: Any, options: List[str] = OPTS, prog: List[str] = PRINT_ENV,
           host: str = "127.0.0.1", **env: str) -> Server:
    return servers(options, host=host, prog=prog,
                   env=clean_env(DNSCACHEIP=dns.ip, DNSREWRITEFILE=NO_REWRITE, **env))


def line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


def dialogue(srv: Server, source: str, commands: List[bytes]) -> List[bytes]:
    """The greeting and the answers to ``commands``, one line each."""
    with srv.connect(source=source, timeout=15) as sock:
        got = [line(sock)]
        for command in commands:
            sock.sendall(command + b"\r\n")
            got.append(line(sock))
        return got


def served(srv: Server, source: str) -> bool:
    """Did a program answer (PRINT_ENV's output) the client?"""
    with srv.connect(source=source, timeout=15) as sock:
        return b"PROTO=TCP" in read_all(sock, 15)


def test_listed_client_gets_the_dialogue_and_no_program(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test")
    assert served(srv, UNLISTED)
    got = dialogue(srv, LISTED, [b"HELO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA",
                                 b"NOOP", b"RSET", b"EHLO y", b"QUIT"])
    refusal = b"451 Listed: see https://bl.test/127.0.80.2\r\n"
    assert got == [b"220 rblsmtpd.local\r\n", b"250 rblsmtpd.local\r\n",
                   b"250 rblsmtpd.local\r\n", refusal, refusal, b"250 rblsmtpd.local\r\n",
                   b"250 rblsmtpd.local\r\n", b"250 rblsmtpd.local\r\n",
                   b"221 rblsmtpd.local\r\n"]
    srv.wait_log(r"^rblsmtpd: 127\.0\.80\.2 pid 0: 451 Listed: see https://bl\.test/127\.0\.80\.2$")
    srv.wait_log(r"^tcpserver: deny 0 0:127\.0\.0\.1:\d+ :127\.0\.80\.2::\d+ DNSBL:bl\.test$")
    assert srv.log().count("tcpserver: pid ") == 1          # the unlisted client's only


def test_a_list_with_a_message(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test:blocked_by_bl.test,_see_%IP%")
    got = dialogue(srv, A_ONLY, [b"RCPT TO:<x@y>"])
    assert got[1] == b"451 blocked by bl.test, see 127.0.80.3\r\n"
    assert served(srv, UNLISTED)


def test_anti_list_wins(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test", DNSBL_ALLOW="allow.test")
    assert served(srv, ANTI)
    assert dialogue(srv, LISTED, [])[0] == b"220 rblsmtpd.local\r\n"


@pytest.mark.parametrize("fail, outcome", [("open", "served"), ("closed", "refused")])
def test_spamhaus_error_answers_are_failures(servers: Servers, dns_server: Any, fail: str,
                                             outcome: str) -> None:
    """``Error: open resolver`` (TXT) and 127.255.255.x (A) are lookup
    failures: never a listing; DNSBL_FAIL decides."""
    srv = server(servers, dns_server, DNSBL="bl.test bl.test:a_listing", DNSBL_FAIL=fail)
    for source in (SPAMHAUS, A_ERROR):
        if outcome == "served":
            assert served(srv, source)
        else:
            got = dialogue(srv, source, [b"RCPT TO:<x@y>"])
            assert got[1] == b"451 temporary RBL lookup error\r\n"
    srv.wait_log(r"^tcpserver: warning: DNSBL bl\.test: query error for 127\.0\.80\.5: "
                 r"Error\?\?open\?resolver;\?https\?//check\.spamhaus\.org/")
    srv.wait_log(r"^tcpserver: warning: DNSBL bl\.test: query error for 127\.0\.80\.6: "
                 r"query\?error\?127\.255\.255\.254$")
    assert "DNSBL:bl.test" not in srv.log()                     # never a listing


def test_bounce_and_greeting(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test", DNSBL_BOUNCE="1",
                 RBLGREETING="mx.example")
    got = dialogue(srv, LISTED, [b"RCPT TO:<x@y>", b"QUIT"])
    assert got == [b"220 mx.example\r\n", b"553 Listed: see https://bl.test/127.0.80.2\r\n",
                   b"221 mx.example\r\n"]


def test_rules_exempt_and_refuse(servers: Servers, dns_server: Any, tmp_path: Path) -> None:
    cdb = str(tmp_path / "r.cdb")
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), cdb, cdb + ".tmp"], check=True,
                   input=b'127.0.80.2:allow,DNSBL=""\n'
                         b'127.0.81.1:allow,RBLSMTPD="-no mail from %IP%"\n'
                         b'127.0.81.2:allow,DNSBL="bl.test:ruled"\n'
                         b':allow\n', timeout=30)
    srv = server(servers, dns_server, [*OPTS, "-x", cdb], DNSBL="bl.test")
    assert served(srv, LISTED)                                   # exempt
    got = dialogue(srv, "127.0.81.1", [b"RCPT TO:<x@y>"])
    assert got[1] == b"553 no mail from 127.0.81.1\r\n"
    srv.wait_log(r"^tcpserver: deny 0 \S+ :127\.0\.81\.1::\d+ DNSBL:RBLSMTPD$")
    assert served(srv, "127.0.81.2")                            # other lists: not listed there


def test_ipv6_client(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, host="::1", DNSBL="bl.test")
    with socket.create_connection(("::1", srv.port), timeout=15) as sock:
        assert line(sock) == b"220 rblsmtpd.local\r\n"
        sock.sendall(b"DATA\r\n")
        assert line(sock) == b"451 IPv6 listed\r\n"
    srv.wait_log(r"^rblsmtpd: ::1 pid 0: 451 IPv6 listed$")


def test_smtplib_client(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test")
    with smtplib.SMTP(timeout=15, source_address=(LISTED, 0)) as client:
        code, _ = client.connect("127.0.0.1", srv.port)
        assert code == 220
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        assert info.value.recipients["b@example.org"][0] == 451


def test_dialogue_timeout_and_t0(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, DNSBL="bl.test", DNSBL_DIALOGUE_TIMEOUT="1")
    with srv.connect(source=LISTED, timeout=15) as sock:
        assert line(sock) == b"220 rblsmtpd.local\r\n"
        started = time.monotonic()
        assert read_all(sock, 15) == b""                 # says nothing: dropped
        assert time.monotonic() - started < 10
    now = server(servers, dns_server, DNSBL="bl.test", DNSBL_DIALOGUE_TIMEOUT="0")
    with now.connect(source=LISTED, timeout=15) as sock:
        assert read_all(sock, 15) == b"451 Listed: see https://bl.test/127.0.80.2\r\n"


def test_silent_list_server(servers: Servers) -> None:
    """A list server that never answers: DNSBL_TIMEOUT, then DNSBL_FAIL."""
    with fake_dns_on_53(lambda query: []) as silent:
        opened = server(servers, silent, DNSBL="bl.test", DNSBL_TIMEOUT="1")
        assert served(opened, LISTED)
        closed = server(servers, silent, DNSBL="bl.test", DNSBL_TIMEOUT="1",
                        DNSBL_FAIL="closed")
        got = dialogue(closed, LISTED, [b"RCPT TO:<x@y>"])
        assert got[1] == b"451 temporary RBL lookup error\r\n"
        closed.wait_log(r"^tcpserver: deny 0 \S+ \S+ DNSBL:failure$")


def test_dialogue_holds_its_slot_then_frees_it(servers: Servers, dns_server: Any) -> None:
    """The dialogue counts for -C while it lasts; a client that never
    reads nor writes costs its descriptor until the deadline."""
    srv = server(servers, dns_server, [*OPTS, "-C", "1"], DNSBL="bl.test",
                 DNSBL_DIALOGUE_TIMEOUT="2")
    held = srv.connect(source=LISTED, timeout=15)
    assert line(held) == b"220 rblsmtpd.local\r\n"
    with srv.connect(source=LISTED, timeout=15) as second:
        assert read_all(second, 15) == b""
    srv.wait_log(r"^tcpserver: end 127\.0\.80\.2 perIPlimit 1$")
    assert read_all(held, 15) == b""                     # the deadline
    held.close()
    assert wait_until(lambda: srv.lines()[-1] == "tcpserver: status: 0/40")
    assert dialogue(srv, LISTED, [])[0] == b"220 rblsmtpd.local\r\n"   # the count is back


def test_a_flood_of_listed_clients_starts_no_process(servers: Servers, dns_server: Any) -> None:
    srv = server(servers, dns_server, ["-HRl0"], DNSBL="bl.test", DNSBL_DIALOGUE_TIMEOUT="0")
    seen = set()
    for _ in range(200):
        with srv.connect(source=LISTED, timeout=15) as sock:
            assert read_all(sock, 15).startswith(b"451 ")
        seen.update(pid for pid, _ in children_of(srv.pid))
    assert not seen
    assert "Traceback" not in srv.log()
