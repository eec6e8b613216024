"""tcpserver's parent process: start-up and the event loop.

The design (DECISIONS D1-D5) in one paragraph: one single-threaded loop
waits on the listening sockets, the connections being set up, and a
wake-up pipe that signals write into.  It accepts while below the ``-c``
limit, lets each :class:`~ucspi.conn.Connection` write its banner and
run its DNS and ident queries, applies the rules, and starts the program
with ``os.posix_spawn`` (fd 0 and 1 on the socket, the built environment,
default signal dispositions).  The interpreter is never forked on this
path.  SIGCHLD reaps every child; SIGHUP re-reads the ``-c`` file;
SIGUSR1 dumps the connection table; SIGTERM exits at once, leaving the
programs running.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

from .. import environ
from . import limits
from .conn import Connection
from ..errors import EXIT_TEMP, EXIT_USAGE, Fatal, UcspiError, UsageError, errtext
from .listen import Listener
from ..log import Log, connection_fields, say
from ..options import USAGE, MissingArgument, OptionError, Options, parse
from ..reactor import Reactor

HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
#: dispositions the program must get back (Python ignores SIGPIPE/SIGXFSZ)
SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ) + HANDLED
ACCEPT_BACKOFF = 0.1
ACCEPT_BATCH = 64   # accepts per wake-up, so signals and lookups get a turn
DNS_CONFIG_AGE = 600.0
LOCAL_NAME_AGE = 60.0   # how long the PTR answer for a local address is reused


class Server:
    """The running server: listening sockets, limits, children."""

    def __init__(self, opts: Options, log: Log, listener: Listener,
                 limit: limits.Limit, wakeup: int) -> None:
        self.opts = opts
        self.log = log
        self.listener = listener
        self.limit = limit
        self.reactor = Reactor()
        self.table = limits.Table()
        self.env = environ.Builder(environ.inherited())
        self.localname = os.fsencode(opts.localname) if opts.localname is not None else None
        self.argv0 = opts.argv[0]
        self.spawn = os.posix_spawn if "/" in self.argv0 else os.posix_spawnp
        self.accepting = False
        self._wakeup = wakeup
        self.reactor.add_reader(wakeup, self._on_signal)
        self._dns: Any = None
        self._rule_cache: Any = None
        # local address -> (until, name): the server's own addresses are
        # few, and asking DNS for them on every connection is a third of
        # the lookup work of -h -r
        self.local_names: Dict[str, Tuple[float, Optional[bytes]]] = {}
        self._dns_loaded = 0.0

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM."""
        self.status()
        self._watch(True)
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
        accept = lsock._accept  # (fd, address): no socket object until needed
        for _ in range(ACCEPT_BATCH):
            if self.table.count >= self.limit.value:
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
            self._connection(socket.socket(family, socket.SOCK_STREAM, 0, fd), peer, v6sock)
        else:
            return
        self._watch(False)

    def _backoff(self) -> None:
        self._watch(False)
        self.reactor.call_later(ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        if self.table.count < self.limit.value:
            self._watch(True)

    def _connection(self, sock: Any, peer: Any, v6sock: bool) -> None:
        conn = Connection(self, sock, peer, v6sock)
        ip = conn.ep.remote_ip
        if self.opts.rules is None:   # else the limit may come from a rule
            count = self.over_limit(ip, self.opts.max_per_host, 0)
            if count:
                self.log.per_host(ip, count)
                sock.close()
                return
        self.table.open(ip)
        self.status()
        conn.start()

    # -- after the lookups ----------------------------------------------
    def ready(self, conn: Connection) -> None:
        """The connection knows everything: apply rules, start the program."""
        ep = conn.ep
        more: List[environ.Change] = []
        if self.opts.rules is not None:
            verdict = self._rules(conn)
            if verdict is None:
                return
            more, max_per_host = verdict
            count = self.over_limit(ep.remote_ip, max_per_host, 1)
            if count:
                self.log.per_host(ep.remote_ip, count)
                self._finish(conn)
                return
        self._start(conn, self.env.build(ep.v6sock, environ.connection_changes(ep), more))

    def over_limit(self, ip: str, limit: int, own: int) -> int:
        """The number of other live connections from ``ip`` if that is
        at or over ``limit`` (0 = no limit), else 0.  ``own``: 1 if the
        table already counts the connection being checked.

        Programs that have exited but are not reaped yet (their SIGCHLD
        is still in the pipe) must not count: reap before refusing."""
        if not limit:
            return 0
        count = self.table.per_host(ip) - own
        if count >= limit:
            self._reap()
            count = self.table.per_host(ip) - own
        return count if count >= limit else 0

    def _rules(self, conn: Connection) -> Optional[Tuple[List[environ.Change], int]]:
        """Look the client up in the ``-x`` cdb.

        Returns:
            The rule's environment changes and the client's per-host
            limit, or None if the connection was denied or dropped here.
        """
        if self._rule_cache is None:
            from ..rules.lookup import RulesCache
            assert self.opts.rules is not None
            self._rule_cache = RulesCache(os.path.abspath(self.opts.rules))
        ep = conn.ep
        try:
            decision = self._rule_cache.check(self.opts.rules_missing_ok, ep.remote_ip,
                                              ep.remote_host, ep.remote_info)
        except (OSError, UcspiError) as exc:
            self.drop(conn, f"unable to read {self.opts.rules}", exc)
            return None
        if decision is None:
            return [], self.opts.max_per_host
        if decision.deny:
            self._deny(conn)
            return None
        limit = self.opts.max_per_host if decision.maxperip is None else decision.maxperip
        return decision.changes, limit

    def _fields(self, conn: Connection) -> bytes:
        ep = conn.ep
        return connection_fields(ep.local_host, ep.local_ip, ep.local_port,
                                 ep.remote_host, ep.remote_ip, ep.remote_info,
                                 ep.remote_port)

    def _deny(self, conn: Connection) -> None:
        self.log.verdict(False, 0, self._fields(conn))
        self._finish(conn)

    def _start(self, conn: Connection, env: Dict[bytes, bytes]) -> None:
        fd = conn.fd
        try:
            pid = self.spawn(
                self.argv0, self.opts.argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)],
                setsigdef=SIGDEF, setsigmask=(),
            )
        except (OSError, ValueError) as exc:
            self.drop(conn, f"unable to run {self.argv0}", exc)
            return
        self.table.started(pid, conn.ep.remote_ip)
        log = self.log
        if log.verbosity >= 2:
            log.pid(pid, conn.ep.remote_ip)
            log.verdict(True, pid, self._fields(conn))
        conn.close()

    def drop(self, conn: Connection, what: str, exc: BaseException) -> None:
        """``warning: dropping connection, <what>: <err>``; close it."""
        self.log.drop(f"{what}: {errtext(exc)}")
        self._finish(conn)

    def _finish(self, conn: Connection) -> None:
        """A connection that ends without a program."""
        conn.close()
        self.table.close(conn.ep.remote_ip)
        self._after_close()

    def _after_close(self) -> None:
        self.status()
        if not self.accepting and self.table.count < self.limit.value:
            self._watch(True)

    def status(self) -> None:
        self.log.status(self.table.count, self.limit.value)
        if self.opts.table_after_status:
            self.log.table(self.table.entries())

    def remember_local_name(self, ip6: str, name: Optional[bytes]) -> None:
        """Keep a local address's PTR answer for ``LOCAL_NAME_AGE``."""
        if len(self.local_names) > 64:
            self.local_names.clear()
        self.local_names[ip6] = (self.reactor.time() + LOCAL_NAME_AGE, name)

    # -- DNS configuration --------------------------------------------------
    def dns_config(self) -> Any:
        """The resolver settings, re-read every 10 minutes."""
        now = self.reactor.time()
        if self._dns is None or now - self._dns_loaded > DNS_CONFIG_AGE:
            from ..dns import lookup as dns
            self._dns = dns.DnsConfig.load(os.environ, self.opts.ipv4_only)
            self._dns_loaded = now
        return self._dns

    # -- signals --------------------------------------------------------
    def _on_signal(self) -> None:
        try:
            data = os.read(self._wakeup, 512)
        except (BlockingIOError, InterruptedError):
            return
        for number in sorted(set(data), key=data.index):
            if number == signal.SIGCHLD:
                self._reap()
            elif number == signal.SIGHUP:
                self._sighup()
            elif number == signal.SIGUSR1:
                if self.log.verbosity >= 1:
                    self.log.table(self.table.entries())

    def _reap(self) -> None:
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
                self.log.end(pid, status)
                self._after_close()

    def _sighup(self) -> None:
        self.limit.reread(self.log)
        self.log.sighup(self.table.count, self.limit.value)
        self._dns = None
        self.local_names.clear()
        if not self.accepting and self.table.count < self.limit.value:
            self._watch(True)


def _record(signum: int, frame: Any) -> None:
    """Signal handler: nothing to do, the wake-up fd carries the number."""


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: leave at once with 0; the programs keep running (djb)."""
    os._exit(0)


def install_signals() -> int:
    """Catch the server's signals from the very start (spec core §2.1):
    SIGTERM exits at once, even during a slow start-up lookup; SIGCHLD,
    SIGHUP and SIGUSR1 write their number to a wake-up pipe that the
    loop reads.  Returns the pipe's read end."""
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _terminate)
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, _record)
    return rfd


def _open_stdio() -> None:
    """Make sure fds 0, 1 and 2 are open (on /dev/null if they were
    closed), so that no socket or pipe of ours lands on them: the
    wake-up pipe on fd 1 would be overwritten by the ``-1`` clean-up."""
    while True:
        fd = os.open(os.devnull, os.O_RDWR)
        if fd > 2:
            os.close(fd)
            return


def _more_descriptors() -> None:
    """Raise the soft limit on open files to the hard one.  One process
    holds every connection being set up and its DNS and ident sockets
    (the C server spreads them over its children)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass


def _quiet_stdio(print_port: Optional[int]) -> None:
    if print_port is not None:
        try:
            os.write(1, b"%d\n" % print_port)
        except OSError:
            pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _setup(opts: Options, log: Log) -> Server:
    from . import listen
    from . import pidfile
    from . import privs
    if opts.refused:
        raise UsageError("not implemented yet: " + ", ".join(opts.refused))
    limit = limits.Limit.from_options(opts)
    ident = privs.resolve(opts.user, opts.uid, opts.gid, opts.groups)
    port = listen.parse_port(opts.port)
    if opts.pidfile is not None:
        pidfile.claim(opts.pidfile)
    wakeup = install_signals()
    _more_descriptors()

    def resolve(host: str) -> List[Any]:
        from ..dns import lookup as dns
        return dns.qualify(dns.DnsConfig.load(os.environ, opts.ipv4_only), host)

    ipv4, address, scope = listen.host_address(opts.host, opts.ipv4_only, resolve)
    scope = scope or listen.interface_index(opts.interface)
    listener = listen.open_listener(ipv4, address, scope, port, opts.backlog)
    privs.drop(ident)
    server = Server(opts, log, listener, limit, wakeup)
    _quiet_stdio(listener.port if opts.print_port else None)
    return server


def main(argv: Optional[List[str]] = None) -> int:
    """The tcpserver command.  Returns the exit code (never on success:
    the server runs until SIGTERM)."""
    args = sys.argv[1:] if argv is None else argv
    _open_stdio()
    log = Log(1)
    try:
        opts = parse(args)
    except OptionError as exc:
        log.line(os.fsencode(str(exc)))
        say(USAGE.encode().rstrip(b"\n"))
        return EXIT_USAGE
    except MissingArgument as exc:
        if not exc.quiet:
            say(USAGE.encode().rstrip(b"\n"))
        return EXIT_USAGE
    except UsageError as exc:
        log.line(b"fatal: " + os.fsencode(str(exc)))
        return EXIT_USAGE
    log.verbosity = opts.verbosity
    try:
        server = _setup(opts, log)
        server.run()
    except UsageError as exc:
        log.line(b"fatal: " + os.fsencode(str(exc)))
        return EXIT_USAGE
    except Fatal as exc:
        log.fatal(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return EXIT_TEMP
    return 0
