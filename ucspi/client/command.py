"""tcpclient, top to bottom: parse, resolve, connect, describe, exec
(design: tcpclient, exit-codes).

1. Descriptors 6 and 7 are closed, SIGINT is left to its default (no
   traceback on Ctrl-C), and the command line is parsed.
2. The port and the host's addresses are figured out; with TLS the
   context is made before any connection, so that a bad file fails at
   once.
3. Each address is tried with djb's ``-T x+y`` rule
   (:func:`.connect.connect_any`); ``-v`` says ``connected to IP port
   N``.
4. With a program: the environment (:mod:`.describe`: ``PROTO``, the
   ``TCP*`` variables, the names, the ident answer).  Without TLS the
   socket goes on descriptor 6 and 7, SIGPIPE back to its default, and
   the program replaces tcpclient (``execvpe``): its exit status is
   tcpclient's.  With TLS (after ``-s``'s STARTTLS), the program runs
   behind a relay (:func:`.secure.run_program`).
5. Without a program: client mode, in clear (:mod:`.clear`) or through
   TLS (:func:`.secure.client_mode`); no lookup is made, since no
   program would see the answers.

This is the one place where errors become exit codes: 100 for usage,
111 for everything else (djb's), one ``tcpclient: fatal: ...`` line,
never a traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from ipaddress import IPv6Address
from typing import TYPE_CHECKING, List, Optional

from ..cli import read_command_line
from ..environ import Endpoints, Environment, apply, inherited
from ..errors import EXIT_TEMP, EXIT_USAGE, Fatal, UsageError, errtext
from ..log import Log, safe
from . import connect, describe
from .options import USAGE, Options, parse

if TYPE_CHECKING:
    from ..dns.conf import DnsConfig
    from .secure import Session

PROG = b"tcpclient"


def _close_6_7() -> None:
    """djb's tcpclient closes 6 and 7 first: what the caller left there
    never reaches the program."""
    for fd in (6, 7):
        try:
            os.close(fd)
        except OSError:
            pass


class Cached:
    """The resolver's configuration, read on first use only."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.value: Optional["DnsConfig"] = None

    def __call__(self) -> "DnsConfig":
        if self.value is None:
            self.value = connect.resolver(os.environ, self.opts.ipv4_only)
        return self.value


def _connect(opts: Options, log: Log, conf: Cached) -> Optional[socket.socket]:
    """Steps 2 and 3: the connected socket, or None when every address
    failed (each said so)."""
    port = connect.port_number(opts.port)
    interface = connect.interface_index(opts.interface)
    local = connect.Local(opts.local_ip, opts.local_port)
    found = connect.addresses(opts.host, opts.ipv4_only, local.family(), conf)

    def attempt(ip: IPv6Address, timeout: float) -> socket.socket:
        return connect.attempt(connect.target(ip, interface), port, timeout, local, interface)

    def warn(ip: IPv6Address, exc: OSError) -> None:
        if log.verbosity >= 1:
            shown = connect.target(ip, interface).shown
            log.line(b"unable to connect to %s port %d: %s"
                     % (safe(shown, True), port, errtext(exc).encode()))

    return connect.connect_any(found, opts.connect_timeouts, attempt, warn)


def _environment(opts: Options, ep: Endpoints, scope: int,
                 conf: Cached) -> Environment:
    """Step 4's environment: ours with the connection's variables."""
    describe.Lookups(ep, scope, conf).run(
        opts.localname, opts.remote_host, opts.ident_timeout if opts.remote_info else None)
    return apply(inherited(), describe.changes(ep))


def _exec(sock: socket.socket, argv: List[str], env: Environment) -> None:
    """The socket on 6 and 7, SIGPIPE and SIGXFSZ back to their
    defaults (Python ignores them), then the program.

    Raises:
        Fatal: ``unable to run <program>: <error>``.
    """
    fd = sock.detach()
    if fd == 6:
        os.set_inheritable(6, True)
    else:
        os.dup2(fd, 6)
        if fd != 7:
            os.close(fd)
    os.dup2(6, 7)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)
    except (OSError, ValueError) as exc:
        raise Fatal(f"unable to run {argv[0]}: {errtext(exc)}") from None


def run(opts: Options, log: Log) -> int:
    """Everything after the command line; returns the exit code, or
    does not return (the program took over)."""
    conf = Cached(opts)
    session: Optional["Session"] = None
    if opts.tls:
        from . import secure
        session = secure.prepare(opts, os.environ, log)
    sock = _connect(opts, log, conf)
    if sock is None:
        return EXIT_TEMP
    if opts.nodelay:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass                       # djb: "if it fails, bummer"
    ep = describe.endpoints(sock, opts.force_ipv6)
    where = b"%s port %d" % (safe(ep.remote_ip, True), ep.remote_port)
    if log.verbosity >= 2:
        log.line(b"connected to " + where)
    scope = sock.getsockname()[3] if sock.family == socket.AF_INET6 else 0
    env = _environment(opts, ep, scope, conf) if opts.argv else None
    if session is None:
        if env is None:
            from .clear import client_mode
            return client_mode(sock, log)
        _exec(sock, opts.argv, env)
        return EXIT_TEMP                # not reached
    from . import secure
    chan = secure.handshake(session, sock, where.decode())
    if env is None:
        return secure.client_mode(sock, chan, log)
    return secure.run_program(sock, chan, opts.argv, env, opts.tls_details, log)


def main(argv: Optional[List[str]] = None) -> int:
    """Run tcpclient.

    Args:
        argv: the arguments after the program name (default
            ``sys.argv[1:]``).

    Returns:
        100 (usage), 111 (anything else that failed) or, in client mode,
        0; with a program and no TLS it does not return.
    """
    _close_6_7()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    log = Log(1, PROG)
    opts = read_command_line(parse, sys.argv[1:] if argv is None else argv, log, USAGE)
    if isinstance(opts, int):
        return opts
    log.verbosity = opts.verbosity
    try:
        return run(opts, log)
    except UsageError as exc:
        log.fatal(str(exc))
        return EXIT_USAGE
    except Fatal as exc:
        log.fatal(str(exc))
        return exc.code
    except MemoryError:
        log.fatal("out of memory")
        return EXIT_TEMP
    except OSError as exc:                 # the last resort: no step worded it
        log.fatal(f"unable to connect: {errtext(exc)}")
        return EXIT_TEMP
    except Exception as exc:               # a bug: one line, never a traceback
        log.fatal(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_TEMP

