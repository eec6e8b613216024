"""IP address text forms used in the environment, the logs and the rules.

One home for the address forms every part of the package parses or
prints, so that they are parsed one way:

* dotted quads (:func:`parse_quad`): decimal parts, leading zeros
  allowed, as djb's ``ip4_scan`` reads them; callers choose the few
  details in which their contexts differ (digits per part, fewer parts);
* IPv6 text (:func:`ip6_text`, :func:`normalise6`), RFC 5952;
* IPv6 scope ids, ``%iface`` or ``%index`` (:func:`scope_id`);
* the IPv4-mapped prefix ``::ffff:``, as text (:data:`MAPPED_PREFIX`,
  :func:`mapped_text`, :func:`unmap`, :func:`strip_mapped`,
  :func:`is_mapped`) and as bytes (:data:`MAPPED_PACKED`,
  :func:`mapped_packed`, :func:`mapped_ipv6`);
* the wildcard addresses (:func:`is_wildcard`) and the network an
  address belongs to for per-network counting (:func:`network_key`:
  the IPv4 /24, the IPv6 /64).

IPv4 clients that arrive IPv4-mapped (``::ffff:a.b.c.d``
on a dual-stack socket) are reported as plain dotted IPv4 unless ``-6``
is given.  IPv6 text is RFC 5952 (Python ``ipaddress``'s compressed
form) except that mapped addresses print as ``::ffff:a.b.c.d`` on every
Python version (design: mapped-addresses).

The text functions take the address text that the socket module returns
(``inet_ntop`` output, possibly with ``%scope``) and are cheap on the
common path: they only fall back to :mod:`ipaddress` for rare forms.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Optional, Tuple

from .scan import SCOPE_MAX, decimal, is_digits

#: The text that starts an IPv4-mapped IPv6 address.
MAPPED_PREFIX = "::ffff:"
#: The first 12 bytes of an IPv4-mapped IPv6 address.
MAPPED_PACKED = bytes(10) + b"\xff\xff"

IfIndex = Callable[[str], int]


# -- IPv4 ------------------------------------------------------------------
def parse_quad(text: str, *, max_digits: Optional[int] = None,
               min_parts: int = 4) -> Optional[bytes]:
    """Parse dotted-decimal IPv4 text.

    Each part is one or more ASCII digits (leading zeros allowed, so
    ``127.000.000.001`` is ``127.0.0.1``) with a value of at most 255.
    Nothing else is allowed: no signs, blanks, brackets or empty parts.

    Args:
        text: the whole text to parse.
        max_digits: when given, the longest a part may be
            (``tcpserver``'s host argument: 3; DNS literals and rules
            lookups: any length).
        min_parts: fewer parts than 4 allowed, the missing trailing
            parts being 0 (``tcprules`` CIDR blocks such as ``127.0/8``).

    Returns:
        The 4 address bytes, or None if ``text`` is not such a quad.
    """
    parts = text.split(".")
    if not min_parts <= len(parts) <= 4:
        return None
    octets = bytearray(4)
    for i, part in enumerate(parts):
        if max_digits is not None and len(part) > max_digits:
            return None
        value = decimal(part, 255)         # never int() a huge string
        if value is None:
            return None
        octets[i] = value
    return bytes(octets)


# -- scope ids -------------------------------------------------------------
def strip_scope(text: str) -> str:
    """``fe80::1%eth0`` -> ``fe80::1``."""
    cut = text.find("%")
    return text if cut < 0 else text[:cut]


def scope_id(text: str, ifindex: IfIndex = socket.if_nametoindex) -> int:
    """The IPv6 scope id that the text after ``%`` names.

    Args:
        text: a decimal index (ASCII digits, at most ``2**32 - 1``) or
            an interface name.
        ifindex: interface name -> index (tests pass their own).

    Returns:
        The index.

    Raises:
        ValueError: the text is empty, not a usable number, or names no
            interface.  Callers that follow djb ("an unknown interface is
            0") catch it.
    """
    if is_digits(text):
        index = decimal(text, SCOPE_MAX)   # bounded: never int() a huge string
        if index is None:
            raise ValueError(f"scope id out of range: {text[:24]!r}")
        return index
    try:
        return ifindex(text)
    except OSError:
        raise ValueError(f"unknown interface {text!r}") from None


# -- IPv6 ------------------------------------------------------------------
def ip6_text(addr: ipaddress.IPv6Address) -> str:
    """RFC 5952 text of an IPv6 address; mapped ones as ``::ffff:a.b.c.d``."""
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return MAPPED_PREFIX + str(mapped)
    text = str(ipaddress.IPv6Address(addr.packed))  # drops any scope
    return text


def normalise6(text: str) -> str:
    """Normalise ``inet_ntop`` text of an IPv6 address to our form.

    glibc already prints RFC 5952 text; only embedded-IPv4 forms other
    than mapped ones (``::1.2.3.4``) need :mod:`ipaddress`.
    """
    text = strip_scope(text)
    if "." in text and not text.startswith(MAPPED_PREFIX):
        return ip6_text(ipaddress.IPv6Address(text))
    if text.startswith(MAPPED_PREFIX) and "." not in text:
        return ip6_text(ipaddress.IPv6Address(text))
    return text.lower()


# -- IPv4-mapped -----------------------------------------------------------
def unmap(text: str) -> Tuple[str, bool]:
    """Split off the mapped prefix.

    Returns:
        ``(dotted, True)`` for an IPv4-mapped address, else
        ``(normalised IPv6 text, False)``.
    """
    text = normalise6(text)
    if text.startswith(MAPPED_PREFIX) and "." in text:
        return text[len(MAPPED_PREFIX):], True
    return text, False


def is_mapped(text: str) -> bool:
    """Does IPv6 text start with the mapped prefix (any case)?"""
    return text[:len(MAPPED_PREFIX)].lower() == MAPPED_PREFIX


def mapped_text(ipv4_text: str) -> str:
    """``1.2.3.4`` -> ``::ffff:1.2.3.4``."""
    return MAPPED_PREFIX + ipv4_text


def strip_mapped(text: str) -> str:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``; text without the prefix is
    returned as it is (no normalisation: see :func:`unmap`)."""
    return text[len(MAPPED_PREFIX):] if text.startswith(MAPPED_PREFIX) else text


def mapped_packed(octets: bytes) -> bytes:
    """4 IPv4 address bytes -> the 16 bytes of ``::ffff:a.b.c.d``."""
    return MAPPED_PACKED + octets


def mapped_ipv6(ip: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """``1.2.3.4`` -> ``::ffff:1.2.3.4`` as :mod:`ipaddress` objects
    (``0.0.0.0`` too: the DNS literal rule that turns it into ``::`` is
    :mod:`ucspi.dns.conf`'s)."""
    return ipaddress.IPv6Address(MAPPED_PACKED + ip.packed)



# -- wildcards and networks ----------------------------------------------------
#: the addresses that mean "every local address", as text
WILDCARD_TEXTS = frozenset(("0.0.0.0", "::"))


def is_wildcard(text: str) -> bool:
    """``0.0.0.0`` or ``::``: a socket bound there, or an ident query
    sent from there, takes whatever local address the kernel picks."""
    return text in WILDCARD_TEXTS


def wildcard(v4: bool) -> str:
    """The wildcard address of a family."""
    return "0.0.0.0" if v4 else "::"


#: prefix lengths of the networks that per-network limits count
NETWORK_BITS_V4 = 24
NETWORK_BITS_V6 = 64


def network_key(ip: str) -> str:
    """The network of a client address as the per-network limits count
    it: the IPv4 /24 (``192.0.2.0/24``) or the IPv6 /64
    (``2001:db8:1:2::/64``).  ``ip`` is in the environment's form
    (dotted for IPv4 and mapped clients, RFC 5952 for IPv6); text that
    is neither is its own key."""
    if ":" not in ip:
        head, dot, _ = ip.rpartition(".")
        return f"{head}.0/{NETWORK_BITS_V4}" if dot else ip
    try:
        packed = socket.inet_pton(socket.AF_INET6, strip_scope(ip))
    except OSError:
        return ip
    if packed.startswith(MAPPED_PACKED):
        return network_key(socket.inet_ntop(socket.AF_INET, packed[12:]))
    net = packed[:NETWORK_BITS_V6 // 8] + bytes(16 - NETWORK_BITS_V6 // 8)
    return f"{socket.inet_ntop(socket.AF_INET6, net)}/{NETWORK_BITS_V6}"
