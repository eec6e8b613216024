"""A very small single-threaded reactor over ``epoll`` (:mod:`selectors`
where there is none).

tcpserver's parent is one event loop (design: one-event-loop): it accepts, runs
the DNS and ident queries of many connections at once, and starts the
programs.  asyncio would do, but it costs start-up time and memory that
a super-server pays on every host, so this module gives the few pieces
the server and the non-blocking DNS and ident drivers need:

* ``add_reader``/``add_writer`` call a function when a descriptor is
  ready (level-triggered, like ``selectors``; an error or hang-up on a
  descriptor calls both of its callbacks, as ``selectors`` does);
* ``call_at``/``call_later`` run a function at a ``time.monotonic()``
  deadline and return a :class:`Timer` that can be cancelled;
* ``run_once`` waits for the next event and dispatches it.

Callbacks take no arguments (close over what they need).  A timer's
callback that raises is not caught here: the caller of ``run_once``
decides.  A descriptor's callback that raises is a different matter:
its descriptor is still ready, and a level-triggered loop would call it
again at once, for ever.  So the reactor stops watching that descriptor
first, tells its owner (the ``failed`` callback given with it, which
closes it or watches it again later), and then lets the exception go
on to the caller.

Drivers written against this class can be tested alone: create a
``Reactor``, start the operation, and call ``run_once`` until it is done.
:func:`run_blocking` does just that, for the blocking faces of the DNS
and ident drivers; what a driver's start returns is a
:class:`Cancellable`.
"""

from __future__ import annotations

import _socket
import heapq
import itertools
import select
import selectors
import socket
import time
from typing import Callable, Dict, List, Optional, Protocol, Tuple, TypeVar

from . import timeouts

Callback = Callable[[], None]
#: an owner told that its descriptor's callback raised (and is no longer
#: watched)
Failed = Callable[[BaseException], None]
T = TypeVar("T")

#: ``SOCK_NONBLOCK`` where the platform has it (Linux), else 0
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

MAX_WAIT = 86400.0   # longest single poll, whatever the deadlines
# the masks of epoll; the fallback below maps them to selectors' own
_READ = getattr(select, "EPOLLIN", 1)
_WRITE = getattr(select, "EPOLLOUT", 4)
#: what calls a descriptor's reader, and its writer: an error or hang-up
#: calls both, so the owner hears of it whichever way it waits
_CALLS_READER = ~_WRITE
_CALLS_WRITER = ~_READ


class Cancellable(Protocol):
    """A running operation (a lookup, a :class:`Timer`) that can be
    called off."""

    def cancel(self) -> None:
        """Stop; the operation's callback will not be called."""


class Timer:
    """A pending call; ``cancel()`` makes sure it never runs."""

    __slots__ = ("when", "callback", "cancelled", "reactor")

    def __init__(self, when: float, callback: Callback, reactor: "Reactor") -> None:
        self.when = when
        self.callback: Optional[Callback] = callback
        self.cancelled = False
        self.reactor = reactor

    def cancel(self) -> None:
        if self.callback is not None:       # still waiting in the heap
            self.reactor._cancelled += 1
        self.cancelled = True
        self.callback = None


class _Selector:
    """The face of ``select.epoll`` the reactor uses, over
    :mod:`selectors` for systems without epoll."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    @staticmethod
    def _events(mask: int) -> int:
        return ((selectors.EVENT_READ if mask & _READ else 0)
                | (selectors.EVENT_WRITE if mask & _WRITE else 0))

    def register(self, fd: int, mask: int) -> None:
        self.selector.register(fd, self._events(mask))

    def modify(self, fd: int, mask: int) -> None:
        self.selector.modify(fd, self._events(mask))

    def unregister(self, fd: int) -> None:
        self.selector.unregister(fd)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> List[Tuple[int, int]]:
        ready = self.selector.select(None if timeout < 0 else timeout)
        return [(key.fd, (_READ if events & selectors.EVENT_READ else 0)
                 | (_WRITE if events & selectors.EVENT_WRITE else 0))
                for key, events in ready]

    def close(self) -> None:
        self.selector.close()


def _poller() -> "select.epoll | _Selector":
    epoll = getattr(select, "epoll", None)
    return epoll() if epoll is not None else _Selector()


class Reactor:
    """Descriptor readiness and deadlines, dispatched from one thread."""

    def __init__(self) -> None:
        # epoll itself where there is one: selectors' keys and maps cost
        # microseconds on every register, unregister and event, and the
        # lookups register two descriptors per connection
        self._poll = _poller()
        # fd -> [reader callback, writer callback]
        self._handlers: Dict[int, List[Optional[Callback]]] = {}
        # fd -> what to tell its owner if one of its callbacks raises
        self._owners: Dict[int, Failed] = {}
        # (when, sequence, timer): tuples compare in C, the sequence keeps
        # timers with equal deadlines in order and never compares timers
        self._timers: List[Tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._cancelled = 0   # cancelled timers still in the heap

    # -- time -----------------------------------------------------------
    @staticmethod
    def time() -> float:
        """The reactor's clock: ``time.monotonic()``."""
        return time.monotonic()

    def call_at(self, when: float, callback: Callback) -> Timer:
        """Run ``callback`` once at monotonic time ``when`` (or later)."""
        timer = Timer(when, callback, self)
        if self._cancelled > 64 and 2 * self._cancelled > len(self._timers):
            self._compact()
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def _compact(self) -> None:
        """Drop cancelled timers that a long deadline at the front of the
        heap would otherwise keep in memory."""
        self._timers = [entry for entry in self._timers if not entry[2].cancelled]
        heapq.heapify(self._timers)
        self._cancelled = 0

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now."""
        return self.call_at(time.monotonic() + delay, callback)

    # -- descriptors ----------------------------------------------------
    def _set(self, fd: int, index: int, callback: Optional[Callback]) -> None:
        slot = self._handlers.get(fd)
        if slot is None:
            if callback is None:
                return
            slot = [None, None]
            slot[index] = callback
            self._handlers[fd] = slot
            self._poll.register(fd, _READ if index == 0 else _WRITE)
            return
        had = slot[index] is not None
        slot[index] = callback
        if had == (callback is not None):
            return
        mask = (_READ if slot[0] else 0) | (_WRITE if slot[1] else 0)
        if mask:
            self._poll.modify(fd, mask)
        else:
            del self._handlers[fd]
            self._owners.pop(fd, None)
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        try:
            self._poll.unregister(fd)
        except OSError:
            pass        # closed already (the kernel forgot it), as selectors allows

    def add_reader(self, fd: int, callback: Callback, failed: Optional[Failed] = None) -> None:
        """Call ``callback`` whenever ``fd`` is readable; ``failed(exc)``
        if it raises (see the module docstring)."""
        self._set(fd, 0, callback)
        if failed is not None:
            self._owners[fd] = failed

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callback, failed: Optional[Failed] = None) -> None:
        """Call ``callback`` whenever ``fd`` is writable; ``failed(exc)``
        if it raises."""
        self._set(fd, 1, callback)
        if failed is not None:
            self._owners[fd] = failed

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def forget(self, fd: int) -> None:
        """Drop every handler of ``fd`` (call before closing it)."""
        slot = self._handlers.pop(fd, None)
        self._owners.pop(fd, None)
        if slot is not None:
            slot[0] = slot[1] = None
            self._unregister(fd)

    def watching(self, fd: int) -> bool:
        return fd in self._handlers

    # -- dispatch -------------------------------------------------------
    def _next_timeout(self, limit: Optional[float]) -> Optional[float]:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._cancelled = max(0, self._cancelled - 1)
        if not timers:
            return limit
        # a far deadline must not overflow the poll timeout: wake daily
        delay = min(max(0.0, timers[0][0] - time.monotonic()), MAX_WAIT)
        return delay if limit is None else min(delay, limit)

    def run_once(self, timeout: Optional[float] = None) -> None:
        """Wait at most ``timeout`` seconds (``None``: until something
        happens) for descriptors or deadlines, then run what is due."""
        wait = self._next_timeout(timeout)
        if wait is None and not self._handlers:
            return
        try:
            # as many events as there are descriptors, as selectors asks:
            # CPython allocates room for maxevents at every wait
            events = self._poll.poll(-1 if wait is None else wait,
                                     max(1, len(self._handlers)))
        except InterruptedError:
            events = []
        # each event goes to the handlers its descriptor had when the
        # wait returned: a callback that closes a descriptor whose number
        # is then reused must not have the new one called for the old one
        get = self._handlers.get
        for fd, mask, slot in [(fd, mask, get(fd)) for fd, mask in events]:
            if slot is None:
                continue
            try:
                if mask & _CALLS_READER and slot[0] is not None:
                    slot[0]()
                if mask & _CALLS_WRITER and slot[1] is not None:
                    slot[1]()
            except Exception as exc:
                self._failed(fd, slot, exc)
                raise
        self._run_timers()

    def _failed(self, fd: int, slot: List[Optional[Callback]], exc: BaseException) -> None:
        """A callback of ``fd`` raised: watch it no more, tell its owner."""
        owner = self._owners.get(fd)
        if self._handlers.get(fd) is slot:
            self.forget(fd)
        if owner is not None:
            owner(exc)

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            callback = timer.callback
            if timer.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            elif callback is not None:
                timer.callback = None
                callback()

    def pending(self) -> bool:
        """True while any descriptor is watched or any timer waits."""
        return bool(self._handlers) or any(not t.cancelled for _, _, t in self._timers)

    def close(self) -> None:
        self._poll.close()
        self._handlers.clear()
        self._timers.clear()


class Backoff:
    """Retries, with growing pauses, of an operation that failed for want
    of a resource (no descriptor to spare, say), until a deadline.

    ``retry(reactor, deadline, callback)`` schedules ``callback`` after
    the next pause (10 ms, doubling up to 250 ms, never past
    ``deadline``) and returns its timer, or returns None when
    ``deadline`` has passed: time to give up.  ``reset()`` after a
    success starts the pauses again from the shortest.
    """

    FIRST, LONGEST = timeouts.DESCRIPTOR_BACKOFF

    __slots__ = ("pause",)

    def __init__(self) -> None:
        self.pause = 0.0

    def reset(self) -> None:
        self.pause = 0.0

    def retry(self, reactor: "Reactor", deadline: float, callback: Callback) -> Optional[Timer]:
        now = reactor.time()
        if now >= deadline:
            return None
        self.pause = min(2 * self.pause, self.LONGEST) if self.pause else self.FIRST
        return reactor.call_at(min(now + self.pause, deadline), callback)


def run_blocking(start: Callable[[Reactor, Callable[[T], None]], Cancellable]
                 ) -> Optional[T]:
    """Run one non-blocking operation on a private reactor until it
    reports: the blocking face of a driver.

    Args:
        start: starts the operation on the reactor it is given, with the
            callback that takes the result, and returns its handle.

    Returns:
        The result the operation reported, or None if it stalled (the
        reactor had nothing left to wait for and no result came).  The
        operation is cancelled if it did not report (an exception, such
        as ``KeyboardInterrupt``, or a stall); the reactor is closed.
    """
    reactor = Reactor()
    box: List[T] = []
    handle: Optional[Cancellable] = None
    try:
        handle = start(reactor, box.append)
        while not box and reactor.pending():
            reactor.run_once()
    finally:
        if not box and handle is not None:
            handle.cancel()
        reactor.close()
    return box[0] if box else None


def nonblocking_socket(family: int, kind: int) -> _socket.socket:
    """A non-blocking socket for the reactor: one system call where the
    kernel takes ``SOCK_NONBLOCK`` (the lookups make two sockets per
    connection), else ``socket`` and ``setblocking``.  Raises OSError.

    It is the C type under :class:`socket.socket`: the lookups use only
    its own methods (no ``makefile``, no ``with``), and the Python layer
    costs a microsecond or two per socket made and closed."""
    sock = _socket.socket(family, kind | _NONBLOCK)
    if not _NONBLOCK:
        try:
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    return sock
