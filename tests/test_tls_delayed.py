"""Delayed TLS (``-w``, UCSPI-TLS; issue 20 item 1): the program speaks
in clear and asks for TLS through ``$SSLCTLFD``; real clients
(``openssl s_client -starttls``, Python's ``ssl``) and the test program
``tests/starttls_prog.py``."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from tests.fix_server import Server, Servers, children_of, fd_count, read_all
from tests.fix_tls import Certs, client_context, no_traceback, start_tls
from tests.util import PYTHON, ROOT, need, read_line, wait_until

PROG = os.path.join(ROOT, "tests", "starttls_prog.py")


def program(proto: str = "smtp", how: str = "Y") -> List[str]:
    return [PYTHON, PROG, proto, how]


def start(servers: Servers, certs: Certs, proto: str = "smtp", how: str = "Y",
          options: List[str] = ()) -> Server:   # type: ignore[assignment]
    return start_tls(servers, certs, ["-w", *options], prog=program(proto, how))


def smtp_starttls(server: Server, source: str = "127.0.0.1") -> socket.socket:
    """EHLO, STARTTLS, and the 220 before the handshake: the raw socket."""
    sock = server.connect(source=source, timeout=10)
    assert read_line(sock).startswith(b"220 ")
    sock.sendall(b"EHLO me\r\n")
    assert read_line(sock) == b"250-starttls.test\r\n" and read_line(sock) == b"250 STARTTLS\r\n"
    sock.sendall(b"STARTTLS\r\n")
    assert read_line(sock) == b"220 ready for TLS\r\n"
    return sock


def tls_ehlo(sock: socket.socket, hostname: str = "") -> Dict[str, str]:
    """The handshake, then EHLO over TLS: the variables the program got."""
    with client_context().wrap_socket(sock, server_hostname=hostname or None) as tls:
        tls.sendall(b"EHLO me\r\n")
        answer = read_line(tls).decode().rstrip("\r\n")      # type: ignore[arg-type]
        tls.sendall(b"QUIT\r\n")
        assert read_line(tls) == b"221 bye\r\n"      # type: ignore[arg-type]
    assert answer.startswith("250 ")
    return dict(item.split("=", 1) for item in answer[4:].split(";") if item)


def test_starttls_with_y_reply(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs)
    got = tls_ehlo(smtp_starttls(server), "one.example")
    assert got["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3") and got["SSL_CIPHER"]
    assert got["SSL_TLS_SNI_SERVERNAME"] == "one.example"
    assert "TLS_PROVIDER" not in got                     # only with -z
    server.wait_log(r"^tcpserver: status: \d+/40 encrypted session, sslpid=\d+, childpid=\d+, "
                    r"IP 127\.0\.0\.1, TLS Server=")
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 0$")
    no_traceback(server)


def test_y_reply_with_z(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs, options=["-z"])
    got = tls_ehlo(smtp_starttls(server))
    assert got["TLS_PROVIDER"].startswith("tcpserver,")   # the whole text, one word here
    assert "SSL_TLS_SNI_SERVERNAME" not in got


def test_small_y_gives_no_reply(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs, how="y")
    assert tls_ehlo(smtp_starttls(server)) == {}
    server.wait_log(r"^PROGRAM: switched $")


@pytest.mark.parametrize("proto", ["smtp", "pop3", "imap"])
def test_openssl_s_client_starttls(servers: Servers, certs: Certs, proto: str) -> None:
    openssl = need("openssl")
    server = start(servers, certs, proto=proto)
    farewell = {"smtp": b"QUIT\r\n", "pop3": b"QUIT\r\n", "imap": b"a LOGOUT\r\n"}[proto]
    result = subprocess.run([openssl, "s_client", "-starttls", proto, "-connect",
                             f"127.0.0.1:{server.port}", "-quiet", "-ign_eof"],
                            input=b"NOOP x\r\n" + farewell, capture_output=True, timeout=30)
    out = result.stdout.decode("latin-1")
    assert "tls SSL_CIPHER=" in out and "SSL_PROTOCOL=TLSv1." in out, (out, result.stderr)
    server.wait_log(r"^PROGRAM: switched SSL_CIPHER=")


def test_program_that_never_asks(servers: Servers, certs: Certs) -> None:
    """EOF on SSLCTLFD before a command: no TLS; the program's status."""
    server = start(servers, certs, how="exit")
    sock = server.connect(timeout=10)
    assert read_line(sock).startswith(b"220 ")
    sock.sendall(b"STARTTLS\r\n")
    assert read_all(sock, 10) == b""
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 768$")          # exit 3
    log = server.log()
    assert "SSL_accept" not in log and "encrypted session" not in log
    no_traceback(server)


def test_unknown_command_byte(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs, how="garbage")
    sock = smtp_starttls(server)
    server.wait_log(r"^tcpserver: warning: dropping connection, unknown UCSPI-TLS command "
                    r"from 127\.0\.0\.1$")
    server.wait_log(r"^PROGRAM: after garbage b''$")                # its pipe ended
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 1024$")         # exit 4: its own
    sock.close()


def test_plaintext_after_starttls(servers: Servers, certs: Certs) -> None:
    """A client that sends a command instead of a ClientHello: the
    handshake fails with the usual lines, the program reads end of file
    and its status is the end line's."""
    server = start(servers, certs)
    sock = smtp_starttls(server)
    sock.sendall(b"MAIL FROM:<x@y>\r\n")
    read_all(sock, 10)
    server.wait_log(r"^tcpserver: warning: dropping connection, unable to accept SSL connection$")
    assert re.search(r"^SSL_accept: ", server.log(), re.M)
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 0$")
    no_traceback(server)


def test_client_vanishes_mid_handshake(servers: Servers, certs: Certs) -> None:
    from tests.fix_tls import client_hello
    server = start(servers, certs)
    sock = smtp_starttls(server)
    sock.sendall(client_hello()[:30])
    sock.close()
    server.wait_log(r"^tcpserver: warning: dropping connection, unable to accept SSL connection$")
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 0$")
    assert wait_until(lambda: not children_of(server.pid))


def test_early_bytes_belong_to_the_program(servers: Servers, certs: Certs) -> None:
    """The relay reads nothing before the command: what the client sends
    first goes to the program, in clear."""
    server = start(servers, certs)
    sock = server.connect(timeout=10)
    sock.sendall(b"NOOP early\r\n")
    assert read_line(sock).startswith(b"220 ")
    assert read_line(sock) == b"250 clear \r\n"
    sock.sendall(b"QUIT\r\n")
    assert read_line(sock) == b"221 bye\r\n"


def test_w_needs_a_certificate() -> None:
    out = subprocess.run([PYTHON, os.path.join(ROOT, "tcpserver.py"), "-w", "0", "0", "true"],
                         capture_output=True, timeout=30)
    assert out.returncode == 100
    assert out.stderr.decode() == "tcpserver: fatal: -w needs TLS: give -n certfile or -s\n"


def test_rules_limits_and_unix_as_on_the_plain_path(servers: Servers, certs: Certs,
                                                      tmp_path: Path) -> None:
    cdb = str(tmp_path / "r.cdb")
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), cdb, cdb + ".tmp"],
                   input=b'127.0.0.2:deny\n:allow,WHO="rule"\n', check=True, timeout=30)
    server = start(servers, certs, options=["-x", cdb, "-C", "1"])
    with server.connect(source="127.0.0.2", timeout=10) as denied:
        assert read_all(denied, 10) == b""
    first = smtp_starttls(server)
    with server.connect(timeout=10) as second:                    # -C 1
        assert read_all(second, 10) == b""
    server.wait_log(r"^tcpserver: end 127\.0\.0\.1 perIPlimit 1$")
    assert tls_ehlo(first)["SSL_PROTOCOL"].startswith("TLSv1")
    path = str(tmp_path / "s")
    unix = servers(["-v", "-w", "-i", certs.certdir, "-s"], host=path, port=None,
                   prog=program())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        assert read_line(sock).startswith(b"220 ")
        sock.sendall(b"STARTTLS\r\n")
        assert read_line(sock) == b"220 ready for TLS\r\n"
        assert tls_ehlo(sock.dup())["SSL_PROTOCOL"].startswith("TLSv1")
    unix.wait_log(r"^PROGRAM: switched ")


def test_a_thousand_delayed_connections_leave_nothing(servers: Servers, certs: Certs) -> None:
    """1000 delayed-TLS connections (a program that reads one line and
    leaves without asking): no zombie, no descriptor left in the server."""
    server = start_tls(servers, certs, ["-w"], prog=["sh", "-c", "read x"])
    before = fd_count(server.pid)
    for _ in range(1000):
        with server.connect(timeout=10) as sock:
            sock.sendall(b"STARTTLS\r\n")
            read_all(sock, 10)
    assert wait_until(lambda: not children_of(server.pid), 30), children_of(server.pid)
    assert wait_until(lambda: fd_count(server.pid) <= before, 10), (before, fd_count(server.pid))
    assert server.lines().count("tcpserver: status: 0/40") >= 1


def test_the_man_pages_starttls_example(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    """The program of the man page's "Delayed TLS", as printed there,
    with ``openssl s_client -starttls smtp``."""
    openssl = need("openssl")
    with open(os.path.join(ROOT, "man", "tcpserver.1"), encoding="utf-8") as handle:
        page = handle.read()
    section = page[page.index(".SS Delayed TLS"):]
    code = section[section.index("#!/usr/bin/env python3"):section.index(".RE")]
    code = code.replace("\\e", "\\").replace("\\-", "-")
    script = tmp_path / "starttls-smtp.py"
    script.write_text(code)
    script.chmod(0o755)
    server = start_tls(servers, certs, ["-w"], prog=[PYTHON, str(script)])
    result = subprocess.run([openssl, "s_client", "-starttls", "smtp", "-connect",
                             f"127.0.0.1:{server.port}", "-quiet", "-ign_eof"],
                            input=b"NOOP\r\nQUIT\r\n", capture_output=True, timeout=30)
    out = result.stdout.decode("latin-1")
    assert re.search(r"^250 TLSv1\.[23]\r?$", out, re.M) and "221 bye" in out, \
        (out, result.stderr[-2000:], server.log())
