"""HAProxy's PROXY protocol, versions 1 and 2: a pure parser.

Bytes in, a :class:`Header` or a :class:`ProxyError` out; no sockets
(design: pure-core-thin-shell).  The facts come from HAProxy's ``doc/proxy-protocol.txt``;
how tcpserver uses them is (design: proxy-protocol).

The driver works in two steps, so that it never takes a byte past the
header (the program reads the rest of the stream, a TLS ClientHello
included, from the same socket):

1. peek (``MSG_PEEK``) at the start of the stream and call
   :func:`needed` on what it got: 0 means "peek again when more has
   arrived", a positive number is the exact size of the header, and a
   :class:`ProxyError` means the connection is to be dropped at once;
2. read exactly that many bytes and give them to :func:`parse`.

Version 1 is one line of ASCII, at most :data:`V1_MAX` bytes with its
CRLF::

    PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\\r\\n
    PROXY UNKNOWN\\r\\n                   (anything up to the CRLF ignored)

The parser is strict, as the specification asks ("any sequence which
does not exactly match the protocol must be discarded"): exactly one
space between fields, upper-case keywords, the line ended by CR LF and
holding no other CR or LF, IPv4 as four decimal numbers 0..255 without
leading zeros, ports 0..65535 in decimal without leading zeros.  IPv6
text is what ``inet_pton`` reads (hex groups, one ``::``, an optional
dotted IPv4 tail, itself strict); a scope id (``%eth0``) is refused.

Version 2 is binary: the 12-byte :data:`SIG_V2`, a version/command
byte, a family/transport byte, a 16-bit big-endian length and that many
bytes: the address block (its size set by the family), then TLVs.

Decisions (beyond the specification's words):

* Commands: ``LOCAL`` (0) and ``PROXY`` (1); any other is refused.
  The version must be 2.
* Family/transport byte: only the seven values the specification
  defines are taken (``0x00``, ``0x11``, ``0x12``, ``0x21``, ``0x22``,
  ``0x31``, ``0x32``); any other is refused even under ``LOCAL``.
* ``PROXY`` over a datagram transport (``0x12``, ``0x22``, ``0x32``) is
  refused: tcpserver serves streams.  Under ``LOCAL`` the family is
  ignored, as the specification says, so those are taken there.
* ``PROXY`` with ``AF_UNSPEC`` (``0x00``) or ``AF_UNIX`` stream
  (``0x31``) keeps the socket's own addresses (:attr:`Header.local` is
  true), as for ``LOCAL`` and v1 ``UNKNOWN``: the specification lets a
  receiver fall back to the UNSPEC mode for what it does not implement.
* The address block is 0 bytes for ``AF_UNSPEC``, 12 for ``AF_INET``,
  36 for ``AF_INET6`` and 216 for ``AF_UNIX``.  Under ``PROXY`` a
  length smaller than that is refused (:func:`needed` already refuses
  it).  Under ``LOCAL`` a length smaller than the family's block is
  taken and the bytes skipped unread (the family is to be ignored and
  the length always honoured); otherwise the block is skipped.
* After the address block come TLVs (type: 1 byte, length: 2 bytes big
  endian, value).  They are checked to fill the rest exactly (a TLV
  whose header or value runs past the end is refused) and kept in
  :attr:`Header.tlvs` in order, uninterpreted: ``PP2_TYPE_CRC32C`` is
  not verified (the trust is in ``PROXY_FROM``), ``PP2_TYPE_SSL`` is
  not opened.
* Addresses are text: IPv4 dotted, IPv6 RFC 5952 (as
  :func:`.address.ip6_text` prints it).  An IPv4-mapped source in a
  ``TCP6`` line or an ``AF_INET6`` block (HAProxy sends one when one
  side is IPv4 and the other IPv6) stays IPv6 text, ``::ffff:a.b.c.d``,
  with :attr:`Header.family` ``"6"``: the caller applies its own mapping
  rules (design: mapped-addresses), as it does for a socket's mapped peer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from .address import ip6_text
from .errors import UcspiError

#: the 12 bytes that start a version 2 header
SIG_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
#: the longest version 1 line, CRLF included
V1_MAX = 107
#: the longest version 2 header: 16 fixed bytes and a 16-bit length
V2_MAX = 16 + 65535

#: registered TLV types (``doc/proxy-protocol.txt`` 2.2)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30

V1_PREFIX = b"PROXY "
_V1_WORDS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN\r", b"UNKNOWN ")
_V2_FIXED = 16

CMD_LOCAL = 0x0
CMD_PROXY = 0x1

FAM_UNSPEC = 0x00
FAM_TCP4 = 0x11
FAM_UDP4 = 0x12
FAM_TCP6 = 0x21
FAM_UDP6 = 0x22
FAM_UNIX_STREAM = 0x31
FAM_UNIX_DGRAM = 0x32

#: family/transport byte -> size of its address block
_ADDR_SIZE = {
    FAM_UNSPEC: 0,
    FAM_TCP4: 12, FAM_UDP4: 12,
    FAM_TCP6: 36, FAM_UDP6: 36,
    FAM_UNIX_STREAM: 216, FAM_UNIX_DGRAM: 216,
}

Tlv = Tuple[int, bytes]


class ProxyError(UcspiError):
    """The bytes are not an acceptable PROXY header.  ``str()`` is a
    short reason for ``bad PROXY header from <ip>: <reason>``."""


@dataclass(frozen=True)
class Header:
    """One parsed PROXY header.

    Attributes:
        version: 1 or 2.
        local: True when the socket's own addresses are to be kept (v1
            ``UNKNOWN``; v2 ``LOCAL``; v2 ``PROXY`` with ``AF_UNSPEC``
            or ``AF_UNIX``); the address fields are then empty.
        family: ``"4"`` or ``"6"``, None when ``local``.
        src_ip, src_port: the client's address ("" and 0 when local).
        dst_ip, dst_port: the address the client connected to.
        tlvs: v2 TLVs after the address block, ``(type, value)`` in
            the order sent; empty for v1.
        size: the header's length in bytes.
    """

    version: int
    local: bool
    family: Optional[str] = None
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    tlvs: Tuple[Tlv, ...] = ()
    size: int = 0


# -- how long ----------------------------------------------------------------
def needed(data: bytes) -> int:
    """How long the header that starts ``data`` is.

    Args:
        data: the first bytes of the stream, as many as have arrived
            (possibly more than the header: what follows is not read).

    Returns:
        The exact size of the header in bytes (> 0) once ``data`` shows
        it, or 0 while more bytes are needed to know.  The size is never
        more than the header, so reading exactly that many bytes never
        takes the program's data.

    Raises:
        ProxyError: ``data`` cannot start an acceptable header, as far as
            it goes: neither ``PROXY `` nor the v2 signature; an unknown
            v1 protocol; a v1 line with a lone CR or LF or no CRLF within
            :data:`V1_MAX` bytes; a v2 version other than 2, an unknown
            command or family, ``PROXY`` over datagrams or an address
            block too short for its family.  A refusal never turns into
            an acceptance when more bytes arrive.
    """
    if not data:
        return 0
    first = data[0]
    if first == 0x50:                      # "P"
        return _needed_v1(data)
    if first == 0x0D:                      # "\r", as SIG_V2 starts
        return _needed_v2(data)
    raise ProxyError("bad signature")


def _needed_v1(data: bytes) -> int:
    got = len(data)
    if data[:6] != V1_PREFIX[:got]:
        raise ProxyError("bad signature")
    size = _line_size(data)
    if got > 6:
        word = data[6:14]
        if not any(word[:len(w)] == w[:len(word)] for w in _V1_WORDS):
            raise ProxyError("bad protocol")
    return size


def _line_size(data: bytes) -> int:
    """Where the CRLF ends the line (0 if not yet known)."""
    window = data[:V1_MAX]
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    if 0 <= lf and (cr < 0 or lf < cr):
        raise ProxyError("LF without CR")
    if cr < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("no CRLF within 107 bytes")
        return 0
    if cr + 2 > V1_MAX:
        raise ProxyError("no CRLF within 107 bytes")
    if cr + 1 == len(data):
        return 0
    if data[cr + 1] != 0x0A:
        raise ProxyError("CR without LF")
    return cr + 2


def _needed_v2(data: bytes) -> int:
    got = len(data)
    if data[:12] != SIG_V2[:got]:
        raise ProxyError("bad signature")
    if got > 12:
        _command(data[12])
    if got > 13:
        _family(data[12] & 0x0F, data[13])
    if got < _V2_FIXED:
        return 0
    length = int.from_bytes(data[14:16], "big")
    if data[12] & 0x0F == CMD_PROXY and length < _ADDR_SIZE[data[13]]:
        raise ProxyError("short address block")
    return _V2_FIXED + length


def _command(ver_cmd: int) -> int:
    if ver_cmd >> 4 != 2:
        raise ProxyError("bad version")
    command = ver_cmd & 0x0F
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise ProxyError("bad command")
    return command


def _family(command: int, fam: int) -> None:
    if fam not in _ADDR_SIZE:
        raise ProxyError("bad family")
    if command == CMD_PROXY and fam & 0x0F == 0x2:
        raise ProxyError("datagram transport")


# -- parse -------------------------------------------------------------------
def parse(header: bytes) -> Header:
    """Parse exactly one complete header.

    Args:
        header: the header's bytes, no more and no fewer (the
            :func:`needed` size).

    Returns:
        The :class:`Header`.

    Raises:
        ProxyError: the bytes are not exactly one acceptable header.
    """
    header = bytes(header)
    size = needed(header)
    if size == 0 or len(header) < size:
        raise ProxyError("truncated header")
    if len(header) > size:
        raise ProxyError("bytes after the header")
    if header[0] == 0x50:
        return _parse_v1(header)
    return _parse_v2(header)


def _parse_v1(line: bytes) -> Header:
    # _needed_v1 has checked "PROXY ", the protocol word, the CRLF at the
    # end and that there is no other CR or LF.
    fields = line[:-2].split(b" ")
    proto = fields[1]
    if proto == b"UNKNOWN":
        return Header(version=1, local=True, size=len(line))
    if len(fields) != 6:
        raise ProxyError("bad field count")
    if proto == b"TCP4":
        family, addr = "4", _ip4_text
    else:
        family, addr = "6", _ip6_text
    src_ip = addr(fields[2], "source")
    dst_ip = addr(fields[3], "destination")
    src_port = _port(fields[4], "source")
    dst_port = _port(fields[5], "destination")
    return Header(version=1, local=False, family=family,
                  src_ip=src_ip, src_port=src_port,
                  dst_ip=dst_ip, dst_port=dst_port, size=len(line))


def _quad(text: bytes) -> bool:
    """Strict dotted quad: 4 parts, 1 to 3 ASCII digits, no leading
    zero, at most 255."""
    parts = text.split(b".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not (part.isdigit() and len(part) <= 3):    # bytes: ASCII only
            return False
        if len(part) > 1 and part[0] == 0x30:
            return False
        if int(part) > 255:
            return False
    return True


def _ip4_text(text: bytes, which: str) -> str:
    if not _quad(text):
        raise ProxyError(f"bad {which} address")
    return text.decode("ascii")


_IP6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")


def _ip6_text(text: bytes, which: str) -> str:
    # ipaddress alone would take a scope id (3.9+) and, before 3.9.5,
    # leading zeros in a dotted tail: check the characters and the tail.
    if not text or len(text) > 45 or not _IP6_CHARS.issuperset(text):
        raise ProxyError(f"bad {which} address")
    if b"." in text and not _quad(text.rpartition(b":")[2]):
        raise ProxyError(f"bad {which} address")
    try:
        addr = ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        raise ProxyError(f"bad {which} address") from None
    return ip6_text(addr)


def _port(text: bytes, which: str) -> int:
    if not (text.isdigit() and len(text) <= 5) or (len(text) > 1 and text[0] == 0x30):
        raise ProxyError(f"bad {which} port")
    value = int(text)
    if value > 65535:
        raise ProxyError(f"bad {which} port")
    return value


def _parse_v2(data: bytes) -> Header:
    # _needed_v2 has checked the signature, version, command, family,
    # PROXY's minimum length and that len(data) is 16 + the length.
    command = data[12] & 0x0F
    fam = data[13]
    size = len(data)
    block = _ADDR_SIZE[fam]
    start = _V2_FIXED + block
    if start > size:                       # LOCAL with a short block
        return Header(version=2, local=True, size=size)
    tlvs = _tlvs(data, start)
    if command == CMD_LOCAL or fam in (FAM_UNSPEC, FAM_UNIX_STREAM):
        return Header(version=2, local=True, tlvs=tlvs, size=size)
    if fam == FAM_TCP4:
        src_ip = str(ipaddress.IPv4Address(data[16:20]))
        dst_ip = str(ipaddress.IPv4Address(data[20:24]))
        ports = data[24:28]
        family = "4"
    else:                                  # FAM_TCP6: the only one left
        src_ip = ip6_text(ipaddress.IPv6Address(data[16:32]))
        dst_ip = ip6_text(ipaddress.IPv6Address(data[32:48]))
        ports = data[48:52]
        family = "6"
    return Header(version=2, local=False, family=family,
                  src_ip=src_ip, src_port=int.from_bytes(ports[:2], "big"),
                  dst_ip=dst_ip, dst_port=int.from_bytes(ports[2:], "big"),
                  tlvs=tlvs, size=size)


def _tlvs(data: bytes, start: int) -> Tuple[Tlv, ...]:
    """The TLVs from ``start`` to the end of ``data``, which they must
    fill exactly."""
    found = []
    end = len(data)
    at = start
    while at < end:
        if at + 3 > end:
            raise ProxyError("truncated TLV")
        length = int.from_bytes(data[at + 1:at + 3], "big")
        if at + 3 + length > end:
            raise ProxyError("TLV overrun")
        found.append((data[at], data[at + 3:at + 3 + length]))
        at += 3 + length
    return tuple(found)


# -- build (tests and tools) -------------------------------------------------
