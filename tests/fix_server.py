"""The one server harness: start a tcpserver for a test, ours or Debian's
C one, talk to it and read its log.

The ``servers`` fixture (``tests/conftest.py``) is a :class:`Servers`
factory::

    srv = servers(["-HR", "-l", "Local"])                  # ours, PRINT_ENV
    srv = servers(["-v", "-R"], env=clean_env(DNSCACHEIP=ip), prog=HOLD)
    srv = servers([...], impl=C)                            # /usr/bin/tcpserver
    srv = servers([...], prefix=["prlimit", "--nofile=64:4096"])

Ours runs as ``sys.executable tcpserver.py``, never a bare
``tcpserver``.  Every server gets ``-1`` and port 0 (unless ``port=``),
so the kernel picks the port and the server prints it on stdout
(:attr:`Server.port`); its stderr goes to a file: :meth:`Server.lines`,
:meth:`Server.wait_log`.  At teardown each server still running gets
SIGTERM by pid, and the programs it left behind (children seen in
``/proc`` while it ran) get SIGKILL by pid.

Nothing here sleeps to let the server act: waits are on a log line
(:meth:`Server.wait_log`, :meth:`Server.marker`) or on kernel state
(:meth:`Server.queued`, signal delivery), with a deadline that only
bounds a failing test.

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
from typing import Dict, List, Optional, Sequence, Set, Tuple

from tests.util import (C_TCPSERVER, PYTHON, accept_queue, need, ours, pending_signals,
                        socket_inodes, unix_listening, wait_until)

__all__ = ["OURS", "C", "PRINT_ENV", "HOLD", "clean_env", "argv_for", "run_once", "children_of",
           "fd_count", "alive", "wait_until", "read_all", "read_some", "read_exactly",
           "parse_env", "Server", "Servers"]

OURS = "ours"
C = "c"

#: a program that prints its environment, then END
PRINT_ENV = ["sh", "-c", "env; echo END"]
#: a program that says "hi" and waits for the client to close
HOLD = ["sh", "-c", "echo hi; read x"]
#: variables a test run may inherit that would disturb the servers
_SCRUB = re.compile(r"^(PROTO|TCP.*|MAXPERIP|UID|GID|CONTROLDIR|DNSCACHEIP|LOCALDOMAIN|"
                    r"DNSREWRITEFILE)$")
#: how long a test waits for something that should happen (failing tests only)
WAIT = 10.0


def clean_env(**extra: str) -> Dict[str, str]:
    """Our environment without ucspi variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra)
    return env


def argv_for(impl: str, args: Sequence[str]) -> List[str]:
    """The full argv of a tcpserver command line, ours or C."""
    if impl == OURS:
        return ours(*args)
    if impl.endswith((".py", ".pyz")):   # a copy of ours somewhere else
        return [PYTHON, impl, *args]
    return [need(C_TCPSERVER), *args]


def run_once(impl: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
             timeout: float = 10.0, prefix: Sequence[str] = ()
             ) -> "subprocess.CompletedProcess[bytes]":
    """Run a server command line that should exit by itself."""
    return subprocess.run([*prefix, *argv_for(impl, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, env=env or clean_env(), timeout=timeout)


def direct_children(pid: int) -> List[Tuple[int, str]]:
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


def is_relay_server(pid: int) -> bool:
    """Is ``pid`` a TLS relay server (``ucspi/server/relays.py``)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b".server.relays" in handle.read()
    except OSError:
        return False


def relay_server_of(pid: int) -> Optional[int]:
    """The live TLS relay server of the server ``pid``, if it has one."""
    for child, state in direct_children(pid):
        if state != "Z" and is_relay_server(child):
            return child
    return None


def idle_relay(pid: int) -> bool:
    """Is ``pid`` a relay process waiting for its next connection?  It
    holds one descriptor besides 0, 1 and 2: its socket to the relay
    server (a busy one holds the connection too)."""
    try:
        return len([fd for fd in os.listdir(f"/proc/{pid}/fd") if int(fd) > 2]) == 1
    except OSError:
        return False


def children_of(pid: int) -> List[Tuple[int, str]]:
    """``(pid, state)`` of the server's children as far as programs go:
    its own children, except its live TLS relay server, whose children
    (the relay processes) count as the server's unless they are idle."""
    found = []
    for child, state in direct_children(pid):
        if state != "Z" and is_relay_server(child):
            found.extend((relay, rstate) for relay, rstate in direct_children(child)
                         if rstate == "Z" or not idle_relay(relay))
        else:
            found.append((child, state))
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


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until EOF (raises socket.timeout on the deadline)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    """``size`` bytes, or fewer if EOF comes first (however the sender
    split them into segments)."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


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
    """One running server with its log, its port and its pid.

    ``argv`` is ``[*prefix, <ours or C>, "-1", *options, host, port,
    *prog]``; the process started is the server itself (a ``prefix``
    must exec it, as ``prlimit`` or ``ip netns exec`` do), so
    :attr:`pid` is the server's pid.
    """

    def __init__(self, impl: str, options: Sequence[str], host: str, prog: Sequence[str],
                 log_path: str, env: Optional[Dict[str, str]] = None,
                 prefix: Sequence[str] = (), port: Optional[str] = "0",
                 pass_fds: Sequence[int] = ()) -> None:
        self.impl = impl
        self.host = host
        where = [host] if port is None else [host, port]
        self.argv = [*prefix, *argv_for(impl, ["-1", *options, *where, *prog])]
        self.log_path = log_path
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=fd,
                                         env=env if env is not None else clean_env(),
                                         pass_fds=tuple(pass_fds))
        finally:
            os.close(fd)
        self.pid = self.proc.pid
        self.seen: Set[int] = set()
        self.port = self._read_port() if port is not None else self._wait_unix()

    def _wait_unix(self) -> int:
        """UNIX mode (no port argument, no port line): wait until the
        server's socket at :attr:`host` is listening; the port is 0."""
        def check() -> bool:
            if self.proc.poll() is not None:
                return True
            return unix_listening(self.host)
        assert wait_until(check, 15), f"never listened on {self.host}: {self.log()}"
        assert self.proc.poll() is None, f"server ended ({self.proc.returncode}): {self.log()}"
        return 0

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

    def __repr__(self) -> str:
        return f"<Server {self.impl} pid={self.pid} {self.host}:{self.port}>"

    # -- the log (the server's stderr) ----------------------------------
    def log(self) -> str:
        """Everything the server (and its programs) wrote on stderr."""
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("latin-1")

    def lines(self) -> List[str]:
        """The log, line by line."""
        return self.log().splitlines()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = WAIT) -> List[str]:
        """Wait for ``count`` log lines matching the regex ``pattern``
        (``re.search``); returns all the matching lines (fails the test
        on the deadline)."""
        regex = re.compile(pattern)
        found: List[str] = []

        def check() -> bool:
            found[:] = [line for line in self.lines() if regex.search(line)]
            return len(found) >= count

        assert wait_until(check, timeout), f"no {count}x {pattern!r} in log:\n{self.log()}"
        return found

    def before(self, pattern: str, count: int = 1) -> List[str]:
        """Wait for the ``count``-th line matching ``pattern``; return the
        lines logged before it (to show that a line is absent up to a
        marker logged after the event)."""
        self.wait_log(pattern, count)
        regex = re.compile(pattern)
        lines = self.lines()
        seen = 0
        for at, line in enumerate(lines):
            if regex.search(line):
                seen += 1
                if seen == count:
                    return lines[:at]
        raise AssertionError("unreachable")

    def wait_pids(self, count: int = 1, timeout: float = WAIT) -> List[int]:
        """The pids of the first ``count`` programs (``pid P from`` lines)."""
        lines = self.wait_log(r"^tcpserver: pid \d+ from ", count, timeout)
        pids = [int(line.split()[2]) for line in lines]
        self.seen.update(pids)
        return pids

    def marker(self) -> str:
        """A log line the server writes after everything it was sent so
        far: SIGHUP, then its next ``sighup: N/L`` line, returned.  The
        counts in it say how many programs it was running at that point.
        Ours only; needs a verbosity of at least 1 (no ``-q``); the ``-c``
        file, if any, is read again."""
        assert self.impl == OURS, "the C server dies of SIGHUP"
        pattern = r"^tcpserver: sighup: \d+/\d+$"
        count = len([line for line in self.lines() if re.search(pattern, line)])
        self.signal(signal.SIGHUP)
        return self.wait_log(pattern, count + 1)[count]

    # -- clients ----------------------------------------------------------
    def address(self, host: Optional[str] = None) -> Tuple[str, int]:
        target = host or self.host
        if target in ("0", "::", "0.0.0.0", ""):
            target = "127.0.0.1"
        return target, self.port

    def connect(self, host: Optional[str] = None, source: Optional[str] = None,
                timeout: float = 5.0) -> socket.socket:
        """A connected client socket (to ``host`` or the bound host; from
        ``source`` if given; a host starting with ``/`` is a UNIX path)."""
        if (host or self.host).startswith("/"):
            usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            usock.settimeout(timeout)
            usock.connect(host or self.host)
            self.remember()
            return usock
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

    def env(self, host: Optional[str] = None, source: Optional[str] = None,
            timeout: float = 5.0) -> Dict[str, str]:
        """The environment PRINT_ENV saw for one connection."""
        return parse_env(self.talk(host, source=source, timeout=timeout))

    def queued(self) -> int:
        """Connections waiting in the kernel's accept queue of the
        server's listening sockets: connected, not accepted (deferred)."""
        return accept_queue(socket_inodes(self.pid))

    # -- the process ----------------------------------------------------
    def remember(self) -> None:
        """Note the current children, to clean them up later."""
        self.seen.update(pid for pid, _ in children_of(self.pid))

    def running(self) -> bool:
        return self.proc.poll() is None

    def handlers_ready(self, timeout: float = WAIT) -> bool:
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

    def delivered(self, sig: int, timeout: float = WAIT) -> bool:
        """Wait until ``sig`` is no longer pending: it reached the server
        (its handler ran, which for ours writes the wake-up pipe)."""
        return wait_until(lambda: not pending_signals(self.pid) & (1 << (sig - 1)), timeout)

    def signal(self, sig: int, wait_ready: bool = True) -> None:
        """Send ``sig`` by pid, once the server has its handlers (unless
        ``wait_ready`` is false), and wait until it has been delivered:
        two signals sent in a row reach ours in that order."""
        self.remember()
        if wait_ready and self.impl == OURS:
            assert self.handlers_ready(), "signal handlers never installed"
        self.proc.send_signal(sig)
        assert self.delivered(sig), f"signal {sig} still pending"

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


class Servers:
    """The ``servers`` fixture: a factory of :class:`Server` that stops
    them all at teardown (:meth:`cleanup`)."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.started: List[Server] = []

    def __call__(self, options: Sequence[str] = (), host: str = "127.0.0.1",
                 prog: Sequence[str] = tuple(PRINT_ENV), impl: str = OURS,
                 env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = (),
                 port: Optional[str] = "0", pass_fds: Sequence[int] = ()) -> Server:
        """Start a server: ``options`` go before ``host port prog``;
        ``env`` defaults to :func:`clean_env`; ``prefix`` goes before the
        server's argv (e.g. ``prlimit``) and must exec it.  ``port=None``:
        UNIX mode (``host`` is the socket path, no port argument; the
        server is ready when that socket listens).  ``pass_fds``: kept
        open in the server (socket activation)."""
        log_path = os.path.join(self.logdir,
                                f"{os.path.basename(impl)}-{len(self.started) + 1}.log")
        server = Server(impl, options, host, prog, log_path, env, prefix, port, pass_fds)
        self.started.append(server)
        return server

    def cleanup(self) -> None:
        for server in self.started:
            server.cleanup()
