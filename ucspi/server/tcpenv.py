"""tcp-env: the UCSPI environment for a connection someone else accepted
(inetd, xinetd, systemd's ``Accept=yes``), on fd 0 (design: tcp-env).

Usage: ``tcp-env [ -rRhHpP ] [ -t timeout ] [ -l localname ]
[ -x rules.cdb ] [ -X ] [ -B banner ] program [ arg ... ]``.

qmail's command (``-r`` ident, the default; ``-R`` none; ``-t`` the
ident time-out, 30 s), with IndiMail's IPv6 variables, plus the steps
tcpserver runs for each of its own connections: the host name (``-h``,
the default; ``-H`` none; ``-p`` paranoid), ``-l``, the DNS settings
(``DNSCACHEIP``...), the ``-x``/``-X`` rules (a deny logs tcpserver's
``deny`` line, with ``tcp-env:`` in front, and exits 100) and the
``-B`` banner.  The steps are tcpserver's own (:mod:`ucspi.server.conn`,
driven here for one connection by :func:`serve`): the service is built
by :func:`ucspi.server.service.build`; the launch is an ``exec`` of the
program with the socket left on fd 0 and 1.

An existing ``PROTO=TCP`` (or ``TCP6``) environment is trusted: the
program is run at once (qmail).  A temporary DNS failure for the
client's name makes ``TCPREMOTEHOST`` ``softdnserror`` (qmail).  Errors
exit 111 without a word (qmail), except a rules file that cannot be
read, which says so first.  No limits: in this mode they are the
supervisor's (``MaxConnectionsPerSource=``, xinetd's ``per_source``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..argscan import Getopt
from ..tools import answered
from ..errors import EXIT_TEMP, EXIT_USAGE, UcspiError, errtext
from ..log import Log, say
from ..options import Options
from ..reactor import Cancellable

USAGE = (b"tcp-env: usage: tcp-env [ -rRhHpP ] [ -t timeout ] [ -l localname ] "
         b"[ -x rules.cdb ] [ -X ] [ -B banner ] program [ arg ... ]")
HELP = USAGE + b"""

Sets PROTO and the TCP (and TCP6) variables for the connection on fd 0
(from inetd, xinetd, systemd's Accept=yes), then runs program on it.
  -r             ask the client's ident server: TCPREMOTEINFO (default)
  -R             do not ask the ident server
  -t n           give the ident exchange n seconds (default 30)
  -h             look up the client's host name: TCPREMOTEHOST (default)
  -H             do not look up the client's host name
  -p             paranoid: keep only a host name that maps back to the client
  -P             not paranoid (default)
  -l localname   TCPLOCALHOST without a lookup
  -x rules.cdb   follow the rules in rules.cdb (made by tcprules)
  -X             with -x: a rules.cdb that does not exist means no rules
  -B banner      write banner to the client first
  --help, --version
An environment with PROTO=TCP or TCP6 already is trusted as it is.
Exit: the program's status; 100 when the rules deny; 111 on errors.
More: man tcp-env."""

WITH_ARG = frozenset("tlxB")
FLAGS = frozenset("rRhHpPX")
#: qmail's ident time-out
IDENT_TIMEOUT = 30
#: TCPREMOTEHOST after a temporary DNS failure (qmail)
SOFT_ERROR = "softdnserror"


class Usage(Exception):
    """A bad command line."""


def parse(argv: List[str]) -> Tuple[Options, List[str]]:
    """tcp-env's options, as the server's :class:`~ucspi.options.Options`
    (its steps read them) and the program's argv.

    Raises:
        Usage: an unknown letter, a missing argument or program, a bad
            number.
    """
    from ..options import number
    opts = Options()
    opts.ident_timeout = IDENT_TIMEOUT
    scan = Getopt(argv, WITH_ARG, FLAGS, error=lambda text: Usage())
    for letter, arg in scan:
        if arg is None:
            _flag(opts, letter)
        else:
            _argument(opts, letter, arg, number)
    if not scan.rest:
        raise Usage()
    return opts, scan.rest


def _flag(opts: Options, letter: str) -> None:
    if letter in "rR":
        opts.remote_info = letter == "r"
    elif letter in "hH":
        opts.remote_host = letter == "h"
    elif letter in "pP":
        opts.paranoid = letter == "p"
    elif letter == "X":
        opts.rules_missing_ok = True


def _argument(opts: Options, letter: str, arg: str, number: Callable[..., int]) -> None:
    if letter == "t":
        try:
            opts.ident_timeout = number("t", arg)
        except UcspiError:
            raise Usage() from None
    elif letter == "l":
        opts.localname = arg
    elif letter == "x":
        opts.rules = arg
    elif letter == "B":
        opts.banner = os.fsencode(arg)


class SoftLookups:
    """The server's lookup service, with qmail's ``softdnserror``: the
    client's name lookup that fails for a temporary reason gives that
    word instead of no name."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def host(self, ip6: str, v4: bool, paranoid: bool, done: Callable[..., None],
             abort: Callable[[OSError], None]) -> Cancellable:
        if paranoid:
            handle: Cancellable = self.inner.host(ip6, v4, paranoid, done, abort)
            return handle

        def named(name: Optional[str], error: Optional[BaseException]) -> None:
            done(SOFT_ERROR if error is not None else name, None)
        handle = self.inner.name(ip6, v4, named, abort)
        return handle


def _trusted(environ: Dict[str, str]) -> bool:
    return environ.get("PROTO") in ("TCP", "TCP6")


def _exec(argv: List[str], env: Dict[bytes, bytes]) -> int:
    """Run the program in this process (fd 0 and 1 stay the socket)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        say(b"tcp-env: fatal: unable to run " + os.fsencode(argv[0]) + b": " +
            errtext(exc).encode())
    return EXIT_TEMP


def serve(opts: Options, argv: List[str], log: Log) -> int:
    """Run tcpserver's steps on the connection of fd 0, then the program
    (never returns on success)."""
    from . import service
    from .conn import Connection
    from .limits import Limit

    sock = socket.socket(fileno=0)
    try:
        peer = sock.getpeername()
        family = sock.family
    except OSError:
        sock.detach()
        return EXIT_TEMP                   # not a connected socket: silent, as qmail
    if family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        return EXIT_TEMP
    opts.argv = argv
    served = service.build(opts, log, Limit(1), service.program(opts), None, False,
                           os.environ, notify=False)
    served.lookups = SoftLookups(served.lookups)      # type: ignore[assignment]
    outcome: List[int] = []

    def launch(conn: Connection, env: Dict[bytes, bytes]) -> None:
        sock.detach()                       # fd 0 stays for the program
        outcome.append(_exec(argv, env))

    def end(conn: Connection) -> None:
        outcome.append(EXIT_USAGE if conn.denied else EXIT_TEMP)

    ctx = served.context(lambda conn: True, launch, end)
    conn = Connection(ctx, sock, peer, family == socket.AF_INET6)
    conn.start()
    reactor = served.reactor
    while not outcome:
        reactor.run_once()
    return outcome[0]


def main(argv: Optional[List[str]] = None) -> int:
    """The tcp-env command; returns the exit code (the program replaces
    this process when all goes well)."""
    args = sys.argv[1:] if argv is None else argv
    if answered(args, "tcp-env", HELP):
        return 0
    try:
        opts, program = parse(args)
    except Usage:
        say(USAGE)
        return EXIT_USAGE
    if _trusted(dict(os.environ)):
        return _exec(program, dict(os.environb))
    opts.verbosity = 2                      # the deny line; nothing else is written
    try:
        return serve(opts, program, Log(2, prog=b"tcp-env"))
    except (OSError, UcspiError):
        return EXIT_TEMP
