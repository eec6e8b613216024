"""Work done off the loop, in a forked helper child.

Some work cannot be bounded in advance: a rules lookup in a cdb with a
huge or hostile hash chain can visit a million slots.  The loop must not
stand still for it (every other client would wait), so such work runs
in a child of its own (design: fork-only-where-needed; the fork path of
:mod:`.child`) and its answer comes back through a pipe that the loop
watches like any other descriptor.

:meth:`Offload.run` forks, the child runs ``work() -> bytes``, writes the
bytes and exits; the parent collects them until end of file and calls
``done(data, None)``.  A failed fork or pipe gives ``done(b"", error)``;
a child that takes longer than its deadline is killed (by its pid) and
gives ``done(data so far, ETIMEDOUT)``.  The deadline is the offload's
own (:data:`DEADLINE` unless told other) or the one given to
:meth:`Offload.run`, where ``None`` means none: work that bounds its
own time (a ``$MYSQL_LIB`` query under ``$MYSQL_TIMEOUT``) says so.
A child that dies gives what it wrote, which the caller's decoder must
recognise as incomplete.  The child itself is reaped with every other
child (an unknown pid is simply reaped).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from typing import Callable, Optional

from .. import timeouts
from ..log import write_all
from ..reactor import Reactor, Timer
from . import child

#: the longest a helper child may work before it is killed, unless the
#: caller of :meth:`Offload.run` says other
DEADLINE = timeouts.OFFLOAD

#: :meth:`Offload.run`'s default: the offload's own deadline
OWN_DEADLINE = -1.0

Work = Callable[[], bytes]
Done = Callable[[bytes, Optional[OSError]], None]


def _answer(fd: int, work: Work) -> int:
    """The child's job: do the work, hand its bytes to the parent."""
    write_all(fd, work())
    return 0


class Offload:
    """Runs work in helper children for the loop of ``reactor``."""

    def __init__(self, reactor: Reactor, deadline: float = DEADLINE) -> None:
        self.reactor = reactor
        self.deadline = deadline

    def run(self, work: Work, done: Done, deadline: Optional[float] = OWN_DEADLINE) -> None:
        """Run ``work`` in a child; ``done`` gets its bytes (see above).

        Args:
            deadline: seconds before the child is killed; ``None``: never
                (the work has limits of its own); by default the
                offload's deadline.
        """
        if deadline is not None and deadline < 0:
            deadline = self.deadline
        try:
            rfd, wfd = os.pipe()
        except OSError as exc:
            done(b"", exc)
            return
        try:
            pid = child.fork(functools.partial(_answer, wfd, work), keep=(wfd,))
        except OSError as exc:
            os.close(rfd)
            os.close(wfd)
            done(b"", exc)
            return
        os.close(wfd)
        _Collect(self.reactor, pid, rfd, deadline, done)


class _Collect:
    """The parent's end of one helper: read to end of file, or kill."""

    def __init__(self, reactor: Reactor, pid: int, fd: int, deadline: Optional[float],
                 done: Done) -> None:
        self.reactor = reactor
        self.pid = pid
        self.fd = fd
        self.done: Optional[Done] = done
        self.data = bytearray()
        os.set_blocking(fd, False)
        reactor.add_reader(fd, self._read)
        self.timer: Optional[Timer] = (None if deadline is None
                                       else reactor.call_later(deadline, self._expire))

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if chunk:
            self.data += chunk
        else:
            self._finish(None)

    def _expire(self) -> None:
        self.timer = None
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self._finish(OSError(errno.ETIMEDOUT, "timed out"))

    def _finish(self, error: Optional[OSError]) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.reactor.forget(self.fd)
        os.close(self.fd)
        done, self.done = self.done, None
        if done is not None:
            done(bytes(self.data), error)
