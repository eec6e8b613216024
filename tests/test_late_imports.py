"""Nothing is imported after the privilege drop (issue 7, item 3).

With ``-u``/``-U`` the server may lose the right to read its own code,
or the interpreter's library: a folder copied under ``umask 027``, a
zipapp in a 0700 directory, a pyenv interpreter under ``/root``.  So
whatever the given options will need is imported at start-up, before
the drop.  These tests put our code where only root can read it and run
it with ``-u nobody`` and every lookup option; this interpreter (pyenv's,
under ``/root``, on the machines we test on) makes the library
unreadable too."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from typing import Iterator

import pytest

from tests.fix_server import PRINT_ENV, clean_env, parse_env
from tests.proxy_build import build_v1
from tests.util import PYTHON, ROOT, need_root

NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"


@pytest.fixture
def hidden() -> Iterator[str]:
    """A 0700 directory of root's."""
    need_root()
    folder = tempfile.mkdtemp(prefix="ucspi-hidden-")
    os.chmod(folder, 0o700)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def public() -> Iterator[str]:
    """A directory everybody may read (for the rules cdb)."""
    folder = tempfile.mkdtemp(prefix="ucspi-public-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def install(kind: str, folder: str) -> str:
    """Our server copied into ``folder`` as a folder or as a zipapp,
    readable by root alone; returns what to run."""
    if kind == "folder":
        shutil.copy(os.path.join(ROOT, "tcpserver.py"), folder)
        shutil.copytree(os.path.join(ROOT, "ucspi"), os.path.join(folder, "ucspi"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for where, dirs, files in os.walk(folder):
            for name in dirs:
                os.chmod(os.path.join(where, name), 0o750)
            for name in files:
                os.chmod(os.path.join(where, name), 0o640)
        return os.path.join(folder, "tcpserver.py")
    out = os.path.join(folder, "tcpserver.pyz")
    subprocess.run([PYTHON, os.path.join(ROOT, "tools", "build_pyz.py"), "-o", out],
                   check=True, capture_output=True, cwd=folder)
    os.chmod(out, 0o700)
    return out


def rules(folder: str, text: str) -> str:
    cdb = os.path.join(folder, "rules.cdb")
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), cdb, cdb + ".tmp"],
                   input=text.encode(), check=True, capture_output=True)
    os.chmod(cdb, 0o644)
    return cdb


@pytest.mark.parametrize("kind", ["folder", "zipapp"])
def test_unreadable_code_still_serves_every_option(servers, dns_server, identd, hidden,
                                                   public, kind) -> None:
    program = install(kind, hidden)
    cdb = rules(public, f'{identd.user}@127.0.0.1:allow,WHO="info"\n'
                        '=mixed.example:allow,WHO="host"\n'
                        ':deny\n')
    server = servers(["-v", "-u", "nobody", "-x", cdb, "-h", "-r", "-p", "-t", "5"],
                     prog=PRINT_ENV, impl=program,
                     env=clean_env(DNSCACHEIP=dns_server.ip, DNSREWRITEFILE=NO_REWRITE,
                                   PROXY_FROM="127.53.0.9",
                                   NOTIFY_SOCKET=os.path.join(public, "notify")))
    status = os.stat(f"/proc/{server.pid}")
    assert status.st_uid == 65534            # the drop happened
    for _ in range(3):
        by_info = server.env()
        assert by_info["WHO"] == "info" and by_info["TCPREMOTEINFO"] == identd.user
        assert by_info["TCPREMOTEHOST"] == "localhost.example"
        by_host = server.env(source="127.53.0.4")
        assert by_host["WHO"] == "host" and by_host["TCPREMOTEHOST"] == "mixed.example"
    assert server.talk(source="127.53.0.3") == b""     # paranoid mismatch: denied
    header = build_v1("127.53.0.4", 1234, "127.0.0.1", server.port)
    proxied = parse_env(server.talk(send=header, source="127.53.0.9"))   # PROXY_FROM
    assert proxied["WHO"] == "host" and proxied["TCPREMOTEPORT"] == "1234"
    server.signal(signal.SIGHUP, wait_ready=False)     # RELOADING, READY
    server.wait_log(r"^tcpserver: sighup: ")
    assert not [line for line in server.lines() if "warning" in line or "Error" in line]
    assert stat.S_IMODE(os.stat(hidden).st_mode) == 0o700
