"""The server's signals: which it catches, and how they reach the loop.

SIGCHLD, SIGHUP and SIGUSR1 only write their number to a wake-up pipe
(``signal.set_wakeup_fd``) that the loop reads and dispatches by name;
SIGTERM leaves at once with exit code 0, the programs running on (djb),
so that even a slow start-up lookup can be interrupted.  Before it
leaves it runs the actions registered with :func:`at_term`, in order:
removing the UNIX socket file (IndiMail), telling the supervisor
``STOPPING=1``.  They are made to be safe there: a few system calls on
objects built in advance, every error ignored.  Everything the
server handles goes back to its default disposition in a program
(``posix_spawn``'s ``setsigdef``) and in a forked child
(:func:`defaults`), together with SIGPIPE and SIGXFSZ, which Python
ignores.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, List

HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
#: dispositions a program or a child must get back
SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ) + HANDLED


def _record(signum: int, frame: Any) -> None:
    """Signal handler: nothing to do, the wake-up fd carries the number."""


_AT_TERM: List[Callable[[], None]] = []


def at_term(action: Callable[[], None]) -> None:
    """Run ``action`` on SIGTERM, and on a fatal exit after start-up
    (:func:`run_at_term`).  It must not raise."""
    _AT_TERM.append(action)


def run_at_term() -> None:
    """Run the registered actions once each (errors ignored)."""
    while _AT_TERM:
        action = _AT_TERM.pop(0)
        try:
            action()
        except Exception:
            pass


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: leave at once with 0; the programs keep running (djb)."""
    try:
        run_at_term()
    finally:
        os._exit(0)


def install() -> int:
    """Catch the server's signals from the very start (IndiMail's tcpserver.c too).

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
