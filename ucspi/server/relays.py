"""The TLS relay server's process (the server's side and the protocol:
:mod:`ucspi.tls.relayserver`).

A TLS server whose program is spawned starts it before the privilege
drop as ``python -S -c ...`` (no site packages, so no at-fork hooks of
theirs), fds 0 and 1 on /dev/null, fd 2 the server's.  :func:`main`:

1. closes every inherited descriptor but its control socket and its
   exit pipe; ignores SIGHUP, SIGUSR1 (the server's) and SIGPIPE;
2. reads the server's options (the first message), builds the same
   TLS contexts as the server did, drops the same privileges, and says
   ``R`` (or ``X`` and why: the server warns and forks relays itself);
3. serves: each connection goes to an idle relay process, or to a new
   one forked with the hygiene of :mod:`ucspi.proc.child`
   (:func:`_relay_process`), and the answer is its pid; a relay process
   serves one connection after another
   (:meth:`TlsLaunch.serve_one <ucspi.tls.launch.TlsLaunch.serve_one>`)
   and says ``D`` + the program's wait status after each (``L``: and it
   leaves); each end becomes a ``(pid, wait status)`` record in the exit
   pipe, and the server gets SIGCHLD; a relay process that dies busy
   ends its connection with its own status (SIGCHLD here); ``H``
   builds the contexts again (the old ones stay on failure) and retires
   the relay processes of before;
4. at the end of the control socket (the server is gone), takes no
   more connections, waits for its relay processes and exits 0.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import EXIT_TEMP
from ..proc import child
from ..tls.relayserver import (CONNECTION, DONE, ERROR, EXIT, FAILED, HEAD, MESSAGE_MAX, NUMBER,
                               OPTIONS, PID, READY, RELOAD)

#: connections a relay process serves before it is replaced (a bound on
#: what one process may accumulate), and idle relay processes kept
USES = 1000
IDLE_MAX = 32
#: an idle relay process unused this long exits (its memory goes back)
IDLE_SECONDS = 10
#: ``D`` + status: a relay process's connection ended; ``L``: and it leaves
LAST = b"L"

if TYPE_CHECKING:
    from ..options import Options
    from ..tls.launch import TlsLaunch


def _build(opts: "Options") -> "TlsLaunch":
    """The relay server's launcher: the server's contexts, then its
    privileges.  Raises Fatal, TlsError."""
    from ..log import Log
    from ..proc.launch import Spawn
    from ..tls.context import Setup
    from ..tls.launch import TlsLaunch
    from . import privs
    if opts.client_cert:
        from .. import clientcert  # noqa: F401  (the relays need it after the drop)
    setup = Setup.of(opts, os.environ)
    contexts = setup.build()
    privs.drop(privs.resolve(opts.user, opts.uid, opts.gid, opts.groups))
    return TlsLaunch(Spawn(opts.argv), setup, contexts, Log(opts.verbosity),
                     opts.tls_details, opts.handshake_timeout, opts.idle_timeout,
                     opts.delayed_tls)


class _Relay:
    """One relay process, as the relay server sees it."""

    __slots__ = ("pid", "sock", "busy", "served", "retire", "since")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.busy = False
        self.served = 0
        self.retire = False
        self.since = 0.0


class _Serving:
    """The relay server's loop: connections in and handed to relay
    processes (idle ones first, else a new fork), ends out."""

    def __init__(self, launch: "TlsLaunch", ctl: socket.socket, exits: int, parent: int) -> None:
        self.launch = launch
        self.ctl: Optional[socket.socket] = ctl
        self.exits = exits
        self.parent = parent
        self.relays: Dict[int, _Relay] = {}          # by pid
        self.by_fd: Dict[int, _Relay] = {}           # by the fd of their socket
        self.idle: List[_Relay] = []
        self.poller = select.poll()
        self.ended: List[bytes] = []                 # records not yet written
        self.waiting = False                         # for room in the exit pipe
        os.set_blocking(exits, False)

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _nothing)
        poller = self.poller
        poller.register(wake_r, select.POLLIN)
        assert self.ctl is not None
        poller.register(self.ctl.fileno(), select.POLLIN)
        while self.ctl is not None or self.relays or self.waiting:
            try:
                events = poller.poll(IDLE_SECONDS * 500 if self.idle else None)
            except InterruptedError:
                continue
            self.expire()
            for fd, _ in events:
                if fd == wake_r:
                    try:
                        os.read(wake_r, 512)
                    except (BlockingIOError, InterruptedError):
                        pass
                    self.reap()
                elif fd in self.by_fd:
                    self.relay_said(self.by_fd[fd])
                elif self.ctl is not None and fd == self.ctl.fileno() and not self.message():
                    poller.unregister(self.ctl.fileno())
                    self.ctl.close()
                    self.ctl = None
                    for relay in list(self.idle):     # the server is gone: no more
                        self.dismiss(relay)
            self.reap()
            self.flush()

    # -- from the server -------------------------------------------------------
    def message(self) -> bool:
        """One message from the server; False at its end."""
        assert self.ctl is not None
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, MESSAGE_MAX, 4)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        kind = data[:1]
        if kind == RELOAD:
            self.reload()
        elif kind == CONNECTION and len(fds) == 1 and len(data) >= HEAD.size:
            try:
                self.connection(data, fds[0])
            finally:
                os.close(fds[0])
        else:
            for fd in fds:
                os.close(fd)
            self.answer(NUMBER.pack(ERROR, errno.EPROTO))
        return True

    def connection(self, data: bytes, fd: int) -> None:
        """Hand the connection to a relay process; its pid is the answer."""
        for _ in range(2):                 # an idle one may have just died
            try:
                relay = self.idle.pop() if self.idle else self.fork()
            except OSError as exc:
                self.answer(NUMBER.pack(ERROR, exc.errno or errno.EIO))
                return
            try:
                socket.send_fds(relay.sock, [data], [fd])
            except OSError:
                self.dismiss(relay)
                continue
            relay.busy = True
            self.answer(NUMBER.pack(PID, relay.pid))
            return
        self.answer(NUMBER.pack(ERROR, errno.EIO))

    def fork(self) -> _Relay:
        """A new relay process (:func:`_relay_process`).  Raises OSError."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = child.fork(lambda: _relay_process(self.launch, theirs), keep=(theirs.fileno(),))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        relay = _Relay(pid, ours)
        self.relays[pid] = relay
        self.by_fd[ours.fileno()] = relay
        self.poller.register(ours.fileno(), select.POLLIN)
        return relay

    def answer(self, data: bytes) -> None:
        try:
            if self.ctl is not None:
                self.ctl.send(data)
        except OSError:
            pass

    def reload(self) -> None:
        """New contexts; the relay processes have the old ones: idle ones
        go now, busy ones after their connection."""
        from ..tls.settings import TlsError
        try:
            self.launch.contexts = self.launch.setup.build()
        except TlsError:
            return                   # the server has said so; the old ones stay
        for relay in self.relays.values():
            relay.retire = True
        for relay in list(self.idle):
            self.dismiss(relay)

    # -- from the relay processes -------------------------------------------------
    def relay_said(self, relay: _Relay) -> None:
        """``D`` + the program's wait status: the connection ended."""
        try:
            data = relay.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if len(data) != NUMBER.size or data[:1] not in (DONE, LAST):
            self.dismiss(relay)          # it is going; SIGCHLD says how, if busy
            return
        status = NUMBER.unpack(data)[1]
        relay.busy = False
        relay.served += 1
        self.ended.append(EXIT.pack(relay.pid, status))
        if (data[:1] == LAST or relay.retire or self.ctl is None or relay.served >= USES
                or len(self.idle) >= IDLE_MAX):
            self.dismiss(relay)
        else:
            relay.since = time.monotonic()
            self.idle.append(relay)

    def expire(self) -> None:
        """Idle relay processes unused for :data:`IDLE_SECONDS` go."""
        if self.idle:
            old = time.monotonic() - IDLE_SECONDS
            for relay in [r for r in self.idle if r.since < old]:
                self.dismiss(relay)

    def dismiss(self, relay: _Relay) -> None:
        """Close a relay process's socket and forget it: an idle one
        exits; a dead one is reaped (and reported if it was busy) by
        :meth:`reap`."""
        fd = relay.sock.fileno()
        if self.by_fd.pop(fd, None) is not None:
            self.poller.unregister(fd)
            relay.sock.close()
        if relay in self.idle:
            self.idle.remove(relay)

    def reap(self) -> None:
        for pid, status in child.reaped():
            relay = self.relays.pop(pid, None)
            if relay is None:
                continue
            if relay.busy:               # it died serving: its status is the end's
                self.ended.append(EXIT.pack(pid, status))
            self.dismiss(relay)

    def flush(self) -> None:
        """Write the ends into the exit pipe (one write each: atomic; the
        pipe is non-blocking, and what does not fit waits for the server
        to read, watched by the poller) and wake the server."""
        if not self.ended:
            return
        written = 0
        for record in self.ended:
            try:
                os.write(self.exits, record)
            except BlockingIOError:
                break
            except OSError:
                self.ended.clear()            # the server is gone: nobody reads
                return
            written += 1
        del self.ended[:written]
        waiting = bool(self.ended)
        if waiting != self.waiting:
            if waiting:
                self.poller.register(self.exits, select.POLLOUT)
            else:
                self.poller.unregister(self.exits)
            self.waiting = waiting
        if written and os.getppid() == self.parent:
            try:
                os.kill(self.parent, signal.SIGCHLD)
            except OSError:
                pass


def _relay_process(launch: "TlsLaunch", sock: socket.socket) -> int:
    """A relay process: one connection after another, as the relay
    server hands them over, each one's wait status sent back; exits 0
    when its socket ends, or after a connection that left a descriptor
    open (the relay server forks a fresh one when it needs one)."""
    before = len(child.open_descriptors())
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 1)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not data or len(fds) != 1 or len(data) < HEAD.size:
            for fd in fds:
                os.close(fd)
            return 0
        os.set_inheritable(fds[0], False)    # SCM_RIGHTS: no close-on-exec
        _, count, limit = HEAD.unpack_from(data)
        env: Dict[bytes, bytes] = {}
        blob = data[HEAD.size:]
        if blob:
            for entry in blob.split(b"\0"):
                name, _, value = entry.partition(b"=")
                env[name] = value
        status = launch.serve_one(fds[0], env, count, limit)
        last = len(child.open_descriptors()) > before   # something is still open
        try:
            sock.send(NUMBER.pack(LAST if last else DONE, status))
        except OSError:
            return 0
        if last:
            return 0        # start afresh: the relay server forks a new one


def _nothing(signum: int, frame: Any) -> None:
    """SIGCHLD: the wake-up fd carries it."""


def main(args: List[str]) -> int:
    """The relay server (``args``: its control socket, its exit pipe,
    the server's pid)."""
    import pickle
    ctl_fd, exits, parent = (int(arg) for arg in args[:3])
    child.close_inherited((ctl_fd, exits))
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    ctl = socket.socket(fileno=ctl_fd)
    ctl.set_inheritable(False)
    os.set_inheritable(exits, False)
    try:
        first = ctl.recv(1 << 20)
        if first[:1] != OPTIONS:
            return EXIT_TEMP
        opts = pickle.loads(first[1:])
        launch = _build(opts)
    except Exception as exc:     # said to the server, which warns and forks itself
        try:
            why = getattr(exc, "last", None) or str(exc) or type(exc).__name__
            ctl.send(FAILED + str(why).encode(errors="replace")[:2000])
        except OSError:
            pass
        return EXIT_TEMP
    ctl.send(READY)
    serving = _Serving(launch, ctl, exits, parent)
    gc.freeze()          # what is built stays put: the collector never walks it again
    serving.run()
    return 0
