"""Writing cdb files, as djb's ``cdbmake`` does (see :mod:`ucspi.cdb.read`
for the format and for reading).

:class:`CdbWriter` writes records to an open descriptor and finishes
with the hash tables and the header; the result is byte-identical to
``cdbmake`` and tinycdb for the same records in the same order, and the
writer refuses to pass the format's 4 GiB limit.

:func:`write_atomically` is the one way a file is replaced here: build
it under a temporary name, fsync it, rename it over the target, so that
readers see the old file or the new one, never a partial one.
``tcprules`` uses it with its own messages; :func:`write_cdb` is the
library's whole build.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Iterable, List, Optional, Tuple

from .format import HEADER_SIZE, CdbError, _pair, cdb_hash

MAX_SIZE = 0xFFFFFFFF  # the largest position a 32-bit field can hold


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


#: The steps of :func:`write_atomically` that can fail on their own.
CREATE, WRITE, MOVE = "create", "write", "move"


def write_atomically(path: str, tmp: str, fill: Callable[[int], None], *,
                     keep_tmp: bool = False,
                     failed: Optional[Callable[[str, OSError], BaseException]] = None
                     ) -> None:
    """Create or replace ``path`` atomically: write ``tmp``, fsync, rename.

    Args:
        path: the file to create or replace.
        tmp: the temporary file, on the same file system as ``path``;
            created (mode 0644) or truncated.
        fill: writes the contents to the descriptor it is given.  What it
            raises passes through, after the descriptor is closed.
        keep_tmp: on failure leave ``tmp`` as it is (djb's ``tcprules``
            does); by default it is removed.
        failed: turns the ``OSError`` of a step, :data:`CREATE` (open
            ``tmp``), :data:`WRITE` (fsync or close it) or :data:`MOVE`
            (the rename), into the exception to raise; by default the
            ``OSError`` itself is raised.

    Raises:
        OSError: a step failed (unless ``failed`` says otherwise).
    """
    def fail(step: str, error: OSError) -> BaseException:
        return error if failed is None else failed(step, error)

    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise fail(CREATE, e) from None
    try:
        try:
            fill(fd)
        except BaseException:
            _close_quietly(fd)
            raise
        try:
            os.fsync(fd)
        except OSError as e:
            _close_quietly(fd)
            raise fail(WRITE, e) from None
        try:
            os.close(fd)
        except OSError as e:
            raise fail(WRITE, e) from None
        try:
            os.rename(tmp, path)
        except OSError as e:
            raise fail(MOVE, e) from None
    except BaseException:
        if not keep_tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def _close_quietly(fd: int) -> None:
    """Close a descriptor on a failure path: the first error is the one
    to report."""
    try:
        os.close(fd)
    except OSError:
        pass


def write_cdb(path: str, records: Iterable[Tuple[bytes, bytes]],
              tmp: Optional[str] = None) -> None:
    """Build a cdb atomically (:func:`write_atomically`).

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
    def fill(fd: int) -> None:
        writer = CdbWriter(fd)
        for key, data in records:
            writer.add(key, data)
        writer.finish()

    write_atomically(path, path + ".tmp" if tmp is None else tmp, fill)
