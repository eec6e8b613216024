"""The TLS server's launcher: one relay child per connection (design
note "TLS": the relay waits for its program).

The parent has done the banner, the ClientHello wait, the lookups, the
rules and the limits on the clear socket; :class:`TlsLaunch` then forks
one child per connection (:func:`ucspi.proc.child.fork`), which:

1. does the server handshake within ``-S`` seconds
   (:func:`.relay.handshake` over a :class:`.channel.Channel`);
2. starts the program (spawned, or a ``prog.so`` called in a child of
   its own), fd 0 on one pipe and fd 1 on another, with the
   environment of the plain path and the session's variables
   (:func:`ucspi.environ.tls_changes`);
3. relays (:class:`.relay.Relay`) with the ``-T`` idle timeout;
4. waits for the program and exits with its status, or dies of the
   signal that killed it, so the parent's ``end`` line and its ``-c``
   count are the program's.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import ssl

from ..environ import TlsFacts, apply, tls_changes
from ..errors import EXIT_TEMP, Fatal, errtext
from ..log import Log, safe
from ..proc import child
from ..proc.launch import Counts, Environment, Program
from ..proc.reload import Reloads
from .channel import Channel, HandshakeFailed
from .context import Contexts, Setup, quiet_unraisable
from .failure import report
from .relay import Relay, TlsEnd, handshake
from .settings import TlsError

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


class TlsLaunch:
    """The launcher of a TLS server: a relay child per connection."""

    def __init__(self, program: Program, setup: Setup, contexts: Contexts, log: Log,
                 details: bool, handshake_timeout: int, idle_timeout: int) -> None:
        self.program = program
        self.name = program.name
        self.setup = setup
        self.contexts = contexts
        self.log = log
        self.details = details
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.counts: Counts = lambda: (0, 0)

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        self.counts = counts
        reloads.add("TLS certificates", self.reload)

    def ready(self) -> None:
        self.program.ready()

    def reload(self) -> None:
        """SIGHUP: new contexts for new connections; on failure the old
        ones stay (the registry logs the warning)."""
        try:
            self.contexts = self.setup.build()
        except TlsError as exc:
            raise Fatal(exc.lines[-1]) from None
        for problem in self.setup.skipped:
            self.log.warning(problem)

    def start(self, fd: int, env: Environment) -> int:
        count, limit = self.counts()
        ctx = self.contexts.default
        return child.fork(lambda: self.serve(fd, env, ctx, count, limit), keep=(fd,))

    # -- in the child ------------------------------------------------------
    def serve(self, fd: int, env: Environment, ctx: ssl.SSLContext, count: int,
              limit: int) -> int:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log = self.log
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        quiet_unraisable(log)
        self.setup.sni.start(ctx)
        chan = Channel(ctx, server_side=True)
        chan.watch = self.setup.sni.received
        try:
            handshake(chan, sock, self.handshake_timeout)
        except HandshakeFailed as failed:
            report(log, failed.lines)
            return EXIT_TEMP
        facts = chan.facts()
        env = apply(env, tls_changes(facts, provider(self.details, facts)))
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        try:
            pid = self.program.start_on(to_r, from_w, env)
        except (OSError, ValueError) as exc:
            log.drop(f"unable to run {self.name}: {errtext(exc)}")
            return EXIT_TEMP
        finally:
            os.close(to_r)
            os.close(from_w)
        if log.verbosity >= 2:
            ip = env.get(b"TCPREMOTEIP") or env.get(b"UNIXLOCALPATH", b"")
            log.line(b"status: %d/%d encrypted session, sslpid=%d, childpid=%d, IP %s, "
                     b"TLS Server=%s, Client=%s, Ciphers=%s, bits=%d"
                     % (count, limit, os.getpid(), pid, safe(ip, keep_colon=True),
                        SERVER_VERSION.encode(), safe(facts.protocol), safe(facts.cipher),
                        facts.bits))
        relay = Relay(TlsEnd(sock, chan), to_w, from_r, self.idle_timeout, log)
        try:
            relay.run()
        finally:
            relay.close()
        try:
            sock.close()
        except OSError:
            pass
        return exit_like(reap(pid))
