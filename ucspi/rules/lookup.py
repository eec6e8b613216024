"""Access rules: which rule applies to a client, and what it says.

``tcprules`` compiles a rules text into a cdb (the language and its
compiled form are in :mod:`ucspi.rules.parse`): keys are addresses,
ranges expanded and CIDR blocks turned into IndiMail's bit-string keys;
values are NUL-terminated entries, ``D`` (deny), ``+NAME=VALUE``,
``-NAME``.

For a client, ``tcpserver -x`` and ``tcprulescheck`` try a fixed
sequence of keys (:func:`lookup_keys`, from a :class:`KeyPlan`); the
first key present decides, and its value is applied with :func:`apply`.
Everything here is pure except :func:`find`, which opens the cdb for one
lookup; a server uses :class:`ucspi.rules.cache.RulesCache` instead.

Names and values are bytes throughout: an ident answer or a value in a
rule may hold any byte but NUL.

Example::

    >>> list(lookup_keys("10.0.0.1", None, None))[:3]
    [b'10.0.0.1', b'10.0.0.', b'10.0.']
    >>> apply(b"+MAXPERIP=5\\x00").maxperip
    5
"""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

from ..address import ip6_text, parse_quad
from ..cdb.read import CdbError, CdbReader, cdb_hash, prefix_hashes
from ..scan import INT_MAX, leading
from .parse import Record, ip4_bits, ip6_bits

__all__ = ["Text", "entries", "KeyPlan", "key_plan", "lookup_keys", "find",
           "Decision", "apply"]

Text = Union[str, bytes]


def entries(value: bytes) -> List[bytes]:
    """The NUL-terminated entries of a value (an unterminated tail is
    dropped)."""
    return value.split(b"\0")[:-1]


# ---------------------------------------------------------------- lookup

def _b(text: Text) -> bytes:
    return text if isinstance(text, bytes) else \
        text.encode("utf-8", "surrogateescape")


def _address(ip: str) -> Tuple[Optional[bytes], List[bytes], List[bytes],
                                bytes, bytes]:
    """For an address: the form used after ``info@``, the address keys,
    the dotted prefixes, the CIDR mark and the address bytes for the
    bit string (both empty when there are no CIDR keys)."""
    ipb = _b(ip)
    if ":" not in ip:
        octets = parse_quad(ip)
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


class KeyPlan:
    """The keys for one client, in three runs: ``head`` (info, address,
    host, dotted prefixes), the CIDR family ``mark`` + ``bits`` (longest
    prefix first, down to 2 bits), and ``tail`` (host suffixes, ``=``,
    the empty key).  Build one with :func:`key_plan`."""

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


def key_plan(ip: str, host: Optional[Text], info: Optional[Text]) -> KeyPlan:
    """The keys to try for a client (arguments as for :func:`lookup_keys`)."""
    return KeyPlan(ip, None if host is None else _b(host),
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
    only if the caller passes it as ``a.b.c.d`` (design: mapped-addresses).

    Args:
        ip: the client address text.
        host: the validated remote host name, or None.
        info: the ident answer, or None.

    Returns:
        An iterator over the keys.
    """
    return iter(key_plan(ip, host, info).keys())


def find(cdb_path: str, ip: str, host: Optional[Text], info: Optional[Text],
         max_slots: int = 0) -> Optional[Record]:
    """Look a client up in a rules cdb, opened for this lookup.

    Args:
        cdb_path: the cdb file.
        ip: the client address text (see :func:`lookup_keys`).
        host: the remote host name, or None.
        info: the ident answer, or None.
        max_slots: the most hash slots the lookup may visit (0: no
            limit; see :meth:`ucspi.cdb.read.CdbReader.first_of`).

    Returns:
        ``(key, value)`` of the first key found, or None.

    Raises:
        OSError: the file cannot be opened (``ENOENT`` when missing).
        CdbError: it is corrupt, truncated, empty, a directory, or a
            read fails.
        TooMuchWork: ``max_slots`` would be passed.
    """
    try:
        with CdbReader(cdb_path) as db:
            return db.first_of(key_plan(ip, host, info).hashed(), max_slots)
    except CdbError as exc:
        explain(exc, cdb_path)
        raise


#: the hint for a rules text where a cdb should be
NOT_CDB = "not a cdb: compile it with tcprules"
#: how much of a file :func:`looks_like_text` reads
TEXT_SAMPLE = 4096
_TEXT_BYTES = frozenset(range(0x20, 0x7f)) | {0x09, 0x0a, 0x0d}


def looks_like_text(path: str) -> bool:
    """Does ``path`` start like a rules text (printable ASCII lines)
    rather than a cdb (whose 2048-byte header of little-endian numbers
    holds NUL bytes)?  Only a regular file is read, never waited for."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        sample = os.read(fd, TEXT_SAMPLE)
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(sample.strip()) and all(byte in _TEXT_BYTES for byte in sample)


def explain(exc: CdbError, path: str) -> None:
    """Give a "corrupt" rules cdb that is in fact a rules text the hint
    :data:`NOT_CDB` (``protocol error (not a cdb: compile it with
    tcprules)``)."""
    if exc.errno == errno.EPROTO and looks_like_text(path):
        exc.hint = NOT_CDB


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


def apply(value: bytes) -> Decision:
    """Interpret a rule value (as djb's and IndiMail's tcpserver do).

    ``D`` denies; ``+NAME=VALUE`` sets (no ``=`` or an empty NAME:
    ignored); ``-NAME`` removes; other entries and an unterminated tail
    are ignored.  ``MAXPERIP=...`` also sets ``maxperip`` from its
    leading digits (none = 0; more than ``2**31 - 1``, the largest
    ``-C``, counts as that: no practical limit, never a wrapped or
    failed conversion); ``-MAXPERIP`` only removes the variable.

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
                    decision.maxperip = leading(val, INT_MAX)
        elif kind == b"-" and len(entry) > 1:
            decision.changes.append((entry[1:], None))
    return decision
