"""The server's signals: which it catches, and how they reach the loop.

SIGCHLD, SIGHUP and SIGUSR1 only write their number to a wake-up pipe
(``signal.set_wakeup_fd``) that the loop reads and dispatches by name;
SIGTERM leaves at once with exit code 0, the programs running on (djb),
so that even a slow start-up lookup can be interrupted.  Everything the
server handles goes back to its default disposition in a program
(``posix_spawn``'s ``setsigdef``) and in a forked child
(:func:`defaults`), together with SIGPIPE and SIGXFSZ, which Python
ignores.
"""

from __future__ import annotations

import os
import signal
from typing import Any

HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
#: dispositions a program or a child must get back
SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ) + HANDLED


def _record(signum: int, frame: Any) -> None:
    """Signal handler: nothing to do, the wake-up fd carries the number."""


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: leave at once with 0; the programs keep running (djb)."""
    os._exit(0)


def install() -> int:
    """Catch the server's signals from the very start (spec core §2.1).

    Returns:
        The read end of the wake-up pipe (non-blocking).
    """
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _terminate)
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, _record)
    return rfd


def defaults() -> None:
    """In a forked child: no wake-up fd, every signal of :data:`SIGDEF`
    back to its default disposition."""
    signal.set_wakeup_fd(-1)
    for sig in SIGDEF:
        signal.signal(sig, signal.SIG_DFL)
