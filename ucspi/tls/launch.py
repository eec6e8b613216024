"""The TLS server's launcher: a relay process per connection (design
note "TLS": the relay waits for its program).

The parent has done the banner, the ClientHello wait, the lookups, the
rules and the limits on the clear socket; then a relay process
(:meth:`TlsLaunch.serve_one`):

1. does the server handshake within ``-S`` seconds
   (:func:`.relay.handshake` over a :class:`.channel.Channel`);
2. starts the program (spawned, or a ``prog.so`` called in a child of
   its own), fd 0 on one pipe and fd 1 on another, with the
   environment of the plain path and the session's variables
   (:func:`ucspi.environ.tls_changes`);
3. relays (:class:`.relay.Relay`) with the ``-T`` idle timeout;
4. waits for the program: its wait status is the connection's, so the
   parent's ``end`` line and its ``-c`` count are the program's.

The relay processes of a spawned program are the TLS relay server's
(:mod:`.relayserver`, :mod:`ucspi.server.relays`), each serving one
connection after another and reporting each status; otherwise (a
``prog.so``, ``PLUGINn``, no relay server) the server forks one per
connection (:meth:`TlsLaunch.fork_relay`), which exits with the
program's status or dies of the signal that killed it.

With ``-w`` (delayed TLS, UCSPI-TLS; design: delayed-tls) the order is
turned round: the relay starts the program at once on the clear
connection (fd 0 and 1 on the socket), with ``SSLCTLFD`` (its end of a
socket pair), ``SSLREADFD`` and ``SSLWRITEFD`` (pipes) in its
environment, and waits, touching nothing, for one byte on the control
socket: ``y`` makes the handshake, ``Y`` too and then answers with the
session's variables (``VAR=val\0`` ... and a final ``\0``); then it
relays between the socket and the pipes.  End of file before a command:
no TLS, the program goes on alone.  Another byte, or a failed
handshake: the relay closes its ends (the program reads end of file, it
is not killed).  Either way the relay waits for the program, whose
status is the connection's.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import ssl
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..environ import TLS_VARIABLES, Change, TlsFacts, apply, tls_changes
from ..errors import EXIT_TEMP, Fatal, errtext
from ..log import Log, safe
from ..proc import child
from ..proc.launch import Counts, Environment, Program
from ..proc.reload import Reloads
from .channel import Channel, HandshakeFailed
from .context import Contexts, Setup, quiet_unraisable
from .failure import report
from .relay import Relay, TlsEnd, handshake
from .relayserver import Gone, RelayServer
from .settings import TlsError

if TYPE_CHECKING:
    from ..options import Options

#: ``-z``'s "server version": the protocol the library offers first
SERVER_VERSION = "TLSv1.3" if ssl.HAS_TLSv1_3 else "TLSv1.2"


def provider(details: bool, facts: TlsFacts) -> str:
    """``TLS_PROVIDER`` (IndiMail's text; design: tls-settings)."""
    if not details:
        return "tcpserver, "
    return (f"tcpserver, TLS Server={SERVER_VERSION}, Client={facts.protocol}, "
            f"Ciphers={facts.cipher}, bits={facts.bits}")


def exit_like(status: int) -> int:
    """The relay's exit status for the program's wait status: its exit
    code, or death by the same signal (no core file of our own)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        return 128 + sig
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return EXIT_TEMP


def reap(pid: int) -> int:
    """Wait for ``pid``; its wait status (111 if it cannot be had)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return EXIT_TEMP << 8


#: the wait status of a connection whose program did not run (exit 111)
NOT_RUN = EXIT_TEMP << 8

#: the UCSPI-TLS variables a ``-w`` program gets
UCSPI_TLS_VARIABLES = (b"SSLCTLFD", b"SSLREADFD", b"SSLWRITEFD")


def reply(changes: List[Change]) -> bytes:
    """The answer to ``Y``: ``VAR=val\0`` for every variable set (never a
    bare name), then one more ``\0``."""
    return b"".join(name + b"=" + value + b"\0" for name, value in changes
                    if value is not None) + b"\0"


def _close(*fds: Optional[int]) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class TlsLaunch:
    """The launcher of a TLS server: a relay child per connection
    (``delayed``: ``-w``, the program asks for TLS)."""

    def __init__(self, program: Program, setup: Setup, contexts: Contexts, log: Log,
                 details: bool, handshake_timeout: int, idle_timeout: int,
                 delayed: bool = False, options: Optional["Options"] = None) -> None:
        self.delayed = delayed
        self.program = program
        self.name = program.name
        self.setup = setup
        self.contexts = contexts
        self.log = log
        self.details = details
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.counts: Counts = lambda: (0, 0)
        #: the options to start a relay server with (None: fork here)
        self.options = options
        self.relays: Optional[RelayServer] = None

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Also starts the relay server, before the privilege drop, so
        that it reads the certificates as the server did."""
        self.counts = counts
        reloads.add("TLS certificates", self.reload)
        if self.options is not None:
            try:
                self.relays = RelayServer.spawn(self.options)
            except Gone as gone:
                self._lost(gone)

    def ready(self) -> None:
        self.program.ready()
        if self.relays is not None:
            try:
                self.relays.wait_ready()
            except Gone as gone:
                self._lost(gone)

    def _lost(self, gone: Gone) -> None:
        """The relay server cannot serve: one warning, then the relays
        are forked here."""
        self.log.warning(f"TLS relay server: {gone}; relays are forked by the server")
        self.options = None
        if self.relays is not None:
            self.relays.lost()

    def reaped(self) -> List[Tuple[int, int]]:
        """The relays the relay server reaped, ``(pid, wait status)``
        (the loop asks on SIGCHLD)."""
        relays = self.relays
        if relays is None:
            return []
        answered = relays.alive
        ended = relays.reaped()
        if relays.exits is None:             # it is gone, and all its relays
            self.relays = None
            if answered:
                self._lost(Gone("it exited"))
        return ended

    def reload(self) -> None:
        """SIGHUP: new contexts for new connections; on failure the old
        ones stay (the registry logs the warning)."""
        try:
            self.contexts = self.setup.build()
        except TlsError as exc:
            raise Fatal(exc.last) from None
        for problem in self.setup.skipped:
            self.log.warning(problem)
        if self.relays is not None:
            self.relays.reload()

    def start(self, fd: int, env: Environment) -> int:
        count, limit = self.counts()
        relays = self.relays
        if relays is not None and relays.alive:
            try:
                pid = relays.start(fd, env, count, limit)
            except Gone as gone:
                self._lost(gone)
            else:
                if pid is not None:
                    return pid
        return self.fork_relay(fd, env, count, limit)

    def fork_relay(self, fd: int, env: Environment, count: int, limit: int) -> int:
        """Fork the relay child of one connection; its pid."""
        return child.fork(lambda: exit_like(self.serve_one(fd, env, count, limit)), keep=(fd,))

    def serve_one(self, fd: int, env: Environment, count: int, limit: int) -> int:
        """One connection in this (relay) process, with the contexts of
        now: the program's wait status."""
        serve = self.serve_delayed if self.delayed else self.serve
        return serve(fd, env, self.contexts.default, count, limit)

    # -- in the child ------------------------------------------------------
    def serve(self, fd: int, env: Environment, ctx: ssl.SSLContext, count: int,
              limit: int) -> int:
        """One connection, in a relay process: the handshake, the
        program, the relay; the program's wait status (:data:`NOT_RUN`
        when there was none)."""
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log = self.log
        quiet_unraisable(log)
        tls = self._handshake(fd, ctx)
        if tls is None:
            return NOT_RUN
        sock, chan = tls
        facts = chan.facts()
        env = apply(env, tls_changes(facts, provider(self.details, facts)))
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        try:
            pid = self.program.start_on(to_r, from_w, env)
        except (OSError, ValueError) as exc:
            log.drop(f"unable to run {self.name}: {errtext(exc)}")
            sock.close()
            _close(to_w, from_r)
            return NOT_RUN
        finally:
            os.close(to_r)
            os.close(from_w)
        self._encrypted(env, facts, pid, count, limit)
        self._relay(sock, chan, to_w, from_r)
        return reap(pid)

    def _handshake(self, fd: int, ctx: ssl.SSLContext
                   ) -> Optional[Tuple[socket.socket, Channel]]:
        """TLS over the client's socket, within ``-S``, the SNI callback
        watching this connection: the socket (non-blocking) and the
        channel, or None when the handshake failed (its lines logged,
        the socket closed)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.setup.sni.start(ctx)
        chan = Channel(ctx, server_side=True)
        chan.watch = self.setup.sni.received
        try:
            handshake(chan, sock, self.handshake_timeout)
        except HandshakeFailed as failed:
            report(self.log, failed.lines, cause=failed.cause)
            sock.close()
            return None
        return sock, chan

    def _encrypted(self, env: Environment, facts: TlsFacts, pid: int, count: int,
                   limit: int) -> None:
        """IndiMail's ``encrypted session`` status line, at ``-v``."""
        log = self.log
        if log.verbosity >= 2:
            ip = env.get(b"TCPREMOTEIP") or env.get(b"UNIXLOCALPATH", b"")
            log.line(b"status: %d/%d encrypted session, sslpid=%d, childpid=%d, IP %s, "
                     b"TLS Server=%s, Client=%s, Ciphers=%s, bits=%d"
                     % (count, limit, os.getpid(), pid, safe(ip, keep_colon=True),
                        SERVER_VERSION.encode(), safe(facts.protocol), safe(facts.cipher),
                        facts.bits))

    def _relay(self, sock: socket.socket, chan: Channel, to_prog: int, from_prog: int) -> None:
        relay = Relay(TlsEnd(sock, chan), to_prog, from_prog, self.idle_timeout, self.log)
        try:
            relay.run()
        finally:
            relay.close()
        try:
            sock.close()
        except OSError:
            pass

    # -- -w: the program asks ------------------------------------------------
    def serve_delayed(self, fd: int, env: Environment, ctx: ssl.SSLContext, count: int,
                      limit: int) -> int:
        """The relay child of a ``-w`` connection (see the module
        docstring)."""
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log = self.log
        quiet_unraisable(log)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        numbers = (b"%d" % theirs.fileno(), b"%d" % to_r, b"%d" % from_w)
        env = apply(env, [(name, None) for name in TLS_VARIABLES]
                    + list(zip(UCSPI_TLS_VARIABLES, numbers)))
        try:
            pid = self.program.start_on(fd, fd, env, keep=(theirs.fileno(), to_r, from_w))
        except (OSError, ValueError) as exc:
            log.drop(f"unable to run {self.name}: {errtext(exc)}")
            ours.close()
            _close(fd, to_w, from_r)
            return NOT_RUN
        finally:
            theirs.close()
            _close(to_r, from_w)
        command = self._command(ours)
        if command not in (b"y", b"Y"):
            if command:
                ip = env.get(b"TCPREMOTEIP") or env.get(b"UNIXLOCALPATH", b"")
                log.drop(f"unknown UCSPI-TLS command from {safe(ip, True).decode()}")
            ours.close()
            _close(fd, to_w, from_r)         # no TLS: the program goes on alone
            return reap(pid)
        tls = self._handshake(fd, ctx)
        if tls is None:
            ours.close()
            _close(to_w, from_r)              # the program reads end of file
            return reap(pid)
        sock, chan = tls
        facts = chan.facts()
        if command == b"Y":
            changes = tls_changes(facts, provider(True, facts))
            if not self.details:             # TLS_PROVIDER only with -z
                changes = [(k, v) for k, v in changes if k != b"TLS_PROVIDER"]
            try:
                ours.sendall(reply(changes))
            except OSError:
                pass
        ours.close()
        self._encrypted(env, facts, pid, count, limit)
        self._relay(sock, chan, to_w, from_r)
        return reap(pid)

    @staticmethod
    def _command(ctl: socket.socket) -> bytes:
        """The program's one-byte command, b"" at end of file."""
        while True:
            try:
                return ctl.recv(1)
            except InterruptedError:
                continue
            except OSError:
                return b""
