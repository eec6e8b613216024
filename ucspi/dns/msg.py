"""DNS messages: names, queries and bounds-checked response parsing.

Pure code over bytes, no sockets (design: pure-core-thin-shell).  It is the message half
of tcpserver's djbdns-style stub resolver (design: dns-resolver);
:mod:`ucspi.dns.transmit` moves the bytes.

Names are kept in wire form (length-prefixed labels ending with a zero
byte, never compressed) between the functions here:

* :func:`encode_name` turns text into wire form the way djbdns's
  ``dns_domain_fromdot`` does (empty labels dropped, ``\\ooo`` and ``\\c``
  escapes), refusing labels over 63 bytes and names over 255 bytes;
* :func:`render_name` turns wire form into the text tcpserver puts in
  ``TCPREMOTEHOST`` (lowercase, ``[a-z0-9-_]`` kept, anything else as a
  backslash and three octal digits, as djb's tcpserver shows names);
* :func:`reverse_name` gives the ``in-addr.arpa``/``ip6.arpa`` name of an
  address.

Responses are read with a cursor that never reads past the packet:
compression pointers must point strictly backwards (each jump lower than
the previous one, so loops are impossible), a name is at most 255 bytes,
a name takes at most :data:`MAX_STEPS` steps, and a record's data is
confined to its declared length.  Any violation raises
:class:`FormatError`.  :func:`classify` applies djbdns's relevance tests
(ID, one question, same name/type/class) before anything is believed.
"""

from __future__ import annotations

import errno as _errno
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

from ..address import MAPPED_PACKED, mapped_packed
from ..errors import UcspiError

TYPE_A = 1
TYPE_CNAME = 5
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_AAAA = 28
CLASS_IN = 1

MAX_LABEL = 63
MAX_NAME = 255
MAX_STEPS = 1000
UDP_MAX = 512          # a datagram of 513 bytes or more is ignored

FLAG_TC = 0x0200
FLAG_RD = 0x0100

# Verdicts of :func:`classify`.
IGNORE = "ignore"          # not an answer to our question: keep waiting
TRUNCATED = "truncated"    # TC set: ask again over TCP
SERVFAIL = "servfail"      # RCODE other than NOERROR/NXDOMAIN
ANSWER = "answer"          # a final answer (NOERROR or NXDOMAIN)

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QTAIL = struct.Struct("!HH")
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_KEEP_BYTES = bytes(sorted(_KEEP))
_KEEP_DOTTED = _KEEP_BYTES + b"."
ROOT = b"\x00"
_POINTER_TO_QUESTION = b"\xc0\x0c"
#: an octet as a wire label ("\x03127"), and the tail of an IPv4 PTR name
_OCTET_LABEL = tuple(bytes([len(b"%d" % n)]) + b"%d" % n for n in range(256))
_IN_ADDR_ARPA = b"\x07in-addr\x04arpa\x00"


class DnsError(UcspiError):
    """A DNS lookup failed.

    ``errno`` says why, so :func:`ucspi.errors.errtext` prints djb's
    words: ``ETIMEDOUT`` "timed out", ``EPROTO`` "protocol error",
    ``ECONNREFUSED`` "connection refused", ``EAGAIN`` "temporary
    failure" (server failure), ``EINVAL`` "invalid argument"."""

    def __init__(self, message: str, errno: int = _errno.EPROTO) -> None:
        super().__init__(message)
        self.errno = errno


class FormatError(DnsError):
    """A response is malformed (errno ``EPROTO``)."""


class BadName(DnsError):
    """A name cannot be put on the wire (errno ``EPROTO``)."""


class Question(NamedTuple):
    """What we asked: a wire-form name and a type (class is always IN)."""

    name: bytes
    qtype: int


class Header(NamedTuple):
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int


class Record(NamedTuple):
    """A resource record; its data is ``packet[rdata:rdata + rdlength]``.
    The owner name is checked but not kept: nothing here asks for it
    (the original does not compare it either)."""

    rtype: int
    rclass: int
    ttl: int
    rdata: int
    rdlength: int


# -- names ---------------------------------------------------------------
def _unescape(data: bytes, i: int) -> Tuple[int, int]:
    """Decode the escape after a backslash at ``data[i - 1]``.

    Returns the byte value and the index after the escape."""
    ch = data[i]
    i += 1
    if 0x30 <= ch <= 0x37:
        ch -= 0x30
        for _ in range(2):
            if i < len(data) and 0x30 <= data[i] <= 0x37:
                ch = ch * 8 + data[i] - 0x30
                i += 1
            else:
                break
    return ch & 0xFF, i


def encode_name(text: Union[str, bytes]) -> bytes:
    """Encode a dotted name as djbdns's ``dns_domain_fromdot`` does.

    Labels are split at ``.``; empty labels are dropped (so ``a..b.`` is
    ``a.b``); ``\\ooo`` (one to three octal digits) and ``\\c`` escapes
    put any byte in a label; a lone trailing backslash is ignored.

    Args:
        text: the name; ``str`` is encoded as UTF-8 (surrogate escapes
            allowed, as in file names and ``argv``).

    Returns:
        The wire-form name, ending with the zero byte.

    Raises:
        BadName: a label over 63 bytes or a name over 255 bytes.
    """
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    wire = bytearray()
    label = bytearray()
    i = 0
    while i < len(data):
        ch = data[i]
        i += 1
        if ch == 0x2E:
            _flush(wire, label)
            continue
        if ch == 0x5C:
            if i >= len(data):
                break
            ch, i = _unescape(data, i)
        if len(label) >= MAX_LABEL:
            raise BadName("label longer than 63 bytes")
        label.append(ch)
    _flush(wire, label)
    wire.append(0)
    if len(wire) > MAX_NAME:
        raise BadName("name longer than 255 bytes")
    return bytes(wire)


def _flush(wire: bytearray, label: bytearray) -> None:
    if label:
        wire.append(len(label))
        wire += label
        label.clear()
        if len(wire) + 1 > MAX_NAME:
            raise BadName("name longer than 255 bytes")


def labels(wire: bytes) -> List[bytes]:
    """Split a (valid, uncompressed) wire name into its labels."""
    out: List[bytes] = []
    pos = 0
    while wire[pos]:
        out.append(wire[pos + 1:pos + 1 + wire[pos]])
        pos += 1 + wire[pos]
    return out


def render_name(wire: bytes) -> str:
    """Render a wire name as tcpserver shows host names (djb's and IndiMail's form).

    Labels are joined with ``.`` without a trailing dot; ``A-Z`` become
    lowercase; ``a-z0-9-_`` are kept; every other byte is written as a
    backslash and three octal digits.  The root name is ``.``.
    """
    parts = labels(wire)
    if not parts:
        return "."
    text = b".".join(parts).lower()
    # the usual name: only letters, digits, - and _, and no label with a
    # dot of its own (every dot is one the join put there)
    if not text.translate(None, _KEEP_DOTTED) and text.count(b".") == len(parts) - 1:
        return text.decode("ascii")
    return ".".join(_render_label(part.lower()) for part in parts)


def _render_label(label: bytes) -> str:
    if not label.translate(None, _KEEP_BYTES):   # the common case: nothing to escape
        return label.decode("ascii")
    return "".join(_render_byte(b) for b in label)


def _render_byte(b: int) -> str:
    return chr(b) if b in _KEEP else "\\%03o" % b


def names_equal(a: bytes, b: bytes) -> bool:
    """Compare wire names ignoring ASCII case (length bytes are < 64, so
    lowering the whole name cannot touch them)."""
    return a.lower() == b.lower()


def reverse_name(ip: Union[IPv4Address, IPv6Address]) -> bytes:
    """The PTR query name of an address, in wire form.

    IPv4 and IPv4-mapped IPv6 addresses give ``d.c.b.a.in-addr.arpa``;
    other IPv6 addresses give 32 lowercase nibbles, least significant
    first, then ``ip6.arpa``.
    """
    packed = ip.packed
    if len(packed) == 16 and packed[:12] == MAPPED_PACKED:
        packed = packed[12:]
    if len(packed) == 4:       # one per connection with -h: labels from a table
        return b"".join((_OCTET_LABEL[packed[3]], _OCTET_LABEL[packed[2]],
                         _OCTET_LABEL[packed[1]], _OCTET_LABEL[packed[0]], _IN_ADDR_ARPA))
    hexed = packed.hex().encode()
    parts = [hexed[i:i + 1] for i in range(31, -1, -1)]
    parts += [b"ip6", b"arpa"]
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\x00"


# -- queries -------------------------------------------------------------
def build_query(question: Question, qid: int) -> bytes:
    """A query packet: header with only RD set, one question, class IN,
    no EDNS0 (as IndiMail's dns_*.c send it)."""
    return (_HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + question.name
            + _QTAIL.pack(question.qtype, CLASS_IN))


# -- parsing -------------------------------------------------------------
def read_name(packet: bytes, pos: int) -> Tuple[bytes, int]:
    """Read a possibly compressed name.

    Args:
        packet: the whole message.
        pos: where the name starts.

    Returns:
        The uncompressed wire name and the position after the name (after
        the first pointer if there is one).

    Raises:
        FormatError: out of bounds, a label length byte 64..191, a
            pointer not strictly below every earlier position of this
            name, a name over 255 bytes or over 1000 steps.
    """
    out = bytearray()
    after = _walk_name(packet, pos, out)
    return bytes(out), after


def skip_name(packet: bytes, pos: int) -> int:
    """The position after the name at ``pos``, checked as
    :func:`read_name` checks it, without putting the name together."""
    return _walk_name(packet, pos, None)


def _walk_name(packet: bytes, pos: int, out: Optional[bytearray]) -> int:
    size = len(packet)
    taken = 0                     # the name's length so far, without asking
    end: Optional[int] = None
    lowest = pos
    for _ in range(MAX_STEPS):
        if pos >= size:
            raise FormatError("name runs past the end of the packet")
        length = packet[pos]
        if length >= 0xC0:
            if pos + 1 >= size:
                raise FormatError("pointer runs past the end of the packet")
            target = ((length & 0x3F) << 8) | packet[pos + 1]
            if end is None:
                end = pos + 2
            if target >= lowest:
                raise FormatError("compression pointer does not point backwards")
            lowest = pos = target
            continue
        if length > MAX_LABEL:
            raise FormatError("bad label length")
        step = pos + 1 + length
        if step > size:
            raise FormatError("label runs past the end of the packet")
        if out is not None:
            out += packet[pos:step]
        pos = step
        taken += 1 + length
        if taken + (length != 0) > MAX_NAME:
            raise FormatError("name longer than 255 bytes")
        if length == 0:
            return pos if end is None else end
    raise FormatError("name takes too many steps")


def parse_header(packet: bytes) -> Header:
    """The 12-byte header.  Raises FormatError if the packet is shorter."""
    if len(packet) < _HEADER.size:
        raise FormatError("packet shorter than a header")
    return Header(*_HEADER.unpack_from(packet, 0))


def read_question(packet: bytes, pos: int) -> Tuple[Question, int, int]:
    """Read one question: returns it, its class, and the position after."""
    name, pos = read_name(packet, pos)
    if pos + _QTAIL.size > len(packet):
        raise FormatError("question runs past the end of the packet")
    qtype, qclass = _QTAIL.unpack_from(packet, pos)
    return Question(name, qtype), qclass, pos + _QTAIL.size


def read_record(packet: bytes, pos: int, question_checked: bool = False) -> Tuple[Record, int]:
    """Read one resource record; its owner name must be sound and its
    data fit in the packet.

    ``question_checked``: the name at offset 12 (the question's) is
    known to be sound, so an owner that only points there (the usual
    ``\xc0\x0c``) needs no walk.

    Returns the record and the position of the next one."""
    if question_checked and packet[pos:pos + 2] == _POINTER_TO_QUESTION:
        pos += 2
    else:
        pos = skip_name(packet, pos)
    if pos + _RR.size > len(packet):
        raise FormatError("record header runs past the end of the packet")
    rtype, rclass, ttl, rdlength = _RR.unpack_from(packet, pos)
    pos += _RR.size
    if pos + rdlength > len(packet):
        raise FormatError("record data runs past the end of the packet")
    return Record(rtype, rclass, ttl, pos, rdlength), pos + rdlength


def classify(packet: bytes, qid: int, question: Question) -> str:
    """Decide what a received message means for our query (djbdns rules).

    Returns :data:`IGNORE` unless the message has our ID, exactly one
    question, and that question is ours (name compared without case, same
    type, class IN); then :data:`TRUNCATED` if TC is set, :data:`SERVFAIL`
    if the RCODE is neither 0 nor 3, else :data:`ANSWER`.  QR and the
    opcode are not checked (as djbdns).  The caller drops UDP datagrams of
    513 bytes or more before asking.
    """
    try:
        if len(packet) < _HEADER.size:
            return IGNORE
        ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
        if ident != qid or qdcount != 1:
            return IGNORE
        # the usual answer repeats our question byte for byte (the first
        # name of a message cannot be compressed): no name to read
        ours = question.name + _QTAIL.pack(question.qtype, CLASS_IN)
        echoed = packet[_HEADER.size:_HEADER.size + len(ours)]
        if echoed != ours and echoed.lower() != ours.lower():
            asked, qclass, _ = read_question(packet, _HEADER.size)
            if asked.qtype != question.qtype or qclass != CLASS_IN:
                return IGNORE
            if not names_equal(asked.name, question.name):
                return IGNORE
    except FormatError:
        return IGNORE
    if flags & FLAG_TC:
        return TRUNCATED
    if flags & 0x000F not in (0, 3):
        return SERVFAIL
    return ANSWER


def iter_answers(packet: bytes) -> Iterator[Record]:
    """Yield the answer-section records, in order.

    The question section (one question, as :func:`classify` checked) is
    skipped.  Raises FormatError at the first malformed record, after the
    records before it have been yielded."""
    if len(packet) < _HEADER.size:
        raise FormatError("packet shorter than a header")
    _, _, qdcount, ancount, _, _ = _HEADER.unpack_from(packet)
    pos = _HEADER.size
    for _ in range(qdcount):
        pos = skip_name(packet, pos) + _QTAIL.size
        if pos > len(packet):
            raise FormatError("question runs past the end of the packet")
    checked = qdcount > 0
    for _ in range(ancount):
        record, pos = read_record(packet, pos, checked)
        yield record


def parse_ptr(packet: bytes) -> Optional[bytes]:
    """The first PTR record (class IN) of the answer section.

    The owner name is not checked (classless delegation through CNAMEs
    works if the cache returns the chain).  The target name must lie
    within the record's data.

    Returns:
        The wire-form target name, or None when there is no PTR record
        (for example NXDOMAIN).

    Raises:
        FormatError: the answer section is malformed before a PTR record.
    """
    for record in iter_answers(packet):
        if record.rtype == TYPE_PTR and record.rclass == CLASS_IN:
            name, end = read_name(packet, record.rdata)
            if end > record.rdata + record.rdlength:
                raise FormatError("PTR name runs past its record")
            return name
    return None


def parse_addresses(packet: bytes) -> List[bytes]:
    """Every AAAA (16 bytes) and A (4 bytes) record of class IN in the
    answer section, whatever its owner name, A data as IPv4-mapped.

    Returns:
        16-byte addresses in packet order.  As in the original, parsing
        stops quietly at a malformed record and what was read before it
        is kept (as in IndiMail's dns_*.c).
    """
    found: List[bytes] = []
    try:
        for record in iter_answers(packet):
            data = packet[record.rdata:record.rdata + record.rdlength]
            if record.rclass != CLASS_IN:
                continue
            if record.rtype == TYPE_AAAA and len(data) == 16:
                found.append(data)
            elif record.rtype == TYPE_A and len(data) == 4:
                found.append(mapped_packed(data))
    except FormatError:
        pass
    return found



def parse_txt(packet: bytes) -> List[bytes]:
    """The text of every TXT record (class IN) of the answer section,
    each record's character-strings joined (as djb's ``dns_txt`` reads a
    record), in packet order.

    Raises:
        FormatError: the answer section is malformed, or a
            character-string runs past its record.
    """
    found: List[bytes] = []
    for record in iter_answers(packet):
        if record.rtype != TYPE_TXT or record.rclass != CLASS_IN:
            continue
        pos, end = record.rdata, record.rdata + record.rdlength
        text = bytearray()
        while pos < end:
            size = packet[pos]
            if pos + 1 + size > end:
                raise FormatError("TXT string runs past its record")
            text += packet[pos + 1:pos + 1 + size]
            pos += 1 + size
        found.append(bytes(text))
    return found


def parse_a(packet: bytes) -> List[bytes]:
    """Every A record (4 bytes, class IN) of the answer section.

    Raises:
        FormatError: the answer section is malformed.
    """
    return [packet[r.rdata:r.rdata + 4] for r in iter_answers(packet)
            if r.rtype == TYPE_A and r.rclass == CLASS_IN and r.rdlength == 4]
