"""Rules lookups for a server: a rules cdb held in memory while unchanged.

``tcpserver -x`` consults the same rules cdb for every connection.
Reading the file per connection, as djb's tcpserver does, costs an
open and several reads; :class:`CdbSnapshot` keeps a small cdb as a
dict instead, reloaded whenever the file's identity changes (a rebuild
by ``tcprules`` is a new inode), and :class:`RulesCache` answers
:func:`ucspi.rules.lookup.find` from it, trying only the CIDR prefix
lengths that occur in the file.  A file that cannot be cached is read
per lookup, so the answers never differ from a fresh open.

The server's loop must never stand still on one lookup, whatever the
file holds, so both kinds of work are bounded.  Loading a snapshot costs
about 60 ms per MB, so it is done in steps of :data:`LOAD_STEP` records
and slots (a few milliseconds), one step per lookup, the lookups being
answered from the file itself meanwhile; files over :data:`SNAPSHOT_MAX`
are never held.  A lookup in the file can be given a budget of hash
slots (``max_slots``); a lookup that would pass it raises
:class:`~ucspi.cdb.format.TooMuchWork` and the server asks again in a
child of its own (:func:`pack_found` and :func:`unpack_found` carry the
answer back).

This module builds on :mod:`ucspi.rules.lookup` (the keys, in order, and
what a value means); that module knows nothing of this one.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from itertools import chain
from typing import Callable, Dict, Generator, List, Optional, Set, Tuple, Union

from ..cdb.read import CdbError, CdbReader
from .lookup import Decision, Text, apply, find, key_plan
from .parse import Record

__all__ = ["CdbSnapshot", "LOAD_STEP", "RulesCache", "SNAPSHOT_MAX", "decide", "pack_found",
           "unpack_found"]

#: a snapshot being loaded: yields between steps, returns the table
#: (or None: the file changed or does not add up)
Loading = Generator[None, None, Optional[Dict[bytes, bytes]]]

#: the biggest cdb held in memory
SNAPSHOT_MAX = 8 << 20
#: records and hash slots loaded per step (about 5 ms of the loop)
LOAD_STEP = 5000


class CdbSnapshot:
    """A small cdb kept in memory as a dict while the file is unchanged.

    For a server that consults the same cdb for every connection.
    :meth:`table` costs one ``stat()`` while the file's identity (device,
    inode, size, mtime, ctime) is unchanged; a file replaced by
    ``tcprules`` (a new inode) or rewritten in place (a new ctime) is
    loaded again, so a rebuild takes effect at the next lookup, as with
    a fresh open.  A file changed less than ``settle_ns`` ago, bigger
    than ``max_size``, or failing the full check of :meth:`CdbReader.verify`
    is not cached: :meth:`table` returns None and the caller reads the
    file itself with :class:`CdbReader`, which then reports any error.
    A new version is loaded in steps of ``step`` records and slots, one
    per call of :meth:`table` (which returns None until the load is
    done), so that no call does more than a bounded amount of work.

    Args:
        path: the cdb file.
        max_size: largest file to hold in memory.
        settle_ns: how long a file must have been left alone.
        step: the work of one call while loading (0: all at once).
    """

    def __init__(self, path: str, max_size: int = SNAPSHOT_MAX,
                 settle_ns: int = 2_000_000_000, step: int = LOAD_STEP) -> None:
        self.path = path
        self.max_size = max_size
        self.settle_ns = settle_ns
        self.step = step
        self._sig: Optional[Tuple[int, ...]] = None
        self._bad: Optional[Tuple[int, ...]] = None
        self._table: Dict[bytes, bytes] = {}
        self._loading: Optional[Tuple[Tuple[int, ...], Loading]] = None

    @staticmethod
    def _signature(st: os.stat_result) -> Tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                st.st_ctime_ns)

    def table(self) -> Optional[Dict[bytes, bytes]]:
        """The first data of every key, or None (read the file instead).

        Raises:
            OSError: ``stat()`` fails (``ENOENT`` when missing).
        """
        st = os.stat(self.path)
        sig = self._signature(st)
        if sig == self._sig:
            return self._table
        if sig == self._bad or not stat.S_ISREG(st.st_mode) or \
                st.st_size > self.max_size or \
                time.time_ns() - st.st_ctime_ns < self.settle_ns:
            return None
        if self._loading is None or self._loading[0] != sig:
            self._loading = (sig, self._load(sig))
        try:
            next(self._loading[1])
            return None               # not loaded yet: read the file this time
        except StopIteration as done:
            table: Optional[Dict[bytes, bytes]] = done.value
        except (OSError, CdbError):
            table = None
        self._loading = None
        if table is None:
            self._bad = sig
            return None
        self._sig, self._table = sig, table
        return table

    def _load(self, sig: Tuple[int, ...]) -> "Loading":
        """Load a version in steps (a generator: see :meth:`table`)."""
        with CdbReader(self.path) as db:
            if self._signature(db.fstat()) != sig:
                return None
            mem = CdbReader.from_bytes(db.contents())
        table: Dict[bytes, bytes] = {}
        count = 0
        for key, data in mem.items():
            table.setdefault(key, data)
            count += 1
            if self.step > 0 and count % self.step == 0:
                yield
        if (yield from mem.verifying(self.step)) != count:
            return None
        return table


class RulesCache:
    """Lookups for a server: the answers of :func:`ucspi.rules.lookup.find`, faster.

    While the cdb is unchanged its records are held in memory
    (:class:`CdbSnapshot`), so a lookup costs one ``stat()``
    and a few dict probes, and only the CIDR prefix lengths that occur
    in the file are tried.  A new or rewritten file is picked up at the
    next lookup.  Files that cannot be cached (too big, just changed,
    failing the full check) are read per lookup by :func:`ucspi.rules.lookup.find`.

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

    def find(self, ip: str, host: Optional[Text], info: Optional[Text],
             max_slots: int = 0) -> Optional[Record]:
        """As :func:`ucspi.rules.lookup.find` for this cache's file.

        Raises:
            OSError, CdbError, TooMuchWork: as :func:`ucspi.rules.lookup.find`
                (``max_slots`` bounds only a lookup in the file itself).
        """
        table = self._snapshot.table()
        if table is None:
            return find(self.path, ip, host, info, max_slots)
        if table is not self._table:
            self._index(table)
        plan = key_plan(ip, host, info)
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
              info: Optional[Text], max_slots: int = 0) -> Optional[Decision]:
        """The rules decision for a client (``tcpserver -x``/``-X``).

        Args:
            missing_ok: a missing file means "no rules" (``-X``).
            ip, host, info: as for :func:`ucspi.rules.lookup.lookup_keys`.
            max_slots: as for :meth:`find`.

        Returns:
            The decision, or None when no rule matches (or the file is
            missing and ``missing_ok``).

        Raises:
            OSError, CdbError: the file cannot be used; ``errtext(exc)``
                gives the text for ``unable to read <cdb>: <err>``.
            TooMuchWork: ``max_slots`` would be passed.
        """
        return decide(missing_ok, lambda: self.find(ip, host, info, max_slots))


def decide(missing_ok: bool, lookup: Callable[[], Optional[Record]]) -> Optional[Decision]:
    """The decision from a lookup's outcome: ``lookup()`` gives the rule
    found (or raises); a missing file is no rule when ``missing_ok``."""
    try:
        found = lookup()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return None if found is None else apply(found[1])


def pack_found(found: Union[Optional[Record], BaseException]) -> bytes:
    """The outcome of a lookup as bytes, for a child to hand to its
    parent: ``F``, key and value lengths, key, value; ``N`` (no rule); ``O``/``C``
    errno and text (an ``OSError``, a ``CdbError``)."""
    if isinstance(found, BaseException):
        kind = b"O" if isinstance(found, OSError) else b"C"
        num = getattr(found, "errno", None) or errno.EIO
        return kind + num.to_bytes(4, "big") + str(found).encode(errors="replace")
    if found is None:
        return b"N"
    key, value = found
    return b"F" + len(key).to_bytes(4, "big") + len(value).to_bytes(4, "big") + key + value


def unpack_found(data: bytes) -> Optional[Record]:
    """The lookup outcome that :func:`pack_found` made.

    Raises:
        OSError, CdbError: the lookup's error (``FileNotFoundError`` for
            a missing file); ``CdbError`` (``EPROTO``) if ``data`` is not
            a complete answer (the child died).
    """
    kind, body = data[:1], data[1:]
    if kind == b"N" and not body:
        return None
    if kind == b"F" and len(body) >= 8:
        klen, vlen = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        if len(body) == 8 + klen + vlen:
            return body[8:8 + klen], body[8 + klen:]
    if kind in (b"O", b"C") and len(body) >= 4:
        num, text = int.from_bytes(body[:4], "big"), body[4:].decode(errors="replace")
        if kind == b"C":
            raise CdbError(num, text)
        raise OSError(num, os.strerror(num)) if num else OSError(text)
    raise CdbError(errno.EPROTO, "no answer from the lookup child")
