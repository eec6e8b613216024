"""Where tcpclient connects, and how it tries (design: tcpclient).

* :func:`port_number`: the port argument, a number or a service name.
* :func:`addresses`: the host argument's addresses.  An address literal
  is taken as it is, with no DNS configuration read; a name is
  qualified and looked up through our resolver (``$DNSCACHEIP``, the
  rewriting rules, ``$LOCALDOMAIN``; :func:`ucspi.dns.lookup.qualify`),
  AAAA and A records, or A records alone with ``-4`` (djb's
  ``dns_ip4_qualify``).  The answers come shuffled.
* :func:`connect_any`: djb's ``-T x+y`` rule.  Each address gets ``x``
  seconds, in order; the ones that timed out are tried again with ``y``
  seconds each; with a single address the two are added.  Every
  address that fails for good gets one warning, ``unable to connect to
  IP port N: <error>``, as in C; a timeout of the first round is no
  failure yet when a second round follows.
* :func:`attempt`: one connection, bound to ``-i``/``-p`` when given,
  non-blocking, waited for with ``poll`` within its timeout, the socket
  handed back blocking.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..address import parse_quad, scope_id
from ..errors import Fatal, errtext
from ..scan import PORT_MAX, decimal

if False:  # for mypy only: the resolver is imported when a name needs it
    from ..dns.conf import DnsConfig  # noqa: F401

SockAddr = Tuple[object, ...]


class Target(NamedTuple):
    """One address to connect to."""

    family: int
    address: str          # what the socket module takes (no scope)
    scope: int            # IPv6 scope id (0: none)
    shown: str            # as messages show it: dotted IPv4, or IPv6 text

    def sockaddr(self, port: int) -> SockAddr:
        if self.family == socket.AF_INET:
            return (self.address, port)
        return (self.address, port, 0, self.scope)


# -- the port ------------------------------------------------------------------
def port_number(text: str) -> int:
    """The port argument: decimal digits, else a service name.

    Raises:
        Fatal: ``unable to figure out port number for X`` (111).
    """
    value = decimal(text, PORT_MAX)
    if value is not None:
        return value
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise Fatal(f"unable to figure out port number for {text}") from None


# -- the addresses --------------------------------------------------------------
def interface_index(name: Optional[str]) -> int:
    """``-I``: an interface name or index (0: none).

    Raises:
        Fatal: no interface has that name.
    """
    if not name:
        return 0
    try:
        return scope_id(name)
    except ValueError:
        raise Fatal(f"unable to figure out interface {name}") from None


def target(ip: IPv6Address, interface: int = 0) -> Target:
    """The :class:`Target` of an address as the resolver gives it
    (IPv4 as ``::ffff:a.b.c.d``, an IPv6 literal possibly with a scope):
    IPv4 goes over an IPv4 socket, IPv6 over an IPv6 one."""
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return Target(socket.AF_INET, str(mapped), 0, str(mapped))
    text = str(IPv6Address(ip.packed))
    scope = interface
    named = getattr(ip, "scope_id", None)          # Python 3.9+: "fe80::1%eth0"
    if named:
        scope = interface_index(named)
    return Target(socket.AF_INET6, text, scope, text)


def literal(host: str) -> Optional[IPv6Address]:
    """A host argument that is an address literal, as an IPv6 address
    (IPv4 mapped); None for a name.  No DNS configuration is read for a
    literal."""
    quad = parse_quad(host, max_digits=3)
    if quad is not None:
        return IPv6Address(bytes(10) + b"\xff\xff" + quad)
    if ":" not in host:
        return None
    try:
        found = ip_address(host)
    except ValueError:
        return None
    if isinstance(found, IPv4Address):
        return None
    return found


def _a_records(conf: "DnsConfig", name: str) -> List[IPv6Address]:
    """A records only, as djb's ``dns_ip4`` asks (``-4``), shuffled.

    Raises:
        DnsError: the lookup failed or the name cannot be encoded.
    """
    import secrets

    from ..dns.msg import TYPE_A, DnsError, Question, encode_name, parse_addresses
    from ..dns.transmit import PacketDone, Transmit
    from ..reactor import Reactor, run_blocking

    question = Question(encode_name(name), TYPE_A)
    Answer = Tuple[Optional[bytes], Optional[DnsError]]

    def start(reactor: Reactor, report: Callable[[Answer], None]) -> Transmit:
        got: PacketDone = lambda packet, error: report((packet, error))  # noqa: E731
        return Transmit(reactor, conf, question, got).start()

    result = run_blocking(start)
    if result is None:
        raise DnsError("DNS lookup stalled", errno.EIO)
    packet, error = result
    if error is not None or packet is None:
        raise error or DnsError("no answer", errno.EIO)
    found = [IPv6Address(data) for data in parse_addresses(packet)]
    secrets.SystemRandom().shuffle(found)
    return found


def _qualify4(conf: "DnsConfig", host: str) -> List[IPv6Address]:
    """:func:`ucspi.dns.lookup.qualify` (strict) with A lookups only."""
    from ..dns.conf import apply_rules, candidates, literal as dns_literal

    if conf.rules_error is not None:
        raise conf.rules_error
    for candidate in candidates(apply_rules(host, conf.rules)):
        found = dns_literal(candidate)
        if found is None:
            found = _a_records(conf, candidate)
        found = [ip for ip in found if ip.ipv4_mapped is not None]
        if found:
            return found
    return []


def resolver(environ: Mapping[str, str], ipv4_only: bool) -> "DnsConfig":
    """The resolver's configuration (read once, never raises)."""
    from ..dns.conf import DnsConfig
    return DnsConfig.load(environ, ipv4_only=ipv4_only)


def addresses(host: str, ipv4_only: bool, local_family: Optional[int],
              conf: Callable[[], "DnsConfig"]) -> List[IPv6Address]:
    """The addresses to try for the host argument.

    Args:
        host: the argument (``0`` and empty already made 127.0.0.1).
        ipv4_only: ``-4``: IPv4 addresses only.
        local_family: ``-i``'s family: only addresses of that family.
        conf: gives the resolver's configuration (called for a name only).

    Raises:
        Fatal: ``temporarily unable to figure out IP address for H:
            <error>`` or ``no IP address for H``.
    """
    found: List[IPv6Address]
    single = literal(host)
    if single is not None:
        found = [single]
    else:
        from ..dns.lookup import qualify
        from ..dns.msg import DnsError
        try:
            found = _qualify4(conf(), host) if ipv4_only else qualify(conf(), host, True)
        except DnsError as exc:
            raise Fatal(f"temporarily unable to figure out IP address for {host}: "
                        f"{errtext(exc)}") from None
    if ipv4_only or local_family == socket.AF_INET:
        found = [ip for ip in found if ip.ipv4_mapped is not None]
    elif local_family == socket.AF_INET6:
        found = [ip for ip in found if ip.ipv4_mapped is None]
    if not found:
        raise Fatal(f"no IP address for {host}")
    return found


# -- connecting ------------------------------------------------------------------
class Local(NamedTuple):
    """Where the connections come from: ``-i`` (None: any) and ``-p``."""

    ip: Optional[str]
    port: int

    def family(self) -> Optional[int]:
        if self.ip is None:
            return None
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET

    def sockaddr(self, family: int, interface: int) -> SockAddr:
        if family == socket.AF_INET:
            return (self.ip or "0.0.0.0", self.port)
        ip, _, scope = (self.ip or "::").partition("%")
        return (ip, self.port, 0, interface_index(scope) if scope else interface)


#: the longest wait ``poll`` takes at once, in seconds (its C int of ms)
POLL_MAX = (2**31 - 1) // 1000


def _wait_writable(sock: socket.socket, timeout: float) -> bool:
    """Wait until ``sock`` is writable (connected or failed), at most
    ``timeout`` seconds, however long that is."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    deadline = time.monotonic() + timeout
    while True:
        left = min(max(0.0, deadline - time.monotonic()), POLL_MAX)
        if poller.poll(int(left * 1000)):
            return True
        if time.monotonic() >= deadline:
            return False


def attempt(where: Target, port: int, timeout: float, local: Local,
            interface: int = 0) -> socket.socket:
    """Connect to one address within ``timeout`` seconds.

    Returns:
        The connected socket, in blocking mode.

    Raises:
        Fatal: the socket cannot be made or bound (djb: fatal at once).
        OSError: this address failed (``ETIMEDOUT`` for the timeout),
            or its family is not there (a host without IPv6).
    """
    try:
        sock = socket.socket(where.family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        raise Fatal(f"unable to create socket: {errtext(exc)}") from None
    try:
        if local.ip is not None or local.port:
            try:
                sock.bind(local.sockaddr(where.family, interface))
            except OSError as exc:
                raise Fatal(f"unable to bind socket: {errtext(exc)}") from None
        sock.setblocking(False)
        error = sock.connect_ex(where.sockaddr(port))
        if error in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            if not _wait_writable(sock, timeout):
                raise OSError(errno.ETIMEDOUT, "timed out")
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, errtext(error))
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise


Attempt = Callable[[IPv6Address, float], socket.socket]
Warn = Callable[[IPv6Address, OSError], None]


def connect_any(found: Sequence[IPv6Address], timeouts: Tuple[int, int],
                connect: Attempt, warn: Warn) -> Optional[socket.socket]:
    """djb's ``-T x+y`` rule over ``found`` (see the module docstring).

    Args:
        found: the addresses, in the order to try them.
        timeouts: ``(x, y)``.
        connect: one attempt: ``(address, seconds) -> socket``, raising
            OSError when that address fails.
        warn: told of each address that failed for good.

    Returns:
        The first socket connected, or None when every address failed.
    """
    first, second = timeouts
    if len(found) == 1:
        first, second = first + second, 0
    later: List[IPv6Address] = []
    for ip in found:
        try:
            return connect(ip, first)
        except OSError as exc:
            if second and exc.errno == errno.ETIMEDOUT:
                later.append(ip)
            else:
                warn(ip, exc)
    for ip in later:
        try:
            return connect(ip, second)
        except OSError as exc:
            warn(ip, exc)
    return None
