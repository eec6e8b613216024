"""tcpserver's parent process: the event loop.

One single-threaded loop (DECISIONS D1) waits on the listening sockets,
the connections being set up and the wake-up pipe that signals write
into.  It reads like a paragraph: wait; handle signals (SIGCHLD reaps,
SIGHUP runs the reload registry, SIGUSR1 dumps the table); accept while
below the ``-c`` limit; let each :class:`~.conn.Connection` run its
steps; launch the program through the launch seam (:mod:`.launch`).

Children are of two kinds.  *Programs* (one per connection, whether
spawned or forked) are in the connection table: their exit writes the
``end`` line and frees a ``-c`` slot.  *Helpers* (children that are not
programs, such as a lookup run in a forked child) are reaped the same
way and reported to their own completion callback.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
from typing import Any, Callable, Dict, Optional, Tuple

from .. import environ
from ..log import Log
from ..options import Options
from ..reactor import Reactor
from .access import Access
from .conn import Connection, Context
from .launch import Launch
from .limits import Descriptors, Limit, Table, descriptors_needed
from .listen import ACTIVATION_VARIABLES, Listener, unix_path
from .lookups import Lookups
from .notify import VARIABLE as NOTIFY_VARIABLE, Notifier
from .offload import Offload
from .proxied import Trusted
from .reload import Reloads
from . import signals
from .unixconn import UnixConnection

ACCEPT_BACKOFF = 0.1
ACCEPT_BATCH = 64   # accepts per wake-up, so signals and lookups get a turn

HelperDone = Callable[[int], None]
#: what the loop does with an accepted ``(fd, family, peer, v6sock, local)``
Accepted = Callable[[int, int, Any, bool, Any], None]


class Children:
    """Reaps every child: programs through the table, helpers through
    their callbacks.

    Args:
        table: the connection table (programs).
        program_ended: ``(pid, wait status)`` of a program that ended.
    """

    def __init__(self, table: Table, program_ended: Callable[[int, int], None]) -> None:
        self.table = table
        self.program_ended = program_ended
        self.helpers: Dict[int, HelperDone] = {}

    def helper(self, pid: int, done: HelperDone) -> None:
        """Report the exit of helper ``pid`` to ``done(wait status)``."""
        self.helpers[pid] = done

    def reap(self) -> None:
        """Reap until ``waitpid`` has nothing more, unknown children too."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if self.table.ended(pid):
                self.program_ended(pid, status)
            else:
                done = self.helpers.pop(pid, None)
                if done is not None:
                    done(status)


def own_address(sock: socket.socket) -> Any:
    """The address of a listening socket bound to one address (every
    connection it accepts has it as its local address), or None for a
    wildcard (``0.0.0.0``, ``::``: ask each connection)."""
    address = sock.getsockname()
    if address[0] in ("0.0.0.0", "::"):
        return None
    return address


class Server:
    """The running server: listening sockets, limits, children.

    Args:
        trusted: the PROXY protocol's trusted sources (None: off).
        notify: the supervisor's notification socket (None: none).
    """

    def __init__(self, opts: Options, log: Log, listener: Listener, limit: Limit,
                 wakeup: int, launch: Launch, trusted: Optional[Trusted] = None,
                 notify: Optional[Notifier] = None) -> None:
        self.opts = opts
        self.log = log
        self.listener = listener
        self.limit = limit
        self.launcher = launch
        self.reactor = Reactor()
        self.table = Table()
        self.children = Children(self.table, self._program_ended)
        self.lookups = Lookups(self.reactor, opts.ipv4_only, float(opts.ident_timeout))
        self.offload = Offload(self.reactor)
        access: Optional[Access] = None
        if opts.rules is not None:
            # imported now, before privileges are dropped (and only for -x)
            from .rules_access import RulesAccess
            access = RulesAccess(opts.rules, opts.rules_missing_ok, opts.max_per_host,
                                 self.offload)
        if opts.mysql is not None:
            # -m: db.conf read and the database asked once, before the drop
            from .mysql_access import build
            access = build(opts.mysql, os.environ, self.reactor, self.lookups, log, access,
                           opts.max_per_host, self.offload)
        drop: Tuple[str, ...] = ACTIVATION_VARIABLES if listener.inherited else ()
        if NOTIFY_VARIABLE in os.environ:    # for tcpserver alone, notifier or not
            drop += (NOTIFY_VARIABLE,)
        self.context = Context(opts, self.reactor, log, self.lookups, access,
                               environ.Builder(environ.inherited(drop)),
                               self.over_limit, self._launch, self._ended, self._moved)
        self.reloads = Reloads(log)
        self.reloads.add("-c file", functools.partial(limit.reread, log))
        self.reloads.add("DNS settings", self.lookups.reload)
        launch.attach(self.reloads, lambda: (self.table.count, self.limit.value))
        if not opts.unix:
            self.lookups.preload(opts.remote_host or opts.localname is None, opts.remote_info)
        self.accepting = False
        self.descriptors = Descriptors(descriptors_needed(opts))
        # listener fd -> (what to do with a connection, the listener's
        # own address if it is bound to one, or its path)
        self._handlers: Dict[int, Tuple[Accepted, Any]] = {}
        for sock in listener.sockets:
            if sock.family == socket.AF_UNIX:
                self._handlers[sock.fileno()] = (self._unix_connection, unix_path(sock))
            elif trusted is not None:
                self._handlers[sock.fileno()] = (self._maybe_proxied, own_address(sock))
            else:
                self._handlers[sock.fileno()] = (self._connection, own_address(sock))
        self.trusted = trusted
        self.notify = notify
        if notify is not None:
            notify.reactor = self.reactor
            signals.at_term(notify.stopping)
        self._wakeup = wakeup
        self.reactor.add_reader(wakeup, self._on_signal)

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
            except Exception as exc:  # never die because of one connection (D15)
                self.log.warning(f"internal error, going on: {type(exc).__name__}: {exc}")

    def _watch(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        for sock in self.listener.sockets:
            if on:
                self.reactor.add_reader(sock.fileno(), functools.partial(self._accept, sock))
            else:
                self.reactor.remove_reader(sock.fileno())

    def _accept(self, lsock: Any) -> None:
        family = lsock.family
        v6sock = family == socket.AF_INET6
        connection, local = self._handlers[lsock.fileno()]
        accept = lsock._accept  # (fd, address): no socket object until needed
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
                self._backoff()  # EMFILE, ENFILE, ENOBUFS, ENOMEM... (D16)
                return
            connection(fd, family, peer, v6sock, local)
        else:
            return
        self._watch(False)

    def _backoff(self) -> None:
        self._watch(False)
        self.reactor.call_later(ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        if self._room():
            self._watch(True)

    def _room(self) -> bool:
        """Below the ``-c`` limit, with descriptors for one more
        connection's lookups: else the server stops accepting."""
        return self.table.count < self.limit.value and self.descriptors.room()

    def _connection(self, fd: int, family: int, peer: Any, v6sock: bool,
                    local: Any) -> None:
        conn = Connection(self.context, fd, family, peer, v6sock, local)
        # with an access source the limit may come from a rule: checked later
        if self.context.access is None and self._refused(fd, conn.ep.remote_ip):
            return
        self._admit(conn, conn.ep.remote_ip)

    def _refused(self, fd: int, ip: str) -> bool:
        """Over the ``-C`` limit at accept: closed, logged."""
        count = self.over_limit(ip, self.opts.max_per_host, 0)
        if count:
            self.log.per_host(ip, count)
            os.close(fd)
        return bool(count)

    def _admit(self, conn: Connection, ip: str) -> None:
        """Count the connection and run its steps."""
        self.table.open(ip)
        self.descriptors.take()
        self.status()
        conn.start()

    def _maybe_proxied(self, fd: int, family: int, peer: Any, v6sock: bool,
                       local: Any) -> None:
        """With ``PROXY_FROM``: a trusted source's connection reads its
        header first, and its per-host limit is checked after it."""
        if peer[0] not in self.trusted:   # type: ignore[operator]
            self._connection(fd, family, peer, v6sock, local)
            return
        conn = Connection(self.context, fd, family, peer, v6sock, local)
        conn.proxied = True
        self._admit(conn, conn.ep.remote_ip)

    def _unix_connection(self, fd: int, family: int, peer: Any, v6sock: bool,
                         path: Any) -> None:
        """A UNIX client: every one counts as the address ``""``."""
        if not self._refused(fd, ""):
            self._admit(UnixConnection(self.context, fd, path), "")

    def _moved(self, old: str, new: str) -> None:
        """A PROXY header gave a connection its real client address."""
        self.table.close(old)
        self.table.open(new)

    # -- what the connection steps ask of the server ------------------------
    def over_limit(self, ip: str, limit: int, own: int = 1) -> int:
        """The number of other live connections from ``ip`` if that is
        at or over ``limit`` (0 = no limit), else 0.  ``own``: 1 if the
        table already counts the connection being checked.

        Programs that have exited but are not reaped yet (their SIGCHLD
        is still in the pipe) must not count: reap before refusing."""
        if not limit:
            return 0
        count = self.table.per_host(ip) - own
        if count >= limit:
            self.children.reap()
            count = self.table.per_host(ip) - own
        return count if count >= limit else 0

    def _launch(self, conn: Connection, env: Dict[bytes, bytes]) -> None:
        try:
            pid = self.launcher.start(conn.fd, env)
        except (OSError, ValueError) as exc:
            conn.drop(f"unable to run {self.launcher.name}", exc)
            return
        self.table.started(pid, conn.ep.remote_ip)
        conn.close()   # the slot is the program's now
        self._closed()
        log = self.log
        if log.verbosity >= 2:
            log.pid(pid, conn.origin())
            log.verdict(True, pid, conn.fields())

    def _ended(self, conn: Connection) -> None:
        """A connection ended without a program."""
        self.table.close(conn.ep.remote_ip)
        self._closed()
        self._after_close()

    def _closed(self) -> None:
        """A connection gave back its descriptors (program started, or
        ended without one)."""
        self.descriptors.give()
        if not self.accepting and self._room():
            self._watch(True)

    def _program_ended(self, pid: int, status: int) -> None:
        self.log.end(pid, status)
        self._after_close()

    def _after_close(self) -> None:
        self.status()
        if not self.accepting and self._room():
            self._watch(True)

    def status(self) -> None:
        self.log.status(self.table.count, self.limit.value)
        if self.opts.table_after_status:
            self.log.table(self.table.entries())
        if self.notify is not None:
            self.notify.status(self.table.count, self.limit.value)

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
                    self.log.table(self.table.entries())

    def _sighup(self) -> None:
        if self.notify is not None:
            self.notify.reloading()
        self.reloads.run()
        self.log.sighup(self.table.count, self.limit.value)
        if self.notify is not None:
            self.notify.ready()
        if not self.accepting and self._room():
            self._watch(True)
