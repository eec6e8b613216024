"""IP address text forms used in the environment, the logs and the rules.

DECISIONS D18: IPv4 clients that arrive IPv4-mapped (``::ffff:a.b.c.d``
on a dual-stack socket) are reported as plain dotted IPv4 unless ``-6``
is given.  IPv6 text is RFC 5952 (Python ``ipaddress``'s compressed
form) except that mapped addresses print as ``::ffff:a.b.c.d`` on every
Python version.

The functions take the address text that the socket module returns
(``inet_ntop`` output, possibly with ``%scope``) and are cheap on the
common path: they only fall back to :mod:`ipaddress` for rare forms.
"""

from __future__ import annotations

import ipaddress
from typing import Tuple

MAPPED_PREFIX = "::ffff:"


def strip_scope(text: str) -> str:
    """``fe80::1%eth0`` -> ``fe80::1``."""
    cut = text.find("%")
    return text if cut < 0 else text[:cut]


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


def mapped(ipv4_text: str) -> str:
    """``1.2.3.4`` -> ``::ffff:1.2.3.4``."""
    return MAPPED_PREFIX + ipv4_text
