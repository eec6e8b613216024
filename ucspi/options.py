"""Command-line parsing for tcpserver, djb style.

The parser follows djb's ``sgetopt`` rather than GNU getopt: options
come first, may be clustered (``-vo``, ``-Rt5``), an option argument is
the rest of the word or the next word, ``--`` ends the options and is
dropped, a lone ``-`` ends them and stays, and there is no permutation
(the first non-option word is the host).

Unlike the C ``scan_ulong``, numeric arguments are checked
(design: options): ``-c 4x``, ``-c 0``, ``-C -1`` or ``-b x`` are usage errors, and
so are numbers out of range, a numeric port above 65535, and an
interface index (``-I``, ``host%index``) above ``2**32 - 1``.  Every
number goes through the one bounded parser, :mod:`ucspi.scan`, so no
length of digits reaches ``int()``.  ``--help`` and ``--version``
where an option may be are a :class:`Request`, not an error.

The module is pure: :func:`parse` turns argv and the environment into a
:class:`Options` value or raises :class:`~ucspi.errors.UsageError`.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Tuple

from . import version_line
from .argscan import Getopt, OptionGroups, help_text
from .errors import UsageError
from .scan import ID_MAX, INT_MAX, PORT_MAX, SCOPE_MAX, decimal, is_digits, leading, shown

#: The usage text, djb's one line with our letters (printed with an
#: option error; ``--help`` adds the options, :data:`HELP`).
USAGE = ("tcpserver: usage: tcpserver [ -461UXpPhHrRoOdDqQvVsNzwyY ] [ -c limit | -c file ] "
         "[ -C perhostlimit ] [ -x rules.cdb ] [ -m db.conf ] [ -B banner ] [ -g gid ] [ -u uid ] "
         "[ -b backlog ] [ -l localname ] [ -t timeout ] [ -e pidfile ] [ -I interface ] "
         "[ -n certfile ] [ -i certdir ] [ -a cafile ] [ -L crlfile ] [ -f cipherlist ] "
         "[ -M method ] [ -S timeout ] [ -T timeout ] host port program\n")

#: ``--help``: the options, grouped as the manual page groups them
#: (General, Connections, Data gathering, TLS), one line per option, with
#: its default; tests/test_hardening2.py keeps it in step with the page.
OPTION_GROUPS: OptionGroups = (
    ("General", (
        ("-q", "quiet: print nothing, not even fatal errors"),
        ("-Q", "print errors and warnings (default)"),
        ("-v", "verbose: also status lines and a line per connection"),
        ("-V", "like -v, and the connection table after every status line"),
        ("-e pidfile", "refuse to run twice; write the pid to pidfile (a regular file)"),
    )),
    ("Connections", (
        ("-c n", "run at most n programs at once (default 40)"),
        ("-c file", "read that limit from file ($CONTROLDIR/file for a bare name)"),
        ("-C n", "at most n programs per client address, 0: none (default 20)"),
        ("-x rules.cdb", "follow the rules in rules.cdb (made by tcprules)"),
        ("-X", "with -x: a rules.cdb that does not exist means no rules"),
        ("-m db.conf", "ask the MySQL table that db.conf names for the rules"),
        ("-B banner", "write banner to each client first"),
        ("-g gid", "after binding, become group gid (names, numbers, a,b,c list)"),
        ("-u uid", "after binding, become user uid (a name or a number)"),
        ("-U", "-g $GID -u $UID (envuidgid, chpst -U)"),
        ("-1", "print the local port once listening"),
        ("-4", "IPv4 only"),
        ("-6", "describe every connection as IPv6 (::ffff:a.b.c.d)"),
        ("-I interface", "the scope of a link-local IPv6 host"),
        ("-b n", "let the kernel queue n unaccepted connections (default 20)"),
        ("-o", "leave IP options alone"),
        ("-O", "remove IP options (default)"),
        ("-d", "leave the Nagle algorithm on (default)"),
        ("-D", "set TCP_NODELAY"),
    )),
    ("Data gathering", (
        ("-h", "look up the client's host name: TCPREMOTEHOST (default)"),
        ("-H", "do not look up the client's host name"),
        ("-p", "paranoid: keep only a host name that maps back to the client"),
        ("-P", "not paranoid (default)"),
        ("-l localname", "TCPLOCALHOST without a lookup (-l0 is usual)"),
        ("-r", "ask the client's ident server: TCPREMOTEINFO (default)"),
        ("-R", "do not ask the ident server"),
        ("-t n", "give the ident exchange n seconds (default 26)"),
    )),
    ("TLS", (
        ("-n certfile", "TLS with the certificate chain and key in certfile"),
        ("-s", "TLS with $TLS_CERTFILE or servercert.pem in certdir"),
        ("-i certdir", "certificate directory (default $CERTDIR, /etc/indimail/certs)"),
        ("-a cafile", "CA certificates (default $CLIENTCA or clientca.pem)"),
        ("-L crlfile", "revocation lists (default $CLIENTCRL or clientcrl.pem)"),
        ("-f cipherlist", "the cipher string, or a file holding it"),
        ("-M method", "versions: name, min:max, :max or min: (default TLSv1_2:)"),
        ("-N", "let clients renegotiate (TLS 1.2 and older)"),
        ("-z", "describe the session in TLS_PROVIDER"),
        ("-w", "delayed TLS: the program asks for it on $SSLCTLFD (UCSPI-TLS)"),
        ("-Y", "ask clients for a certificate, checked against -a if sent"),
        ("-y", "require a client certificate, checked against -a"),
        ("-S n", "give a handshake n seconds, 0: no limit (default 60)"),
        ("-T n", "end a connection idle for n seconds, 0: never (default 300)"),
    )),
)


def _help() -> str:
    return help_text(USAGE, OPTION_GROUPS, [
        "host: 0 (every address), an IPv4 or IPv6 address, or a name; a host",
        "starting with / is a UNIX socket, and no port follows it.",
        "--help: this text; --version: the version.  More: man tcpserver."])


#: letters that take an argument
WITH_ARG = frozenset("cCxmBgulbtTeInafMiLS")
#: letters that are flags
FLAGS = frozenset("qQvVUX1 46oOdDhHpPrRsNzwyY".replace(" ", ""))

#: ``Options.client_cert``: -Y asks for a client certificate, -y requires one
CLIENT_OPTIONAL = "optional"
CLIENT_REQUIRED = "required"

DEFAULT_LIMIT = 40
DEFAULT_PER_HOST = 20

#: what ``--help`` prints: the usage line, then every option
HELP = _help()


class Options:
    """Everything the command line (and ``$MAXPERIP``, ``$UID``,
    ``$GID``) asks of the server.

    A plain class rather than a dataclass: ``dataclasses`` pulls in
    ``inspect`` and friends, which a long-running server would carry
    in memory for nothing.
    """

    verbosity: int = 1
    table_after_status: bool = False          # -V
    limit: int = DEFAULT_LIMIT                # -c n
    limit_file: Optional[str] = None          # -c file
    max_per_host: int = DEFAULT_PER_HOST      # -C n, $MAXPERIP; 0 = none
    rules: Optional[str] = None               # -x cdb
    mysql: Optional[str] = None               # -m db.conf
    rules_missing_ok: bool = False            # -X
    banner: bytes = b""                       # -B
    user: Optional[str] = None                # -u name
    uid: Optional[int] = None                 # -u number, -U $UID
    gid: Optional[int] = None                 # -U $GID
    ids_from_env: bool = False                # -U given
    groups: Optional[str] = None              # -g text (number, name, list)
    print_port: bool = False                  # -1
    ipv4_only: bool = False                   # -4
    force_ipv6: bool = False                  # -6
    interface: Optional[str] = None           # -I
    backlog: int = 20                         # -b
    kill_ip_options: bool = True              # -O (default) / -o
    nodelay: bool = False                     # -D / -d (default)
    remote_host: bool = True                  # -h (default) / -H
    paranoid: bool = False                    # -p / -P (default)
    localname: Optional[str] = None           # -l
    remote_info: bool = True                  # -r (default) / -R
    ident_timeout: int = 26                   # -t
    pidfile: Optional[str] = None             # -e
    tls: bool = False                         # -n, -s
    certfile: Optional[str] = None            # -n file ("" or -s: the default)
    certdir: Optional[str] = None             # -i
    cafile: Optional[str] = None              # -a
    crlfile: Optional[str] = None             # -L
    ciphers: Optional[str] = None             # -f file or cipher string
    tls_method: Optional[str] = None          # -M
    renegotiation: bool = False               # -N
    tls_details: bool = False                 # -z
    delayed_tls: bool = False                 # -w: UCSPI-TLS, the program asks
    client_cert: str = ""                     # -Y optional, -y required, "": none asked
    handshake_timeout: int = 60               # -S (0: none)
    idle_timeout: int = 300                   # -T (0: none; TLS only)
    host: str = "0"
    port: str = ""
    unix: bool = False                        # host starting with /: UNIX-domain mode
    argv: List[str]

    def __init__(self) -> None:
        self.argv = []

    def __repr__(self) -> str:
        return f"Options({vars(self)!r})"


class Request(Exception):
    """``--help`` or ``--version`` in the place of an option: not an
    error.  ``text`` goes to standard output and the exit code is 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class MissingArgument(UsageError):
    """No host, port or program.  Like the C server, this comes after
    option parsing, so ``-q`` silences it (``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        super().__init__("")
        self.quiet = quiet


class OptionError(UsageError):
    """An unknown letter or a missing argument: printed as the C server
    does (``tcpserver: illegal option -- X``), then the usage text."""


def getopt(argv: List[str]) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    """Split ``argv`` (without the program name) djb style.

    Returns:
        ``(options, rest)``: options as ``(letter, argument or None)`` in
        order, and the words after them.

    Raises:
        UsageError: an unknown letter or a missing argument; the message
            is the C text (``illegal option -- X``).
        Request: ``--help`` or ``--version`` where an option may be.
    """
    return Getopt(argv, WITH_ARG, FLAGS, {"--help": Request(HELP),
                                          "--version": Request(version_line("tcpserver") + "\n")},
                  OptionError).all()


MAX_NUMBER = INT_MAX     # what the kernel takes for a backlog, a timeout in s...
MAX_ID = ID_MAX          # the largest uid/gid (2**32 - 1 means "none")


def number(letter: str, text: str, minimum: int = 0, maximum: int = MAX_NUMBER,
           what: str = "") -> int:
    """A decimal option argument, checked (design: options) by the one bounded
    parser (:func:`ucspi.scan.decimal`).

    Args:
        letter: the option letter, for the message.
        text: the argument.
        minimum, maximum: the range accepted.
        what: names the input in the message instead of ``-<letter>``.

    Raises:
        UsageError: not all ASCII digits, or outside ``minimum``..``maximum``.
    """
    value = decimal(text, maximum)
    if value is None or value < minimum:
        raise UsageError(f"{what or '-' + letter} wants a number from {minimum} to {maximum}, "
                         f"not {shown(text)}")
    return value


def leading_number(text: str) -> int:
    """C ``scan_ulong`` for ``$MAXPERIP``: the leading decimal digits, 0
    if none; a value above :data:`MAX_NUMBER` counts as
    :data:`MAX_NUMBER` (no practical limit) instead of wrapping."""
    return leading(text, MAX_NUMBER)


def _groups(text: str) -> None:
    """``-g``: numbers among the names must be valid ids."""
    for entry in text.split(","):
        if is_digits(entry) and decimal(entry, MAX_ID) is None:
            raise UsageError(f"-g wants group names or numbers from 0 to {MAX_ID}, "
                             f"not {shown(entry)}")


def _scope(what: str, text: str) -> None:
    """An interface given as a number (``-I 2``, ``fe80::1%2``) must be
    a valid index; a name is looked up later (unknown: 0, as in C)."""
    if is_digits(text) and decimal(text, SCOPE_MAX) is None:
        raise UsageError(f"{what} wants an interface name or a number from 0 to "
                         f"{SCOPE_MAX}, not {shown(text)}")


def _port(text: str) -> None:
    """A numeric port must be at most 65535 (the C server takes it
    modulo 65536: ``99999`` listens on 34463).  Names are looked up
    later."""
    if is_digits(text) and decimal(text, PORT_MAX) is None:
        raise UsageError(f"the port wants a number from 0 to {PORT_MAX} or a service name, "
                         f"not {shown(text)}")


def _limit(opts: Options, text: str) -> None:
    if text[:1].isdigit() or text == "":
        opts.limit = number("c", text, 1)
        opts.limit_file = None
    else:
        opts.limit_file = text


def _env_ids(opts: Options, environ: Mapping[str, str]) -> None:
    uid = environ.get("UID")
    gid = environ.get("GID")
    if uid is not None:
        opts.uid = number("U", uid, 0, MAX_ID, what="-U: $UID") if uid else None
        opts.user = None
    if gid is not None:
        opts.gid = number("U", gid, 0, MAX_ID, what="-U: $GID") if gid else None


def _apply(opts: Options, letter: str, arg: Optional[str], environ: Mapping[str, str]) -> None:
    text = arg or ""
    simple = {
        "q": ("verbosity", 0), "Q": ("verbosity", 1), "v": ("verbosity", 2),
        "X": ("rules_missing_ok", True), "1": ("print_port", True),
        "4": ("ipv4_only", True), "6": ("force_ipv6", True),
        "o": ("kill_ip_options", False), "O": ("kill_ip_options", True),
        "d": ("nodelay", False), "D": ("nodelay", True),
        "h": ("remote_host", True), "H": ("remote_host", False),
        "p": ("paranoid", True), "P": ("paranoid", False),
        "r": ("remote_info", True), "R": ("remote_info", False),
        "s": ("tls", True), "w": ("delayed_tls", True),
        "Y": ("client_cert", CLIENT_OPTIONAL), "y": ("client_cert", CLIENT_REQUIRED),
    }
    if letter in simple:
        name, value = simple[letter]
        setattr(opts, name, value)
        if letter in "qQv":
            opts.table_after_status = False
    elif letter == "V":
        opts.verbosity, opts.table_after_status = 2, True
    elif letter == "c":
        _limit(opts, text)
    elif letter == "C":
        opts.max_per_host = number("C", text)
    elif letter == "b":
        opts.backlog = number("b", text)
    elif letter == "t":
        opts.ident_timeout = number("t", text)
    elif letter == "x":
        opts.rules = text
    elif letter == "m":
        opts.mysql = text
    elif letter == "B":
        opts.banner = os.fsencode(text)
    elif letter == "g":
        _groups(text)
        opts.groups = text
    elif letter == "u":
        if is_digits(text):
            opts.uid, opts.user = number("u", text, 0, MAX_ID), None
        else:
            opts.user, opts.uid = text, None
    elif letter == "U":
        opts.ids_from_env = True
        _env_ids(opts, environ)
    elif letter == "l":
        opts.localname = text
    elif letter == "I":
        _scope("-I", text)
        opts.interface = text
    elif letter == "e":
        opts.pidfile = text
    elif letter == "n":
        opts.tls = True
        opts.certfile = text or None
    elif letter in "iaLfM":
        name = {"i": "certdir", "a": "cafile", "L": "crlfile", "f": "ciphers",
                "M": "tls_method"}[letter]
        setattr(opts, name, text if letter in "ifM" else text or None)
    elif letter == "N":
        opts.renegotiation = True
    elif letter == "z":
        opts.tls_details = True
    elif letter == "S":
        opts.handshake_timeout = number("S", text)
    elif letter == "T":
        opts.idle_timeout = number("T", text)


def _tls_needed(opts: Options) -> None:
    """``-w``, ``-Y`` and ``-y`` are about a TLS server: without ``-n``
    or ``-s``, they are a usage error."""
    if opts.tls:
        return
    if opts.delayed_tls:
        raise UsageError("-w needs TLS: give -n certfile or -s")
    if opts.client_cert:
        letter = "y" if opts.client_cert == CLIENT_REQUIRED else "Y"
        raise UsageError(f"-{letter} needs TLS: give -n certfile or -s")


def _missing(opts: Options) -> MissingArgument:
    return MissingArgument(quiet=opts.verbosity == 0)


def _unix_mode(opts: Options) -> None:
    """A host starting with ``/``: UNIX-domain mode, no port argument.
    The options that mean nothing there are turned off (as in IndiMail:
    ``-1 -x -X -h -H -p -r -R -l -o -O -d -D -4 -6 -I`` are ignored)."""
    opts.unix = True
    opts.port = ""
    opts.print_port = False
    opts.rules, opts.rules_missing_ok = None, False
    opts.remote_host, opts.paranoid, opts.remote_info = False, False, False
    opts.localname = None
    opts.kill_ip_options, opts.nodelay = False, False
    opts.ipv4_only, opts.force_ipv6, opts.interface = False, False, None


def parse(argv: List[str], environ: Mapping[str, str] = os.environ) -> Options:
    """Parse tcpserver's command line (without the program name).

    Args:
        argv: the words after ``argv[0]``.
        environ: where ``$MAXPERIP``, ``$UID`` and ``$GID`` come from.

    Returns:
        The options, with ``host``, ``port`` and ``argv`` filled in
        (a host starting with ``/`` is a socket path: ``unix`` is set and
        no port argument is taken).

    Raises:
        UsageError: bad option, bad number, or missing host/port/program.
        Request: ``--help`` or ``--version``.
    """
    opts = Options()
    if "MAXPERIP" in environ:
        opts.max_per_host = leading_number(environ["MAXPERIP"])
    pairs, rest = getopt(argv)
    for letter, arg in pairs:
        _apply(opts, letter, arg, environ)
    if not rest:
        raise _missing(opts)
    opts.host = rest[0] or "0"
    if opts.host.startswith("/"):
        if len(rest) < 2:
            raise _missing(opts)
        _unix_mode(opts)
        _tls_needed(opts)
        opts.argv = rest[1:]
        return opts
    if len(rest) < 3:
        raise _missing(opts)
    _tls_needed(opts)
    if ":" in opts.host and "%" in opts.host:
        _scope("the host's scope id", opts.host.partition("%")[2])
    opts.port = rest[1]
    _port(opts.port)
    opts.argv = rest[2:]
    return opts
