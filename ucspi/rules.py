"""Access rules: the tcprules language, its compiled form, and lookups.

A rules text has one rule per line, ``address:allow`` or
``address:deny``, optionally followed by environment changes
(``,NAME="value"`` with any quote byte, ``,!NAME`` to remove one).
``tcprules`` compiles it into a cdb whose keys are the addresses as
written (ranges such as ``10.2-3.`` expanded, CIDR blocks turned into
IndiMail's bit-string keys) and whose values are NUL-terminated entries:
``D`` (deny), ``+NAME=VALUE``, ``-NAME``.

For a client, ``tcpserver -x`` and ``tcprulescheck`` try a fixed
sequence of keys (:func:`lookup_keys`); the first key present decides,
and its value is applied with :func:`apply`.  Everything here is pure
except :func:`find` and :func:`check`, which open the cdb for one lookup.

Names and values are bytes throughout: an ident answer or a value in a
rule may hold any byte but NUL.

Example::

    >>> parse_line(b"10.0-1.:allow,RELAYCLIENT=\\"\\",!TCPREMOTEINFO\\n")
    [(b'10.0.', b'+RELAYCLIENT=\\x00-TCPREMOTEINFO\\x00'), (b'10.1.', ...)]
    >>> apply(b"+MAXPERIP=5\\x00").maxperip
    5
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from itertools import chain
from typing import Dict, Iterator, List, Optional, Set, Tuple, Union

from ucspi.cdb import CdbReader, CdbSnapshot, cdb_hash, prefix_hashes
from ucspi.errors import UcspiError
from ucspi.ipfmt import ip6_text

Text = Union[str, bytes]
Record = Tuple[bytes, bytes]

_LETTERS4 = b"abcdefghijklmnopqrstuvwxyz123456"
_U64 = 1 << 64


class RuleSyntaxError(UcspiError):
    """A rules line cannot be parsed (tcprules exits 100).

    ``line`` is the offending line without its trailing blanks."""

    def __init__(self, line: bytes) -> None:
        super().__init__("unable to parse this line")
        self.line = line


class NoColonError(UcspiError):
    """A non-blank line has no colon at all (tcprules exits 111, as
    IndiMail's does)."""


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
    """A range bound: decimal digits, empty = 0, wrapping like C."""
    if field_ and not field_.isdigit():
        raise RuleSyntaxError(text)
    return int(field_ or b"0") % _U64


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
    if not plen.isdigit() or len(plen) > 3:
        return None
    bits = int(plen)
    if b":" in net:
        try:
            ip6 = ipaddress.IPv6Address(net.decode("ascii"))
        except ValueError:
            return None
        if ip6.scope_id is not None or not 2 <= bits <= 128:
            return None
        return b"^" + ip6_bits(ip6.packed)[:bits]
    fields = net.split(b".")
    if not 1 <= len(fields) <= 4 or not 2 <= bits <= 32:
        return None
    if not all(f.isdigit() and len(f) <= 3 and int(f) < 256 for f in fields):
        return None
    octets = bytes(int(f) for f in fields) + bytes(4 - len(fields))
    return b"_" + ip4_bits(octets)[:bits]


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
        RuleSyntaxError: the line is malformed (exit 100).
        NoColonError: the line is not blank and has no colon (exit 111).
    """
    if line.startswith(b"#"):
        return []
    text = line.rstrip(b"\n \t")
    if not text.strip():  # blank, or only ASCII white space (D19)
        return []
    colon = _separator(text)
    if colon < 0:
        if b":" not in text:
            raise NoColonError("Unable to find colon on non-empty line.")
        raise RuleSyntaxError(text)
    value = _instructions(text, text[colon + 1:])
    return [(key, value) for key in address_keys(text[:colon], text)]


def encode_value(deny: bool, changes: List[Tuple[bytes, Optional[bytes]]]
                 ) -> bytes:
    """Build a rule value from its parts.

    Args:
        deny: whether the rule denies.
        changes: ``(name, value)`` to set, ``(name, None)`` to remove.

    Returns:
        The value bytes as tcprules stores them.
    """
    out = [b"D\0"] if deny else []
    for name, val in changes:
        out.append(b"-" + name + b"\0" if val is None
                   else b"+" + name + b"=" + val + b"\0")
    return b"".join(out)


def entries(value: bytes) -> List[bytes]:
    """The NUL-terminated entries of a value (an unterminated tail is
    dropped)."""
    return value.split(b"\0")[:-1]


# ---------------------------------------------------------------- lookup

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


def _b(text: Text) -> bytes:
    return text if isinstance(text, bytes) else \
        text.encode("utf-8", "surrogateescape")


def _v4_octets(ip: str) -> Optional[bytes]:
    parts = ip.split(".")
    if len(parts) != 4 or not all(
            p.isdigit() and p.isascii() and int(p) < 256 for p in parts):
        return None
    return bytes(int(p) for p in parts)


def _address(ip: str) -> Tuple[Optional[bytes], List[bytes], List[bytes],
                                bytes, bytes]:
    """For an address: the form used after ``info@``, the address keys,
    the dotted prefixes, the CIDR mark and the address bytes for the
    bit string (both empty when there are no CIDR keys)."""
    ipb = _b(ip)
    if ":" not in ip:
        octets = _v4_octets(ip)
        dotted = [ipb[:n] for n in range(len(ipb), 0, -1) if ipb[n - 1] == 46]
        if octets is None:
            return ipb, [ipb], dotted, b"", b""
        return ipb, [ipb], dotted, b"_", octets
    try:
        six = ipaddress.IPv6Address(ip)
    except ValueError:
        return None, [ipb], [], b"", b""
    hexed = six.packed.hex().encode("ascii")
    expanded = b":".join(hexed[i:i + 4] for i in range(0, 32, 4))
    return expanded, [expanded, _b(ip6_text(six))], [], b"^", six.packed


class _Plan:
    """The keys for one client, in three runs: ``head`` (info, address,
    host, dotted prefixes), the CIDR family ``mark`` + ``bits`` (longest
    prefix first, down to 2 bits), and ``tail`` (host suffixes, ``=``,
    the empty key)."""

    __slots__ = ("head", "mark", "_raw", "_bits", "tail")

    def __init__(self, ip: str, host: Optional[bytes],
                 info: Optional[bytes]) -> None:
        first, head, dotted, self.mark, self._raw = _address(ip)
        self._bits: Optional[bytes] = None
        if info is not None:
            at = [] if first is None else [info + b"@" + first]
            if host is not None:
                at.append(info + b"@=" + host)
            head[:0] = at
        tail = [b""]
        if host is not None:
            head.append(b"=" + host)
            tail[:0] = [b"=" + host[i:] for i in range(len(host))
                        if host[i] == 46] + [b"="]
        self.head = head + dotted
        self.tail = tail

    @property
    def bits(self) -> bytes:
        """The bit string (computed on first use)."""
        if self._bits is None:
            raw = self._raw
            self._bits = ip4_bits(raw) if len(raw) == 4 else \
                ip6_bits(raw) if raw else b""
        return self._bits

    def cidr(self) -> List[bytes]:
        key = self.mark + self.bits
        return [key[:p + 1] for p in range(len(self.bits), 1, -1)]

    def keys(self) -> List[bytes]:
        return self.head + self.cidr() + self.tail

    def hashed(self) -> Iterator[Tuple[bytes, int]]:
        for key in self.head:
            yield key, cdb_hash(key)
        if self.bits:
            hashes = prefix_hashes(self.bits, cdb_hash(self.mark))
            key = self.mark + self.bits
            for p in range(len(self.bits), 1, -1):
                yield key[:p + 1], hashes[p]
        for key in self.tail:
            yield key, cdb_hash(key)


def _plan(ip: str, host: Optional[Text], info: Optional[Text]) -> _Plan:
    return _Plan(ip, None if host is None else _b(host),
                 None if info is None else _b(info))


def lookup_keys(ip: str, host: Optional[Text], info: Optional[Text]
                ) -> Iterator[bytes]:
    """The keys tried for a client, in order; the first present wins.

    IPv4 (``86.75.30.9``): ``info@ip``, ``info@=host``, ``ip``,
    ``=host``, ``86.75.30.``, ``86.75.``, ``86.``, CIDR keys ``_...``
    for /32 down to /2, ``=.suffix`` keys longest first, ``=``, and the
    empty key.  IPv6 (any ``ip`` with a colon): ``info@`` + expanded
    form, ``info@=host``, the expanded form (8 groups of 4 hex digits),
    the RFC 5952 form, ``=host``, CIDR keys ``^...`` for /128 down to
    /2, then the host suffixes, ``=`` and the empty key.  Steps needing
    a host or info are skipped when they are None (an empty string
    counts as present).  An IPv4-mapped client is looked up as IPv4
    only if the caller passes it as ``a.b.c.d`` (D18).

    Args:
        ip: the client address text.
        host: the validated remote host name, or None.
        info: the ident answer, or None.

    Returns:
        An iterator over the keys.
    """
    return iter(_plan(ip, host, info).keys())


def find(cdb_path: str, ip: str, host: Optional[Text], info: Optional[Text]
         ) -> Optional[Record]:
    """Look a client up in a rules cdb, opened for this lookup.

    Args:
        cdb_path: the cdb file.
        ip: the client address text (see :func:`lookup_keys`).
        host: the remote host name, or None.
        info: the ident answer, or None.

    Returns:
        ``(key, value)`` of the first key found, or None.

    Raises:
        OSError: the file cannot be opened (``ENOENT`` when missing).
        CdbError: it is corrupt, truncated, empty, a directory, or a
            read fails.
    """
    with CdbReader(cdb_path) as db:
        return db.first_of(_plan(ip, host, info).hashed())


# ---------------------------------------------------------------- applying

@dataclass
class Decision:
    """What a rule says about a connection.

    Attributes:
        deny: the connection must be refused.
        changes: environment changes in order: ``(name, value)`` sets,
            ``(name, None)`` removes.
        maxperip: the per-host limit the rule sets, or None.
    """

    deny: bool = False
    changes: List[Tuple[bytes, Optional[bytes]]] = field(default_factory=list)
    maxperip: Optional[int] = None


def _leading_number(value: bytes) -> int:
    end = 0
    while end < len(value) and 48 <= value[end] <= 57:
        end += 1
    return int(value[:end]) if end else 0


def apply(value: bytes) -> Decision:
    """Interpret a rule value (spec §5.7).

    ``D`` denies; ``+NAME=VALUE`` sets (no ``=`` or an empty NAME:
    ignored); ``-NAME`` removes; other entries and an unterminated tail
    are ignored.  ``MAXPERIP=...`` also sets ``maxperip`` from its
    leading digits (none = 0); ``-MAXPERIP`` only removes the variable.

    Args:
        value: the value found in the cdb.

    Returns:
        The decision.
    """
    decision = Decision()
    for entry in entries(value):
        kind = entry[:1]
        if kind == b"D":
            decision.deny = True
        elif kind == b"+":
            name, eq, val = entry[1:].partition(b"=")
            if eq and name:
                decision.changes.append((name, val))
                if name == b"MAXPERIP":
                    decision.maxperip = _leading_number(val)
        elif kind == b"-" and len(entry) > 1:
            decision.changes.append((entry[1:], None))
    return decision


def check(cdb_path: str, missing_ok: bool, ip: str, host: Optional[Text],
          info: Optional[Text]) -> Optional[Decision]:
    """The rules decision for a client (``tcpserver -x``/``-X``).

    Args:
        cdb_path: the rules cdb.
        missing_ok: a missing file means "no rules" (``-X``).
        ip, host, info: as for :func:`lookup_keys`.

    Returns:
        The decision, or None when no rule matches (or the file is
        missing and ``missing_ok``).

    Raises:
        OSError, CdbError: the file cannot be used; ``errtext(exc)``
            gives the text for ``unable to read <cdb>: <err>``.
    """
    try:
        found = find(cdb_path, ip, host, info)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return None if found is None else apply(found[1])


class RulesCache:
    """Lookups for a server: the answers of :func:`find`, faster.

    While the cdb is unchanged its records are held in memory
    (:class:`ucspi.cdb.CdbSnapshot`), so a lookup costs one ``stat()``
    and a few dict probes, and only the CIDR prefix lengths that occur
    in the file are tried.  A new or rewritten file is picked up at the
    next lookup.  Files that cannot be cached (too big, just changed,
    failing the full check) are read per lookup by :func:`find`.

    Args:
        cdb_path: the rules cdb.
    """

    def __init__(self, cdb_path: str) -> None:
        self.path = cdb_path
        self._snapshot = CdbSnapshot(cdb_path)
        self._table: Optional[Dict[bytes, bytes]] = None
        self._cidr: Dict[bytes, List[int]] = {}

    def _index(self, table: Dict[bytes, bytes]) -> None:
        lengths: Dict[bytes, Set[int]] = {b"_": set(), b"^": set()}
        for key in table:
            mark = key[:1]
            if mark in lengths and len(key) >= 3:
                lengths[mark].add(len(key) - 1)
        self._cidr = {m: sorted(ls, reverse=True) for m, ls in lengths.items()}
        self._table = table

    def find(self, ip: str, host: Optional[Text], info: Optional[Text]
             ) -> Optional[Record]:
        """As :func:`find` for this cache's file.

        Raises:
            OSError, CdbError: as :func:`find`.
        """
        table = self._snapshot.table()
        if table is None:
            return find(self.path, ip, host, info)
        if table is not self._table:
            self._index(table)
        plan = _plan(ip, host, info)
        lengths = self._cidr.get(plan.mark, ())
        cidr = plan.mark + plan.bits if lengths else b""
        lengths = [p for p in lengths if p < len(cidr)]
        for key in chain(plan.head, (cidr[:p + 1] for p in lengths),
                         plan.tail):
            value = table.get(key)
            if value is not None:
                return key, value
        return None

    def check(self, missing_ok: bool, ip: str, host: Optional[Text],
              info: Optional[Text]) -> Optional[Decision]:
        """As :func:`check` for this cache's file."""
        try:
            found = self.find(ip, host, info)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        return None if found is None else apply(found[1])
