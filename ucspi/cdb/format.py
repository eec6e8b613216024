"""What the cdb reader (:mod:`ucspi.cdb.read`) and writer
(:mod:`ucspi.cdb.make`) share: the header size, the record-header layout,
djb's hash, and :class:`CdbError`."""

from __future__ import annotations

import struct
from typing import List, Optional

from ..errors import UcspiError

HEADER_SIZE = 2048
_MASK = 0xFFFFFFFF

_pair = struct.Struct("<II")


class CdbError(UcspiError):
    """A cdb file is unusable: corrupt, truncated, empty, a directory,
    unreadable, or (for the writer) too big.

    ``errno`` is what the C tools would report: ``EPROTO`` ("protocol
    error") for a corrupt or truncated file, ``EINVAL`` for an empty one,
    ``EISDIR`` for a directory, the system's errno for a read error and
    ``EFBIG`` ("file too big") when a file would pass 4 GiB.
    """

    #: what to do about it, for the message (see :func:`ucspi.errors.errtext`)
    hint: Optional[str] = None

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class TooMuchWork(Exception):
    """A lookup would visit more hash slots than its budget allows: the
    file is unusual (a huge or hostile hash chain), not corrupt.  The
    caller may do the lookup elsewhere, without a budget."""


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
