"""tcpclient's command line, djb style (design: tcpclient, options).

The words are split as djb's ``sgetopt`` splits them (the same rules as
tcpserver's, :mod:`ucspi.options`): options first, clustered or not, an
argument in the rest of the word or in the next one, ``--`` ends the
options, no permutation.  Then come the host, the port and, optionally,
the program: without one, tcpclient copies standard input to the
server and the server's data to standard output (IndiMail's client
mode; djb's tcpclient calls that a usage error).

Numbers are checked, where the C code's ``scan_ulong`` stops at the
first non-digit: ``-t 5x``, ``-p 70000`` or ``-T 2+x`` are usage errors.
TLS is asked for with ``-n`` or ``-s``; the other TLS options alone are
a usage error, so that ``-c ca.pem`` never means a connection in clear.

The module is pure: :func:`parse` turns argv into a :class:`Options`
value or raises :class:`~ucspi.errors.UsageError`.
"""

from __future__ import annotations

import socket
from typing import List, Optional, Tuple

from .. import version_line
from ..address import MAPPED_PACKED, parse_quad
from ..argscan import Getopt, OptionGroups, help_text
from ..errors import UsageError
from ..options import MissingArgument, OptionError, Request, number
from ..scan import INT_MAX, PORT_MAX, SCOPE_MAX, decimal, is_digits, shown

COMMAND = "tcpclient"

#: the usage text: djb's line, with IndiMail's letters and the program
#: made optional
USAGE = ("tcpclient: usage: tcpclient [ -46hHrRdDqQvz ] [ -i localip ] [ -p localport ] "
         "[ -T timeoutconn ] [ -l localname ] [ -t timeoutinfo ] [ -I interface ] "
         "[ -n clientcert ] [ -c cafile ] [ -m host ] [ -L crlfile ] [ -f cipherlist ] "
         "[ -M method ] [ -s smtp|pop3|imap ] host port [ program ]\n")

#: ``--help``: every option, grouped as the manual page groups them
OPTION_GROUPS: OptionGroups = (
    ("General", (
        ("-q", "quiet: print nothing, not even fatal errors"),
        ("-Q", "print errors and warnings (default)"),
        ("-v", "verbose: also the address connected to"),
    )),
    ("Connecting", (
        ("-T x+y", "x s per address, then y s for each that timed out (2+58)"),
        ("-i localip", "connect from localip"),
        ("-p localport", "connect from localport"),
        ("-4", "IPv4 only: A records, no IPv6 address"),
        ("-6", "describe an IPv4 connection as IPv6 (::ffff:a.b.c.d)"),
        ("-I interface", "the scope of a link-local IPv6 address"),
        ("-d", "leave the Nagle algorithm on (default)"),
        ("-D", "set TCP_NODELAY"),
    )),
    ("Data gathering", (
        ("-h", "look up the server's host name: TCPREMOTEHOST (default)"),
        ("-H", "do not look up the server's host name"),
        ("-l localname", "TCPLOCALHOST without a lookup"),
        ("-r", "ask the server's ident service: TCPREMOTEINFO (default)"),
        ("-R", "do not ask the ident service"),
        ("-t n", "give the ident exchange n seconds (default 26)"),
    )),
    ("TLS", (
        ("-n clientcert", "TLS with this certificate (\"\": clientcert.pem, if there)"),
        ("-s smtp|pop3|imap", "TLS after the protocol's STARTTLS"),
        ("-c cafile", "verify the server (default serverca.pem, if there)"),
        ("-m host", "the name the certificate must carry (default: host)"),
        ("-L crlfile", "revocation lists (default servercrl.pem, if there)"),
        ("-f cipherlist", "the cipher string, or a file holding it"),
        ("-M method", "versions: name, min:max, :max or min: (default TLSv1_2:)"),
        ("-z", "describe the session in TLS_PROVIDER"),
    )),
)


def _help() -> str:
    return help_text(USAGE, OPTION_GROUPS, [
        "host: a name, an IPv4 or IPv6 address; 0 or empty is 127.0.0.1.",
        "port: a number or a service name.  The program gets the connection on",
        "descriptors 6 (read) and 7 (write); without a program, standard input",
        "goes to the server and the server's data to standard output.",
        "--help: this text; --version: the version.  More: man tcpclient."])


#: what ``--help`` prints
HELP = _help()

#: letters that take an argument
WITH_ARG = frozenset("ipTltInscmLfM")
#: letters that are flags
FLAGS = frozenset("qQvhHrRdD46z")
#: the protocols of ``-s``
STARTTLS = ("smtp", "pop3", "imap")
#: the TLS options that mean nothing without ``-n`` or ``-s``
TLS_ONLY = "cmLfMz"


class Options:
    """What the command line asks of tcpclient."""

    verbosity: int = 1                        # -q 0, -Q 1, -v 2
    nodelay: bool = False                     # -D / -d (default)
    remote_host: bool = True                  # -h (default) / -H
    remote_info: bool = True                  # -r (default) / -R
    local_ip: Optional[str] = None            # -i
    local_port: int = 0                       # -p
    connect_timeouts: Tuple[int, int] = (2, 58)   # -T x+y
    localname: Optional[str] = None           # -l
    ident_timeout: int = 26                   # -t
    ipv4_only: bool = False                   # -4
    force_ipv6: bool = False                  # -6
    interface: Optional[str] = None           # -I
    tls: bool = False                         # -n or -s
    certfile: Optional[str] = None            # -n file ("": the default file, if any)
    cafile: Optional[str] = None              # -c
    crlfile: Optional[str] = None             # -L
    match: Optional[str] = None               # -m
    ciphers: Optional[str] = None             # -f
    tls_method: Optional[str] = None          # -M
    tls_details: bool = False                 # -z
    starttls: Optional[str] = None            # -s smtp|pop3|imap
    host: str = "127.0.0.1"
    port: str = ""
    argv: List[str]

    def __init__(self) -> None:
        self.argv = []
        self.given: List[str] = []            # the TLS-only letters used

    def __repr__(self) -> str:
        return f"Options({vars(self)!r})"


def getopt(argv: List[str]) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    """Split ``argv`` (without the program name) as djb's getopt does.

    Returns:
        ``(options, rest)``: ``(letter, argument or None)`` in order, and
        the words after the options.

    Raises:
        OptionError: an unknown letter or a missing argument (the C
            text, ``illegal option -- X``).
        Request: ``--help`` or ``--version`` where an option may be.
    """
    return Getopt(argv, WITH_ARG, FLAGS, {"--help": Request(HELP),
                                          "--version": Request(version_line(COMMAND) + "\n")},
                  OptionError).all()


def connect_timeouts(text: str) -> Tuple[int, int]:
    """``-T x+y``, ``-T x`` (``x+0``, as djb's code reads it) or ``-T
    +y``; an empty part is 0.

    Raises:
        UsageError: anything but digits around one optional ``+``.
    """
    first, plus, second = text.partition("+")
    values = []
    for part in (first, second):
        value = decimal(part, INT_MAX) if part else 0
        if value is None:
            raise UsageError(f"-T wants x+y, two numbers from 0 to {INT_MAX} seconds, "
                             f"not {shown(text)}")
        values.append(value)
    return values[0], values[1]


def local_address(text: str) -> str:
    """``-i``: an IPv4 address (dotted quad) or an IPv6 address, with an
    optional ``%scope``; returned as given (``::ffff:a.b.c.d`` as
    ``a.b.c.d``).

    Raises:
        UsageError: anything else (djb's tcpclient: a usage error too).
    """
    if parse_quad(text, max_digits=3) is not None:
        return text
    try:
        packed = socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
    except (OSError, ValueError):
        raise UsageError(f"-i wants an IP address, not {shown(text)}") from None
    if packed.startswith(MAPPED_PACKED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])      # an IPv4 address
    scope = text.partition("%")[2]
    if scope and is_digits(scope) and decimal(scope, SCOPE_MAX) is None:
        raise UsageError(f"-i: the scope wants an interface name or a number from 0 to "
                         f"{SCOPE_MAX}, not {shown(scope)}")
    return text


def _starttls(text: str) -> str:
    protocol = text.lower()
    if protocol not in STARTTLS:
        raise UsageError(f"-s wants smtp, pop3 or imap, not {shown(text)}")
    return protocol


def _apply(opts: Options, letter: str, arg: Optional[str]) -> None:
    text = arg or ""
    flags = {
        "q": ("verbosity", 0), "Q": ("verbosity", 1), "v": ("verbosity", 2),
        "d": ("nodelay", False), "D": ("nodelay", True),
        "h": ("remote_host", True), "H": ("remote_host", False),
        "r": ("remote_info", True), "R": ("remote_info", False),
        "4": ("ipv4_only", True), "6": ("force_ipv6", True), "z": ("tls_details", True),
    }
    texts = {"l": "localname", "c": "cafile", "L": "crlfile", "m": "match",
             "f": "ciphers", "M": "tls_method"}
    if letter in TLS_ONLY:
        opts.given.append(letter)
    if letter in flags:
        name, value = flags[letter]
        setattr(opts, name, value)
    elif letter in texts:
        setattr(opts, texts[letter], text)
    elif letter == "i":
        opts.local_ip = local_address(text)
    elif letter == "p":
        opts.local_port = number("p", text, 0, PORT_MAX)
    elif letter == "t":
        opts.ident_timeout = number("t", text)
    elif letter == "T":
        opts.connect_timeouts = connect_timeouts(text)
    elif letter == "I":
        if is_digits(text) and decimal(text, SCOPE_MAX) is None:
            raise UsageError(f"-I wants an interface name or a number from 0 to "
                             f"{SCOPE_MAX}, not {shown(text)}")
        opts.interface = text
    elif letter == "n":
        opts.tls, opts.certfile = True, text
    elif letter == "s":
        opts.tls, opts.starttls = True, _starttls(text)


def _tls_needed(opts: Options) -> None:
    """A TLS option without TLS is a mistake worth stopping for: the
    connection would go in clear."""
    if opts.given and not opts.tls:
        raise UsageError(f"-{opts.given[0]} needs TLS: give -n clientcert or -s protocol")


def _port(text: str) -> None:
    """A numeric port must be at most 65535 (djb's code takes it modulo
    65536).  Names are looked up later."""
    if is_digits(text) and decimal(text, PORT_MAX) is None:
        raise UsageError(f"the port wants a number from 0 to {PORT_MAX} or a service name, "
                         f"not {shown(text)}")


def parse(argv: List[str]) -> Options:
    """Parse tcpclient's command line (without the program name).

    Returns:
        The options with ``host`` (``""`` and ``0`` are ``127.0.0.1``),
        ``port`` and ``argv`` (empty: client mode).

    Raises:
        UsageError: a bad option or number, a TLS option without TLS,
            or no host or port (:class:`~ucspi.options.MissingArgument`,
            silent under ``-q`` as in C).
        Request: ``--help`` or ``--version``.
    """
    opts = Options()
    pairs, rest = getopt(argv)
    for letter, arg in pairs:
        _apply(opts, letter, arg)
    if len(rest) < 2:
        raise MissingArgument(quiet=opts.verbosity == 0)
    _tls_needed(opts)
    opts.host = rest[0] if rest[0] not in ("", "0") else "127.0.0.1"
    opts.port = rest[1]
    _port(opts.port)
    opts.argv = rest[2:]
    return opts
