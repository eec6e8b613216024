"""Privilege drop (design: privileges), end to end.

As root: the program runs with exactly the uid, gid and supplementary
groups asked for, and so does the server after binding.  As a plain
user (``setpriv`` from util-linux): asking for another uid or gid fails
with djb's words, exit 111, as rts.tests checks (scenarios 2-5), under
ours and under the C server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from tests.fix_server import C, OURS, clean_env
from tests.util import C_TCPSERVER, TCPSERVER, need, need_root

NOLOOKUP = ["-H", "-R", "-l", "Local"]
ID = ["sh", "-c", "id -u; id -g; id -G"]


def _ids(server) -> List[str]:  # type: ignore[no-untyped-def]
    return server.talk().decode().splitlines()


def _proc_ids(pid: int) -> Dict[str, List[str]]:
    found = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                found[key] = value.split()
    return found


@pytest.mark.parametrize("options, env, expected", [
    (["-u", "nobody"], {}, ["65534", "65534", "65534"]),
    (["-u", "65534"], {}, ["65534", "65534", "65534"]),     # root's groups never leak
    (["-g", "3", "-u", "65534"], {}, ["65534", "3", "3"]),
    (["-u", "65534", "-g", "3"], {}, ["65534", "3", "3"]),
    (["-g", "daemon,sys"], {}, ["0", "1", "1 3"]),
    (["-g", "3"], {}, ["0", "3", "3"]),
    (["-g", "1,2", "-u", "2"], {}, ["2", "1", "1 2"]),
    (["-U"], {"UID": "2", "GID": "3"}, ["2", "3", "3"]),
    (["-u", "1", "-U"], {"UID": "65534"}, ["65534", "65534", "65534"]),
])
def test_program_identity(servers, options: List[str], env: Dict[str, str],
                          expected: List[str]) -> None:
    need_root()
    server = servers([*options, *NOLOOKUP], prog=ID, env=clean_env(**env))
    assert _ids(server) == expected
    # the server itself dropped too, for good (real, effective, saved, fs)
    ids = _proc_ids(server.pid)
    assert ids["Uid"] == [expected[0]] * 4
    assert ids["Gid"] == [expected[1]] * 4
    assert ids["Groups"] == expected[2].split()


def test_no_options_keep_root(servers) -> None:
    need_root()
    server = servers(NOLOOKUP, prog=ID)
    assert _ids(server)[:2] == ["0", "0"]


def test_bind_privileged_port_then_drop(servers) -> None:
    need_root()
    try:
        socket.getservbyname("tcpmux", "tcp")
    except OSError:
        pytest.skip("no tcpmux in /etc/services")
    server = servers(["-u", "nobody", *NOLOOKUP], prog=ID, port="tcpmux")
    assert server.port == 1
    assert _ids(server) == ["65534", "65534", "65534"]


def test_dropped_server_keeps_serving_and_stops(servers) -> None:
    need_root()
    server = servers(["-v", "-u", "nobody", *NOLOOKUP], prog=ID)
    for _ in range(3):
        assert _ids(server) == ["65534", "65534", "65534"]
    assert server.stop() == 0


# -- as a plain user ---------------------------------------------------------------------
def _python_for_nobody(setpriv: str) -> str:
    """An interpreter that uid 65534 may run (pyenv's may sit under /root)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        probe = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", candidate, "-c",
             "import sys; assert sys.version_info >= (3, 9); open(sys.argv[1]).close()",
             TCPSERVER], capture_output=True)
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python that uid 65534 can run")


def _as_nobody(impl: str, args: List[str], env: Optional[Dict[str, str]] = None
               ) -> subprocess.CompletedProcess:
    need_root()
    setpriv = need("setpriv")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    if impl == OURS:
        argv = [*prefix, _python_for_nobody(setpriv), TCPSERVER, *args]
    else:
        argv = [*prefix, need(C_TCPSERVER), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          env=clean_env(**(env or {})), timeout=10)


@pytest.mark.parametrize("impl", [OURS, C])
@pytest.mark.parametrize("args, env, message", [
    (["-u", "1"], {}, "unable to set uid: permission denied"),
    (["-U"], {"UID": "1"}, "unable to set uid: permission denied"),
    (["-g", "2"], {}, "unable to set gid: permission denied"),
    (["-U"], {"GID": "2"}, "unable to set gid: permission denied"),
])
def test_non_root_cannot_switch(impl: str, args: List[str], env: Dict[str, str],
                                message: str) -> None:
    result = _as_nobody(impl, [*args, *NOLOOKUP, "0", "0", "echo", "wrong"], env)
    assert (result.returncode, result.stderr.decode()) == (111, f"tcpserver: fatal: {message}\n")
    assert result.stdout == b""


def test_non_root_unreadable_limit_file(tmp_path) -> None:
    secret = tmp_path / "conc"          # tmp_path's parents are root-only (0700)
    secret.write_text("3\n")
    os.chmod(tmp_path, 0o700)
    result = _as_nobody(OURS, ["-c", str(secret), *NOLOOKUP, "127.0.0.1", "0", "true"])
    assert (result.returncode, result.stderr.decode()) == (
        111, f"tcpserver: fatal: unable to read {secret}: access denied\n")


def test_non_root_privileged_port() -> None:
    for impl in (OURS, C):
        result = _as_nobody(impl, [*NOLOOKUP, "127.0.0.1", "1", "true"])
        assert (result.returncode, result.stderr.decode()) == (
            111, "tcpserver: fatal: unable to bind: access denied\n"), impl


# -- issue 7, defect 5: a numeric uid without a passwd entry -------------------------------
def _uid_without_entry() -> int:
    import pwd
    for uid in range(12345, 60000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("every uid from 12345 has a passwd entry")


@pytest.mark.parametrize("how", ["-u", "-U"])
def test_uid_without_passwd_entry_needs_g(how: str) -> None:
    """As root, ``-u 12345`` (no passwd entry, no -g) would run the program
    in root's group 0 (IndiMail: Gid 0, Groups: 0): a start-up error that
    says to give -g, exit 100, before anything is bound."""
    need_root()
    uid = _uid_without_entry()
    args = ["-u", str(uid)] if how == "-u" else ["-U"]
    env = clean_env(UID=str(uid)) if how == "-U" else clean_env()
    result = subprocess.run([sys.executable, TCPSERVER, *args, *NOLOOKUP, "127.0.0.1", "0",
                             "true"], stdin=subprocess.DEVNULL, capture_output=True, env=env,
                            timeout=20)
    assert (result.returncode, result.stderr.decode(), result.stdout) == (
        100, f"tcpserver: fatal: uid {uid} has no passwd entry, so no group to switch to: "
             f"give -g with a group for it (or $GID with -U)\n", b"")


@pytest.mark.parametrize("options, env", [
    (["-g", "3"], {}), (["-g", "sys"], {}), (["-U"], {"GID": "3"}),
])
def test_uid_without_passwd_entry_with_a_group(servers, options: List[str],
                                               env: Dict[str, str]) -> None:
    need_root()
    uid = _uid_without_entry()
    if options == ["-U"]:
        env = {**env, "UID": str(uid)}
    else:
        options = ["-u", str(uid), *options]
    server = servers([*options, *NOLOOKUP], prog=ID, env=clean_env(**env))
    assert _ids(server) == [str(uid), "3", "3"]
    assert _proc_ids(server.pid)["Groups"] == ["3"]
