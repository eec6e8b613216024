"""Constant databases (djb's cdb format): a careful reader.

The rules that ``tcpserver -x`` consults live in a cdb file built by
``tcprules``.  The format is djb's: a 2048-byte header of 256
``(position, slot count)`` pairs, then the records (``keylen datalen key
data``), then 256 open-addressing hash tables of ``(hash, position)``
slots; every number is a 32-bit little-endian integer.

The reader never trusts the file.  Every position and length is checked
against the file size before it is used, a probe sequence visits at most
as many slots as the table announces (no endless loop on a table without
an empty slot), and anything that does not add up raises
:class:`CdbError`, whose ``errno`` makes :func:`ucspi.errors.errtext`
print djb's words (``protocol error`` for a corrupt or truncated file,
``invalid argument`` for an empty one, ``is a directory``).  Failing to
*open* the file is left as the plain ``OSError`` (``ENOENT`` etc.), so a
caller can forgive a missing file and nothing else.  The file is read
with ``os.pread`` on a descriptor opened for the lookup: cheap, and a
rebuilt file (new inode, renamed into place) is seen at once.  (A server
that consults one cdb per connection keeps it in memory instead:
:class:`ucspi.rules.cache.CdbSnapshot`.)

The writer is :mod:`ucspi.cdb.make`.  Library use::

    from ucspi.cdb.make import write_cdb
    from ucspi.cdb.read import CdbReader

    write_cdb("rules.cdb", [(b"1.2.3.4", b"D\\0"), (b"", b"")])
    with CdbReader("rules.cdb") as db:
        db.get(b"1.2.3.4")        # b'D\\x00' (first record with the key)
        db.get_all(b"1.2.3.4")    # [b'D\\x00'] (every record, file order)
        db.get(b"nothing")        # None
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Generator, Iterable, Iterator, List, Optional, Tuple

from .format import HEADER_SIZE, CdbError, TooMuchWork, _pair, cdb_hash, prefix_hashes

_CHUNK = 8  # slots read per pread while probing


def _corrupt(what: str) -> CdbError:
    return CdbError(errno.EPROTO, "corrupt cdb: " + what)


class CdbReader:
    """Read-only access to one cdb file (or to its bytes in memory).

    Use as a context manager, or call :meth:`close`.  Opening reads only
    the 2048-byte header; records and slots are read as lookups need
    them.

    Args:
        path: the file to open.

    Raises:
        OSError: the file cannot be opened (``ENOENT``, ``EACCES`` ...).
        CdbError: it is a directory (``EISDIR``), not a regular file or
            empty (``EINVAL``), shorter than the header (``EPROTO``), or
            reading it fails.
    """

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._data: Optional[bytes] = None
        self._budget = -1
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise CdbError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise CdbError(errno.EINVAL, "not a regular file")
            self._fd = fd
            self._size = st.st_size
            self._start()
        except BaseException:
            self._fd = -1
            os.close(fd)
            raise

    @classmethod
    def from_bytes(cls, data: bytes) -> "CdbReader":
        """A reader over a cdb held in memory (same checks as a file).

        Args:
            data: the whole file.

        Returns:
            The reader; :meth:`close` is a no-op for it.

        Raises:
            CdbError: as for a file.
        """
        self = cls.__new__(cls)
        self._fd = -1
        self._budget = -1
        self._data = bytes(data)
        self._size = len(self._data)
        self._start()
        return self

    def _start(self) -> None:
        if self._size == 0:
            raise CdbError(errno.EINVAL, "empty cdb file")
        if self._size < HEADER_SIZE:
            raise _corrupt("shorter than its header")
        self._header = self._read(0, HEADER_SIZE)

    def close(self) -> None:
        """Release the descriptor (safe to call twice)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "CdbReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Size of the file in bytes."""
        return self._size

    def fstat(self) -> os.stat_result:
        """``fstat`` of the open file (what was opened, whatever the
        path names now).

        Raises:
            OSError: ``fstat`` failed.
            CdbError: the reader is closed or reads bytes in memory
                (``EBADF``).
        """
        if self._fd < 0:
            raise CdbError(errno.EBADF, "cdb reader has no open file")
        return os.fstat(self._fd)

    def contents(self) -> bytes:
        """The whole file.

        Raises:
            CdbError: the file shrank, or a read failed.
        """
        return self._read(0, self._size)

    def _read(self, pos: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``pos``, or CdbError."""
        if pos < 0 or n < 0 or pos + n > self._size:
            raise _corrupt("position out of range")
        if self._data is not None:
            return self._data[pos:pos + n]
        if self._fd < 0:
            raise CdbError(errno.EBADF, "cdb reader is closed")
        try:
            got = os.pread(self._fd, n, pos)
        except OSError as e:
            raise CdbError(e.errno or errno.EIO, str(e)) from None
        if len(got) != n:
            raise _corrupt("file shrank while reading")
        return got

    def _table(self, h: int) -> Tuple[int, int]:  # for items/verify
        tpos, slots = _pair.unpack_from(self._header, (h & 255) << 3)
        if slots and (tpos < HEADER_SIZE or tpos + 8 * slots > self._size):
            raise _corrupt("hash table out of range")
        return tpos, slots

    def _scan(self, key: bytes, h: int, limit: int
              ) -> List[Tuple[int, int]]:
        """(data position, data length) of up to ``limit`` records with
        ``key`` (0 = all), probing at most the table's slot count."""
        tpos, slots = _pair.unpack_from(self._header, (h & 255) << 3)
        found: List[Tuple[int, int]] = []
        if not slots:
            return found
        if tpos < HEADER_SIZE or tpos + 8 * slots > self._size:
            raise _corrupt("hash table out of range")
        index = (h >> 8) % slots
        left = slots
        while left:
            n = min(_CHUNK, left, slots - index)
            if self._budget >= 0:
                self._budget -= n
                if self._budget < 0:
                    raise TooMuchWork("more than the allowed slots for one lookup")
            chunk = self._read(tpos + 8 * index, 8 * n)
            for off in range(0, 8 * n, 8):
                sh, rpos = _pair.unpack_from(chunk, off)
                if rpos == 0:
                    return found
                if sh == h:
                    hit = self._record(rpos, key)
                    if hit is not None:
                        found.append(hit)
                        if len(found) == limit:
                            return found
            left -= n
            index = (index + n) % slots
        return found

    def _record(self, rpos: int, key: bytes) -> Optional[Tuple[int, int]]:
        klen = len(key)
        if rpos < HEADER_SIZE:
            raise _corrupt("record position inside the header")
        head = self._read(rpos, 8 + klen) if rpos + 8 + klen <= self._size \
            else self._read(rpos, 8)
        rklen, dlen = _pair.unpack_from(head)
        if rpos + 8 + rklen + dlen > self._size:
            raise _corrupt("record out of range")
        if rklen != klen or head[8:] != key:
            return None
        return rpos + 8 + klen, dlen

    def get(self, key: bytes, h: Optional[int] = None) -> Optional[bytes]:
        """The data of the first record with ``key``, or None.

        Args:
            key: the key.
            h: ``cdb_hash(key)`` if the caller has it already.

        Returns:
            The data, or None when no record has this key.

        Raises:
            CdbError: the file is corrupt or cannot be read.
        """
        found = self._scan(key, cdb_hash(key) if h is None else h, 1)
        return self._read(*found[0]) if found else None

    def get_all(self, key: bytes) -> List[bytes]:
        """The data of every record with ``key``, in insertion order.

        Raises:
            CdbError: the file is corrupt or cannot be read.
        """
        return [self._read(dpos, dlen)
                for dpos, dlen in self._scan(key, cdb_hash(key), 0)]

    def first_of(self, keys: Iterable[Tuple[bytes, int]], max_slots: int = 0
                 ) -> Optional[Tuple[bytes, bytes]]:
        """The first of several keys that exists.

        Args:
            keys: ``(key, cdb_hash(key))`` pairs, in order of preference.
            max_slots: the most hash slots all the keys together may
                visit (0: no limit); a lookup that must visit more stops.

        Returns:
            ``(key, data)`` for the first key with a record, or None.

        Raises:
            CdbError: the file is corrupt or cannot be read.
            TooMuchWork: ``max_slots`` would be passed.
        """
        self._budget = max_slots if max_slots > 0 else -1
        try:
            for key, h in keys:
                data = self.get(key, h)
                if data is not None:
                    return key, data
            return None
        finally:
            self._budget = -1

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """Every record in file order (what ``cdb -d`` prints).

        Raises:
            CdbError: the file is corrupt or cannot be read.
        """
        end = self._size
        for t in range(256):
            tpos, slots = self._table(t)
            if slots:
                end = min(end, tpos)
        pos = HEADER_SIZE
        while pos < end:
            klen, dlen = _pair.unpack(self._read(pos, 8))
            if pos + 8 + klen + dlen > end:
                raise _corrupt("record runs into the hash tables")
            yield self._read(pos + 8, klen), self._read(pos + 8 + klen, dlen)
            pos += 8 + klen + dlen

    def verify(self) -> int:
        """Check the whole file: every table, slot and record.

        Returns:
            The number of records reachable through the hash tables.

        Raises:
            CdbError: anything out of range or inconsistent.
        """
        steps = self.verifying(0)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                count: int = done.value
                return count

    def verifying(self, step: int) -> Generator[None, None, int]:
        """:meth:`verify` in steps: yields after every ``step`` slots
        (never if ``step`` <= 0) and returns the count, so that a caller
        can spread the check of a big file over many turns of a loop.

        Raises:
            CdbError: as :meth:`verify`.
        """
        count = 0
        work = 0
        for t in range(256):
            tpos, slots = self._table(t)
            raw = self._read(tpos, 8 * slots) if slots else b""
            for off in range(0, 8 * slots, 8):
                work += 1
                if work == step:
                    work = 0
                    yield
                sh, rpos = _pair.unpack_from(raw, off)
                if rpos == 0:
                    continue
                if sh & 255 != t:
                    raise _corrupt("slot in the wrong table")
                klen, _ = _pair.unpack(self._read(rpos, 8))
                key = self._read(rpos + 8, klen)
                if self._record(rpos, key) is None or \
                        cdb_hash(key) != sh:
                    raise _corrupt("slot hash does not match its key")
                count += 1
        return count


__all__ = ["CdbError", "CdbReader", "HEADER_SIZE", "TooMuchWork", "cdb_hash", "prefix_hashes"]
