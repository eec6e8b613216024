"""Small helpers shared by the tests.

``need(...)`` skips a test when an outside tool is missing, but fails it
when ``UCSPI_REQUIRE_ALL=1`` (CI sets that, so a missing install step
cannot hide behind a skip).

* :func:`free_port`: a port nothing listens on (bind to port 0, close).
* :func:`read_until`: read a socket (or descriptor) until a marker.
* :class:`FakeClock`: the reactor's clock, moved by hand (the fixture
  ``fake_clock`` of ``tests/conftest.py``), so that a test checks a
  deadline as logic rather than as wall time.
* :class:`ServerWallClock`: the wall clock of a server process, moved by
  hand (how old a rules file looks to it), without waiting.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, NoReturn, Set, Union

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCPSERVER = os.path.join(ROOT, "tcpserver.py")
PYTHON = sys.executable
# Debian's C tools, always by full path: never run a bare "tcpserver".
C_TCPSERVER = "/usr/bin/tcpserver"
C_TCPRULES = "/usr/bin/tcprules"
C_TCPRULESCHECK = "/usr/bin/tcprulescheck"


def require_all() -> bool:
    return os.environ.get("UCSPI_REQUIRE_ALL") == "1"


def missing(what: str) -> NoReturn:
    """Skip (or, under UCSPI_REQUIRE_ALL=1, fail) for lack of ``what``."""
    if require_all():
        pytest.fail(f"required for this test but missing: {what}")
    pytest.skip(f"missing: {what}")


def need(path_or_name: str) -> str:
    """Return the full path of a program, or skip/fail if it is missing."""
    if os.path.isabs(path_or_name):
        if os.access(path_or_name, os.X_OK):
            return path_or_name
    else:
        found = shutil.which(path_or_name)
        if found:
            return found
    missing(path_or_name)


def need_root() -> None:
    if os.geteuid() != 0:
        missing("root privileges")


def ours(*args: str) -> List[str]:
    """argv that runs our tcpserver with the current interpreter."""
    return [PYTHON, TCPSERVER, *args]


def stop(proc: "subprocess.Popen[bytes]") -> None:
    """End a process the test started: SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(check: Callable[[], object], timeout: float = 10.0, step: float = 0.01) -> bool:
    """Poll ``check`` until it is true (returns True) or the deadline
    passes (returns False).  The deadline only bounds a failing test:
    no test asserts on how long anything took through it."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port of ``host`` that nothing is bound to right now (the kernel
    picks it; the socket is closed again): for a server of a test to
    listen on, or for a connect (or a datagram) to be refused.  ``kind``:
    ``socket.SOCK_DGRAM`` for a UDP port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_line(sock: socket.socket) -> bytes:
    """One line, read a byte at a time so that nothing after it is
    consumed (the next bytes may be a TLS handshake's); EOF before the
    end of the line fails the test."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, data
        data += chunk
    return data


def read_until(source: Union[socket.socket, int], marker: bytes, timeout: float = 10.0) -> bytes:
    """Read until ``marker`` has arrived, or EOF: everything read (the
    marker included; bytes that came in the same read after it too).
    ``source`` is a socket (a TLS one too) or a descriptor (a pipe).
    The ``timeout`` is for the whole read: ``socket.timeout`` (a
    ``TimeoutError``) when it passes."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"no {marker!r} within {timeout} s: {data[-200:]!r}")
        if isinstance(source, int):
            if not select.select([source], [], [], left)[0]:
                continue
            chunk = os.read(source, 65536)
        else:
            source.settimeout(left)
            chunk = source.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class FakeClock:
    """A monotonic clock that only moves when the test moves it.

    Installed (:meth:`install`, or the ``fake_clock`` fixture) as the
    ``time.monotonic`` of :mod:`ucspi.reactor`, it is the clock of every
    :class:`~ucspi.reactor.Reactor` (``Reactor.time()``, ``call_later``,
    the timers) and so of the DNS and ident drivers: a deadline then
    passes when the test says so, and a test can show that nothing
    happens just before it and that the expiry comes exactly at it,
    whatever the load of the machine.  Descriptors still work in real
    time: with the clock stopped, ``run_once`` only dispatches I/O (and
    what is due)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move on by ``seconds``; returns the new time."""
        self.now += seconds
        return self.now

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeClock":
        """Be ucspi.reactor's clock until the end of the test
        (``monkeypatch``: pytest's fixture, which undoes it)."""
        from ucspi import reactor

        monkeypatch.setattr(reactor, "time", _ClockedTime(self))
        # the reactor must read its clock through the module: else this fails
        assert reactor.Reactor.time() == self.now, "ucspi.reactor does not use time.monotonic"
        return self


class _ClockedTime:
    """The ``time`` module as seen by ucspi.reactor: ``monotonic`` is the
    fake clock's, everything else the real module's."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_SITECUSTOMIZE = '''"""Written by tests/util.py (ServerWallClock): time.time_ns() of this
process is the real one plus the nanoseconds in $UCSPI_TEST_WALL_OFFSET."""
import os
import time

_PATH = os.environ.get("UCSPI_TEST_WALL_OFFSET")
if _PATH:
    _real_ns = time.time_ns

    def _shifted_ns():
        try:
            with open(_PATH) as handle:
                offset = int(handle.read() or 0)
        except (OSError, ValueError):
            offset = 0
        return _real_ns() + offset

    time.time_ns = _shifted_ns
'''


class ServerWallClock:
    """The wall clock (``time.time_ns``) of a server the test starts,
    moved by hand: :meth:`env` gives the variables to start it with (a
    ``sitecustomize.py`` of ``folder`` on its ``PYTHONPATH``, and the file
    holding the offset), :meth:`set` moves its clock while it runs.  The
    server is still ``sys.executable tcpserver.py``.

    What reads that clock in the server is the rules cache (a cdb is held
    in memory once it has been left alone for 2 s): ``set(3)`` makes
    every file look settled at once, ``set(0)`` makes a new one fresh
    again, so a test needs no 2 s sleep."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, "wall-offset")
        with open(os.path.join(folder, "sitecustomize.py"), "w") as handle:
            handle.write(_SITECUSTOMIZE)
        self.set(0)

    def env(self) -> Dict[str, str]:
        """The variables that give a server this clock."""
        path = [self.folder, *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(path), "UCSPI_TEST_WALL_OFFSET": self.path}

    def set(self, seconds: float) -> None:
        """From now on the server's wall clock is ``seconds`` ahead."""
        temporary = self.path + ".new"
        with open(temporary, "w") as handle:
            handle.write(str(int(seconds * 1e9)))
        os.replace(temporary, self.path)


# -- the kernel's view of a process (Linux /proc) ------------------------------
def socket_inodes(pid: int) -> Set[int]:
    """Inodes of the sockets process ``pid`` has open (empty once it is gone)."""
    found: Set[int] = set()
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(os.path.join(folder, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def accept_queue(inodes: Iterable[int]) -> int:
    """Connections waiting in the accept queue of the listening TCP
    sockets with these inodes: complete, not yet accepted (the kernel
    shows that count as ``rx_queue`` of a LISTEN socket)."""
    wanted = set(inodes)
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[9]) in wanted:   # LISTEN
                        waiting += int(fields[4].split(":")[1], 16)
        except OSError:
            continue
    return waiting


def _proc_net_address(ip: str, port: int) -> str:
    """``ip:port`` as /proc/net/tcp shows a local address (IPv4 only)."""
    packed = socket.inet_aton(ip)
    return "%08X:%04X" % (struct.unpack("=I", packed)[0], port)


def listens_on(pid: int, ip: str, port: int) -> bool:
    """Does process ``pid`` itself hold a listening TCP socket on the IPv4
    ``ip:port``?  (Not just: does something answer there.)"""
    inodes = socket_inodes(pid)
    local = _proc_net_address(ip, port)
    try:
        with open("/proc/net/tcp") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[1] == local and fields[3] == "0A" and int(fields[9]) in inodes:
                    return True
    except OSError:
        pass
    return False


def pending_signals(pid: int) -> int:
    """The signals sent to ``pid`` and not delivered yet, as a mask (bit
    ``sig - 1``); 0 once it is gone.  A signal that is no longer pending
    has reached the process: its handler ran (or it was killed)."""
    mask = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    mask |= int(line.split()[1], 16)
    except OSError:
        return 0
    return mask


def unix_listening(path: str) -> bool:
    """Is a UNIX stream socket bound to ``path`` listening?  (The
    kernel's table, ``/proc/net/unix``: flag ``__SO_ACCEPTCON``.)"""
    try:
        with open("/proc/net/unix") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
    except OSError:
        pass
    return False
