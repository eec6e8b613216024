"""tcpserver -x/-X end to end: rules built by our tcprules and by
Debian's, applied by our server and by the C one, and rebuilt under load.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from tests.fix_dns import dns_server  # noqa: F401  (fixture)
from tests.fix_ident import identd  # noqa: F401  (fixture)
from tests.fix_running import serve  # noqa: F401  (fixture)
from tests.util import C_TCPRULES, C_TCPSERVER, PYTHON, ROOT, need

TCPRULES = [PYTHON, os.path.join(ROOT, "tcprules.py")]
SLOW_ENV = ["sh", "-c", "env; echo END; sleep 2"]


def compile_rules(path: str, text: str, tool: List[str] = TCPRULES) -> str:
    subprocess.run([*tool, path, path + ".tmp"], input=text.encode(), check=True)
    return path


def test_allow_sets_and_removes_variables(serve, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '127.0.0.1:allow,WHO="me",!KEEP,TCPLOCALHOST=/over/\n')
    server = serve(["-HR", "-l", "name", "-x", cdb], KEEP="yes")
    env = server.ask()
    assert env["WHO"] == "me"
    assert "KEEP" not in env
    assert env["TCPLOCALHOST"] == "over"     # rules come after the standard variables


def test_deny_closes_without_running(serve, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"), "127.0.0.2:deny\n:allow\n")
    server = serve(["-HRl0", "-B", "hi ", "-x", cdb])
    assert server.raw("127.0.0.2") == b"hi "     # banner, then nothing
    assert server.ask("127.0.0.3")["TCPREMOTEIP"] == "127.0.0.3"
    log = server.log()
    assert f"tcpserver: deny 0 0:127.0.0.1:{server.port} :127.0.0.2::" in log
    assert "pid 0" not in log


def test_missing_cdb(serve, tmp_path) -> None:
    missing = str(tmp_path / "none.cdb")
    server = serve(["-HRl0", "-x", missing])
    assert server.raw() == b""
    assert (f"tcpserver: warning: dropping connection, unable to read {missing}: "
            "file does not exist") in server.log()
    forgiving = serve(["-HRl0", "-X", "-x", missing])
    assert forgiving.ask()["PROTO"] == "TCP"


@pytest.mark.parametrize("content,words", [
    (b"x" * 100, "protocol error"),          # shorter than the header
    (b"", "invalid argument"),
    (None, "is a directory"),
])
def test_bad_cdb_drops_even_with_X(serve, tmp_path, content, words) -> None:
    path = tmp_path / "bad.cdb"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    server = serve(["-HRl0", "-X", "-x", str(path)])
    assert server.raw() == b""
    assert f"unable to read {path}: {words}" in server.log()
    # the server is still there for the next one
    assert server.raw() == b""


def test_maxperip_from_rule(serve, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '127.0.0.1:allow,MAXPERIP="1"\n127.0.0.2:allow,MAXPERIP="3"\n')
    server = serve(["-HRl0", "-C", "1", "-x", cdb], prog=SLOW_ENV)
    results: List[bytes] = []

    def ask(source: str) -> None:
        results.append(server.raw(source))

    threads = [threading.Thread(target=ask, args=(src,))
               for src in ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2"]]
    for thread in threads:
        thread.start()
        time.sleep(0.15)
    for thread in threads:
        thread.join(10)
    served = [r for r in results if r.endswith(b"END\n")]
    assert len(served) == 4, results    # one from 127.0.0.1 dropped, three from .2 kept
    assert "tcpserver: end 127.0.0.1 perIPlimit 1" in server.log()
    assert "perIPlimit" not in server.log().replace("end 127.0.0.1 perIPlimit 1", "")


def test_ipv6_and_cidr_rules(serve, tmp_path) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"),
                        '::1:allow,KIND="v6"\n127.0.0.0/8:allow,KIND="cidr"\n:deny\n')
    server = serve(["-HRl0", "-x", cdb], host="::")
    server.host = "::1"
    assert server.ask("::1")["KIND"] == "v6"
    server.host = "127.0.0.1"
    env = server.ask("127.9.8.7")    # arrives IPv4-mapped, matched as IPv4 (D18)
    assert env["KIND"] == "cidr" and env["TCPREMOTEIP"] == "127.9.8.7"


def test_host_and_info_keys(serve, tmp_path, dns_server, identd) -> None:
    cdb = compile_rules(str(tmp_path / "r.cdb"), (
        f'{identd.user}@127.0.0.1:allow,KEY="info@ip"\n'
        '=mixed.example:allow,KEY="=host"\n'
        '=.example:allow,KEY="=.suffix"\n'))
    server = serve(["-l0", "-x", cdb], DNSCACHEIP="127.53.0.1")
    assert server.ask()["KEY"] == "info@ip"
    assert server.ask("127.53.0.4")["KEY"] == "=host"
    assert server.ask("127.53.0.10")["KEY"] == "=.suffix"


def test_cdb_from_debian_tcprules(serve, tmp_path) -> None:
    need(C_TCPRULES)
    cdb = compile_rules(str(tmp_path / "c.cdb"), '127.0.0.1:allow,FROM="debian"\n:deny\n',
                        [C_TCPRULES])
    server = serve(["-HRl0", "-x", cdb])
    assert server.ask()["FROM"] == "debian"
    assert server.raw("127.0.0.2") == b""


def test_debian_tcpserver_reads_our_cdb(tmp_path) -> None:
    need(C_TCPSERVER)
    cdb = compile_rules(str(tmp_path / "o.cdb"), '127.0.0.1:allow,FROM="ours"\n:deny\n')
    proc = subprocess.Popen([C_TCPSERVER, "-1", "-HRl0", "-x", cdb, "127.0.0.1", "0",
                             "sh", "-c", "echo $FROM"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.makefile("rb").read() == b"ours\n"
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", port))
            assert sock.recv(10) == b""
    finally:
        proc.terminate()
        proc.wait(5)


def test_rebuild_under_load(serve, tmp_path) -> None:
    """A cdb rebuilt again and again while connections keep coming: every
    connection sees one whole rule set, none fails."""
    cdb = str(tmp_path / "r.cdb")
    texts = ['127.0.0.1:allow,GEN="%s"\n' % g + "".join(
        f'10.{i // 250}.{i % 250}.1:allow,PAD="{"x" * 40}"\n' for i in range(2000)) + ":deny\n"
        for g in ("one", "two")]
    compile_rules(cdb, texts[0])
    server = serve(["-HRl0", "-c", "20", "-x", cdb])
    stop = threading.Event()
    builds = [0]

    def rebuild() -> None:
        while not stop.is_set():
            compile_rules(cdb, texts[builds[0] % 2])
            builds[0] += 1

    seen: List[str] = []
    errors: List[BaseException] = []

    def client() -> None:
        for _ in range(40):
            try:
                seen.append(server.ask(timeout=20)["GEN"])
            except BaseException as exc:  # recorded and asserted below
                errors.append(exc)

    builder = threading.Thread(target=rebuild)
    builder.start()
    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(120)
    stop.set()
    builder.join(60)
    assert not errors, errors[:3]
    assert len(seen) == 320 and set(seen) == {"one", "two"}
    assert builds[0] >= 3
    assert "warning" not in server.log()
