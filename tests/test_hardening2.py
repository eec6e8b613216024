"""Issue 18, the command-line and start-up items: the pid file (3, 11),
start-up tracebacks (7), the privilege check (8), NOTIFY_SOCKET (9),
non-ASCII and dotted SNI names (13), long UNIX socket paths (15), ``-c``
typos (16), symlinked scripts (17), ``--help`` (18), TLS start-up texts
(19), a rules text given as a cdb (20) and the packaging odds and ends
(21).

Each item has tests that fail on the code before its fix (a few more
tests beside them pin down what must not change).
"""

from __future__ import annotations

import configparser
import socket
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.util import PYTHON, ROOT, missing, need, read_until

MAN = os.path.join(ROOT, "man")
TIMEOUT = 20


def run(argv: List[str], cwd: str = ROOT, timeout: float = TIMEOUT,
        **kwargs: object) -> "subprocess.CompletedProcess[bytes]":
    """Run a command that ends by itself."""
    return subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, **kwargs)  # type: ignore[call-overload]


# -- 21: the manual page, py.typed, the zipapp's names -------------------------------------
def _man(name: str) -> str:
    with open(os.path.join(MAN, name), encoding="utf-8") as handle:
        return handle.read()


def test_man_page_has_no_stale_not_implemented_texts() -> None:
    text = _man("tcpserver.1")
    assert "Not implemented yet" not in text
    assert "when they are" not in text and "implemented)" not in text


def test_py_typed_is_shipped() -> None:
    assert os.path.isfile(os.path.join(ROOT, "ucspi", "py.typed"))
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "Typing :: Typed" in cfg["metadata"]["classifiers"]
    assert cfg["options.package_data"]["ucspi"].split() == ["py.typed"]


def _build_pyz(folder: str) -> str:
    out = os.path.join(folder, "tcpserver.pyz")
    result = run([PYTHON, os.path.join(ROOT, "tools", "build_pyz.py"), "-o", out], cwd=folder)
    assert result.returncode == 0, result.stderr
    return out


def test_zipapp_holds_py_typed(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_pyz(str(tmp_path))) as archive:
        assert "ucspi/py.typed" in archive.namelist()


def test_setuptools_build_holds_py_typed(tmp_path: Path) -> None:
    """setuptools' build_py (what a wheel is made of) copies py.typed;
    it runs on a copy of the tree, so the checkout is left clean."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        missing("setuptools")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), str(tree))
    shutil.copytree(os.path.join(ROOT, "ucspi"), str(tree / "ucspi"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "lib"
    result = run([PYTHON, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                  "--build-lib", str(out)], cwd=str(tree), timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert (out / "ucspi" / "py.typed").is_file()
    assert (out / "ucspi" / "server" / "bootstrap.py").is_file()


@pytest.mark.parametrize("argv0, command", [
    ("tcpserver", "tcpserver"), ("tcprules", "tcprules"), ("tcprulescheck", "tcprulescheck"),
    ("/usr/local/bin/tcprules", "tcprules"), ("tcprules.pyz", "tcprules"),
    ("tcprulescheck.py", "tcprulescheck"), ("./tcpserver.pyz", "tcpserver"),
    ("tcprules_v2", "tcpserver"), ("tcprulescheck2", "tcpserver"), ("tcprules.pyz.bak", "tcpserver"),
    ("tcprules.sh", "tcpserver"), ("x/tcprulesx.py", "tcpserver"), ("", "tcpserver"),
    ("-m", "tcpserver"), ("tcprules.py.py", "tcpserver"),
])
def test_command_name_matches_whole_names(argv0: str, command: str) -> None:
    from ucspi import command_name
    assert command_name(argv0) == command


@pytest.mark.parametrize("link, expected", [
    ("tcprules_v2", b"tcpserver: usage: tcpserver "),
    ("tcprules.pyz", b"tcprules: usage: tcprules "),
    ("tcprulescheck.py", b"tcprulescheck: usage: tcprulescheck "),
])
def test_zipapp_link_names(tmp_path: Path, link: str, expected: bytes) -> None:
    pyz = _build_pyz(str(tmp_path))
    os.symlink(pyz, str(tmp_path / link))
    result = run([PYTHON, "-I", link], cwd=str(tmp_path))
    assert result.returncode == 100, result.stderr
    assert result.stderr.startswith(expected), result.stderr


def test_readme_and_install_name_the_zipapp_commands() -> None:
    for name in ("README.md", "INSTALL"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            flat = " ".join(handle.read().split())
        for needle in ("tcprules.pyz", "tcprules_v2"):
            assert needle in flat, (name, needle)


# -- 17: a symlinked script finds its package ---------------------------------------------
@pytest.mark.parametrize("script", ["tcpserver", "tcprules", "tcprulescheck"])
@pytest.mark.parametrize("how", [["-I"], ["-s", "-E"], ["PYTHONSAFEPATH"]])
def test_symlinked_script_runs(tmp_path: Path, script: str, how: List[str]) -> None:
    import ucspi
    link = tmp_path / "bin" / script
    link.parent.mkdir()
    os.symlink(os.path.join(ROOT, script + ".py"), str(link))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    flags = how
    if how == ["PYTHONSAFEPATH"]:
        env["PYTHONSAFEPATH"] = "1"
        flags = []
    result = run([PYTHON, *flags, str(link), "--version"], cwd=str(tmp_path), env=env)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()[-500:]
    assert result.stdout == f"{script} {ucspi.__version__}\n".encode()


# -- 3 and 11: the pid file -----------------------------------------------------------------
NOLOOKUP = ["-HR", "-l0"]
PROG = ["127.0.0.1", "0", "true"]


def one_fatal_line(result: "subprocess.CompletedProcess[bytes]", code: int,
                   prog: str = "tcpserver") -> str:
    """The single ``<prog>: fatal: ...`` line of a failed run."""
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert (result.returncode, err.count("\n")) == (code, 1), err
    assert err.startswith(f"{prog}: fatal: "), err
    return err


def test_pid_file_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    from tests.fix_server import OURS, run_once
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    link = tmp_path / "pid"
    os.symlink(str(target), str(link))
    result = run_once(OURS, [*NOLOOKUP, "-e", str(link), *PROG])
    err = one_fatal_line(result, 111)
    assert err == f"tcpserver: fatal: pid file {link} is a symbolic link, not a regular file\n"
    assert target.read_bytes() == b"keep me\n"
    assert os.path.islink(str(link))


def test_pid_file_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    from tests.fix_server import OURS, run_once
    target = tmp_path / "elsewhere" / "created"
    target.parent.mkdir()
    link = tmp_path / "pid"
    os.symlink(str(target), str(link))
    result = run_once(OURS, [*NOLOOKUP, "-e", str(link), *PROG])
    one_fatal_line(result, 111)
    assert not target.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
def test_pid_file_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A FIFO used to hold start-up for ever (item 11)."""
    from tests.fix_server import OURS, run_once
    path = tmp_path / "p.fifo"
    words = {"fifo": "a FIFO", "directory": "a directory", "socket": "a socket"}[kind]
    holder = None
    if kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "directory":
        path.mkdir()
    else:
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.bind(str(path))
    try:
        result = run_once(OURS, [*NOLOOKUP, "-e", str(path), *PROG], timeout=5)
    finally:
        if holder is not None:
            holder.close()
    err = one_fatal_line(result, 111)
    assert err == f"tcpserver: fatal: pid file {path} is {words}, not a regular file\n"


def test_pid_file_is_replaced_not_written_through(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The pid goes into a new file renamed over the old one: a hard link
    to the old file (or a reader holding it open) keeps the old bytes."""
    pidfile = tmp_path / "pid"
    pidfile.write_bytes(b"stale")
    os.link(str(pidfile), str(tmp_path / "other"))
    server = servers(["-e", str(pidfile), *NOLOOKUP], prog=["true"])
    assert pidfile.read_bytes() == b"%d" % server.pid
    assert (tmp_path / "other").read_bytes() == b"stale"
    assert not [n for n in os.listdir(str(tmp_path)) if n.startswith(".pid")]   # no temporary left


def test_pid_file_unwritable_folder_is_one_fatal_line(tmp_path: Path) -> None:
    from tests.fix_server import OURS, run_once
    result = run_once(OURS, [*NOLOOKUP, "-e", str(tmp_path / "nodir" / "pid"), *PROG])
    err = one_fatal_line(result, 111)
    assert err == (f"tcpserver: fatal: couldn't open {tmp_path}/nodir/pid for write: "
                   "file does not exist\n")


# -- 7: no traceback at start-up ----------------------------------------------------------
def test_no_descriptor_for_the_signal_pipe(tmp_path: Path) -> None:
    """One descriptor free (``-S``: no site packages to import) is not
    enough for the signal pipe."""
    import resource

    def few() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    result = subprocess.run([PYTHON, "-S", os.path.join(ROOT, "tcpserver.py"), *NOLOOKUP, *PROG],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                            preexec_fn=few, cwd=str(tmp_path))
    err = one_fatal_line(result, 111)
    assert err == "tcpserver: fatal: unable to start: process cannot open more files\n"


@pytest.mark.parametrize("args", [["-x", "rules.cdb"], ["-c", "./limit"]])
def test_deleted_working_directory(tmp_path: Path, args: List[str]) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_and_remove() -> None:
        os.chdir(str(gone))
        os.rmdir(str(gone))

    result = subprocess.run([PYTHON, os.path.join(ROOT, "tcpserver.py"), *NOLOOKUP, *args, *PROG],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                            preexec_fn=enter_and_remove)
    err = one_fatal_line(result, 111)
    assert err == "tcpserver: fatal: unable to find the working directory: file does not exist\n"


def test_unexpected_os_error_names_the_file() -> None:
    import errno
    from ucspi.server.bootstrap import _unexpected
    assert _unexpected(OSError(errno.EMFILE, "x", "/dev/null")) == \
        "unable to start: /dev/null: process cannot open more files"
    assert _unexpected(OSError(errno.EIO, "x")) == "unable to start: input/output error"


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_inherited_socket_that_cannot_be_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    from ucspi.errors import Fatal
    from ucspi.server import listen
    sock = _listening()
    fd = os.dup(sock.fileno())
    try:
        def refuse(self: socket.socket, flag: bool) -> None:
            raise OSError(errno.EBADF, "refused")
        monkeypatch.setattr(socket.socket, "set_inheritable", refuse)
        with pytest.raises(Fatal) as caught:
            listen._inherited(fd)
        assert str(caught.value) == (f"unable to set up inherited descriptor {fd}: "
                                     "file descriptor not open")
        os.fstat(fd)                     # detached, not closed behind the caller's back
    finally:
        os.close(fd)
        sock.close()


def test_inherited_socket_without_local_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    from ucspi.errors import Fatal
    from ucspi.server import listen

    class NoName:
        family = socket.AF_INET

        def getsockname(self) -> None:
            raise OSError(errno.ENOBUFS, "no buffers")

    monkeypatch.setattr(listen, "_inherited", lambda fd: NoName())
    with pytest.raises(Fatal) as caught:
        listen.inherited(1)
    assert str(caught.value) == ("unable to get the local address of inherited descriptor 3: "
                                 "out of buffer space")


# -- 8: no way back to group 0 either -------------------------------------------------------
class FakeIds:
    """``os`` as seen after a drop to uid 1000: ``works`` names the calls
    that succeed (they must not)."""

    def __init__(self, gid: int = 1000, groups: Tuple[int, ...] = (1000,), works: str = "") -> None:
        self.gid = gid
        self.groups = list(groups)
        self.works = works
        self.tried: List[str] = []

    def call(self, name: str) -> "object":
        def change(value: object) -> None:
            self.tried.append(name)
            if name not in self.works:
                raise PermissionError(1, "Operation not permitted")
        return change

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ucspi.server import privs
        for name in ("setuid", "setgid", "setgroups"):
            monkeypatch.setattr(privs.os, name, self.call(name))
        monkeypatch.setattr(privs.os, "getgid", lambda: self.gid)
        monkeypatch.setattr(privs.os, "getegid", lambda: self.gid)
        monkeypatch.setattr(privs.os, "getgroups", lambda: list(self.groups))


@pytest.mark.parametrize("works, message", [
    ("setuid", "unable to set uid: root could be regained"),
    ("setgid", "unable to set gid: group 0 could be regained"),
    ("setgroups", "unable to set gid: the supplementary group 0 could be regained"),
])
def test_regaining_any_root_id_is_fatal(monkeypatch: pytest.MonkeyPatch, works: str,
                                       message: str) -> None:
    from ucspi.errors import Fatal
    from ucspi.server import privs
    FakeIds(works=works).install(monkeypatch)
    with pytest.raises(Fatal) as caught:
        privs._check_no_way_back()
    assert str(caught.value) == message


def test_no_way_back_tries_all_three(monkeypatch: pytest.MonkeyPatch) -> None:
    from ucspi.server import privs
    ids = FakeIds()
    ids.install(monkeypatch)
    privs._check_no_way_back()
    assert ids.tried == ["setuid", "setgid", "setgroups"]


def test_group_0_kept_on_purpose_is_not_a_way_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-g 0`` (or 0 among the groups) is what was asked for."""
    from ucspi.server import privs
    ids = FakeIds(gid=0, groups=(0, 5), works="setgid setgroups")
    ids.install(monkeypatch)
    privs._check_no_way_back()
    assert ids.tried == ["setuid"]


# -- 9: NOTIFY_SOCKET never reaches a program ---------------------------------------------
@pytest.mark.parametrize("value", ["not-a-path", "", "@", "/nonexistent/notify"])
def test_notify_socket_is_removed_even_without_a_notifier(servers, value: str) -> None:  # type: ignore[no-untyped-def]
    from tests.fix_server import PRINT_ENV, clean_env, parse_env
    server = servers(NOLOOKUP, prog=PRINT_ENV, env=clean_env(NOTIFY_SOCKET=value))
    env = parse_env(server.talk())
    assert env.get("PROTO") == "TCP"
    assert "NOTIFY_SOCKET" not in env


# -- 15: a UNIX socket path too long for the kernel -----------------------------------------
def test_unix_path_too_long(tmp_path: Path) -> None:
    from tests.fix_server import OURS, run_once
    path = str(tmp_path / ("s" * 200))
    result = run_once(OURS, [path, "true"])
    err = one_fatal_line(result, 111)
    assert err == f"tcpserver: fatal: unable to bind to {path}: file name too long\n"
    assert not os.path.exists(path)


# -- 16: -c typos ---------------------------------------------------------------------------
@pytest.mark.parametrize("arg", ["l00", "-5", "abc", "./nofile"])
def test_limit_typo_is_a_usage_error(tmp_path: Path, arg: str) -> None:
    from tests.fix_server import OURS, clean_env, run_once
    env = clean_env(CONTROLDIR=str(tmp_path))
    result = run_once(OURS, [*NOLOOKUP, "-c", arg, *PROG], env=env)
    err = one_fatal_line(result, 100)
    where = os.path.abspath(arg) if arg.startswith(".") else f"{tmp_path}/{arg}"
    assert err == (f"tcpserver: fatal: -c wants a number from 1 to 2147483647 or the name of "
                   f"an existing file, not {arg!r} (no such file: {where})\n")
    assert result.stdout == b""


def test_limit_typo_is_reported_under_quiet(tmp_path: Path) -> None:
    """Like every usage error, also under -q."""
    from tests.fix_server import OURS, clean_env, run_once
    result = run_once(OURS, ["-q", *NOLOOKUP, "-c", "l00", *PROG],
                      env=clean_env(CONTROLDIR=str(tmp_path)))
    one_fatal_line(result, 100)


def test_limit_file_in_controldir_still_works(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.fix_server import clean_env
    (tmp_path / "l00").write_text("7\n")
    server = servers(["-v", *NOLOOKUP, "-c", "l00"], prog=["true"],
                     env=clean_env(CONTROLDIR=str(tmp_path)))
    server.wait_log(r"^tcpserver: status: 0/7$")
    assert not [line for line in server.lines() if "warning" in line]


def test_limit_file_gone_on_sighup_keeps_the_limit(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import signal
    limit = tmp_path / "limit"
    limit.write_text("7\n")
    server = servers(["-v", *NOLOOKUP, "-c", str(limit)], prog=["echo", "ok"])
    server.wait_log(r"^tcpserver: status: 0/7$")
    limit.unlink()
    server.signal(signal.SIGHUP)
    server.wait_log(rf"^tcpserver: warning: unable to read {re.escape(str(limit))}: "
                    r"file does not exist, keeping 7$")
    server.wait_log(r"^tcpserver: sighup: 0/7$")
    assert server.talk() == b"ok\n"


# -- 20: a rules text where the cdb should be ----------------------------------------------
HINT = "protocol error (not a cdb: compile it with tcprules)"
RULES_TEXT = b"127.0.0.1:allow,WHO=\"me\"\n:deny\n"


@pytest.mark.parametrize("text", [RULES_TEXT, RULES_TEXT * 200, b":allow"])
def test_tcprulescheck_says_not_a_cdb(tmp_path: Path, text: bytes) -> None:
    from tests.fix_rules import OUR_TCPRULESCHECK
    rules = tmp_path / "rules"
    rules.write_bytes(text)
    result = run([*OUR_TCPRULESCHECK, str(rules)], cwd=str(tmp_path),
                 env={"PATH": "/usr/bin:/bin", "TCPREMOTEIP": "127.0.0.1"})
    err = one_fatal_line(result, 111, "tcprulescheck")
    assert err == f"tcprulescheck: fatal: unable to read {rules}: {HINT}\n"


@pytest.mark.parametrize("data", [b"\x00" * 100, b"\x01\x02binary\xff" * 300])
def test_a_corrupt_binary_file_gets_no_hint(tmp_path: Path, data: bytes) -> None:
    from tests.fix_rules import OUR_TCPRULESCHECK
    rules = tmp_path / "rules.cdb"
    rules.write_bytes(data)
    result = run([*OUR_TCPRULESCHECK, str(rules)], cwd=str(tmp_path),
                 env={"PATH": "/usr/bin:/bin", "TCPREMOTEIP": "127.0.0.1"})
    err = one_fatal_line(result, 111, "tcprulescheck")
    assert err == f"tcprulescheck: fatal: unable to read {rules}: protocol error\n"


def test_server_says_not_a_cdb(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules"
    rules.write_bytes(RULES_TEXT)
    server = servers([*NOLOOKUP, "-x", str(rules)], prog=["echo", "ok"])
    assert server.talk() == b""
    server.wait_log("^" + re.escape(f"tcpserver: warning: dropping connection, unable to read "
                                    f"{rules}: {HINT}") + "$")
    assert server.lines()[0] == f"tcpserver: warning: unable to read rules file {rules}: {HINT}"


def test_not_a_cdb_hint_is_only_for_text(tmp_path: Path) -> None:
    from ucspi.rules.lookup import looks_like_text
    samples = {"text": RULES_TEXT, "crlf": b"1.2.3.4:deny\r\n", "empty": b"", "blank": b"\n \n",
               "nul": b"1.2.3.4:deny\n\0", "latin1": b"=caf\xe9:deny\n"}
    found = {}
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
        found[name] = looks_like_text(str(tmp_path / name))
    os.mkfifo(str(tmp_path / "fifo"))
    found["fifo"] = looks_like_text(str(tmp_path / "fifo"))
    assert found == {"text": True, "crlf": True, "empty": False, "blank": False, "nul": False,
                     "latin1": False, "fifo": False}


# -- 19: TLS start-up texts that say what is wrong with which file --------------------------
TLS_FATAL = "tcpserver: fatal: unable to initialize TLS"


def _tls_startup(certs_root: str, args: List[str]) -> List[str]:
    from tests.fix_server import OURS, run_once
    from tests.fix_tls import tls_env
    result = run_once(OURS, ["-1", *NOLOOKUP, *args, *PROG], env=tls_env())
    err = result.stderr.decode("latin-1")
    assert "Traceback" not in err, err
    assert (result.returncode, result.stdout) == (111, b""), err
    return err.splitlines()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    need("openssl")
    from tests.fix_tls import session_certs
    return session_certs(str(tmp_path_factory.getbasetemp()))


def test_missing_server_certificate_is_named(certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "servercert.pem"
    lines = _tls_startup(certs.root, ["-s", "-i", str(tmp_path)])
    assert lines == [
        f"unable to load CA certificate: {path}: file does not exist",     # IndiMail's line
        f"{TLS_FATAL}: server certificate {path}: file does not exist"]


def test_certificate_without_key_says_so(certs) -> None:  # type: ignore[no-untyped-def]
    lines = _tls_startup(certs.root, ["-n", certs.certonly])
    problem = f"{certs.certonly}: no private key in the file"
    assert lines == [f"SSL_CTX_use_PrivateKey_file: Unable to load private keys: {problem}",
                     f"{TLS_FATAL}: server certificate {problem}"]
    assert "PEM lib" not in "".join(lines)


@pytest.mark.parametrize("which, problem", [
    ("keyonly", "no certificate in the file"),
    ("broken", "a PEM block in the file is damaged"),
    ("mismatch", "the private key does not belong to the certificate"),
])
def test_certificate_file_problems_are_named(certs, which: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    path = getattr(certs, which)
    lines = _tls_startup(certs.root, ["-n", path])
    assert lines[-1] == f"{TLS_FATAL}: server certificate {path}: {problem}", lines
    assert len(lines) == 2 and path in lines[0]


def test_encrypted_key_is_named_and_never_prompts(certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "key.pem"
    subprocess.run([need("openssl"), "pkcs8", "-topk8", "-in", certs.default, "-passout",
                    "pass:secret", "-out", str(key)], check=True, capture_output=True, timeout=30)
    with open(certs.certonly, "rb") as handle:
        cert = handle.read()
    path = tmp_path / "encrypted.pem"
    path.write_bytes(cert + key.read_bytes())
    lines = _tls_startup(certs.root, ["-n", str(path)])
    assert lines[-1] == (f"{TLS_FATAL}: server certificate {path}: the private key is "
                         "encrypted (tcpserver takes no passphrase)")


def test_bad_ca_file_is_named(certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "none.pem"
    lines = _tls_startup(certs.root, ["-n", certs.default, "-a", str(missing)])
    assert lines == [f"SSL_CTX_load_verify_locations: Unable to load CA certificate: {missing}: "
                     "file does not exist",
                     f"{TLS_FATAL}: CA file {missing}: file does not exist"]


def test_unknown_method_lists_every_accepted_name(certs) -> None:  # type: ignore[no-untyped-def]
    from ucspi.tls.settings import METHODS
    lines = _tls_startup(certs.root, ["-n", certs.default, "-M", "tlsv1_2"])
    listed = lines[1].split(": ", 2)[2].split(", ")
    assert lines[1].startswith("tls_method: Supported methods: ")
    assert listed == list(METHODS) == ["SSLv23", "SSLv3", "TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3"]
    assert lines[-1] == f"{TLS_FATAL}: -M wants a method name or MIN:MAX, not 'tlsv1_2'"


# -- 13: non-ASCII and dotted SNI names -----------------------------------------------------
def _hello(name: str, maximum: str = "1.3") -> bytes:
    """A real ClientHello (Python's client) asking for ``name``."""
    import ssl
    from tests.fix_tls import client_context
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(maximum=maximum).wrap_bio(incoming, outgoing, server_side=False,
                                                   server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _patched_hello(maximum: str = "1.3") -> bytes:
    """A ClientHello whose SNI name is not ASCII (same length as asked)."""
    hello = _hello("aaaa.example", maximum)
    assert hello.count(b"aaaa.example") == 1
    return hello.replace(b"aaaa.example", b"\xe9\x80\xff\xc3.example")


def _records(hello: bytes, size: int) -> bytes:
    """The handshake message of ``hello`` split into records of ``size``."""
    body = hello[5:]
    return b"".join(b"\x16\x03\x01" + len(body[i:i + size]).to_bytes(2, "big") + body[i:i + size]
                    for i in range(0, len(body), size))


def test_hello_server_name() -> None:
    from ucspi.tls.settings import hello_server_name
    hello = _hello("mail.example.com")
    assert hello_server_name(hello) == (True, b"mail.example.com")
    assert hello_server_name(_patched_hello()) == (True, b"\xe9\x80\xff\xc3.example")
    for cut in (0, 3, 5, 9, len(hello) // 2, len(hello) - 1):
        assert hello_server_name(hello[:cut]) == (False, None), cut
    split = _records(hello, 7)                       # a ClientHello over many records
    assert hello_server_name(split) == (True, b"mail.example.com")
    assert hello_server_name(split[:-1]) == (False, None)
    assert hello_server_name(b"GET / HTTP/1.0\r\n\r\n") == (True, None)    # not TLS
    assert hello_server_name(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == (True, None)  # not a hello
    assert hello_server_name(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00") == (True, None)  # junk
    assert hello_server_name(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff") == (True, None)  # huge


def test_hello_without_server_name() -> None:
    from ucspi.tls.settings import hello_server_name
    from tests.fix_tls import client_hello
    assert hello_server_name(client_hello()) == (True, None)


@pytest.mark.parametrize("name, checked", [
    ("a.example.", "a.example"), ("A.Example.", "a.example"), (".", None), ("a..", None),
    ("a.example..", None), ("..", None),
])
def test_sni_name_drops_the_trailing_dot(name: str, checked: str) -> None:
    from ucspi.tls.settings import sni_name
    assert sni_name(name) == checked


def _tls_server(servers, certs):  # type: ignore[no-untyped-def]
    from tests.fix_tls import start_tls
    return start_tls(servers, certs)


def _clean_tls_log(server) -> None:  # type: ignore[no-untyped-def]
    """Every line is one of ours: no traceback, no 'Exception ignored'."""
    for line in server.lines():
        assert line.startswith("tcpserver: "), server.log()
    assert "warning" not in server.log(), server.log()


def test_non_ascii_sni_gets_the_default_certificate(servers, certs) -> None:  # type: ignore[no-untyped-def]
    from tests.fix_tls import SERIAL_DEFAULT, pem_in, s_client, serial_of_pem
    server = _tls_server(servers, certs)
    name = os.fsdecode(b"caf\xc3\xa9.example")
    result = s_client(server.port, ["-ign_eof", "-servername", name], keep_open=True)
    assert result.returncode == 0, result
    assert serial_of_pem(pem_in(result.stdout)) == SERIAL_DEFAULT
    assert b"PROTO=TCP" in result.stdout, result.stdout
    assert b"SSL_TLS_SNI_SERVERNAME" not in result.stdout, result.stdout
    server.wait_log(r"^tcpserver: end \d+ status 0$")
    _clean_tls_log(server)


def test_raw_hello_with_non_ascii_sni_is_answered(servers, certs) -> None:  # type: ignore[no-untyped-def]
    """A hand-patched ClientHello (TLS 1.2, so the certificate travels in
    the clear): the server answers with its handshake and the default
    certificate, not with an alert."""
    import ssl
    server = _tls_server(servers, certs)
    with open(certs.default) as handle:
        pem = handle.read()
    der = ssl.PEM_cert_to_DER_cert(pem[:pem.index("-----END CERTIFICATE-----") + 25])
    with server.connect() as sock:
        sock.sendall(_records(_patched_hello("1.2"), 100))      # split, for good measure
        got = read_until(sock, der)
    assert got[:1] == b"\x16", got[:16]                          # a handshake record, no alert
    assert der in got
    server.wait_log(r"^tcpserver: end \d+ status \d+$")
    for line in server.lines():
        assert line.startswith(("tcpserver: ", "SSL_accept: ")), server.log()
    assert "Exception" not in server.log() and "Traceback" not in server.log()


def test_trailing_dot_picks_the_name_and_says_it_without_the_dot(servers, certs) -> None:  # type: ignore[no-untyped-def]
    from tests.fix_server import parse_env
    from tests.fix_tls import SERIAL_A, peer_serial, read_tls, tls_connect
    server = _tls_server(servers, certs)
    with tls_connect(server, server_hostname="A.Example.") as sock:
        serial = peer_serial(sock)
        env = parse_env(read_tls(sock))
    assert (serial, env.get("SSL_TLS_SNI_SERVERNAME")) == (SERIAL_A, "a.example")
    _clean_tls_log(server)


def test_unraisable_errors_become_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay child's last line of defence: what Python can only
    report (as the SNI machinery's decoding error) is one warning with
    the exception's type, never the client's bytes or a traceback."""
    import gc
    from ucspi.log import Log
    from ucspi.tls.context import quiet_unraisable
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    rfd, wfd = os.pipe()
    try:
        quiet_unraisable(Log(1, fd=wfd))

        class Bad:
            def __del__(self) -> None:
                b"\xe9\x80".decode("ascii")

        for _ in range(3):
            Bad()
            gc.collect()
        os.close(wfd)
        wfd = -1
        with os.fdopen(rfd, "rb") as reader:
            rfd = -1
            logged = reader.read()
    finally:
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
    assert logged == (b"tcpserver: warning: ignored an error in the TLS library's callback: "
                      b"UnicodeDecodeError\n")


# -- 18: --help is a summary, in step with the manual page --------------------------------
def _man_options() -> "dict[str, dict[str, str]]":
    """The rendered OPTIONS section: group -> {"-x": the text of -x's
    entries (both of -c's)}."""
    from tests.test_manpages import TCPSERVER_1, render, section
    groups: "dict[str, dict[str, str]]" = {}
    current: "dict[str, str]" = {}
    key = ""
    for line in section(render(TCPSERVER_1), "OPTIONS").splitlines():
        heading = re.match(r"^   (\S.*)$", line)
        entry = re.match(r"^       (-\S)(\s|$)", line)
        if heading:
            current = groups.setdefault(heading.group(1), {})
            key = ""
        elif entry:
            key = entry.group(1)
            current[key] = current.get(key, "") + " " + line[7:]
        elif key:
            current[key] += " " + line.strip()
    return {group: {k: " ".join(v.split()) for k, v in entries.items()}
            for group, entries in groups.items()}


def test_help_groups_are_the_man_pages() -> None:
    from ucspi.options import FLAGS, OPTION_GROUPS, WITH_ARG
    man = _man_options()
    assert [group for group, _ in OPTION_GROUPS] == list(man)
    for group, options in OPTION_GROUPS:
        in_help = {option.split()[0] for option, _ in options}
        in_man = {option.split()[0] for option in man[group]}
        assert in_help == in_man, group
    letters = {option.split()[0][1] for _, options in OPTION_GROUPS for option, _ in options}
    assert letters == set(FLAGS) | set(WITH_ARG)


DEFAULTS = {"c": "limit", "C": "max_per_host", "b": "backlog", "t": "ident_timeout",
            "S": "handshake_timeout", "T": "idle_timeout"}


def test_help_defaults_are_the_codes_and_the_man_pages() -> None:
    from ucspi.options import OPTION_GROUPS, Options
    flat = {option: text for entries in _man_options().values()
            for option, text in entries.items()}
    checked = 0
    for _, options in OPTION_GROUPS:
        for option, text in options:
            letter = option.split()[0]
            number = re.search(r"\(default (\d+)\)", text)
            if number:
                assert int(number.group(1)) == getattr(Options(), DEFAULTS[letter[1]]), option
                assert f"default {number.group(1)}" in flat[letter], (option, flat[letter])
                checked += 1
            marked = re.match(r"^-\S \(Default\.\)", flat[letter]) is not None
            if text.endswith("(default)"):
                assert marked, (option, flat[letter])
                checked += 1
            else:
                assert not marked, option
    assert checked == 12


@pytest.mark.parametrize("command", ["tcpserver", "tcprules", "tcprulescheck"])
def test_help_is_the_usage_line_and_a_summary(command: str) -> None:
    result = run([PYTHON, os.path.join(ROOT, command + ".py"), "--help"])
    assert (result.returncode, result.stderr) == (0, b"")
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith(f"{command}: usage: {command} ")
    assert len(lines) > 8 and lines[1] == ""
    assert all(len(line) < 80 for line in lines[1:]), lines
    assert f"man {command}" in lines[-1]
    # an error still prints the one usage line
    wrong = run([PYTHON, os.path.join(ROOT, command + ".py")])
    assert wrong.returncode == 100
    assert wrong.stderr.decode().splitlines() == [lines[0]]


def test_tcpserver_help_has_a_line_per_option() -> None:
    from ucspi.options import FLAGS, WITH_ARG
    result = run([PYTHON, os.path.join(ROOT, "tcpserver.py"), "--help"])
    listed = re.findall(r"^  -(\S)", result.stdout.decode(), re.M)
    assert sorted(set(listed)) == sorted(set(FLAGS) | set(WITH_ARG))
    assert len(listed) == len(set(listed)) + 1               # -c twice: a number, a file
