"""The TLS relay child (DECISIONS D20), and the launcher that forks it.

The parent has done the banner, the lookups, the rules and the limits
on the clear socket; :class:`TlsLaunch` then forks one child per
connection (:func:`ucspi.server.child.fork`), which:

1. does the server handshake within ``-S`` seconds (:func:`handshake`),
   over memory BIOs, so the child alone decides what is read from the
   socket and when;
2. starts the program (spawned, or a ``prog.so`` called in a child of
   its own), fd 0 on one pipe and fd 1 on another, and the environment of the plain path plus
   ``TLS_PROVIDER``, ``SSL_PROTOCOL``, ``SSL_CIPHER`` and
   ``SSL_TLS_SNI_SERVERNAME``;
3. relays (:class:`Relay`) with the ``-T`` idle timeout, half-closes
   going both ways: the client's close_notify or EOF closes the
   program's fd 0, the program's EOF on fd 1 sends close_notify;
4. waits for the program and exits with its status, or dies of the
   signal that killed it, so the parent's ``end`` line and its ``-c``
   count are the program's.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import socket
import ssl
import time
from typing import Callable, Dict, List, Optional

from ..errors import EXIT_TEMP, Fatal, errtext
from ..log import Log, safe, say
from ..server import child
from ..server.launch import Counts, Environment, Program
from ..server.reload import Reloads
from .context import Contexts, Setup, library_error, quiet_unraisable
from .settings import TlsError

#: bytes read at once from the socket or the program
CHUNK = 65536
#: stop reading the program while this much is waiting for the client
HIGH_WATER = 262144
#: variables the relay sets; inherited values are removed
TLS_VARIABLES = (b"TLS_PROVIDER", b"SSL_PROTOCOL", b"SSL_CIPHER", b"SSL_TLS_SNI_SERVERNAME")
#: ``-z``'s "server version": the protocol the library offers first
SERVER_VERSION = "TLSv1.3" if ssl.HAS_TLSv1_3 else "TLSv1.2"

_IN, _OUT = select.POLLIN, select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL

#: spec §1.11: the failure classes' texts (typo kept)
WANT_READ = "unprocessed data availabe for read"
CLEAN_CLOSE = "connection closed by TLS/SSL peer"
SYSCALL = "non-recoverable, fatal I/O error"
PROTOCOL = "non-recoverable, fatal protocol error"


class HandshakeFailed(Exception):
    """The handshake failed; ``lines`` are the ``SSL_accept:`` lines."""

    def __init__(self, lines: List[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _failure(exc: BaseException) -> HandshakeFailed:
    """Spec §1.11's lines for an exception from the handshake."""
    if isinstance(exc, ssl.SSLZeroReturnError):
        return HandshakeFailed([f"SSL_accept: decoded err: {CLEAN_CLOSE}"])
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLSyscallError)):
        return HandshakeFailed([f"SSL_accept: decoded err: {SYSCALL}"])
    if isinstance(exc, ssl.SSLError):
        return HandshakeFailed([f"SSL_accept: decoded err: {PROTOCOL}",
                                f"SSL_accept: TLS/SSL err: {library_error(exc)}"])
    if isinstance(exc, OSError) and exc.errno:
        return HandshakeFailed([f"SSL_accept: system err: {errtext(exc)}",
                                f"SSL_accept: decoded err: {SYSCALL}"])
    return HandshakeFailed([f"SSL_accept: decoded err: {SYSCALL}"])


class Channel:
    """The socket and the TLS object over memory BIOs."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        #: encrypted bytes waiting for the socket
        self.wire = bytearray()
        #: sees what the client sends before the TLS layer does (the SNI check)
        self.watch: Optional[Callable[[bytes], None]] = None

    def collect(self) -> None:
        """Move what the TLS layer produced to :attr:`wire`."""
        if self.outgoing.pending:
            self.wire += self.outgoing.read()

    def send(self) -> None:
        """Send what the socket takes now.  Raises OSError."""
        try:
            sent = self.sock.send(self.wire)
        except (BlockingIOError, InterruptedError):
            return
        del self.wire[:sent]

    def receive(self) -> bool:
        """Feed what the socket has to the TLS layer; False at its EOF.
        Raises OSError.

        The EOF is not passed on to the TLS layer: OpenSSL 3 treats an
        EOF without close_notify as a fatal error and would refuse to
        send the program's answer after it (a client may half-close)."""
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False
        if self.watch is not None:
            self.watch(data)
        self.incoming.write(data)
        return True


def _wait(fd: int, events: int, deadline: Optional[float]) -> bool:
    """Wait for ``events`` on ``fd`` until ``deadline``; False at the
    deadline."""
    poller = select.poll()
    poller.register(fd, events)
    while True:
        if deadline is None:
            left_ms: Optional[int] = None
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            left_ms = max(1, int(left * 1000))
        if poller.poll(left_ms):
            return True


def handshake(chan: Channel, timeout: int) -> None:
    """The server handshake within ``timeout`` seconds (0: none).

    Raises:
        HandshakeFailed: with the spec's ``SSL_accept:`` lines.
    """
    deadline = time.monotonic() + timeout if timeout else None
    fd = chan.sock.fileno()
    try:
        while True:
            try:
                chan.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            chan.collect()
            while chan.wire:
                if not _wait(fd, _OUT, deadline):
                    raise HandshakeFailed([f"SSL_accept: decoded err: {WANT_READ}"])
                chan.send()
            if done:
                return
            if not _wait(fd, _IN, deadline):
                raise HandshakeFailed([f"SSL_accept: decoded err: {WANT_READ}"])
            if not chan.receive():
                raise HandshakeFailed([f"SSL_accept: decoded err: {PROTOCOL}",
                                       "SSL_accept: TLS/SSL err: error:SSL routines::"
                                       "unexpected eof while reading"])
    except HandshakeFailed:
        raise
    except (OSError, ssl.SSLError) as exc:
        chan.collect()                        # the alert, if there is one
        try:
            chan.send()
        except OSError:
            pass
        raise _failure(exc) from None


class Relay:
    """Data both ways between the client (TLS) and the program (pipes)."""

    def __init__(self, chan: Channel, to_prog: int, from_prog: int, idle: int,
                 log: Log) -> None:
        self.chan = chan
        self.to_prog: Optional[int] = to_prog
        self.from_prog: Optional[int] = from_prog
        self.idle_ms = idle * 1000 if idle else None
        self.log = log
        self.client_open = True      # the client may still send
        self.notified = False        # close_notify queued for the client
        self.dead = False            # the client is gone or broke the protocol
        self.down = b""              # plaintext for the program
        self.up = b""                # plaintext the TLS layer could not take yet
        for fd in (to_prog, from_prog):
            os.set_blocking(fd, False)
        chan.sock.setblocking(False)

    # -- the two pipes ------------------------------------------------
    def _close_to_prog(self) -> None:
        if self.to_prog is not None:
            os.close(self.to_prog)
            self.to_prog = None
            self.down = b""

    def _close_from_prog(self) -> None:
        if self.from_prog is not None:
            os.close(self.from_prog)
            self.from_prog = None

    def _complain(self, what: str, exc: BaseException) -> None:
        if self.log.verbosity >= 1:
            say(f"translate: {what}: {library_error(exc)}".encode())

    # -- events ---------------------------------------------------------
    def _from_client(self) -> None:
        try:
            more = self.chan.receive()
        except OSError as exc:
            self._complain("read network", exc)
            self.dead = True
            return
        if not more:
            self.client_open = False
        self._decrypt()

    def _decrypt(self) -> None:
        """Pass on what the TLS layer has for the program."""
        chan = self.chan
        parts = []
        while True:
            try:
                data = chan.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.client_open = False
                break
            except ssl.SSLError as exc:
                self._complain("read network", exc)
                self.dead = True
                return
            if not data:
                self.client_open = False
                break
            parts.append(data)
        if parts:
            self.down = b"".join(parts)
        chan.collect()
        self._encrypt()

    def _to_program(self) -> None:
        assert self.to_prog is not None
        try:
            written = os.write(self.to_prog, self.down)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._complain("write clear channel", exc)
            self._close_to_prog()
            return
        self.down = self.down[written:]

    def _from_program(self) -> None:
        assert self.from_prog is not None
        try:
            data = os.read(self.from_prog, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._complain("read clear channel", exc)
            data = b""
        if not data:
            self._close_from_prog()
            return
        self.up += data
        self._encrypt()

    def _encrypt(self) -> None:
        chan = self.chan
        if self.up:
            try:
                chan.tls.write(self.up)
                self.up = b""
            except ssl.SSLWantReadError:
                pass                           # a renegotiation is under way
            except ssl.SSLError as exc:
                self._complain("write network", exc)
                self.dead = True
                return
        if (self.from_prog is None and not self.up and not self.notified
                and not chan.incoming.pending):
            try:
                chan.tls.unwrap()              # close_notify; no wait for the reply
            except (ssl.SSLError, OSError):
                pass
            self.notified = True
        chan.collect()

    def _to_client(self) -> None:
        try:
            self.chan.send()
        except OSError as exc:
            # a client that has closed its end may reset the connection
            # before it has everything: that is its choice, not an error
            if self.client_open or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                self._complain("write network", exc)
            self.dead = True

    # -- the loop ---------------------------------------------------------
    def _interest(self) -> Dict[int, int]:
        chan = self.chan
        wanted: Dict[int, int] = {}
        sock = 0
        if self.client_open and not self.down and self.to_prog is not None:
            sock |= _IN
        if chan.wire:
            sock |= _OUT
        if sock:
            wanted[chan.sock.fileno()] = sock
        if self.to_prog is not None:
            # always watched: POLLERR says the program closed its fd 0
            wanted[self.to_prog] = _OUT if self.down else 0
        if self.from_prog is not None and len(chan.wire) < HIGH_WATER and not self.up:
            wanted[self.from_prog] = _IN
        return wanted

    def _finished(self) -> bool:
        if self.dead:
            return True
        if self.to_prog is not None and not self.client_open and not self.down:
            self._close_to_prog()              # the client's EOF reaches fd 0
        if self.from_prog is None and not self.notified:
            self._encrypt()
        return self.to_prog is None and self.notified and not self.chan.wire

    def run(self) -> None:
        """Relay until both directions have ended, the client is gone, or
        nothing moved for ``-T`` seconds."""
        poller = select.poll()
        registered: Dict[int, int] = {}
        sock_fd = self.chan.sock.fileno()
        self._decrypt()            # data that came with the client's Finished
        self._encrypt()
        while not self._finished():
            wanted = self._interest()
            for fd in list(registered):
                if fd not in wanted:
                    poller.unregister(fd)
                    del registered[fd]
            for fd, events in wanted.items():
                if registered.get(fd) != events:
                    poller.register(fd, events)
                    registered[fd] = events
            try:
                ready = poller.poll(self.idle_ms)
            except InterruptedError:
                continue
            if not ready:
                if self.log.verbosity >= 1:
                    say(b"timeout reached without input from network")
                    say(b"timeout reached without output from child")
                return
            for fd, events in ready:
                if fd == sock_fd:
                    if events & _OUT:
                        self._to_client()
                    if events & (_IN | _GONE) and not self.dead:
                        self._from_client()
                elif fd == self.to_prog:
                    if self.down and events & (_OUT | _GONE):
                        self._to_program()
                    elif events & _GONE:
                        self._close_to_prog()   # the program closed fd 0
                elif fd == self.from_prog:
                    self._from_program()
            if self.down and self.to_prog is not None:
                self._to_program()

    def close(self) -> None:
        """Close both pipes; send what is left for the client, at most
        briefly."""
        self._close_to_prog()
        self._close_from_prog()
        if not self.dead:
            deadline = time.monotonic() + 1.0
            try:
                while self.chan.wire and _wait(self.chan.sock.fileno(), _OUT, deadline):
                    self.chan.send()
            except OSError:
                pass


def provider(details: bool, version: str, cipher: str, bits: int) -> str:
    """``TLS_PROVIDER`` (spec §1.10)."""
    if not details:
        return "tcpserver, "
    return (f"tcpserver, TLS Server={SERVER_VERSION}, Client={version}, "
            f"Ciphers={cipher}, bits={bits}")


def _exit_like(status: int) -> int:
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


def _reap(pid: int) -> int:
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
        chan = Channel(sock, ctx)
        chan.watch = self.setup.sni.received
        try:
            handshake(chan, self.handshake_timeout)
        except HandshakeFailed as failed:
            if log.verbosity >= 1:
                for line in failed.lines:
                    say(line.encode())
            log.drop("unable to accept SSL connection")
            return EXIT_TEMP
        version = chan.tls.version() or ""
        cipher, _, bits = chan.tls.cipher() or ("", "", 0)
        env = {k: v for k, v in env.items() if k not in TLS_VARIABLES}
        env[b"TLS_PROVIDER"] = provider(self.details, version, cipher, bits).encode()
        env[b"SSL_PROTOCOL"] = version.encode()
        env[b"SSL_CIPHER"] = cipher.encode()
        if self.setup.sni.name:
            env[b"SSL_TLS_SNI_SERVERNAME"] = self.setup.sni.name.encode()
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
                        SERVER_VERSION.encode(), safe(version), safe(cipher), bits))
        relay = Relay(chan, to_w, from_r, self.idle_timeout, log)
        try:
            relay.run()
        finally:
            relay.close()
        try:
            sock.close()
        except OSError:
            pass
        return _exit_like(_reap(pid))

