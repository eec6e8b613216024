"""TLS for tcpclient: the context, STARTTLS, the handshake, and the
relay in front of the program (design: tcpclient).

Only imported when ``-n`` or ``-s`` asks for TLS (it imports ``ssl``).

* :func:`prepare`: the context and the name to ask for, before any
  connection is made, so that a bad file fails at once.
* :func:`negotiate`: ``-s``: the protocol's dialogue
  (:mod:`.starttls`) on the clear connection, within the deadline.
* :func:`handshake`: a client :class:`~ucspi.tls.channel.Channel` and
  :func:`ucspi.tls.relay.handshake` within the same deadline (``-T``'s
  x+y, as IndiMail's tcpclient).
* :func:`run_program`: the program is started (``posix_spawn``, no
  fork of the interpreter) with descriptors 6 and 7 on two pipes, the
  session's variables in its environment; tcpclient stays behind as the
  relay between the pipes and the TLS connection, waits for the
  program, and exits with its status (or dies of its signal).
"""

from __future__ import annotations

import fcntl
import math
import os
import select
import socket
import ssl
import time
from ipaddress import ip_address
from typing import List, Mapping, Optional

from ..environ import Change, Environment, apply, tls_changes
from ..errors import Fatal, UsageError, errtext
from ..log import Log, say, safe
from ..proc.signals import SIGDEF
from ..tls import client as tls_client
from ..tls.channel import Channel, HandshakeFailed
from ..tls.launch import exit_like, reap
from ..tls.relay import Relay, TlsEnd
from ..tls.relay import handshake as drive_handshake
from ..tls.settings import TlsError
from .connect import POLL_MAX
from .options import Options
from .starttls import Dialogue, Refused

#: the descriptors the program reads from and writes to
READ_FD, WRITE_FD = 6, 7


class ClientChannel(Channel):
    """A client channel whose failure lines say what verification found."""

    def failure(self, exc: BaseException) -> HandshakeFailed:
        failed = super().failure(exc)
        failed.lines += tls_client.verify_lines(exc)
        return failed


class Session:
    """What TLS needs once connected: the context, the name, the log."""

    def __init__(self, ctx: ssl.SSLContext, name: Optional[str], opts: Options,
                 log: Log) -> None:
        self.ctx = ctx
        self.name = name
        self.opts = opts
        self.log = log
        #: for the STARTTLS dialogue and the handshake together (0: none)
        self.timeout = min(sum(opts.connect_timeouts), POLL_MAX)


def _is_address(name: str) -> bool:
    try:
        ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


def prepare(opts: Options, environ: Mapping[str, str], log: Log) -> Session:
    """The context and the name to ask the server for.

    Raises:
        Fatal: a file does not load (after the original's lines), or
            ``-m`` with no CA file to check the name against (exit 100).
    """
    files = tls_client.client_files(opts.certfile, opts.cafile, opts.crlfile, environ)
    try:
        ctx = tls_client.context(files, opts.ciphers, opts.tls_method, environ)
    except TlsError as exc:
        if log.verbosity >= 1:
            for line in exc.lines:
                say(line.encode(errors="replace"))
        raise Fatal("unable to initialize TLS" + (f": {exc.reason}" if exc.reason else "")) \
            from None
    verified = files.cafile is not None
    if opts.match and not verified:
        raise UsageError("-m needs a CA file to check the name against: give -c cafile")
    if not verified and log.verbosity >= 2:
        log.warning("the server's certificate is not checked: no CA file")
    name = opts.match or opts.host
    if _is_address(name):
        name = name.partition("%")[0]          # no scope in a certificate
    return Session(ctx, name, opts, log)


# -- on the connection ------------------------------------------------------------
def _wait(sock: socket.socket, deadline: Optional[float]) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if poller.poll(None if left is None else max(1, int(left * 1000))):
            return True


def negotiate(sock: socket.socket, protocol: str, helo: str, timeout: int) -> None:
    """``-s``: the dialogue that comes before the handshake.

    Raises:
        Fatal: ``STARTTLS failed: <why>``.
    """
    dialogue = Dialogue(protocol, helo)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while not dialogue.done:
            if not _wait(sock, deadline):
                raise Refused("timed out")
            data = sock.recv(4096)
            if not data:
                raise dialogue.ended()
            answer = dialogue.feed(data)
            if answer:
                sock.sendall(answer)
    except Refused as exc:
        raise Fatal(f"STARTTLS failed: {exc}") from None
    except OSError as exc:
        raise Fatal(f"STARTTLS failed: {errtext(exc)}") from None


def handshake(session: Session, sock: socket.socket, where: str) -> Channel:
    """The handshake on the connected socket.

    Raises:
        Fatal: it failed (the lines for the failure printed first).
    """
    opts = session.opts
    started = time.monotonic()
    if opts.starttls:
        negotiate(sock, opts.starttls, helo_of(opts), session.timeout)
    try:
        chan = ClientChannel(session.ctx, server_side=False, server_hostname=session.name)
    except (ValueError, UnicodeError):
        raise Fatal(f"unable to use {session.name!r} as a TLS name") from None
    left = 0                                  # no limit
    if session.timeout:                       # what the dialogue left, at least 1 s
        left = max(1, math.ceil(session.timeout - (time.monotonic() - started)))
    sock.setblocking(False)
    try:
        drive_handshake(chan, sock, left)
    except HandshakeFailed as failed:
        if session.log.verbosity >= 1:
            for line in failed.lines:
                say(line.encode(errors="replace"))
        raise Fatal(f"unable to make a TLS connection to {where}") from None
    finally:
        sock.setblocking(True)
    facts = chan.facts()
    if session.log.verbosity >= 2:
        session.log.line(b"encrypted session, %s, %s, bits=%d"
                         % (safe(facts.protocol), safe(facts.cipher), facts.bits))
    return chan


def helo_of(opts: Options) -> str:
    """The name for SMTP's EHLO: ``-l``, else this host's name."""
    return opts.localname or socket.gethostname()


def variables(chan: Channel, details: bool) -> List[Change]:
    """The session's variables for the program, as tcpserver's names
    (``SSL_TLS_SNI_SERVERNAME``: the name asked for, not an address)."""
    facts = chan.facts()
    if facts.sni and _is_address(facts.sni):
        facts.sni = None
    return tls_changes(facts, tls_client.provider(details, facts))


# -- the program behind a relay -----------------------------------------------------
def _above(fd: int, lowest: int) -> int:
    """``fd``, moved to ``lowest`` or above if it is below (close-on-exec)."""
    if fd >= lowest:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


def spawn(argv: List[str], env: Environment, read_fd: int, write_fd: int) -> int:
    """Start the program with descriptors 6 and 7 on ``read_fd`` and
    ``write_fd``, the signals Python changed back to their defaults.

    Raises:
        Fatal: ``unable to run <program>: <error>``.
    """
    run = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
    try:
        return run(argv[0], argv, env,
                   file_actions=[(os.POSIX_SPAWN_DUP2, read_fd, READ_FD),
                                 (os.POSIX_SPAWN_DUP2, write_fd, WRITE_FD)],
                   setsigdef=SIGDEF, setsigmask=())
    except (OSError, ValueError) as exc:
        raise Fatal(f"unable to run {argv[0]}: {errtext(exc)}") from None


def run_program(sock: socket.socket, chan: Channel, argv: List[str], env: Environment,
                details: bool, log: Log) -> int:
    """The program on two pipes, tcpclient the relay in front of it;
    returns the program's exit status (see the module docstring)."""
    env = apply(env, variables(chan, details))
    lowest = WRITE_FD + 1
    to_r, to_w = (_above(fd, lowest) for fd in os.pipe())
    from_r, from_w = (_above(fd, lowest) for fd in os.pipe())
    try:
        pid = spawn(argv, env, to_r, from_w)
    finally:
        os.close(to_r)
        os.close(from_w)
    relay(sock, TlsEnd(sock, chan), to_w, from_r, log, shared=False)
    return exit_like(reap(pid))


def relay(sock: socket.socket, end: TlsEnd, to_prog: int, from_prog: int, log: Log,
          shared: bool) -> bool:
    """Relay until both directions have ended (``shared``: the
    descriptors are standard output and input); False if the connection
    broke."""
    carrier = Relay(end, to_prog, from_prog, 0, log, shared=shared)
    try:
        carrier.run()
    finally:
        carrier.close()
    try:
        sock.close()
    except OSError:
        pass
    return not carrier.dead


def client_mode(sock: socket.socket, chan: Channel, log: Log) -> int:
    """No program: standard input to the server, the server to standard
    output, through TLS; 0, or 111 if the connection broke."""
    return 0 if relay(sock, TlsEnd(sock, chan), 1, 0, log, shared=True) else 111
