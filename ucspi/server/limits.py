"""Concurrency limits and the connection table.

* :class:`Limit` is the ``-c`` value: a number, or a file read at
  start-up and again on SIGHUP (a relative name is looked up in
  ``$CONTROLDIR``, default ``/etc/indimail/control``).
* :class:`Table` counts live connections, from ``accept`` to the exit of
  their program, in total and per client address, and maps the pids of
  running programs to their client, for the SIGUSR1/``-V`` dump and for
  the per-host limit.  Unlike IndiMail's fixed slot array it does not
  depend on the limit, so lowering the limit on SIGHUP loses nothing.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import Fatal, errtext
from ..log import Log
from ..options import DEFAULT_LIMIT, Options

DEFAULT_CONTROLDIR = "/etc/indimail/control"


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
        ValueError: the first line is not a positive number.
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
    text = first.rstrip(b" \t\r\n")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{path} does not hold a positive number")
    return int(text)


class Limit:
    """The ``-c`` limit, with its file if it has one."""

    def __init__(self, value: int, path: Optional[str] = None, shown: str = "") -> None:
        self.value = value
        self.path = path
        self.shown = shown

    @classmethod
    def from_options(cls, opts: Options) -> "Limit":
        """Read the limit file at start-up (errors are fatal, D10)."""
        if opts.limit_file is None:
            return cls(opts.limit)
        limit = cls(DEFAULT_LIMIT, control_path(opts.limit_file), opts.limit_file)
        try:
            found = read_limit(limit.path or "")
        except OSError as exc:
            raise Fatal(f"unable to read {opts.limit_file}: {errtext(exc)}") from None
        except ValueError as exc:
            raise Fatal(str(exc)) from None
        if found is not None:
            limit.value = found
        return limit

    def reread(self, log: Log) -> None:
        """SIGHUP: read the file again; on trouble warn and keep the old
        value (D15: SIGHUP never kills the server)."""
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
        if found is not None:
            self.value = found


class Table:
    """Live connections and running programs."""

    def __init__(self) -> None:
        self.count = 0
        self.hosts: Dict[str, int] = {}
        self.children: Dict[int, Tuple[int, str]] = {}   # pid -> (slot, ip)
        self.free: List[int] = []                          # a heap of free slots

    def per_host(self, ip: str) -> int:
        """Live connections from ``ip``."""
        return self.hosts.get(ip, 0)

    def open(self, ip: str) -> None:
        self.count += 1
        self.hosts[ip] = self.hosts.get(ip, 0) + 1

    def close(self, ip: str) -> None:
        self.count -= 1
        left = self.hosts.get(ip, 1) - 1
        if left > 0:
            self.hosts[ip] = left
        else:
            self.hosts.pop(ip, None)

    def started(self, pid: int, ip: str) -> None:
        """A program runs: it takes the lowest free slot (IndiMail's
        numbering in the SIGUSR1 table)."""
        slot = heapq.heappop(self.free) if self.free else len(self.children)
        self.children[pid] = (slot, ip)

    def ended(self, pid: int) -> bool:
        """A child was reaped; False if it was not one of ours."""
        entry = self.children.pop(pid, None)
        if entry is None:
            return False
        slot, ip = entry
        heapq.heappush(self.free, slot)
        self.close(ip)
        return True

    def entries(self) -> List[Tuple[int, str, int]]:
        """``(slot, ip, pid)`` of every running program, by slot."""
        return sorted((slot, ip, pid) for pid, (slot, ip) in self.children.items())
