"""Constant databases (djb's cdb format): a careful reader and a writer.

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
:class:`ucspi.rulecache.CdbSnapshot`.)

The writer produces files byte-identical to djb's ``cdbmake`` and to
tinycdb for the same records in the same order, and refuses to pass the
format's 4 GiB limit.  :func:`write_cdb` builds in a temporary file,
fsyncs it and renames it over the target, so readers see the old file
or the new one, never a partial one.

Library use::

    from ucspi.cdb import CdbReader, write_cdb

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
import struct
from typing import Iterable, Iterator, List, Optional, Tuple

from ucspi.errors import UcspiError

HEADER_SIZE = 2048
MAX_SIZE = 0xFFFFFFFF  # the largest position a 32-bit field can hold
_MASK = 0xFFFFFFFF
_CHUNK = 8  # slots read per pread while probing

_pair = struct.Struct("<II")


class CdbError(UcspiError):
    """A cdb file is unusable: corrupt, truncated, empty, a directory,
    unreadable, or (for the writer) too big.

    ``errno`` is what the C tools would report: ``EPROTO`` ("protocol
    error") for a corrupt or truncated file, ``EINVAL`` for an empty one,
    ``EISDIR`` for a directory, the system's errno for a read error and
    ``EFBIG`` ("file too big") when a file would pass 4 GiB.
    """

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def cdb_hash(key: bytes, h: int = 5381) -> int:
    """djb's cdb hash: ``h = ((h * 33) mod 2**32) XOR byte``, from 5381.

    Args:
        key: the bytes to hash.
        h: the starting value (to continue a hash over more bytes).

    Returns:
        The 32-bit hash.
    """
    for c in key:
        h = ((h * 33) ^ c) & _MASK
    return h


def prefix_hashes(data: bytes, h: int = 5381) -> List[int]:
    """Hashes of every prefix of ``data`` in one pass.

    Args:
        data: the bytes.
        h: the hash of whatever precedes ``data`` (5381 for nothing).

    Returns:
        A list ``r`` with ``r[n] == cdb_hash(prefix + data[:n])`` for
        ``n`` in ``0 .. len(data)``.
    """
    out = [h]
    append = out.append
    for c in data:
        h = ((h * 33) ^ c) & _MASK
        append(h)
    return out


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

    def first_of(self, keys: Iterable[Tuple[bytes, int]]
                 ) -> Optional[Tuple[bytes, bytes]]:
        """The first of several keys that exists.

        Args:
            keys: ``(key, cdb_hash(key))`` pairs, in order of preference.

        Returns:
            ``(key, data)`` for the first key with a record, or None.

        Raises:
            CdbError: the file is corrupt or cannot be read.
        """
        for key, h in keys:
            data = self.get(key, h)
            if data is not None:
                return key, data
        return None

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
        count = 0
        for t in range(256):
            tpos, slots = self._table(t)
            raw = self._read(tpos, 8 * slots) if slots else b""
            for off in range(0, 8 * slots, 8):
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


class CdbWriter:
    """Write a cdb to an open descriptor, as djb's ``cdb_make`` does.

    Records go to the file as they are added; :meth:`finish` appends the
    hash tables and writes the header.  The descriptor is neither synced
    nor closed here.

    Args:
        fd: a descriptor open for writing, positioned anywhere (the file
            is written with explicit positions from offset 0).

    Raises:
        OSError: from the underlying writes.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = HEADER_SIZE
        self._wpos = HEADER_SIZE
        self._buf = bytearray()
        self._tables: List[List[Tuple[int, int]]] = [[] for _ in range(256)]

    def _grow(self, n: int) -> None:
        if self._pos + n > MAX_SIZE:
            raise CdbError(errno.EFBIG, "cdb would pass 4 GiB")
        self._pos += n

    def _put(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= 65536:
            self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            done = os.pwrite(self._fd, view, self._wpos)
            self._wpos += done
            view = view[done:]
        view.release()
        del self._buf[:]

    def add(self, key: bytes, data: bytes) -> None:
        """Append one record (duplicate keys are kept, in order).

        Raises:
            CdbError: the file would pass 4 GiB (``EFBIG``).
            OSError: a write failed.
        """
        pos = self._pos
        self._grow(8 + len(key) + len(data))
        h = cdb_hash(key)
        self._tables[h & 255].append((h, pos))
        self._put(_pair.pack(len(key), len(data)))
        self._put(key)
        self._put(data)

    def finish(self) -> None:
        """Write the hash tables and the header.

        Raises:
            CdbError: the file would pass 4 GiB (``EFBIG``).
            OSError: a write failed.
        """
        header = bytearray()
        for entries in self._tables:
            slots = 2 * len(entries)
            header += _pair.pack(self._pos, slots)
            table = [(0, 0)] * slots
            for h, pos in entries:
                where = (h >> 8) % slots
                while table[where][1]:
                    where = (where + 1) % slots
                table[where] = (h, pos)
            self._grow(8 * slots)
            self._put(b"".join(_pair.pack(h, p) for h, p in table))
        self._flush()
        done = 0
        while done < HEADER_SIZE:
            done += os.pwrite(self._fd, header[done:], done)


def write_cdb(path: str, records: Iterable[Tuple[bytes, bytes]],
              tmp: Optional[str] = None) -> None:
    """Build a cdb atomically: temp file, fsync, rename over ``path``.

    Args:
        path: the cdb to create or replace.
        records: ``(key, data)`` pairs in the order to store them.
        tmp: the temporary file (default ``path + ".tmp"``); it must be
            on the same file system as ``path``.  It is removed if the
            build fails.

    Raises:
        OSError: creating, writing, syncing or renaming failed.
        CdbError: the file would pass 4 GiB.
    """
    if tmp is None:
        tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 0o644)
    try:
        try:
            writer = CdbWriter(fd)
            for key, data in records:
                writer.add(key, data)
            writer.finish()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
