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
3. serves: each connection message is a relay forked by
   :meth:`TlsLaunch.fork_relay <ucspi.tls.launch.TlsLaunch.fork_relay>`
   (the hygiene of :mod:`ucspi.proc.child`), its pid the answer; ``H``
   builds the contexts again (the old ones stay on failure); SIGCHLD
   reaps the relays, writes one ``(pid, wait status)`` record each into
   the exit pipe and sends the server SIGCHLD;
4. at the end of the control socket (the server is gone), takes no
   more connections, waits for its relays and exits 0.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import EXIT_TEMP
from ..tls.relayserver import (CONNECTION, ERROR, EXIT, FAILED, HEAD, MESSAGE_MAX, NUMBER,
                               OPTIONS, PID, READY, RELOAD)

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


class _Serving:
    """The relay server's loop: connections in, relays forked, exits out."""

    def __init__(self, launch: "TlsLaunch", ctl: socket.socket, exits: int, parent: int) -> None:
        self.launch = launch
        self.ctl: Optional[socket.socket] = ctl
        self.exits = exits
        self.parent = parent
        self.relays = 0

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _nothing)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        assert self.ctl is not None
        poller.register(self.ctl.fileno(), select.POLLIN)
        while self.ctl is not None or self.relays > 0:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == wake_r:
                    try:
                        os.read(wake_r, 512)
                    except (BlockingIOError, InterruptedError):
                        pass
                    self.reap()
                elif self.ctl is not None and not self.message():
                    poller.unregister(self.ctl.fileno())
                    self.ctl.close()
                    self.ctl = None
            self.reap()

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
            os.set_inheritable(fds[0], False)    # SCM_RIGHTS: no close-on-exec
            self.connection(data, fds[0])
        else:
            for fd in fds:
                os.close(fd)
            self.answer(NUMBER.pack(ERROR, errno.EPROTO))
        return True

    def connection(self, data: bytes, fd: int) -> None:
        _, count, limit = HEAD.unpack_from(data)
        env: Dict[bytes, bytes] = {}
        blob = data[HEAD.size:]
        if blob:
            for entry in blob.split(b"\0"):
                name, _, value = entry.partition(b"=")
                env[name] = value
        try:
            pid = self.launch.fork_relay(fd, env, count, limit)
        except OSError as exc:
            self.answer(NUMBER.pack(ERROR, exc.errno or errno.EIO))
            return
        finally:
            os.close(fd)
        self.relays += 1
        self.answer(NUMBER.pack(PID, pid))

    def answer(self, data: bytes) -> None:
        try:
            if self.ctl is not None:
                self.ctl.send(data)
        except OSError:
            pass

    def reload(self) -> None:
        from ..tls.settings import TlsError
        try:
            self.launch.contexts = self.launch.setup.build()
        except TlsError:
            pass                     # the server has said so; the old ones stay

    def reap(self) -> None:
        records = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            self.relays -= 1
            records.append(EXIT.pack(pid, status))
        if not records:
            return
        for record in records:          # one write each: atomic
            try:
                os.write(self.exits, record)
            except OSError:
                pass
        if os.getppid() == self.parent:
            try:
                os.kill(self.parent, signal.SIGCHLD)
            except OSError:
                pass


def _nothing(signum: int, frame: Any) -> None:
    """SIGCHLD: the wake-up fd carries it."""


def main(args: List[str]) -> int:
    """The relay server (``args``: its control socket, its exit pipe,
    the server's pid)."""
    import pickle
    from ..proc.child import close_inherited
    ctl_fd, exits, parent = (int(arg) for arg in args[:3])
    close_inherited((ctl_fd, exits))
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
