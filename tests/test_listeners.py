"""Listeners beyond host and port (issue 12): UNIX-domain mode
(design: unix-mode), socket activation (design: socket-activation) and readiness
notification (design: readiness-notification).  The PROXY protocol is in
``test_proxy_server.py``."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import pytest

from tests.fix_server import HOLD, clean_env, parse_env, read_all, read_some
from tests.util import ours, read_until, wait_until

#: execs its argv with the descriptors named on its command line moved to
#: 3, 4, ... and LISTEN_PID set to its own pid (kept by exec): what a
#: supervisor does (sd_listen_fds(3))
ACTIVATE = r"""
import fcntl, os, sys
count = int(sys.argv[1])
fds = [int(x) for x in sys.argv[2:2 + count]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]   # out of the way of 3, 4, ...
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
for fd in high + [fd for fd in fds if fd >= 3 + count]:
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(count)
os.environ["LISTEN_FDNAMES"] = ":".join("s%d" % i for i in range(count))
argv = sys.argv[2 + count:]
os.execv(argv[0], argv)
"""


def activate(fds: Sequence[int]) -> List[str]:
    return [sys.executable, "-c", ACTIVATE, str(len(fds)), *map(str, fds)]


def unix_talk(path: str, send: bytes = b"", timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        if send:
            sock.sendall(send)
        return read_all(sock, timeout)


@pytest.fixture
def sock_path(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return str(tmp_path / "s.sock")


# -- UNIX-domain mode ------------------------------------------------------------
def test_unix_environment_credentials_and_log(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    """``PROTO=UNIX``, ``UNIXLOCALPATH``, the peer's credentials; no
    ``TCP*`` variable set or removed; ``pid P from PATH``, ``ok P [PATH]``."""
    env = clean_env(TCPREMOTEIP="inherited")
    server = servers(["-v", "-B", "hello "], host=sock_path, port=None, env=env)
    data = unix_talk(sock_path)
    assert data.startswith(b"hello ")
    got = parse_env(data[6:])
    assert got["PROTO"] == "UNIX" and got["UNIXLOCALPATH"] == sock_path
    assert got["UNIXREMOTEEUID"] == str(os.geteuid())
    assert got["UNIXREMOTEEGID"] == str(os.getegid())
    assert got["UNIXREMOTEPID"] == str(os.getpid())
    assert got["TCPREMOTEIP"] == "inherited"
    assert not [k for k in got if k.startswith("TCP") and k != "TCPREMOTEIP"]
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 0$")
    lines = server.lines()
    at = lines.index(f"tcpserver: pid {pid} from {sock_path}")
    assert lines[at + 1] == f"tcpserver: ok {pid} [{sock_path}]"
    assert lines[0] == "tcpserver: status: 0/40"


def test_unix_ignores_tcp_options(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    """``-1 -x -h -p -r -l -D -6`` mean nothing in UNIX mode: no port line,
    no rules file opened (a missing one would drop the connection)."""
    server = servers(["-x", "/nonexistent/rules.cdb", "-hpr", "-D", "-6", "-l", "x"],
                     host=sock_path, port=None)
    got = parse_env(unix_talk(sock_path))
    assert got["PROTO"] == "UNIX" and "TCPLOCALHOST" not in got
    assert server.proc.stdout is not None
    assert read_some_fd(server.proc.stdout.fileno()) in (None, b"")


def read_some_fd(fd: int) -> "bytes | None":
    ready, _, _ = select.select([fd], [], [], 0.2)
    return os.read(fd, 100) if ready else None


def test_unix_limits(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    """``-C`` counts every UNIX client together (``end  perIPlimit k``,
    the empty address); ``-c`` defers accepting."""
    server = servers(["-C", "2", "-c", "3"], host=sock_path, port=None, prog=HOLD)
    held = [server.connect() for _ in range(2)]
    for sock in held:
        assert read_some(sock, 5) == b"hi\n"
    third = server.connect()
    assert read_all(third) == b""
    server.wait_log(r"^tcpserver: end  perIPlimit 2$")
    for sock in held + [third]:
        sock.close()
    server2 = servers(["-c", "1"], host=sock_path + "2", port=None, prog=HOLD)
    first = server2.connect()
    assert read_some(first, 5) == b"hi\n"
    second = server2.connect()
    assert read_some(second, 0.3) is None      # waiting in the accept queue
    first.close()
    assert read_some(second, 5) == b"hi\n"
    second.close()


def test_unix_sigterm_removes_the_path(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    server = servers([], host=sock_path, port=None)
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    assert server.stop() == 0
    assert not os.path.lexists(sock_path)


def test_unix_sigterm_leaves_a_replaced_path(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    """Only the file the server made is removed."""
    server = servers([], host=sock_path, port=None)
    os.unlink(sock_path)
    with open(sock_path, "w") as handle:
        handle.write("someone else's")
    assert server.stop() == 0
    assert os.path.exists(sock_path)


def test_unix_socket_mode_follows_the_umask(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    servers([], host=sock_path, port=None, prefix=["sh", "-c", 'umask 077; exec "$@"', "sh"])
    assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o700
    other = sock_path + "2"
    servers([], host=other, port=None, prefix=["sh", "-c", 'umask 002; exec "$@"', "sh"])
    assert stat.S_IMODE(os.lstat(other).st_mode) == 0o775


def _run(args: List[str], env: "Dict[str, str] | None" = None,
         pass_fds: Sequence[int] = (), prefix: Sequence[str] = ()
         ) -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run([*prefix, *ours(*args)], stdin=subprocess.DEVNULL,
                          capture_output=True, env=env or clean_env(), timeout=10,
                          pass_fds=tuple(pass_fds))


def test_unix_start_up_errors(tmp_path, sock_path) -> None:  # type: ignore[no-untyped-def]
    """IndiMail's texts for UNIX mode."""
    with open(sock_path, "w"):
        pass
    result = _run([sock_path, "true"])
    assert result.returncode == 111
    assert result.stderr.decode() == \
        f"tcpserver: fatal: unable to bind to {sock_path}: address already used\n"
    missing = str(tmp_path / "no" / "s.sock")
    result = _run([missing, "true"])
    assert result.returncode == 111
    assert result.stderr.decode() == \
        f"tcpserver: fatal: unable to bind to {missing}: file does not exist\n"
    long = "/" + "x" * 200
    result = _run([long, "true"])
    assert result.returncode == 111
    assert result.stderr.decode().startswith(f"tcpserver: fatal: unable to bind to {long}: ")


def test_unix_pidfile_removes_a_stale_socket(servers, tmp_path, sock_path) -> None:  # type: ignore[no-untyped-def]
    """``-e``: a server that is gone left its socket and pid file; the
    next one removes the socket and writes its pid.  A live pid in the
    file is ``fatal:  already running`` (two spaces)."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()                       # the file stays, nobody listens
    pidfile = str(tmp_path / "pid")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(pidfile, "w") as handle:
        handle.write(str(dead.pid))
    server = servers(["-e", pidfile], host=sock_path, port=None)
    with open(pidfile) as handle:
        assert handle.read() == str(server.pid)
    assert parse_env(unix_talk(sock_path))["PROTO"] == "UNIX"
    result = _run(["-e", pidfile, sock_path, "true"])
    assert result.returncode == 111
    assert result.stderr.decode() == "tcpserver: fatal:  already running\n"
    assert unix_talk(sock_path).endswith(b"END\n")     # the first one's socket is intact


def test_unix_pidfile_leaves_other_files(tmp_path, sock_path) -> None:  # type: ignore[no-untyped-def]
    with open(sock_path, "w"):
        pass
    result = _run(["-e", str(tmp_path / "pid"), sock_path, "true"])
    assert result.returncode == 111 and "address already used" in result.stderr.decode()
    assert os.path.isfile(sock_path)


def test_unix_with_tls(servers, sock_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``-s`` on a UNIX listener: the relay serves it like a TCP client."""
    import ssl
    from tests.fix_tls import client_context, session_certs, tls_env
    certs = session_certs(str(tmp_path))
    server = servers(["-v", "-n", certs.default], host=sock_path, port=None,
                     env=tls_env())
    ctx = client_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(sock_path)
        with ctx.wrap_socket(raw) as tls:
            data = read_until(tls, b"END\n")
    got = parse_env(data)
    assert got["PROTO"] == "UNIX" and got["UNIXLOCALPATH"] == sock_path
    assert got["SSL_PROTOCOL"].startswith("TLSv1.")
    server.wait_log(rf"encrypted session, .*IP {re.escape(sock_path)}, ")


# -- socket activation ----------------------------------------------------------------
def test_activation_serves_inherited_tcp_and_unix_sockets(servers, sock_path) -> None:  # type: ignore[no-untyped-def]
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(sock_path)
    unix.listen(5)
    port = tcp.getsockname()[1]
    try:
        server = servers(["-v", "-HR", "-l0"], host="127.0.0.1", port="0",
                         prefix=activate([tcp.fileno(), unix.fileno()]),
                         pass_fds=(tcp.fileno(), unix.fileno()))
    finally:
        tcp.close()
        unix.close()
    assert server.port == port                  # -1: the first inherited socket's port
    got = server.env()
    assert got["PROTO"] == "TCP" and got["TCPLOCALPORT"] == str(port)
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(got)
    got = parse_env(unix_talk(sock_path))
    assert got["PROTO"] == "UNIX" and got["UNIXLOCALPATH"] == sock_path
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(got)
    assert server.stop() == 0
    assert os.path.lexists(sock_path)           # the supervisor's socket: not removed


@pytest.mark.parametrize("kind", ["datagram", "not listening", "a pipe"])
def test_activation_refuses_other_descriptors(kind: str) -> None:
    if kind == "datagram":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        fd = sock.fileno()
    elif kind == "not listening":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fd = sock.fileno()
    else:
        rfd, wfd = os.pipe()
        fd = rfd
    try:
        result = _run(["-HR", "127.0.0.1", "0", "true"], prefix=activate([fd]), pass_fds=(fd,))
    finally:
        if kind == "a pipe":
            os.close(rfd)
            os.close(wfd)
        else:
            sock.close()
    assert result.returncode == 111
    assert result.stderr.decode() == \
        "tcpserver: fatal: inherited descriptor 3 is not a listening stream socket\n"


def test_activation_for_another_pid_is_ignored(servers) -> None:  # type: ignore[no-untyped-def]
    """``LISTEN_PID`` of another process: bind as usual, and leave the
    variables alone."""
    server = servers(["-HR", "-l0"], env=clean_env(LISTEN_PID="1", LISTEN_FDS="1"))
    got = server.env()
    assert got["LISTEN_PID"] == "1" and got["TCPLOCALPORT"] == str(server.port)


# -- readiness notification ------------------------------------------------------------
class Receiver:
    """The supervisor's side: a datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: List[str] = []

    def wait(self, pattern: str, timeout: float = 10.0) -> str:
        """The next message matching ``pattern`` (earlier ones are kept)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while True:
            for message in self.messages[seen:]:
                if regex.search(message):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.messages}"
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                self.messages.append(self.sock.recv(4096).decode())

    def drain(self) -> None:
        """Take every message sent so far (datagrams are queued when sent)."""
        while select.select([self.sock], [], [], 0)[0]:
            self.messages.append(self.sock.recv(4096).decode())


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_notify_ready_status_reloading_stopping(servers, tmp_path, where) -> None:  # type: ignore[no-untyped-def]
    if where == "path":
        address = name = str(tmp_path / "notify")
    else:
        name = "@ucspi-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
        address = "\0" + name[1:]
    receiver = Receiver(address)
    server = servers(["-HR", "-l0"], prog=HOLD, env=clean_env(NOTIFY_SOCKET=name))
    receiver.wait("^READY=1$")
    receiver.wait("^STATUS=0/40 connections$")
    client = server.connect()
    assert read_some(client, 5) == b"hi\n"
    receiver.wait("^STATUS=1/40 connections$")
    client.close()
    receiver.wait("^STATUS=0/40 connections$")
    server.signal(signal.SIGHUP)
    reloading = receiver.wait("^RELOADING=1")
    usec = int(reloading.split("\nMONOTONIC_USEC=")[1])
    assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000
    receiver.wait("^READY=1$")
    server.stop()
    receiver.wait("^STOPPING=1$")
    kinds = [m.split("=")[0] for m in receiver.messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING"
    assert kinds.index("RELOADING") < len(kinds) - 1 - kinds[::-1].index("READY")
    receiver.sock.close()


def test_notify_status_is_rate_limited(servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """50 connections as fast as possible: a few STATUS messages (at most
    4 a second), ending with the final count; the program does not see
    NOTIFY_SOCKET."""
    address = str(tmp_path / "notify")
    receiver = Receiver(address)
    start = time.monotonic()            # the server's whole life: a bound that load only widens
    server = servers(["-HR", "-l0"], env=clean_env(NOTIFY_SOCKET=address))
    receiver.wait("^READY=1$")
    got = parse_env(server.talk())
    assert "NOTIFY_SOCKET" not in got
    for _ in range(49):
        server.talk()
    assert wait_until(lambda: server.marker() and "sighup: 0/40" in server.lines()[-1])
    # the count is 0 from now on: what was sent before is queued, and
    # the last word, if it is not said yet, comes within the interval
    receiver.drain()
    if [m for m in receiver.messages if m.startswith("STATUS=")][-1] != "STATUS=0/40 connections":
        receiver.wait("^STATUS=0/40 connections$")
    server.stop()
    receiver.wait("^STOPPING=1$")
    elapsed = time.monotonic() - start
    statuses = [m for m in receiver.messages if m.startswith("STATUS=")]
    assert len(statuses) <= 4 * elapsed + 3, (len(statuses), elapsed)
    assert statuses[-1] == "STATUS=0/40 connections"
    receiver.sock.close()


def test_notify_with_no_listener_is_harmless(servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A supervisor that went away: sends fail, the server goes on."""
    server = servers(["-HR", "-l0"], env=clean_env(NOTIFY_SOCKET=str(tmp_path / "gone")))
    assert parse_env(server.talk())["PROTO"] == "TCP"
    server.marker()
    assert server.running()
