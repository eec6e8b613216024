"""The tcprules language: one line of a rules text to its cdb records.

A rules text has one rule per line, ``address:allow`` or
``address:deny``, optionally followed by environment changes
(``,NAME="value"`` with any quote byte, ``,!NAME`` to remove one).
:func:`parse_line` compiles a line into ``(key, value)`` records: the
keys are the addresses as written, ranges such as ``10.2-3.`` expanded
and CIDR blocks turned into IndiMail's bit-string keys
(:func:`cidr_key`, :func:`ip4_bits`, :func:`ip6_bits`); the value is a
run of NUL-terminated entries, ``D`` (deny), ``+NAME=VALUE``, ``-NAME``.

Everything here is pure, over bytes.  The lookups that read these
records back are in :mod:`ucspi.rules.lookup`.

Example::

    >>> parse_line(b"10.0-1.:allow,RELAYCLIENT=\\"\\",!TCPREMOTEINFO\\n")
    [(b'10.0.', b'+RELAYCLIENT=\\x00-TCPREMOTEINFO\\x00'), (b'10.1.', ...)]
"""

from __future__ import annotations

import ipaddress
from typing import List, Optional, Tuple

from ..address import ip6_text, parse_quad
from ..errors import UcspiError
from ..scan import ULONG_MAX, decimal

Record = Tuple[bytes, bytes]

_LETTERS4 = b"abcdefghijklmnopqrstuvwxyz123456"


class RuleSyntaxError(UcspiError):
    """A rules line cannot be parsed (tcprules exits 100).

    ``line`` is the offending line without its trailing blanks."""

    def __init__(self, line: bytes) -> None:
        super().__init__("unable to parse this line")
        self.line = line


class CarriageReturnError(RuleSyntaxError):
    """The line ends in a carriage return (a file with DOS line ends):
    tcprules says so instead of showing a line that looks valid."""


class NoColonError(UcspiError):
    """A non-blank line has no colon at all (tcprules exits 100 like for
    every other parse error; IndiMail's exits 111, "try again", which a
    retry loop would retry for ever)."""


# ---------------------------------------------------------------- parsing

def _separator(text: bytes) -> int:
    """Index of the first ``:`` directly followed by allow/deny, or -1."""
    colon = text.find(b":")
    while colon >= 0:
        if text.startswith(b"deny", colon + 1) or \
                text.startswith(b"allow", colon + 1):
            return colon
        colon = text.find(b":", colon + 1)
    return -1


def _instructions(text: bytes, rest: bytes) -> bytes:
    """Compile ``allow...``/``deny...`` into the value bytes."""
    if rest.startswith(b"deny"):
        value, pos = bytearray(b"D\0"), 4
    elif rest.startswith(b"allow"):
        value, pos = bytearray(), 5
    else:
        raise RuleSyntaxError(text)
    end = len(rest)
    while pos < end:
        if rest[pos] != 0x2C:  # ","
            raise RuleSyntaxError(text)
        nextc = rest.find(b",", pos + 1)
        nextc = end if nextc < 0 else nextc
        eq = rest.find(b"=", pos + 1)
        eq = end if eq < 0 else eq
        if eq >= nextc:  # ",!NAME": no "=" before the next comma
            if nextc - pos - 1 < 2 or rest[pos + 1] != 0x21:  # "!"
                raise RuleSyntaxError(text)
            value += b"-" + rest[pos + 2:nextc] + b"\0"
            pos = nextc
            continue
        value += b"+" + rest[pos + 1:eq + 1]
        pos = eq + 1
        if pos >= end:
            raise RuleSyntaxError(text)
        close = rest.find(rest[pos:pos + 1], pos + 1)
        if close < 0:
            raise RuleSyntaxError(text)
        value += rest[pos + 1:close] + b"\0"
        pos = close + 1
    return bytes(value)


def _number(field_: bytes, text: bytes) -> int:
    """A range bound: decimal digits, empty = 0.  The C tool reads it
    into an unsigned long and wraps; a bound above that is a parse
    error here (and nothing that long ever reaches ``int()``)."""
    if not field_:
        return 0
    value = decimal(field_, ULONG_MAX)
    if value is None:
        raise RuleSyntaxError(text)
    return value


def _expand_range(address: bytes, dash: int, text: bytes) -> List[bytes]:
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    right = len(address) if right < 0 else right
    low = _number(address[left:dash], text)
    high = min(_number(address[dash + 1:right], text), 255)
    head, tail = address[:left], address[right:]
    return [head + b"%d" % n + tail for n in range(low, high + 1)]


def cidr_key(address: bytes) -> Optional[bytes]:
    """The lookup key for a CIDR block, or None if it is not valid.

    ``a.b.c.d/n`` (missing trailing fields count as 0, so ``127.0/8``
    works) gives ``_`` + the first *n* characters of the IPv4 bit
    string; ``x:y::/n`` gives ``^`` + the first *n* of the IPv6 one.
    Prefix lengths: 2-32 (IPv4), 2-128 (IPv6); shorter ones are never
    looked up, so they are refused (write the empty rule instead).

    Args:
        address: the text before the colon, e.g. ``b"10.0.0.0/8"``.

    Returns:
        The key, or None.
    """
    net, _, plen = address.partition(b"/")
    bits = decimal(plen, 128)
    if bits is None:
        return None
    if b":" in net:
        try:
            ip6 = ipaddress.IPv6Address(net.decode("ascii"))
        except ValueError:
            return None
        if ip6.scope_id is not None or not 2 <= bits <= 128:
            return None
        return b"^" + ip6_bits(ip6.packed)[:bits]
    # 1 to 4 parts of at most 3 digits; latin-1 keeps one byte one
    # character, so a non-ASCII byte is never taken for a digit
    octets = parse_quad(net.decode("latin-1"), max_digits=3, min_parts=1)
    if octets is None or not 2 <= bits <= 32:
        return None
    return b"_" + ip4_bits(octets)[:bits]


def cidr_text(key: bytes) -> Optional[bytes]:
    """The CIDR block a bit-string key stands for, the inverse of
    :func:`cidr_key`: ``_0000e0g0`` -> ``10.0.0.0/8``,
    ``^00`000000000000a`` -> ``2001::/16``.

    Args:
        key: a cdb key.

    Returns:
        The block in its usual form (network address, RFC 5952 for
        IPv6), or None if ``key`` is not a well-formed bit string (any
        other key, shown as it is).
    """
    mark, bits = key[:1], key[1:]
    if mark == b"_" and 2 <= len(bits) <= 32:
        # bit i: "0" or the i-th of a..z1..6
        if any(byte not in (48, _LETTERS4[i]) for i, byte in enumerate(bits)):
            return None
    elif mark == b"^" and 2 <= len(bits) <= 128:
        # the n-th set bit is the byte 96 + n
        n = 96
        for byte in bits:
            if byte != 48:
                if byte != n:
                    return None
                n += 1
    else:
        return None
    size = 32 if mark == b"_" else 128
    value = 0
    for byte in bits:
        value = value << 1 | (byte != 48)
    value <<= size - len(bits)
    text = str(ipaddress.IPv4Address(value)) if size == 32 else \
        ip6_text(ipaddress.IPv6Address(value))
    return b"%s/%d" % (text.encode("ascii"), len(bits))


def address_keys(address: bytes, text: bytes) -> List[bytes]:
    """The cdb keys an address compiles to (one, several or none).

    Args:
        address: the text before the separator colon.
        text: the whole line, for the error.

    Returns:
        The keys, in order.

    Raises:
        RuleSyntaxError: a bad range or CIDR block.
    """
    if b"=" in address or b"@" in address:
        return [address]
    if b"/" in address:
        key = cidr_key(address)
        if key is None:
            raise RuleSyntaxError(text)
        return [key]
    dash = address.find(b"-")
    if dash < 0:
        return [address]
    return _expand_range(address, dash, text)


def parse_line(line: bytes) -> List[Record]:
    """Compile one line of a rules text.

    Args:
        line: the line, with or without its LF.

    Returns:
        The ``(key, value)`` records it makes, in order (none for a
        comment, a blank line or a range whose low end is above its
        high end).

    Raises:
        CarriageReturnError: the line ends in CR (a DOS line end).
        RuleSyntaxError: the line is malformed.
        NoColonError: the line is not blank and has no colon.
    """
    if line.startswith(b"#"):
        return []
    text = line.rstrip(b"\n \t")
    if not text.strip():  # blank, or only ASCII white space (design: rules)
        return []
    if text.endswith(b"\r"):
        raise CarriageReturnError(text)
    colon = _separator(text)
    if colon < 0:
        if b":" not in text:
            raise NoColonError("Unable to find colon on non-empty line.")
        raise RuleSyntaxError(text)
    value = _instructions(text, text[colon + 1:])
    return [(key, value) for key in address_keys(text[:colon], text)]


# ---------------------------------------------------------------- bit strings

def _octet_table(i: int) -> List[bytes]:
    letters = _LETTERS4[8 * i:8 * i + 8]
    return [bytes(letters[j] if v & (0x80 >> j) else 48 for j in range(8))
            for v in range(256)]


_OCTETS = [_octet_table(i) for i in range(4)]


def ip4_bits(octets: bytes) -> bytes:
    """IndiMail's 32-character bit string for an IPv4 address: bit *i*
    (most significant first) is ``0`` or the *i*-th of ``a..z1..6``."""
    return b"".join(_OCTETS[i][octets[i]] for i in range(4))


def ip6_bits(packed: bytes) -> bytes:
    """IndiMail's 128-character bit string for an IPv6 address: a clear
    bit is ``0``, the *n*-th set bit (from the most significant) is the
    byte 96 + *n*."""
    out = bytearray(b"0" * 128)
    n = 96
    for i, byte in enumerate(packed):
        if byte:
            for j in range(8):
                if byte & (0x80 >> j):
                    out[8 * i + j] = n
                    n += 1
    return bytes(out)
