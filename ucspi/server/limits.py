"""The quantities admission works with, and the table of programs.

* :class:`Limit` is the ``-c`` value: a number, or a file read at
  start-up and again on SIGHUP (a relative name is looked up in
  ``$CONTROLDIR``, default ``/etc/indimail/control``).
* :class:`Descriptors` is the parent's descriptor budget: a connection
  is accepted only when the descriptors its lookups will need can be
  had, so that no lookup goes without a socket under load (the C
  server spreads them over its children; here one process holds all).
  What one connection needs is derived from its steps
  (:func:`ucspi.server.conn.descriptors_needed`).
* :class:`Programs` maps the pids of running programs to their client
  and a slot number, for the SIGUSR1/``-V`` dump.  Unlike IndiMail's
  fixed slot array it does not depend on the limit, so lowering the
  limit on SIGHUP loses nothing.  The counts themselves are
  :class:`~.admission.Admission`'s.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import Fatal, UsageError, errtext
from ..log import Log
from ..options import DEFAULT_LIMIT, MAX_NUMBER, Options
from ..scan import cut, decimal, shown
from ..proc.child import open_descriptors

DEFAULT_CONTROLDIR = "/etc/indimail/control"

#: descriptors kept back from connections: the rules cdb, the -c file,
#: the resolver's files, /proc reads, a pid file, the spawn itself
DESCRIPTOR_RESERVE = 12


def descriptors_open() -> int:
    """How many descriptors this process has open (an estimate of 16
    where they cannot be listed)."""
    found = open_descriptors()
    return len(found) - 1 if found else 16   # less the listing's own


class Descriptors:
    """The budget of descriptors for connections being set up.

    Args:
        per_connection: what one connection may hold at once
            (:func:`ucspi.server.conn.descriptors_needed`).
        available: what the file limit leaves (None: read the soft
            ``RLIMIT_NOFILE`` and subtract :func:`descriptors_open` and
            :data:`DESCRIPTOR_RESERVE`).  At least one connection's worth
            is always allowed: a lookup then still waits for a socket
            (:class:`~ucspi.reactor.Backoff`) rather than go without.
    """

    def __init__(self, per_connection: int, available: Optional[int] = None) -> None:
        if available is None:
            available = _file_limit() - descriptors_open() - DESCRIPTOR_RESERVE
        self.per_connection = per_connection
        self.limit = max(available, per_connection)
        self.used = 0

    def room(self) -> bool:
        """True if one more connection can be accepted."""
        return self.used + self.per_connection <= self.limit

    def take(self) -> None:
        self.used += self.per_connection

    def give(self) -> None:
        self.used -= self.per_connection


def _file_limit() -> int:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1024
    return soft if soft != resource.RLIM_INFINITY and soft < 2**31 else 2**31


def control_path(name: str, environ: Mapping[str, str] = os.environ) -> str:
    """Where a ``-c`` file lives (made absolute once, at start-up)."""
    if not name.startswith(("/", ".")):
        base = environ.get("CONTROLDIR", DEFAULT_CONTROLDIR)
        name = base.rstrip("/") + "/" + name
    return os.path.abspath(name)


#: how much of a ``-c`` file is read: its first line holds a number
LIMIT_FILE_READ = 4096


def read_limit(path: str) -> Optional[int]:
    """The limit in a ``-c`` file.

    The file is read in the loop, at start-up and on SIGHUP, so it must
    never block or grow without bound: it is opened non-blocking (a
    FIFO never stalls the server), only a regular file is read, and only
    its first :data:`LIMIT_FILE_READ` bytes (``/dev/zero`` does not eat
    memory).

    Returns:
        The number on the first line, or ``None`` if the file does not
        exist (the limit is then left as it is, as IndiMail does).

    Raises:
        OSError: the file cannot be read, is a directory (``EISDIR``) or
            is not a regular file (``EINVAL``).
        ValueError: the first line is not a number from 1 to
            :data:`~ucspi.options.MAX_NUMBER`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = os.read(fd, LIMIT_FILE_READ)
    finally:
        os.close(fd)
    first, newline, _ = data.partition(b"\n")
    if not newline and len(data) == LIMIT_FILE_READ:
        first = b""            # a first line that long holds no number
    value = decimal(first.rstrip(b" \t\r\n"), MAX_NUMBER)
    if value is None or value < 1:
        raise ValueError(f"{path} does not hold a number from 1 to {MAX_NUMBER}")
    return value


class Limit:
    """The ``-c`` limit, with its file if it has one."""

    def __init__(self, value: int, path: Optional[str] = None, shown: str = "") -> None:
        self.value = value
        self.path = path
        self.shown = shown

    @classmethod
    def from_options(cls, opts: Options) -> "Limit":
        """Read the limit file at start-up (errors are fatal, design: options).

        Raises:
            UsageError: the ``-c`` argument is neither a number nor an
                existing file (a typo such as ``-c l00`` or ``-c -5``;
                IndiMail starts with the default limit).
            Fatal: the file cannot be read or holds no limit.
        """
        if opts.limit_file is None:
            return cls(opts.limit)
        limit = cls(DEFAULT_LIMIT, control_path(opts.limit_file), opts.limit_file)
        try:
            found = read_limit(limit.path or "")
        except OSError as exc:
            raise Fatal(f"unable to read {opts.limit_file}: {errtext(exc)}") from None
        except ValueError as exc:
            raise Fatal(str(exc)) from None
        if found is None:
            raise UsageError(f"-c wants a number from 1 to {MAX_NUMBER} or the name of an "
                             f"existing file, not {shown(opts.limit_file)} "
                             f"(no such file: {cut(limit.path or '')})")
        limit.value = found
        return limit

    def reread(self, log: Log) -> None:
        """SIGHUP: read the file again; on trouble warn and keep the old
        value (SIGHUP never kills the server: design: signals)."""
        if self.path is None:
            return
        try:
            found = read_limit(self.path)
        except OSError as exc:
            log.warning(f"unable to read {self.shown}: {errtext(exc)}")
            return
        except ValueError as exc:
            log.warning(f"{exc}, keeping {self.value}")
            return
        if found is None:
            log.warning(f"unable to read {self.shown}: {errtext(errno.ENOENT)}, "
                        f"keeping {self.value}")
            return
        self.value = found


class Programs:
    """Running programs: pid -> (slot number, client address)."""

    def __init__(self) -> None:
        self.children: Dict[int, Tuple[int, str]] = {}
        self.free: List[int] = []                          # a heap of free slots

    def started(self, pid: int, ip: str) -> None:
        """A program runs: it takes the lowest free slot (IndiMail's
        numbering in the SIGUSR1 table)."""
        slot = heapq.heappop(self.free) if self.free else len(self.children)
        self.children[pid] = (slot, ip)

    def ended(self, pid: int) -> Optional[str]:
        """A child was reaped: its client's address, or None if it was
        not a program."""
        entry = self.children.pop(pid, None)
        if entry is None:
            return None
        slot, ip = entry
        heapq.heappush(self.free, slot)
        return ip

    def __contains__(self, pid: int) -> bool:
        return pid in self.children

    def entries(self) -> List[Tuple[int, str, int]]:
        """``(slot, ip, pid)`` of every running program, by slot."""
        return sorted((slot, ip, pid) for pid, (slot, ip) in self.children.items())
