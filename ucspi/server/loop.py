"""tcpserver's parent process: the accept loop.

One single-threaded loop (design: one-event-loop) waits on the
listening sockets, the connections being set up and the wake-up pipe
that signals write into.  It reads like a paragraph: wait; handle
signals (SIGCHLD reaps, SIGHUP runs the reload registry, SIGUSR1 dumps
the table); accept while admission has room; let each
:class:`~.conn.Connection` run its steps; start its program through the
service's launcher.

What serves the connections is the :class:`~.service.Service` built at
start-up; this module is one driver of it: it accepts, answers the
steps' questions (admit, launch, end) and keeps the table of running
programs.  Children are reaped here: programs through the table (their
exit writes the ``end`` line and frees a ``-c`` slot); any other child
(a helper whose answer came through a pipe) is simply reaped.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import address, timeouts
from ..proc.child import reaped
from ..proc.launch import Environment
from ..policy import Policy
from .admission import Refusal
from .conn import Connection
from .limits import Programs
from .listen import Listener, unix_path
from .service import Service
from .unixconn import UnixConnection

ACCEPT_BATCH = 64   # accepts per wake-up, so signals and lookups get a turn
#: refusals that reaping cannot change
UNCOUNTED = frozenset(("MAXCONNRATE", "LOAD"))

#: makes the connection of an accepted ``(descriptor, peer, v6sock, local)``
Accepted = Callable[[int, Any, bool, Any], Connection]


class Children:
    """Reaps every child: programs through the table, others simply.

    Args:
        programs: the running programs.
        program_ended: ``(pid, client address, wait status)`` of a
            program that ended.
    """

    def __init__(self, programs: Programs,
                 program_ended: Callable[[int, str, int], None],
                 elsewhere: Optional[Callable[[], List[Tuple[int, int]]]] = None) -> None:
        self.programs = programs
        self.program_ended = program_ended
        self.elsewhere = elsewhere

    def reap(self) -> None:
        """Reap until ``waitpid`` has nothing more, unknown children too."""
        for pid, status in reaped():
            self._ended(pid, status)
        if self.elsewhere is not None:
            for pid, status in self.elsewhere():
                self._ended(pid, status)

    def _ended(self, pid: int, status: int) -> None:
        ip = self.programs.ended(pid)
        if ip is not None:
            self.program_ended(pid, ip, status)


def own_address(sock: socket.socket) -> Any:
    """The address of a listening socket bound to one address (every
    connection it accepts has it as its local address), or None for a
    wildcard (ask each connection)."""
    found = sock.getsockname()
    return None if address.is_wildcard(found[0]) else found


class Server:
    """The running server: the listening sockets, the service, the
    programs.

    Args:
        service: what serves the connections (:func:`.service.build`).
        listener: the listening sockets.
        wakeup: the read end of the signals' wake-up pipe.
    """

    def __init__(self, service: Service, listener: Listener, wakeup: int) -> None:
        self.service = service
        self.opts = service.opts
        self.log = service.log
        self.reactor = service.reactor
        self.admission = service.admission
        self.launcher = service.launch
        self.notify = service.notifier
        self.reloads = service.reloads
        self.listener = listener
        self.programs = Programs()
        # a launcher whose programs are another process's children (the
        # TLS relay server's relays) says which ended: reaped()
        self.children = Children(self.programs, self._program_ended,
                                 getattr(self.launcher, "reaped", None))
        self.context = service.context(self._admit_identified, self._launch, self._ended,
                                       self.admission.moved, self._slot)
        #: TLS clients without a slot yet, oldest first (dict: ordered)
        self.waiting: Dict[Connection, None] = {}
        #: TLS clients queued for a slot -> what admission calls
        self.queued: Dict[Connection, Callable[[], None]] = {}
        self.accepting = False
        # listener fd -> (what to do with a connection, the listener's
        # own address if it is bound to one, or its path)
        self._handlers: Dict[int, Tuple[Accepted, Any]] = {}
        for sock in listener.sockets:
            if sock.family == socket.AF_UNIX:
                self._handlers[sock.fileno()] = (self._unix_connection, unix_path(sock))
            elif service.trusted is not None:
                self._handlers[sock.fileno()] = (self._maybe_proxied, own_address(sock))
            else:
                self._handlers[sock.fileno()] = (self._connection, own_address(sock))
        self._wakeup = wakeup
        self._watch_signals()

    def _watch_signals(self, exc: Optional[BaseException] = None) -> None:
        """The wake-up pipe, watched again at once if a handler raised
        (it was read before the handler ran: no spin)."""
        self.reactor.add_reader(self._wakeup, self._on_signal, self._watch_signals)

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM."""
        self._watch(True)
        if self.notify is not None:
            self.notify.ready()
        self.status()
        run_once = self.reactor.run_once
        while True:
            try:
                run_once(None)
            except Exception as exc:  # never die because of one connection (design: signals)
                self.log.warning(f"internal error, going on: {type(exc).__name__}: {exc}")

    def _watch(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        for sock in self.listener.sockets:
            if on:
                self.reactor.add_reader(sock.fileno(), functools.partial(self._accept, sock),
                                        self._accept_failed)
            else:
                self.reactor.remove_reader(sock.fileno())

    def _accept_failed(self, exc: BaseException) -> None:
        """Accepting raised (the reactor has stopped watching that
        listener): accept again after a pause, never in a spin."""
        self._watch(False)
        self._backoff()

    def _accept(self, lsock: socket.socket) -> None:
        v6sock = lsock.family == socket.AF_INET6
        connection, local = self._handlers[lsock.fileno()]
        accept = lsock._accept  # type: ignore[attr-defined]  # (fd, address): no object yet
        for _ in range(ACCEPT_BATCH):
            if not self._room():
                break
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                self._backoff()  # EMFILE, ENFILE, ENOBUFS, ENOMEM... (design: accept-errors)
                return
            try:
                conn = connection(fd, peer, v6sock, local)
            except BaseException:
                os.close(fd)           # never leaked
                raise
            self._admit(conn)
        else:
            return
        self._watch(False)

    def _backoff(self) -> None:
        self._watch(False)
        self.reactor.call_later(timeouts.ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        if self._room():
            self._watch(True)

    def _room(self) -> bool:
        """Admission has room for one more connection.  When only the
        descriptors are short, the TLS client that has waited longest
        for its handshake to start gives way."""
        if self.admission.room():
            return True
        if self.waiting and self.admission.count < self.admission.limit.value:
            next(iter(self.waiting)).give_way()
            return self.admission.room()
        return False

    # -- the first moment: what the listener does with a connection ------------
    def _connection(self, fd: int, peer: Any, v6sock: bool, local: Any) -> Connection:
        conn = self.service.connection(self.context, fd, peer, v6sock, local)
        conn.later = self.service.access is not None   # a rule may give the limit
        return conn

    def _maybe_proxied(self, fd: int, peer: Any, v6sock: bool, local: Any) -> Connection:
        """With ``PROXY_FROM``: a trusted source's connection reads its
        header first, and its limits are checked after it."""
        assert self.service.trusted is not None
        if peer[0] not in self.service.trusted:
            return self._connection(fd, peer, v6sock, local)
        conn = self.service.connection(self.context, fd, peer, v6sock, local)
        conn.proxied = conn.later = True
        return conn

    def _unix_connection(self, fd: int, peer: Any, v6sock: bool, path: Any) -> Connection:
        """A UNIX client: every one counts as the address ``""``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        try:
            return UnixConnection(self.context, sock, path)
        except BaseException:
            sock.detach()              # the caller closes the descriptor
            raise

    def _admit(self, conn: Connection) -> None:
        """Count the connection and run its steps, or refuse it."""
        ip = conn.ep.remote_ip
        admission = self.admission
        unix = conn.unix
        try:
            refusal = self._decided(lambda: admission.accept(ip, not conn.later, conn.slot,
                                                             unix=unix))
        except BaseException:
            conn.close()
            raise
        if refusal is not None:
            self._refuse(conn, refusal, admission.policy)
            conn.close()
            return
        if not unix:
            conn.ep.others = admission.others(ip)
        if conn.slot:
            self.status()
        else:
            self.waiting[conn] = None
        conn.start()

    def _refuse(self, conn: Connection, refusal: Refusal, policy: Policy) -> None:
        """A limit refused the connection: IndiMail's ``perIPlimit`` line
        for ``-C``/``MAXPERIP``, else the ``deny 0`` line with the limit;
        ``DIEMSG`` and CRLF, if there is one, in one write that never
        waits (the connection is closed next, read or not)."""
        log = self.log
        if refusal.what == "MAXPERIP":
            log.per_host(conn.ep.remote_ip, refusal.count)
        elif log.verbosity >= 2:
            try:
                conn.know_local()
            except OSError:
                pass                  # the line shows what is known
            log.verdict(False, 0, conn.fields() + refusal.suffix())
        if policy.diemsg is not None:
            try:
                conn.sock.send(policy.diemsg + b"\r\n", socket.MSG_DONTWAIT)
            except OSError:
                pass

    def _decided(self, decide: Callable[[], Optional[Refusal]]) -> Optional[Refusal]:
        """Admission's answer; before a refusal by a count of live
        connections stands, the programs that have exited (their SIGCHLD
        still in the pipe) are reaped, so that they do not count, and
        admission is asked again (a rate or a load is not a count)."""
        refusal = decide()
        if refusal is not None and refusal.what not in UNCOUNTED:
            self.children.reap()
            refusal = decide()
        return refusal

    # -- what the connection steps ask -------------------------------------------
    def _admit_identified(self, conn: Connection) -> bool:
        ip = conn.ep.remote_ip
        policy = self.admission.policy.with_rule(conn.changes, conn.max_per_host,
                                                 conn.bad_rule)
        refusal = self._decided(lambda: self.admission.identified(ip, policy))
        if refusal is None:
            conn.ep.others = self.admission.others(ip)
            return True
        self._refuse(conn, refusal, policy)
        conn.end()
        return False


    def _slot(self, conn: Connection, grant: Callable[[], None]) -> bool:
        def granted() -> None:
            self.queued.pop(conn, None)
            self.waiting.pop(conn, None)
            self.status()
            grant()

        if self.admission.wait_slot(granted):
            self.waiting.pop(conn, None)
            self.status()
            return True
        self.queued[conn] = granted
        return False

    def _launch(self, conn: Connection, env: Environment) -> None:
        try:
            pid = self.launcher.start(conn.fd, env)
        except (OSError, ValueError) as exc:
            conn.drop(f"unable to run {self.launcher.name}", exc)
            return
        if pid in self.programs:
            # a TLS relay process serves one connection after another:
            # the end of its last one is waiting in the relay server's pipe
            self.children.reap()
        self.programs.started(pid, conn.ep.remote_ip)
        conn.close()   # the slot is the program's now
        self.admission.set_up()
        self._after_close(False)
        log = self.log
        if log.verbosity >= 2:
            log.pid(pid, conn.origin())
            log.verdict(True, pid, conn.fields())

    def _ended(self, conn: Connection) -> None:
        """A connection ended without a program."""
        self.waiting.pop(conn, None)
        granted = self.queued.pop(conn, None)
        if granted is not None:
            self.admission.leave_queue(granted)
        self.admission.ended(conn.ep.remote_ip, conn.slot)
        self._after_close(conn.slot)

    def _program_ended(self, pid: int, ip: str, status: int) -> None:
        self.log.end(pid, status)
        self.admission.program_ended(ip)
        self._after_close(True)

    def _after_close(self, freed_slot: bool) -> None:
        if freed_slot:
            self.status()
        if not self.accepting and self._room():
            self._watch(True)

    def status(self) -> None:
        if self.log.verbosity < 2 and self.notify is None and not self.opts.table_after_status:
            return      # nobody to tell (twice per connection: -q and -Q servers skip it)
        count, limit = self.service.counts()
        self.log.status(count, limit)
        if self.opts.table_after_status:
            self.log.table(self.programs.entries())
        if self.notify is not None:
            self.notify.status(count, limit)

    # -- signals --------------------------------------------------------
    def _on_signal(self) -> None:
        try:
            data = os.read(self._wakeup, 512)
        except (BlockingIOError, InterruptedError):
            return
        for number in sorted(set(data), key=data.index):
            if number == signal.SIGCHLD:
                self.children.reap()
            elif number == signal.SIGHUP:
                self._sighup()
            elif number == signal.SIGUSR1:
                if self.log.verbosity >= 1:
                    self.log.table(self.programs.entries())

    def _sighup(self) -> None:
        if self.notify is not None:
            self.notify.reloading()
        self.reloads.run()
        self.admission.refill()
        self.log.sighup(*self.service.counts())
        if self.notify is not None:
            self.notify.ready()
        if not self.accepting and self._room():
            self._watch(True)
