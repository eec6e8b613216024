"""The launch seam's fork path, the fork child's hygiene, and reaping.

No option uses the fork path yet: ``tests/forkserver.py`` runs the real
server with a :class:`~Fork` launcher and a test
child body, which reports what the child inherited.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.fix_server import read_all
from tests.util import PYTHON, ROOT, need_root, stop
from ucspi.dns import msg as dnsmsg
from ucspi.proc import child
from ucspi.server.limits import Programs
from ucspi.server.loop import Children

FORKSERVER = os.path.join(ROOT, "tests", "forkserver.py")
TIMEOUT = 10.0


class ForkServer:
    """Our server on the fork path, its log in a file."""

    def __init__(self, body: str, args: List[str], logpath: str,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.logpath = logpath
        with open(logpath, "wb") as log:
            self.proc = subprocess.Popen(
                [PYTHON, FORKSERVER, body, "-1", *args], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), self.log()
        self.port = int(line)

    def log(self) -> str:
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for(self, pattern: str, count: int = 1) -> List[str]:
        """Wait until ``pattern`` matches ``count`` log lines; return them."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, (pattern, self.log())
                return found
            time.sleep(0.01)

    def connect(self, ip: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection((ip, self.port), timeout=TIMEOUT)


@pytest.fixture
def forkserver(tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    started: List[ForkServer] = []

    def start(body: str, *args: str, env: Optional[Dict[str, str]] = None) -> ForkServer:
        server = ForkServer(body, list(args), str(tmp_path / f"log{len(started)}"), env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.proc)


def ask(server: ForkServer, send: bytes = b"") -> bytes:
    with server.connect() as sock:
        if send:
            sock.sendall(send)
        return read_all(sock, TIMEOUT)


# -- the fork child, end to end -------------------------------------------

def test_fork_child_keeps_only_its_connection(forkserver) -> None:  # type: ignore[no-untyped-def]
    server = forkserver("inspect", "-v", "-HRl0", "127.0.0.1", "0", "prog", "arg")
    report = json.loads(ask(server))
    assert report["open"] == [0, 1, 2, report["fd"]]
    parent = set(int(n) for n in os.listdir(f"/proc/{server.proc.pid}/fd"))
    # the parent has its listener, wake-up pipe and epoll fd open: the
    # child had them too and closed them
    assert len(parent - {0, 1, 2}) >= 4
    assert report["dispositions"] == {name: True for name in report["dispositions"]}
    assert report["wakeup"] == -1
    assert report["blocked"] == []
    assert report["argv"] == ["prog", "arg"]
    assert report["remote"] == "127.0.0.1"
    server.wait_for(r"^tcpserver: end %d status 0$" % report["pid"])


def test_fork_child_status_is_the_programs(forkserver) -> None:  # type: ignore[no-untyped-def]
    server = forkserver("status", "-v", "-c", "1", "-HRl0", "127.0.0.1", "0", "prog")
    assert ask(server, b"7\n") == b"bye\n"
    pid = int(server.wait_for(r"^tcpserver: pid \d+ from 127\.0\.0\.1$")[0].split()[2])
    server.wait_for(r"^tcpserver: end %d status %d$" % (pid, 7 << 8))
    lines = server.log().splitlines()
    # the child counts against -c 1 from its start to its end
    assert lines.index("tcpserver: status: 1/1") < lines.index(f"tcpserver: end {pid} status {7 << 8}")
    assert lines[-1] == "tcpserver: status: 0/1"
    assert ask(server, b"0\n") == b"bye\n"
    server.wait_for(r"^tcpserver: end \d+ status 0$")


def test_unexpected_exception_in_child(forkserver) -> None:  # type: ignore[no-untyped-def]
    server = forkserver("boom", "-v", "-HRl0", "127.0.0.1", "0", "prog")
    for n in (1, 2):      # the server goes on serving
        assert ask(server) == b""
        errors = server.wait_for(r"^tcpserver: fatal: child \d+: internal error: ", n)
        assert errors[-1].endswith(": RuntimeError: test body failed")
        server.wait_for(r"^tcpserver: end \d+ status %d$" % (111 << 8), n)
    assert "Traceback" not in server.log()


# -- the shared-epoll hazard ------------------------------------------------

class SlowDns:
    """A loopback DNS server that answers every PTR question with
    ``late.example`` after ``delay`` seconds, counting the queries."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries = 0
        self.sock, self.ip = self._bind()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _bind() -> Tuple[socket.socket, str]:
        for _ in range(50):
            ip = "127.%d.%d.%d" % (100 + secrets.randbelow(100), secrets.randbelow(256),
                                   2 + secrets.randbelow(250))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((ip, 53))
            except OSError:
                sock.close()
                continue
            return sock, ip
        raise RuntimeError("no free loopback address for a DNS server")

    def _answer(self, query: bytes) -> bytes:
        header = dnsmsg.parse_header(query)
        _, _, end = dnsmsg.read_question(query, 12)
        rdata = dnsmsg.encode_name("late.example")
        record = (b"\xc0\x0c" + (12).to_bytes(2, "big") + (1).to_bytes(2, "big")
                  + (60).to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata)
        return (header.id.to_bytes(2, "big") + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
                + query[12:end] + record)

    def _serve(self) -> None:
        pending: List[Tuple[float, int, bytes, object]] = []
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            wait = 0.05 if not pending else max(0.0, min(0.05, pending[0][0] - time.monotonic()))
            if sel.select(wait):
                query, peer = self.sock.recvfrom(512)
                self.queries += 1
                heapq.heappush(pending, (time.monotonic() + self.delay, self.queries,
                                         self._answer(query), peer))
            while pending and pending[0][0] <= time.monotonic():
                _, _, reply, peer = heapq.heappop(pending)
                self.sock.sendto(reply, peer)
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sock.close()


def test_fork_children_leave_the_parents_lookups_alone(forkserver) -> None:  # type: ignore[no-untyped-def]
    """Forked children end while other connections wait for DNS: every
    connection gets its answer from its first query (a child that
    unregistered the parent's DNS sockets from the shared epoll would
    leave them to time out and ask again)."""
    need_root()
    dns = SlowDns(0.3)
    try:
        env = dict(os.environ, DNSCACHEIP=dns.ip)
        server = forkserver("inspect", "-v", "-Rl0", "-c", "100", "-C", "0",
                            "127.0.0.1", "0", "prog", env=env)
        clients = []
        for _ in range(12):
            clients.append(server.connect())
            time.sleep(0.05)   # staggered: children end while others wait
        reports = [json.loads(read_all(sock, TIMEOUT)) for sock in clients]
        for sock in clients:
            sock.close()
        assert [r["host"] for r in reports] == ["late.example"] * 12
        assert [r["open"] for r in reports] == [[0, 1, 2, r["fd"]] for r in reports]
        server.wait_for(r"^tcpserver: end \d+ status 0$", 12)
        assert dns.queries == 12
    finally:
        dns.close()


# -- in-process: child.fork and Children --------------------------------------

def _status_of(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


# pytest's own threads (faulthandler's watchdog, fixtures' fake servers)
# make 3.12+ warn about forking this process; the server's parent is
# single-threaded (test_fork_without_threads_warning).
_PYTEST_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


@_PYTEST_THREADS
def test_fork_closes_what_it_is_not_told_to_keep() -> None:
    keep_r, keep_w = os.pipe()
    other_r, other_w = os.pipe()
    try:
        def work() -> int:
            try:
                os.fstat(other_w)
            except OSError:
                os.write(keep_w, b"closed")
                return 5
            os.write(keep_w, b"leaked")
            return 6
        pid = child.fork(work, keep=(keep_w,))
        assert _status_of(pid) == 5 << 8
        assert os.read(keep_r, 100) == b"closed"
        os.fstat(other_w)   # the parent's copy is untouched
    finally:
        for fd in (keep_r, keep_w, other_r, other_w):
            os.close(fd)


@_PYTEST_THREADS
def test_close_inherited_keeps_exactly_the_kept() -> None:
    r, w = os.pipe()
    extra = [os.dup(0) for _ in range(5)]
    try:
        def work() -> int:
            listed = sorted(int(n) for n in os.listdir("/proc/self/fd"))
            still = [fd for fd in listed if _is_open(fd)]
            os.write(w, json.dumps(still).encode())
            return 0
        pid = child.fork(work, keep=(w, extra[2]))
        assert _status_of(pid) == 0
        assert json.loads(os.read(r, 1000)) == sorted([0, 1, 2, w, extra[2]])
    finally:
        for fd in [r, w] + extra:
            os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _exited(pid: int) -> None:
    """Wait until ``pid`` has exited, without reaping it."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_children_reap_programs_and_others() -> None:
    table = Programs()
    ended: List[Tuple[int, str, int]] = []
    children = Children(table, lambda pid, ip, status: ended.append((pid, ip, status)))
    program = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], dict(os.environ))
    table.started(program, "10.0.0.1")
    helper = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], dict(os.environ))
    _exited(program)
    _exited(helper)
    children.reap()
    assert ended == [(program, "10.0.0.1", 3 << 8)]
    assert table.entries() == []
    with pytest.raises(ChildProcessError):
        os.waitpid(helper, os.WNOHANG)             # reaped too


def test_fork_without_threads_warning() -> None:
    """The fork path forks a single-threaded parent: no warning."""
    code = ("import warnings, os; warnings.simplefilter('error');"
            "from ucspi.proc import child;"
            "pid = child.fork(lambda: 0); print(os.waitpid(pid, 0)[1])")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"0\n"
    assert out.stderr == b""


def test_sigterm_in_child_is_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A child's SIGTERM is the default (the server's handler would _exit(0))."""
    r, w = os.pipe()
    pidfile = tmp_path / "pid"
    try:
        code = ("import os, signal; from ucspi.proc import signals, child;"
                "signals.install();"
                "pid = child.fork(lambda: (os.write(%d, b'x'), signal.pause())[1] or 0, keep=(%d,));"
                "open(%r, 'w').write(str(pid))" % (w, w, str(pidfile)))
        out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             timeout=TIMEOUT, pass_fds=(w,))
        assert out.returncode == 0
        pid = int(pidfile.read_text())
        assert os.read(r, 1) == b"x"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while _is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _is_alive(pid)
    finally:
        os.close(r)
        os.close(w)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


if sys.platform != "linux":   # /proc is how these tests look
    pytestmark = pytest.mark.skip(reason="Linux only")
