"""rblsmtpd: keep mail from clients that DNS lists name, in front of an
SMTP server (design: rblsmtpd).

Usage: ``rblsmtpd [ -bBcC ] [ -t timeout ] [ -r base ] [ -a base ] smtpd
[ arg ... ]``, under tcpserver, which gives it the client on standard
input and output and its address in ``$TCPREMOTEIP``.

djb's rblsmtpd 0.88, exactly where it defines something:

* ``$RBLSMTPD`` first: empty lets the client in, ``-text`` refuses it
  with 553, ``text`` with 451; unset, the lists are asked;
* ``-r``, ``-a``, ``-b``/``-B``, ``-c``/``-C`` act in command-line
  order (:mod:`ucspi.rbl.order`; the lists are asked all at once,
  :mod:`ucspi.rbl.ordered`);
* a refused client gets one log line on standard error, ``rblsmtpd: IP
  pid PID: 451 text``, then the dialogue of :mod:`ucspi.rbl.dialogue`
  on standard input and output: ``-t`` seconds for the whole of it
  (an alarm, as djb's), and with ``-t 0`` the refusal alone;
* anyone else gets the program, run in this process (``PATH`` searched
  as djb's ``pathexec_run`` does); ``rblsmtpd: fatal: unable to run
  smtpd: error`` and exit 111 if that fails; a usage error exits 100.

Added: IndiMail's ``-r base:message`` (an A list, ``%IP%`` in the
message) and ``%IP%`` in ``$RBLSMTPD``; IPv6 clients (``$TCP6REMOTEIP``
when ``$PROTO`` is ``TCP6``; lists asked by nibbles, a mapped address as
IPv4); Spamhaus' query errors are failures, each logged on one line;
``$RBLGREETING`` names the greeting.  Left out: the default list (djb's
is dead; Debian removed it too), djb's unchecked ``-t`` number.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import List, Mapping, NamedTuple, NoReturn, Optional, Tuple

from .. import version_line
from ..argscan import Getopt
from ..errors import EXIT_TEMP, EXIT_USAGE, errtext
from ..log import say, write_all
from ..rbl.dialogue import GREETING, Dialogue, printable, refusal_line
from ..rbl.lists import Decision, ListSpec, rblsmtpd_variable, reversed_ip
from ..rbl.order import FLAGS, Step, evaluate, lookups
from ..rbl.ordered import ask
from ..scan import INT_MAX, decimal, shown

PROG = b"rblsmtpd: "
USAGE = ("rblsmtpd: usage: rblsmtpd [ -bBcC ] [ -t timeout ] [ -r base ] [ -a base ] "
         "smtpd [ arg ... ]")
#: ``--help``: the usage line, then the options (see man rblsmtpd)
HELP = USAGE + """

Runs smtpd, unless the client ($TCPREMOTEIP) is to be kept out: then it
answers the SMTP client itself, refusing every message, and logs one line.
Options (in order: a -r or -a uses the flags given before it; the first
list or anti-list that decides ends the lookups):
  -r base          a DNS list: a TXT record for the client refuses it, the
                   text being the answer
  -r base:message  a DNS list of A records, refusing with message (%IP%:
                   the client's address)
  -a base          an anti-list: an A record lets the client in
  -B               refuse listed clients with 451, try again later (default)
  -b               refuse listed clients with 553, bounce
  -C               a failed lookup lets the client in, and makes every
                   refusal a 451 (default)
  -c               a failed list lookup refuses with 451 temporary RBL lookup
                   error; a failed anti-list lookup does not let it in
  -t n             end the refusing dialogue after n seconds (default 60);
                   0: the refusal line is the greeting
  --help           this text
  --version        the version
Environment: RBLSMTPD (set: no lookups; empty lets in, -text refuses with
553, text with 451), TCPREMOTEIP (TCP6REMOTEIP when PROTO=TCP6),
RBLGREETING, DNSCACHEIP.  No list is asked unless -r names one.
Exit: the program's, 0 after a refusal, 100 for a usage error, 111 if the
program cannot be run.  More: man rblsmtpd."""

#: letters that take an argument, and flags
WITH_ARG = frozenset("tra")
FLAG_LETTERS = frozenset(FLAGS)
DEFAULT_TIMEOUT = 60
#: bytes read from the client at once
CHUNK = 4096
#: PATH when there is none (djb's pathexec)
DEFAULT_PATH = "/bin:/usr/bin"


class Usage(Exception):
    """A usage error: ``lines`` go to standard error, then exit 100."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines


class Request(Exception):
    """``--help`` or ``--version``: ``text`` to standard output, exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Options(NamedTuple):
    """The command line: the steps in order, the dialogue's time, the
    program and its arguments."""

    steps: List[Step]
    timeout: int
    program: List[str]


def _option(letter: str, arg: Optional[str], steps: List[Step]) -> Optional[int]:
    """Record one option; returns the ``-t`` value for ``-t``."""
    if letter == "t":
        assert arg is not None
        value = decimal(arg, INT_MAX)
        if value is None:
            raise Usage(f"rblsmtpd: fatal: -t wants a number from 0 to {INT_MAX}, "
                        f"not {shown(arg)}")
        return value
    if letter in FLAG_LETTERS:
        steps.append(Step(letter))
    elif letter == "r":
        assert arg is not None
        base, colon, message = arg.partition(":")
        steps.append(Step("r", ListSpec(base, message if colon else None)))
    else:
        assert arg is not None
        steps.append(Step("a", ListSpec(arg)))
    return None


def parse(argv: List[str]) -> Options:
    """djb's getopt over ``bBcCt:r:a:``: options first, clustered or
    not, an argument in the same word or the next, ``--`` ends them
    (dropped), ``-`` ends them (kept).

    Raises:
        Usage: an unknown letter, a missing argument, a bad ``-t``, no
            program.
        Request: ``--help`` or ``--version`` among the options.
    """
    steps: List[Step] = []
    timeout = DEFAULT_TIMEOUT
    scan = Getopt(argv, WITH_ARG, FLAG_LETTERS,
                  {"--help": Request(HELP), "--version": Request(version_line("rblsmtpd"))},
                  lambda text: Usage(f"rblsmtpd: {text}", USAGE))
    for letter, arg in scan:
        value = _option(letter, arg, steps)
        if value is not None:
            timeout = value
    if not scan.rest:
        raise Usage(USAGE)
    return Options(steps, timeout, scan.rest)


def client_ip(environ: Mapping[str, str]) -> str:
    """The client's address: ``$TCP6REMOTEIP`` when ``$PROTO`` is
    ``TCP6`` (and it is set), else ``$TCPREMOTEIP``, else empty."""
    if environ.get("PROTO") == "TCP6" and "TCP6REMOTEIP" in environ:
        return environ["TCP6REMOTEIP"]
    return environ.get("TCPREMOTEIP", "")


def shown_text(text: str) -> bytes:
    """Text of the environment or of an option for a warning: cut to
    200 bytes, made printable."""
    return printable(os.fsencode(text)[:200])


def _warn_errors(ip: str, errors: Tuple[Tuple[str, bytes], ...]) -> None:
    for base, text in errors:
        say(PROG + b"warning: %s answered %s with a query error, not a listing: %s"
            % (shown_text(base), shown_text(ip), printable(text[:200])))


def decide(opts: Options, environ: Mapping[str, str]) -> Decision:
    """``$RBLSMTPD``, else the lists, in djb's order."""
    ip = client_ip(environ)
    preset = rblsmtpd_variable(environ.get("RBLSMTPD"), ip)
    if preset is None and lookups(opts.steps) and reversed_ip(ip) is None:
        say(PROG + b"warning: unable to ask the lists: not an IP address: " + shown_text(ip))
    try:
        outcome = ask(ip, opts.steps, preset)
    except OSError as exc:               # no socket, say: every lookup failed
        say(PROG + b"warning: unable to ask the lists: " + errtext(exc).encode())
        failed = evaluate(opts.steps, preset, {}, True)
        assert failed is not None
        outcome = failed
    _warn_errors(ip, outcome.errors)
    return outcome.decision


# -- a refused client ---------------------------------------------------------
def _leave(signum: int, frame: object) -> None:
    os._exit(0)


def _send(data: bytes) -> None:
    """Answer the client; errors are ignored, as djb's (a closed socket
    ends the process through SIGPIPE)."""
    try:
        write_all(1, data)
    except OSError:
        pass


def refuse(decision: Decision, ip: bytes, timeout: int, greeting: str) -> NoReturn:
    """Log the refusal, then hold the dialogue on standard input and
    output for ``timeout`` seconds in all (0: the refusal line alone);
    leave with exit 0 at ``quit``, at end of file, on a read error or
    when the time is up."""
    line = refusal_line(decision.code, decision.text)
    say(PROG + ip + b" pid %d: " % os.getpid() + line)
    dialogue = Dialogue(line, greeting, talk=timeout > 0)
    if timeout > 0:
        signal.signal(signal.SIGALRM, _leave)
        signal.alarm(timeout)
    _send(dialogue.start())
    while not dialogue.done:
        try:
            data = os.read(0, CHUNK)
        except OSError:
            break
        if not data:
            break
        _send(dialogue.feed(data))
    os._exit(0)


# -- anyone else ----------------------------------------------------------------
def run(program: List[str]) -> OSError:
    """Run the program in this process, searching ``$PATH`` for a name
    without ``/`` as djb's ``pathexec_run`` does (an empty entry is the
    current directory; a file that exists but cannot be run is
    remembered, and the search goes on only past access errors).
    Returns the error if nothing could be run."""
    name = program[0]
    if "/" in name:
        try:
            os.execv(name, program)
        except OSError as exc:
            return exc
        raise AssertionError("exec returned")      # pragma: no cover
    kept: Optional[OSError] = None
    last = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    for folder in os.environ.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execv((folder or ".") + "/" + name, program)
        except OSError as exc:
            last = exc
            if exc.errno != errno.ENOENT:
                kept = exc
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EISDIR):
                    return exc
    return kept or last


def _defaults() -> None:
    """Signals as a C program gets them: SIGPIPE and SIGXFSZ (which
    Python ignores) and SIGINT (Python's handler) back to their
    default, so the program runs with them and a closed client ends
    this process as it would djb's."""
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv: Optional[List[str]] = None) -> int:
    """Run rblsmtpd.

    Args:
        argv: the arguments after the program name (default
            ``sys.argv[1:]``).

    Returns:
        100 or 111 (otherwise it runs the program or leaves after the
        dialogue, and never returns).
    """
    args = sys.argv[1:] if argv is None else argv
    _defaults()
    try:
        opts = parse(args)
    except Request as req:
        say(req.text.encode(), 1)
        return 0
    except Usage as exc:
        for text in exc.lines:
            say(os.fsencode(text))
        return EXIT_USAGE
    try:
        decision = decide(opts, os.environ)
    except MemoryError:
        say(PROG + b"fatal: out of memory")
        return EXIT_TEMP
    if decision.refuse:
        ip = os.fsencode(client_ip(os.environ))
        refuse(decision, ip, opts.timeout, os.environ.get("RBLGREETING") or GREETING)
    error = run(opts.program)
    say(PROG + b"fatal: unable to run " + os.fsencode(opts.program[0]) + b": "
        + errtext(error).encode())
    return EXIT_TEMP


if __name__ == "__main__":
    sys.exit(main())
