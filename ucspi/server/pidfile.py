"""``-e pidfile``: refuse to start twice (IndiMail).

If the file names a live process, start-up fails with IndiMail's words
(``fatal:  already running``, two spaces).  Otherwise the file gets our
pid, without a newline.  An empty or non-numeric file is stale (IndiMail
reads it as pid 0, which always "exists").  The file is never removed.
In UNIX-domain mode a socket left at the path by a server that is gone
is removed first (spec core §2.9).
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import Fatal, errtext
from ..scan import INT_MAX, decimal
from .listen import remove_stale


def running(path: str) -> bool:
    """Does ``path`` name a live process?"""
    try:
        with open(path, "rb") as handle:
            text = handle.read(64).strip()
    except OSError:
        return False
    pid = decimal(text, INT_MAX)
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


def claim(path: str, stale_socket: Optional[str] = None) -> None:
    """Check and write the pid file.

    Args:
        path: the pid file.
        stale_socket: the socket path of UNIX mode, removed if it is
            one when no server is running.

    Raises:
        Fatal: already running, the stale socket cannot be removed, or
            the file cannot be written.
    """
    if running(path):
        raise Fatal(" already running")
    if stale_socket is not None:
        remove_stale(stale_socket)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"%d" % os.getpid())
        finally:
            os.close(fd)
    except OSError as exc:
        raise Fatal(f"couldn't open {path} for write: {errtext(exc)}") from None
