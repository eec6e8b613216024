"""Ident servers for the tests: the real oidentd, and loopback fakes.

* :func:`oidentd` (the session fixture ``identd`` of ``tests/conftest.py``):
  oidentd answering on 127.0.0.1 port 113 for the connections of this
  host.  One already listening there (CI may start one) is reused;
  otherwise ``oidentd -i -S`` is started with a configuration of our own
  and stopped (by pid) at the end.  Yields an :class:`Identd` with
  ``.ip``, ``.port`` and ``.user``, the answer expected for a connection
  opened by this process.  Needs root (port 113) and ``/usr/sbin/oidentd``.

* :class:`FakeIdentd`: a scripted ident server on port 113 of a random
  127.113.x.y address of its own (another address is tried when port 113
  is taken there, by another run say; without root: an ephemeral port,
  use ``.port``), or on the ``ip`` given (port 113 when free, else an
  ephemeral one).  For every connection it reads the query line,
  records it, then plays its script in a thread of its own: ``bytes`` are
  sent, a ``float`` sleeps, a ``threading.Event`` waits until the test
  sets it (or the fake is stopped), ``HANG`` waits until the fake is
  stopped, ``RESET`` aborts the connection, ``DRIBBLE(data, pause)``
  sends byte by byte.

* :class:`FullBacklog`: a listener whose accept queue is full, so that
  a connect to it never completes (connect timeouts).

A port on which nothing listens (refusals) is :func:`tests.util.free_port`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import random
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Iterator, List, Optional, Sequence, Set, Tuple, Union

import pytest

from tests.util import accept_queue, need, need_root, stop, wait_until

OIDENTD = "/usr/sbin/oidentd"
IDENT_PORT = 113

HANG = "hang"
RESET = "reset"
Step = Union[bytes, float, str, Tuple[bytes, float], threading.Event]

# Same capabilities as Debian's /etc/oidentd.conf: plain answers only.
_OIDENTD_CONF = """default {
    default {
        deny spoof
        deny spoof_all
        deny spoof_privport
        deny random
        deny random_numeric
        deny numeric
        deny hide
        deny forward
    }
}
"""


def DRIBBLE(data: bytes, pause: float) -> Tuple[bytes, float]:
    """A script step: send ``data`` one byte at a time, ``pause`` apart."""
    return (data, pause)


class Identd:
    """Where the real ident server answers, and what it should say."""

    def __init__(self, ip: str, port: int, user: str, pid: Optional[int]) -> None:
        self.ip = ip
        self.port = port
        self.user = user
        self.user_bytes = user.encode()
        self.pid = pid  # None when an already running server is reused

    def __repr__(self) -> str:
        return f"Identd(ip={self.ip!r}, port={self.port}, user={self.user!r}, pid={self.pid})"


def _listening(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def oidentd() -> Iterator[Identd]:
    """The real oidentd on 127.0.0.1:113 (see the module docstring)."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    ip = "127.0.0.1"
    if _listening(ip, IDENT_PORT):
        yield Identd(ip, IDENT_PORT, user, None)
        return
    need(OIDENTD)
    need_root()
    with tempfile.TemporaryDirectory(prefix="fix_ident.") as tmp:
        conf = os.path.join(tmp, "oidentd.conf")
        with open(conf, "w") as f:
            f.write(_OIDENTD_CONF)
        log = open(os.path.join(tmp, "oidentd.log"), "w+")
        proc = subprocess.Popen(
            [OIDENTD, "-i", "-S", "-C", conf, "-a", ip, "-p", str(IDENT_PORT)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_listening(proc, ip, log)
            yield Identd(ip, IDENT_PORT, user, proc.pid)
        finally:
            stop(proc)
            log.close()


def _wait_listening(proc: "subprocess.Popen[bytes]", ip: str, log) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _listening(ip, IDENT_PORT):
            return
        time.sleep(0.02)
    log.seek(0)
    pytest.fail(f"oidentd did not start (status {proc.poll()}): {log.read()}")


# -- fakes --------------------------------------------------------------

_used: Set[str] = set()
#: tries with other addresses when port 113 is taken
ADDRESS_TRIES = 50


def fake_ip() -> str:
    """A fresh loopback address 127.113.x.y for one fake: random (two runs
    of the suite draw different ones), never twice in one run."""
    pick = random.SystemRandom()
    while True:
        ip = "127.113.%d.%d" % (pick.randint(0, 255), pick.randint(1, 254))
        if ip not in _used:
            _used.add(ip)
            return ip


def _socket(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def ident_listener(ip: Optional[str], backlog: int) -> Tuple[str, socket.socket]:
    """``(ip, listening socket)``: port 113 of ``ip`` when free, else an
    ephemeral port; with no ``ip``, port 113 of a fresh :func:`fake_ip`,
    trying others while it is taken (an ephemeral port when not root)."""
    for _ in range(ADDRESS_TRIES if ip is None else 1):
        address = ip or fake_ip()
        sock = _socket(address)
        try:
            sock.bind((address, IDENT_PORT))
        except OSError as exc:
            sock.close()
            if ip is None and exc.errno == errno.EADDRINUSE:
                continue        # another run's fake: next address
            sock = _socket(address)
            sock.bind((address, 0))   # taken (e.g. a wildcard identd) or not root
        sock.listen(backlog)
        return address, sock
    raise OSError(errno.EADDRINUSE, f"port {IDENT_PORT} taken on {ADDRESS_TRIES} addresses")


class FakeIdentd:
    """A scripted ident server (see the module docstring)."""

    def __init__(self, steps: Sequence[Step], ip: Optional[str] = None,
                 read_request: bool = True) -> None:
        self.ip, self._sock = ident_listener(ip, 64)
        self.steps = list(steps)
        self.read_request = read_request
        self.requests: List[bytes] = []
        self.peers: List[Tuple[str, int]] = []
        self._stop = threading.Event()
        self.port = int(self._sock.getsockname()[1])
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def __enter__(self) -> "FakeIdentd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for thread in list(self._threads):
            thread.join(5)
        self._sock.close()

    @property
    def connections(self) -> int:
        return len(self.peers)

    def first_after(self) -> Tuple[str, int]:
        """Connect to the fake ourselves and wait until it has accepted
        that connection; returns its address.  The fake accepts in order,
        so ``fake.peers.index(address)`` is the number of connections
        made to it before this call (e.g. 0: nobody else connected)."""
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect((self.ip, self.port))
            host, port = sock.getsockname()[:2]
            address = (str(host), int(port))
            assert wait_until(lambda: address in self.peers), "the fake never accepted"
        return address

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, peer = self._sock.accept()
            except OSError:        # aborted before we got to it: not the fake's end
                continue
            with self._lock:
                self.peers.append(peer[:2])
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.read_request:
                self._read_request(conn)
            for step in self.steps:
                if not self._play(conn, step):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def _read_request(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                break
            line += chunk
        with self._lock:
            self.requests.append(line)

    def _play(self, conn: socket.socket, step: Step) -> bool:
        """Play one step; False when the connection is finished."""
        if isinstance(step, bytes):
            conn.sendall(step)
        elif isinstance(step, float):
            self._stop.wait(step)
        elif isinstance(step, threading.Event):
            while not step.wait(0.05):
                if self._stop.is_set():
                    return False
        elif isinstance(step, tuple):
            data, pause = step
            for i in range(len(data)):
                if self._stop.wait(pause):
                    return False
                conn.sendall(data[i:i + 1])
        elif step == HANG:
            self._stop.wait()
            return False
        elif step == RESET:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        else:
            raise ValueError(f"bad fake step {step!r}")
        return True


class FullBacklog:
    """A listener that never accepts and whose queue is full: a new
    connect to it stays in progress (SYNs are dropped)."""

    def __init__(self, ip: Optional[str] = None) -> None:
        self.ip, self._sock = ident_listener(ip, 0)
        self.port = int(self._sock.getsockname()[1])
        self._fillers: List[socket.socket] = []
        inode = os.fstat(self._sock.fileno()).st_ino
        for _ in range(2):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex((self.ip, self.port))
            self._fillers.append(filler)
        # backlog 0: one connection waiting to be accepted fills the queue
        assert wait_until(lambda: accept_queue([inode]) >= 1), "accept queue never filled"

    def __enter__(self) -> "FullBacklog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._sock.close()
