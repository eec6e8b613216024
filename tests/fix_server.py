"""Start a tcpserver for a test: ours or Debian's C one, side by side.

``servers`` (a pytest fixture) returns a factory::

    srv = servers(["-HR", "-l", "Local"], host="127.0.0.1", prog=PRINT_ENV)
    srv = servers([...], impl=C)          # /usr/bin/tcpserver

Every server is started with ``-1`` and port 0, so the kernel picks the
port and the server prints it on stdout; its stderr goes to a file
(:meth:`Server.log`).  At teardown each server still running gets
SIGTERM by pid, and the programs it left behind (children found in
``/proc`` while it ran, and any pid a test registered) get SIGKILL by pid.

:func:`run_once` runs a command line that is expected to end by itself
(start-up errors), with a deadline.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

from tests.util import C_TCPSERVER, need, ours

OURS = "ours"
C = "c"

#: a program that prints its environment, then END
PRINT_ENV = ["sh", "-c", "env; echo END"]
#: a program that says "hi" and waits for the client to close
HOLD = ["sh", "-c", "echo hi; read x"]
#: variables a test run may inherit that would disturb the servers
_SCRUB = re.compile(r"^(PROTO|TCP.*|MAXPERIP|UID|GID|CONTROLDIR|DNSCACHEIP|LOCALDOMAIN|"
                    r"DNSREWRITEFILE)$")


def clean_env(**extra: str) -> Dict[str, str]:
    """Our environment without ucspi variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra)
    return env


def argv_for(impl: str, args: Sequence[str]) -> List[str]:
    """The full argv of a tcpserver command line, ours or C."""
    if impl == OURS:
        return ours(*args)
    return [need(C_TCPSERVER), *args]


def run_once(impl: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
             timeout: float = 10.0, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run a server command line that should exit by itself."""
    return subprocess.run([*prefix, *argv_for(impl, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, env=env or clean_env(), timeout=timeout)


def children_of(pid: int) -> List[Tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append((int(name), fields[0]))
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid: int) -> bool:
    """Is ``pid`` a live (non-zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("latin-1")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def wait_until(check: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``check`` until it is true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until EOF (raises socket.timeout on the deadline)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_some(sock: socket.socket, timeout: float) -> Optional[bytes]:
    """What arrives within ``timeout`` (b"" = EOF), or None for nothing."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return None
    return sock.recv(65536)


def parse_env(data: bytes) -> Dict[str, str]:
    """The output of PRINT_ENV as a dict (must end with END)."""
    lines = data.decode("latin-1").split("\n")
    assert len(lines) >= 2 and lines[-2] == "END" and lines[-1] == "", data
    return dict(line.split("=", 1) for line in lines[:-2] if "=" in line)


class Server:
    """One running server with its log, its port and its pid."""

    def __init__(self, impl: str, options: Sequence[str], host: str, prog: Sequence[str],
                 logdir: str, env: Optional[Dict[str, str]] = None,
                 prefix: Sequence[str] = (), port: str = "0") -> None:
        self.impl = impl
        self.host = host
        self.argv = [*prefix, *argv_for(impl, ["-1", *options, host, port, *prog])]
        fd, self.log_path = _logfile(logdir, impl)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=fd,
                                         env=env if env is not None else clean_env())
        finally:
            os.close(fd)
        self.pid = self.proc.pid
        self.seen: Set[int] = set()
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + 15
        while b"\n" not in data:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([out], [], [], max(0.0, left))
            if not ready:
                self.stop()
                raise AssertionError(f"no port printed in time: {self.log()}")
            chunk = os.read(out, 100)
            if not chunk:
                self.proc.wait(5)
                raise AssertionError(f"server ended ({self.proc.returncode}): {self.log()}")
            data += chunk
        line = data.split(b"\n")[0]
        assert line.isdigit(), (data, self.log())
        return int(line)

    # -- the log ------------------------------------------------------
    def log(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("latin-1")

    def lines(self) -> List[str]:
        return self.log().splitlines()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> List[str]:
        """Wait for ``count`` log lines matching the regex ``pattern``;
        returns the matching lines (fails the test on the deadline)."""
        regex = re.compile(pattern)
        found: List[str] = []

        def check() -> bool:
            found[:] = [line for line in self.lines() if regex.search(line)]
            return len(found) >= count

        assert wait_until(check, timeout), f"no {count}x {pattern!r} in log:\n{self.log()}"
        return found

    def wait_pids(self, count: int = 1, timeout: float = 5.0) -> List[int]:
        """The pids of the first ``count`` programs (``pid P from`` lines)."""
        lines = self.wait_log(r"^tcpserver: pid \d+ from ", count, timeout)
        pids = [int(line.split()[2]) for line in lines]
        self.seen.update(pids)
        return pids

    # -- clients ------------------------------------------------------
    def address(self, host: Optional[str] = None) -> Tuple[str, int]:
        target = host or self.host
        if target in ("0", "::", "0.0.0.0", ""):
            target = "127.0.0.1"
        return target, self.port

    def connect(self, host: Optional[str] = None, source: Optional[str] = None,
                timeout: float = 5.0) -> socket.socket:
        """A connected client socket (to ``host`` or the bound host)."""
        target = self.address(host)
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(target)
        self.remember()
        return sock

    def talk(self, host: Optional[str] = None, send: bytes = b"", source: Optional[str] = None,
             timeout: float = 5.0) -> bytes:
        """Connect, send ``send``, read until EOF."""
        with self.connect(host, source, timeout) as sock:
            if send:
                sock.sendall(send)
            return read_all(sock, timeout)

    def env(self, host: Optional[str] = None, source: Optional[str] = None) -> Dict[str, str]:
        """The environment PRINT_ENV saw for one connection."""
        return parse_env(self.talk(host, source=source))

    # -- the process --------------------------------------------------
    def remember(self) -> None:
        """Note the current children, to clean them up later."""
        self.seen.update(pid for pid, _ in children_of(self.pid))

    def running(self) -> bool:
        return self.proc.poll() is None

    def handlers_ready(self, timeout: float = 5.0) -> bool:
        """Wait until the server catches SIGHUP, SIGUSR1, SIGTERM and
        SIGCHLD (``SigCgt`` in /proc), i.e. its loop is set up."""
        wanted = 0
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGCHLD):
            wanted |= 1 << (sig - 1)

        def check() -> bool:
            try:
                with open(f"/proc/{self.pid}/status") as handle:
                    for line in handle:
                        if line.startswith("SigCgt:"):
                            return int(line.split()[1], 16) & wanted == wanted
            except OSError:
                pass
            return False

        return wait_until(check, timeout)

    def signal(self, sig: int, wait_ready: bool = True) -> None:
        """Send ``sig`` by pid, once the server has its handlers (unless
        ``wait_ready`` is false)."""
        self.remember()
        if wait_ready and self.impl == OURS:
            assert self.handlers_ready(), "signal handlers never installed"
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM by pid; returns the exit code."""
        if self.proc.poll() is None:
            self.remember()
            if self.impl == OURS:
                self.handlers_ready()    # see test_sigterm_right_after_port_line
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop the server and kill the programs it left running."""
        self.stop()
        for pid in self.seen:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


_counter = [0]


def _logfile(logdir: str, impl: str) -> Tuple[int, str]:
    _counter[0] += 1
    path = os.path.join(logdir, f"{impl}-{_counter[0]}.log")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), path


Factory = Callable[..., Server]


@pytest.fixture
def servers(tmp_path) -> Iterator[Factory]:
    """A factory of servers, stopped at teardown.

    ``servers(options, host="127.0.0.1", prog=PRINT_ENV, impl=OURS,
    env=None, prefix=(), port="0")``; ``env`` defaults to
    :func:`clean_env`; ``prefix`` goes before the server's argv (e.g.
    ``prlimit``), and the pid is still the server's when it execs.
    """
    started: List[Server] = []

    def start(options: Sequence[str] = (), host: str = "127.0.0.1",
              prog: Sequence[str] = tuple(PRINT_ENV), impl: str = OURS,
              env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = (),
              port: str = "0") -> Server:
        server = Server(impl, options, host, prog, str(tmp_path), env, prefix, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()
