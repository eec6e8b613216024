"""tcpserver -x/-X end to end: rules built by our tcprules and by
Debian's, applied by our server and by the C one, and rebuilt under load.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from typing import List, Optional

import pytest

from tests.fix_dns import DnsServer
from tests.fix_load import client_pool
from tests.fix_server import (C, OURS, PRINT_ENV, Server, Servers, clean_env, parse_env,
                              read_all)
from tests.util import C_TCPRULES, PYTHON, ROOT, need, read_until

TCPRULES = [PYTHON, os.path.join(ROOT, "tcprules.py")]
#: prints the environment, then holds the connection until the client closes
HOLD_ENV = ["sh", "-c", "env; echo END; read x"]
#: DNSREWRITEFILE: a file that does not exist, so /etc/dnsrewrite never leaks in
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"


def start(servers: Servers, args: List[str], dns: Optional[DnsServer] = None,
          host: str = "127.0.0.1", prog: List[str] = PRINT_ENV, **env: str) -> Server:
    """Our server with ``-v`` (the tests read its log lines); ``DNSCACHEIP``
    names ``dns`` when given."""
    if dns is not None:
        env["DNSCACHEIP"] = dns.ip
    return servers(["-v", *args], host=host, prog=prog, impl=OURS,
                   env=clean_env(DNSREWRITEFILE=NO_REWRITE, **env))


def compile_rules(path: str, text: str, tool: List[str] = TCPRULES) -> str:
    subprocess.run([*tool, path, path + ".tmp"], input=text.encode(), check=True)
    return path


def test_allow_sets_and_removes_variables(servers, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '127.0.0.1:allow,WHO="me",!KEEP,TCPLOCALHOST=/over/\n')
    server = start(servers, ["-HR", "-l", "name", "-x", cdb], KEEP="yes")
    env = server.env()
    assert env["WHO"] == "me"
    assert "KEEP" not in env
    assert env["TCPLOCALHOST"] == "over"     # rules come after the standard variables


def test_deny_closes_without_running(servers, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"), "127.0.0.2:deny\n:allow\n")
    server = start(servers, ["-HRl0", "-B", "hi ", "-x", cdb])
    with server.connect(source="127.0.0.2") as denied:
        denied_port = denied.getsockname()[1]
        assert read_all(denied) == b"hi "         # banner, then nothing
    data = server.talk(source="127.0.0.3")
    assert data.startswith(b"hi ")
    assert parse_env(data[len(b"hi "):])["TCPREMOTEIP"] == "127.0.0.3"
    # the denied one's only line is its verdict; no program ran for it
    server.wait_log(r"^tcpserver: ok \d+ 0:127\.0\.0\.1:\d+ :127\.0\.0\.3::\d+$")
    assert [line for line in server.lines() if "127.0.0.2" in line] == [
        f"tcpserver: deny 0 0:127.0.0.1:{server.port} :127.0.0.2::{denied_port}"]
    assert "pid 0" not in server.log()


def test_missing_cdb(servers, tmp_path) -> None:
    missing = str(tmp_path / "none.cdb")
    server = start(servers, ["-HRl0", "-x", missing])
    assert server.talk() == b""
    server.wait_log(f"^tcpserver: warning: dropping connection, unable to read "
                    f"{re.escape(missing)}: file does not exist$")
    forgiving = start(servers, ["-HRl0", "-X", "-x", missing])
    assert forgiving.env()["PROTO"] == "TCP"


@pytest.mark.parametrize("content,words", [
    (b"\x01" * 100, "protocol error"),       # shorter than the header
    (b"", "invalid argument"),
    (None, "is a directory"),
])
def test_bad_cdb_drops_even_with_X(servers, tmp_path, content, words) -> None:
    path = tmp_path / "bad.cdb"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    server = start(servers, ["-HRl0", "-X", "-x", str(path)])
    warning = (f"^tcpserver: warning: dropping connection, unable to read "
               f"{re.escape(str(path))}: {words}$")
    assert server.talk() == b""
    server.wait_log(warning)
    # the server is still there for the next one
    assert server.talk() == b""
    server.wait_log(warning, 2)


def test_maxperip_from_rule(servers, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '127.0.0.1:allow,MAXPERIP="1"\n127.0.0.2:allow,MAXPERIP="3"\n')
    server = start(servers, ["-HRl0", "-C", "1", "-x", cdb], prog=HOLD_ENV)
    sources = ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2"]
    held: List[socket.socket] = []
    results: List[bytes] = []
    try:
        # one after the other, each program still running when the next comes
        for source in sources:
            held.append(server.connect(source=source, timeout=10))
            # up to END (served, the program still running) or EOF (dropped)
            results.append(read_until(held[-1], b"END\n"))
    finally:
        for sock in held:
            sock.close()
    # one from 127.0.0.1 dropped without a byte, three from .2 kept
    assert [r.endswith(b"END\n") for r in results] == [True, False, True, True, True], results
    assert results[1] == b""
    assert [line for line in server.lines() if "perIPlimit" in line] == [
        "tcpserver: end 127.0.0.1 perIPlimit 1"]


def test_ipv6_and_cidr_rules(servers, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '::1:allow,KIND="v6"\n127.0.0.0/8:allow,KIND="cidr"\n:deny\n')
    server = start(servers, ["-HRl0", "-x", cdb], host="::")
    assert server.env("::1", source="::1")["KIND"] == "v6"
    # arrives IPv4-mapped, matched as IPv4 (design: mapped-addresses)
    env = server.env("127.0.0.1", source="127.9.8.7")
    assert env["KIND"] == "cidr" and env["TCPREMOTEIP"] == "127.9.8.7"


def test_host_and_info_keys(servers, tmp_path, dns_server, identd) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"), (
        f'{identd.user}@127.0.0.1:allow,KEY="info@ip"\n'
        '=mixed.example:allow,KEY="=host"\n'
        '=.example:allow,KEY="=.suffix"\n'))
    server = start(servers, ["-l0", "-x", cdb], dns_server)
    assert server.env(timeout=30)["KEY"] == "info@ip"
    assert server.env(source="127.53.0.4", timeout=30)["KEY"] == "=host"
    assert server.env(source="127.53.0.10", timeout=30)["KEY"] == "=.suffix"


def test_cdb_from_debian_tcprules(servers, tmp_path) -> None:
    need(C_TCPRULES)
    cdb = compile_rules(str(tmp_path / "c.cdb"), '127.0.0.1:allow,FROM="debian"\n:deny\n',
                        [C_TCPRULES])
    server = start(servers, ["-HRl0", "-x", cdb])
    assert server.env()["FROM"] == "debian"
    assert server.talk(source="127.0.0.2") == b""


def test_debian_tcpserver_reads_our_cdb(servers, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "o.cdb"), '127.0.0.1:allow,FROM="ours"\n:deny\n')
    server = servers(["-HRl0", "-x", cdb], prog=["sh", "-c", "echo $FROM"], impl=C)
    assert server.talk() == b"ours\n"
    assert server.talk(source="127.0.0.2") == b""


def test_rebuild_under_load(servers, tmp_path) -> None:
    """A cdb rebuilt again and again while connections keep coming: every
    connection sees one whole rule set, none fails."""
    cdb = str(tmp_path / "r.cdb")
    texts = ['127.0.0.1:allow,GEN="%s"\n' % g + "".join(
        f'10.{i // 250}.{i % 250}.1:allow,PAD="{"x" * 40}"\n' for i in range(2000)) + ":deny\n"
        for g in ("one", "two")]
    compile_rules(cdb, texts[0])
    server = start(servers, ["-HRl0", "-c", "20", "-x", cdb])
    stop = threading.Event()
    builds = [0]

    def rebuild() -> None:
        while not stop.is_set():
            compile_rules(cdb, texts[builds[0] % 2])
            builds[0] += 1

    builder = threading.Thread(target=rebuild)
    builder.start()
    try:
        seen = client_pool(lambda _: server.env(timeout=20)["GEN"], 320, 8)
    finally:
        stop.set()
        builder.join(60)
    assert len(seen) == 320 and set(seen) == {"one", "two"}
    assert builds[0] >= 3
    assert [line for line in server.lines() if "warning" in line] == []


#: runs our server with the rules' verdict made to raise: an internal
#: error on the connection path that no input can cause any more
INJECT = ("import sys; sys.path.insert(0, sys.argv[2].rpartition('/')[0]); "
          "import ucspi.rules.cache as cache; "
          "cache.apply = lambda value: int('injected'); "
          "from ucspi.server.bootstrap import main; sys.exit(main(sys.argv[3:]))")


def test_internal_error_frees_the_slot(servers, tmp_path) -> None:
    """Whatever raises on the connection path (here: a ValueError injected
    into the rules lookup, as int() of a 5,000-digit MAXPERIP raised
    before issue 7, defect 4) ends each connection with one warning; the
    -c slots come back, so the server goes on accepting (defect 2)."""
    cdb = compile_rules(str(tmp_path / "r.cdb"), '127.0.0.1:allow\n')
    server = servers(["-v", "-HRl0", "-c", "3", "-x", cdb], impl=OURS,
                     env=clean_env(DNSREWRITEFILE=NO_REWRITE), prefix=[PYTHON, "-c", INJECT])
    for n in range(1, 7):     # twice as many as there are slots
        assert server.talk() == b""
        line = server.wait_log(r"^tcpserver: warning: dropping connection from 127\.0\.0\.1, "
                               r"internal error: ValueError: ", n)[-1]
        assert line.endswith("'injected'"), line          # one line, the error's own text
        server.wait_log(r"^tcpserver: status: 0/3$", n + 1)
    assert "Traceback" not in server.log()


def test_huge_maxperip_in_a_rule_is_no_limit(servers, tmp_path) -> None:
    """A rule's MAXPERIP of 5,000 digits is read as C's scan_ulong reads
    it, but bounded: more than 2**31 - 1 counts as that, no practical
    limit (issue 7, defect 4).  The variable itself reaches the program
    unchanged."""
    huge = "9" * 5000
    cdb = compile_rules(str(tmp_path / "r.cdb"), '127.0.0.1:allow,MAXPERIP="%s"\n' % huge)
    server = start(servers, ["-HRl0", "-C", "1", "-x", cdb], prog=HOLD_ENV)
    held = [server.connect() for _ in range(3)]     # -C 1 would refuse the second
    try:
        for sock in held:
            assert parse_env(read_until(sock, b"END\n"))["MAXPERIP"] == huge
    finally:
        for sock in held:
            sock.close()
    server.wait_log(r"^tcpserver: status: 0/40$", 2)                # start, and all ended
    assert "perIPlimit" not in server.log() and "warning" not in server.log()
