"""Rules lookups for a server: a rules cdb held in memory while unchanged.

``tcpserver -x`` consults the same rules cdb for every connection.
Reading the file per connection, as djb's tcpserver does, costs an
open and several reads; :class:`CdbSnapshot` keeps a small cdb as a
dict instead, reloaded whenever the file's identity changes (a rebuild
by ``tcprules`` is a new inode), and :class:`RulesCache` answers
:func:`ucspi.rules.lookup.find` from it, trying only the CIDR prefix
lengths that occur in the file.  A file that cannot be cached is read
per lookup, so the answers never differ from a fresh open.

This module builds on :mod:`ucspi.rules.lookup` (the keys, in order, and
what a value means); that module knows nothing of this one.
"""

from __future__ import annotations

import os
import stat
import time
from itertools import chain
from typing import Dict, List, Optional, Set, Tuple

from ..cdb.read import CdbError, CdbReader
from .lookup import Decision, Text, apply, find, key_plan
from .parse import Record

__all__ = ["CdbSnapshot", "RulesCache"]


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

    Args:
        path: the cdb file.
        max_size: largest file to hold in memory.
        settle_ns: how long a file must have been left alone.
    """

    def __init__(self, path: str, max_size: int = 8 << 20,
                 settle_ns: int = 2_000_000_000) -> None:
        self.path = path
        self.max_size = max_size
        self.settle_ns = settle_ns
        self._sig: Optional[Tuple[int, ...]] = None
        self._bad: Optional[Tuple[int, ...]] = None
        self._table: Dict[bytes, bytes] = {}

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
        try:
            table = self._load(sig)
        except (OSError, CdbError):
            table = None
        if table is None:
            self._bad = sig
            return None
        self._sig, self._table = sig, table
        return table

    def _load(self, sig: Tuple[int, ...]) -> Optional[Dict[bytes, bytes]]:
        with CdbReader(self.path) as db:
            if self._signature(db.fstat()) != sig:
                return None
            mem = CdbReader.from_bytes(db.contents())
        records = list(mem.items())
        if mem.verify() != len(records):
            return None
        table: Dict[bytes, bytes] = {}
        for key, data in records:
            table.setdefault(key, data)
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

    def find(self, ip: str, host: Optional[Text], info: Optional[Text]
             ) -> Optional[Record]:
        """As :func:`ucspi.rules.lookup.find` for this cache's file.

        Raises:
            OSError, CdbError: as :func:`ucspi.rules.lookup.find`.
        """
        table = self._snapshot.table()
        if table is None:
            return find(self.path, ip, host, info)
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
              info: Optional[Text]) -> Optional[Decision]:
        """The rules decision for a client (``tcpserver -x``/``-X``).

        Args:
            missing_ok: a missing file means "no rules" (``-X``).
            ip, host, info: as for :func:`ucspi.rules.lookup.lookup_keys`.

        Returns:
            The decision, or None when no rule matches (or the file is
            missing and ``missing_ok``).

        Raises:
            OSError, CdbError: the file cannot be used; ``errtext(exc)``
                gives the text for ``unable to read <cdb>: <err>``.
        """
        try:
            found = self.find(ip, host, info)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        return None if found is None else apply(found[1])
