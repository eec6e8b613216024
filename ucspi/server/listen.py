"""The listening side: the host and port arguments and the sockets.

* Host ``0``, ``::``, ``0.0.0.0`` or empty: every local address.  One
  ``AF_INET6`` socket with ``IPV6_V6ONLY`` off where the kernel allows
  (IPv4 clients then arrive IPv4-mapped), two sockets (IPv6-only and
  IPv4) where it does not, and a plain ``AF_INET`` socket under ``-4``
  or on hosts without IPv6.
* An IPv4 literal (or an IPv4-mapped IPv6 literal) binds an ``AF_INET``
  socket and puts the server in IPv4 mode, as if ``-4`` were given.
* An IPv6 literal, optionally with ``%iface``, binds ``AF_INET6``.
* Anything else is a name, qualified and resolved through our own DNS
  stub resolver (:func:`ucspi.dns.lookup.qualify`); the first address is used.

The port is a decimal number from 0 to 65535 (the C server takes any
number modulo 65536; a larger one is a usage error here) or a TCP
service name from ``/etc/services``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, List, Optional, Tuple

from ..address import parse_quad, scope_id
from ..errors import Fatal, UsageError, errtext
from ..scan import PORT_MAX, decimal, is_digits, shown

WILDCARDS = ("0", "::", "0.0.0.0", "")


class Listener:
    """The bound, listening sockets and what they imply."""

    def __init__(self, sockets: List[socket.socket], port: int) -> None:
        self.sockets = sockets    # each one's family says IPv4 or IPv6
        self.port = port


def parse_port(text: str) -> int:
    """A port argument.

    Raises:
        UsageError: a number above 65535.
        Fatal: ``unable to figure out port number for <text>``.
    """
    if text == "":
        return 0
    if is_digits(text):
        port = decimal(text, PORT_MAX)
        if port is None:
            raise UsageError(f"the port wants a number from 0 to {PORT_MAX} or a service "
                             f"name, not {shown(text)}")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise Fatal(f"unable to figure out port number for {text}") from None


def dotted_quad(text: str) -> Optional[str]:
    """A strict IPv4 literal: four decimal parts 0..255 (leading zeros
    allowed, as the C parser does), optionally in brackets."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    octets = parse_quad(text, max_digits=3)
    return None if octets is None else ".".join(str(n) for n in octets)


Resolve = Callable[[str], List[ipaddress.IPv6Address]]


def host_address(host: str, ipv4_only: bool, resolve: Resolve) -> Tuple[bool, str, int]:
    """Turn the host argument into ``(ipv4, address text, scope id)``.

    Args:
        host: the argument.
        ipv4_only: ``-4`` was given.
        resolve: qualifies and resolves a name (see module docstring);
            returns IPv6 addresses (A answers IPv4-mapped), ``[]`` for
            none, raises for a temporary failure.

    Raises:
        Fatal: no address, or the lookup failed.
    """
    if host in WILDCARDS:
        return (True, "0.0.0.0", 0) if ipv4_only else (False, "::", 0)
    quad = dotted_quad(host)
    if quad is not None:
        return True, quad, 0
    if ":" in host and "[" not in host:
        text, _, scope = host.partition("%")
        try:
            addr = ipaddress.IPv6Address(text)
        except ValueError:
            raise Fatal(f"no IP address for {host}") from None
        return _v6(addr, _scope(scope))
    try:
        found = resolve(host)
    except Exception as exc:  # resolver failures of any kind
        raise Fatal(f"temporarily unable to figure out IP address for {host}: {errtext(exc)}") from None
    if not found:
        raise Fatal(f"no IP address for {host}")
    return _v6(found[0], 0)


def _v6(addr: ipaddress.IPv6Address, scope: int) -> Tuple[bool, str, int]:
    v4 = addr.ipv4_mapped
    if v4 is not None:
        return True, str(v4), 0
    if addr == ipaddress.IPv6Address("::"):
        return False, "::", scope
    return False, str(addr), scope


def _scope(name: str) -> int:
    """A scope id as the C server reads one: none or unknown is 0."""
    if not name:
        return 0
    try:
        return scope_id(name)
    except ValueError:
        return 0


def interface_index(name: Optional[str]) -> int:
    """``-I`` interface name to index (unknown names give 0, as in C)."""
    return _scope(name or "")


def _socket(family: int) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise Fatal(f"unable to create socket: {errtext(exc)}") from None


def _bind(sock: socket.socket, address: Tuple[object, ...], backlog: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError as exc:
        raise Fatal(f"unable to do set SO_REUSEADDR: {errtext(exc)}") from None
    try:
        sock.bind(address)
    except OSError as exc:
        raise Fatal(f"unable to bind: {errtext(exc)}") from None
    try:
        port: int = sock.getsockname()[1]
    except OSError as exc:
        raise Fatal(f"unable to get local address: {errtext(exc)}") from None
    try:
        sock.listen(backlog)
    except OSError as exc:
        raise Fatal(f"unable to listen: {errtext(exc)}") from None
    sock.setblocking(False)
    return port


def open_listener(ipv4: bool, address: str, scope: int, port: int, backlog: int) -> Listener:
    """Create, bind and listen.

    Raises:
        Fatal: with the C texts (``unable to bind: address already used``...).
    """
    if not ipv4:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            if address != "::":
                raise Fatal("unable to create socket: address family not supported") from None
            ipv4, address = True, "0.0.0.0"
        else:
            return _open6(sock, address, scope, port, backlog)
    sock = _socket(socket.AF_INET)
    bound = _bind(sock, (address, port), backlog)
    return Listener([sock], bound)


def _open6(sock: socket.socket, address: str, scope: int, port: int, backlog: int) -> Listener:
    dual = address == "::"
    extra: Optional[socket.socket] = None
    if dual:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            extra = _socket(socket.AF_INET)
    bound = _bind(sock, (address, port, 0, scope), backlog)
    listener = Listener([sock], bound)
    if extra is not None:
        _bind(extra, ("0.0.0.0", bound), backlog)
        listener.sockets.append(extra)
    return listener
