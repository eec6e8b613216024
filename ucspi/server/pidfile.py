"""``-e pidfile``: refuse to start twice (IndiMail).

If the file names a live process, start-up fails with IndiMail's words
(``fatal:  already running``, two spaces).  Otherwise the file gets our
pid, without a newline.  An empty or non-numeric file is stale (IndiMail
reads it as pid 0, which always "exists").  The file is never removed.
In UNIX-domain mode a socket left at the path by a server that is gone
is removed first (as IndiMail's tcpserver.c does).

The pid file is written as root, in a folder an administrator chose, so
it is handled with care (issue 18, items 3 and 11):

* the path is opened with ``O_NOFOLLOW | O_NONBLOCK``: a symbolic link
  there is refused (never followed to clobber its target), and so is
  anything but a regular file (a FIFO would otherwise hold start-up for
  ever, a device be written to), with one fatal line;
* the new file is written under a temporary name in the same folder
  (created with ``O_EXCL | O_NOFOLLOW``) and renamed over the path, so
  that what is at the path when we write is replaced, never written
  through, and a reader sees the old pid or the new one, never half a
  number.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from ..errors import Fatal, errtext
from ..scan import INT_MAX, decimal
from .listen import remove_stale

#: how much of an existing pid file is read
READ_MAX = 64


def _refused(path: str, mode: int) -> Fatal:
    return Fatal(f"pid file {path} is {_kind(mode)}, not a regular file")


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return words
    return "an unknown kind of file"


def read_existing(path: str) -> Optional[bytes]:
    """The start of the pid file, or None if there is none.

    Nothing but a regular file is opened (``lstat`` first, so a device
    is never opened), and the open itself neither follows a symbolic
    link nor waits (``O_NOFOLLOW | O_NONBLOCK``), in case the file was
    replaced in between.

    Raises:
        Fatal: the path is a symbolic link, a FIFO, a directory, a
            device or a socket, or it cannot be read.
    """
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _refused(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Fatal(f"couldn't open {path}: {errtext(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refused(path, mode)
        return os.read(fd, READ_MAX)
    except OSError as exc:
        raise Fatal(f"couldn't read {path}: {errtext(exc)}") from None
    finally:
        os.close(fd)


def live(text: Optional[bytes]) -> bool:
    """Does the content of a pid file name a live process?"""
    if text is None:
        return False
    pid = decimal(text.strip(), INT_MAX)
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def running(path: str) -> bool:
    """Does ``path`` name a live process?

    Raises:
        Fatal: as :func:`read_existing`.
    """
    return live(read_existing(path))


def write(path: str, pid: int) -> None:
    """Put ``pid`` at ``path``: a new file, renamed over whatever is
    there.

    Raises:
        OSError: the temporary file cannot be made, written or renamed.
    """
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{pid}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o644)
    except FileExistsError:
        os.unlink(temporary)               # left by an earlier process with our pid
        fd = os.open(temporary, flags, 0o644)
    try:
        try:
            data = b"%d" % pid
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def claim(path: str, stale_socket: Optional[str] = None) -> None:
    """Check and write the pid file.

    Args:
        path: the pid file.
        stale_socket: the socket path of UNIX mode, removed if it is
            one when no server is running.

    Raises:
        Fatal: already running, the path is not a regular file, the
            stale socket cannot be removed, or the file cannot be written.
    """
    if running(path):
        raise Fatal(" already running")
    if stale_socket is not None:
        remove_stale(stale_socket)
    try:
        write(path, os.getpid())
    except OSError as exc:
        raise Fatal(f"couldn't open {path} for write: {errtext(exc)}") from None
