"""Forked children: the hygiene every child of the server goes through.

The parent is one event loop (design: one-event-loop); work that needs
a process of its own (the TLS relay, a ``prog.so`` call, a ``$MYSQL_LIB``
lookup) runs in a forked copy of it
(design: fork-only-where-needed, child-hygiene).  A copy inherits the loop's state, and
using any of it would harm the parent: the epoll instance is shared, so
unregistering a descriptor in the child (as closing a connection through
the reactor does) silently removes the *parent's* registration; the
wake-up pipe is shared, so a signal in the child would wake the parent;
SIGTERM's handler would ``_exit(0)``.  :func:`fork` therefore, in the
child and before anything else:

1. keeps the server's signals blocked across the fork, then sets every
   one of them (and SIGPIPE, SIGXFSZ) back to its default and unsets the
   wake-up fd (:func:`.signals.defaults`), then unblocks them;
2. freezes the garbage collector's view of the inherited objects, so no
   inherited socket object is finalised (closing a descriptor number the
   child may have reused);
3. closes every inherited descriptor by number (listeners, other
   connections, DNS and ident sockets, the wake-up pipe, the epoll fd)
   except 0, 1, 2 and those it is told to keep, with ``os.closerange``
   around the kept ones, up to the highest descriptor actually open:
   nothing is unregistered from anything;
4. runs the work, and leaves through ``os._exit`` in a ``finally``, so a
   child never returns into the loop.  An unexpected exception prints
   one ``tcpserver: `` line and the child exits 111.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Callable, Iterable, Iterator, List, Tuple

from ..errors import EXIT_TEMP
from ..log import say
from .signals import HANDLED, defaults

Work = Callable[[], int]


def open_descriptors() -> List[int]:
    """The descriptors open in this process, from ``/proc/self/fd``
    (``/dev/fd`` elsewhere); ``[]`` if neither can be listed."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(folder)]
        except (OSError, ValueError):
            continue
    return []


def close_inherited(keep: Iterable[int]) -> None:
    """Close every descriptor above 2 except ``keep``, by number.

    ``os.closerange`` (close_range(2) on Linux) runs between the kept
    descriptors, up to the highest one open: never a loop up to the
    open-file limit, which can be a million.
    """
    top = max(open_descriptors(), default=-1) + 1
    if top <= 0:
        top = os.sysconf("SC_OPEN_MAX")
    low = 3
    for fd in sorted(set(k for k in keep if k >= 3)):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    if top > low:
        os.closerange(low, top)


def reaped() -> Iterator[Tuple[int, int]]:
    """``(pid, wait status)`` of every child that has ended, until
    ``waitpid`` has nothing more (no child, or none ended yet)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return
        yield pid, status


def _report(exc: BaseException) -> None:
    say(b"tcpserver: fatal: child %d: internal error: %s: %s"
        % (os.getpid(), type(exc).__name__.encode(), str(exc).encode(errors="replace")))


def fork(work: Work, keep: Iterable[int] = ()) -> int:
    """Run ``work`` in a forked child; return the child's pid.

    Args:
        work: the child's job; its return value is the child's exit
            status.  It runs with the inherited descriptors closed
            except 0, 1, 2 and ``keep``.
        keep: descriptors the work needs (the connection's socket...).

    Raises:
        OSError: the fork failed (the parent is unchanged).
    """
    keep = tuple(keep)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid
    status = EXIT_TEMP
    try:
        defaults()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        gc.freeze()
        close_inherited(keep)
        status = work()
    except BaseException as exc:  # a child never returns into the loop
        status = EXIT_TEMP
        _report(exc)
    finally:
        os._exit(status & 0xFF if status >= 0 else EXIT_TEMP)
    return 0  # not reached
