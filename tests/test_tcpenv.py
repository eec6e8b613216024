"""tcp-env (issue 22, item 2): the UCSPI environment for a connection
accepted by someone else.  The harness does what inetd does: it
accepts, and starts ``sys.executable tcp-env.py ...`` with the socket
on fd 0 and 1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests.fix_server import PRINT_ENV, clean_env, parse_env, read_all
from tests.util import PYTHON, ROOT, need

TCP_ENV = os.path.join(ROOT, "tcp-env.py")
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"


def inetd(args: List[str], env: Dict[str, str], source: str = "127.0.0.1",
          host: str = "127.0.0.1", send: bytes = b"") -> Tuple[bytes, int, str, int]:
    """One connection the inetd way: (what the client read, tcp-env's
    exit code, its stderr, the client's port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.socket(family)
        client.settimeout(30)
        if family == socket.AF_INET:
            client.bind((source, 0))
        client.connect(listener.getsockname()[:2])
        conn, _ = listener.accept()
    with conn, client:
        proc = subprocess.Popen([PYTHON, TCP_ENV, *args], stdin=conn.fileno(),
                                stdout=conn.fileno(), stderr=subprocess.PIPE, env=env)
        conn.close()
        if send:
            client.sendall(send)
        data = read_all(client, 30)
        _, err = proc.communicate(timeout=30)
        return data, proc.returncode, err.decode(), client.getsockname()[1]


def test_variables_without_lookups() -> None:
    data, code, err, port = inetd(["-HR", "-l", "here", *PRINT_ENV], clean_env())
    env = parse_env(data)
    assert code == 0 and err == ""
    assert env["PROTO"] == "TCP" and env["TCPREMOTEIP"] == "127.0.0.1"
    assert env["TCPREMOTEPORT"] == str(port) and env["TCPLOCALHOST"] == "here"
    assert "TCPREMOTEHOST" not in env and "TCPREMOTEINFO" not in env
    assert "TCPCONNNUM" not in env               # no counts: the supervisor's business


def test_host_name_and_ident(dns_server, identd) -> None:  # type: ignore[no-untyped-def]
    env = clean_env(DNSCACHEIP=dns_server.ip, DNSREWRITEFILE=NO_REWRITE)
    data, code, _, _ = inetd(["-t", "5", *PRINT_ENV], env)
    got = parse_env(data)
    assert code == 0
    assert got["TCPREMOTEHOST"] == "localhost.example"
    assert got["TCPREMOTEINFO"] == identd.user


def test_softdnserror() -> None:
    """A name server that fails: qmail's softdnserror."""
    from tests.fix_dns import fake_dns_on_53, response
    with fake_dns_on_53(lambda q: [(0, response(q, rcode=2))]) as dns:     # SERVFAIL
        env = clean_env(DNSCACHEIP=dns.ip, DNSREWRITEFILE=NO_REWRITE)
        data, code, _, _ = inetd(["-R", "-l0", *PRINT_ENV], env)
    assert code == 0 and parse_env(data)["TCPREMOTEHOST"] == "softdnserror"


def test_ipv6_variables() -> None:
    data, code, _, _ = inetd(["-HRl0", *PRINT_ENV], clean_env(), host="::1")
    env = parse_env(data)
    assert code == 0 and env["PROTO"] == "TCP6"
    assert env["TCP6REMOTEIP"] == env["TCPREMOTEIP"] == "::1"


def test_rules_deny_and_allow(tmp_path: Path) -> None:
    cdb = str(tmp_path / "r.cdb")
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), cdb, cdb + ".tmp"], check=True,
                   input=b'127.0.90.1:deny\n:allow,RELAYCLIENT=""\n', timeout=30)
    data, code, err, port = inetd(["-HRl0", "-x", cdb, *PRINT_ENV], clean_env(),
                                  source="127.0.90.1")
    assert (data, code) == (b"", 100)
    assert re.fullmatch(rf"tcp-env: deny 0 0:127\.0\.0\.1:\d+ :127\.0\.90\.1::{port}\n", err)
    data, code, _, _ = inetd(["-HRl0", "-x", cdb, *PRINT_ENV], clean_env())
    assert code == 0 and parse_env(data)["RELAYCLIENT"] == ""


def test_banner_and_trusted_proto() -> None:
    data, code, _, _ = inetd(["-HRl0", "-B", "hello\r\n", *PRINT_ENV], clean_env())
    assert data.startswith(b"hello\r\n") and parse_env(data[7:])["PROTO"] == "TCP"
    trusted = clean_env(PROTO="TCP", TCPREMOTEIP="192.0.2.1")
    data, code, _, _ = inetd(["-HRl0", *PRINT_ENV], trusted)
    assert parse_env(data)["TCPREMOTEIP"] == "192.0.2.1"    # left as it was


def test_usage_and_errors() -> None:
    out = subprocess.run([PYTHON, TCP_ENV], capture_output=True, timeout=30)
    assert out.returncode == 100 and out.stderr.decode().startswith("tcp-env: usage: ")
    out = subprocess.run([PYTHON, TCP_ENV, "-HR", "true"], capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    assert (out.returncode, out.stderr) == (111, b"")      # fd 0 not a socket: silent
    out = subprocess.run([PYTHON, TCP_ENV, "--version"], capture_output=True, timeout=30)
    assert out.stdout.decode().startswith("tcp-env ")


def test_systemd_socket_activate_inetd() -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed")
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    proc = subprocess.Popen([tool, "--inetd", "--accept", "-l", f"127.0.0.1:{port}", PYTHON, TCP_ENV,
                             "-HRl0", *PRINT_ENV], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=clean_env())
    try:
        import time
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    assert parse_env(read_all(sock, 10))["PROTO"] == "TCP"
                    break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            raise AssertionError("systemd-socket-activate never listened")
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_man_pages_systemd_units_verify(tmp_path: Path) -> None:
    """The socket and service units of tcp-env(1), as printed there,
    pass ``systemd-analyze verify`` (tcp-env's path made this
    checkout's)."""
    analyze = need("systemd-analyze")
    with open(os.path.join(ROOT, "man", "tcp-env.1"), encoding="utf-8") as handle:
        page = handle.read().replace("\\-", "-")
    units: Dict[str, str] = {}
    for block in page.split(".nf\n.RS\n")[1:]:
        text = block.split(".RE\n")[0]
        if text.startswith("# smtp"):
            name, _, body = text.partition("\n")
            units[name[2:]] = body
    assert set(units) == {"smtp.socket", "smtp@.service"}
    for name, body in units.items():
        body = body.replace("/usr/bin/tcp-env", TCP_ENV).replace("/var/qmail/bin/qmail-smtpd",
                                                                 "/bin/cat")
        (tmp_path / name).write_text(body)
    out = subprocess.run([analyze, "verify", str(tmp_path / "smtp.socket"),
                          str(tmp_path / "smtp@.service")], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
