"""Waiting in the loop for a TLS client's first record.

A TLS client is given its relay process and its ``-c`` slot only once
its ClientHello record has arrived (:mod:`ucspi.tls.record` says how
long it is).  :class:`HelloWait` waits for it without reading a byte:
it peeks, and while the record is incomplete it sets the socket's
``SO_RCVLOWAT`` to the record's size, so the loop is woken when the
whole record is there (or the client closes), not for every segment.
The relay child, which makes the handshake, reads the record itself.

The wait ends with ``done()`` when the record is complete, when the
first bytes are not a TLS handshake record (the relay's handshake then
fails with the usual lines) or at the client's end of file; or with
``late()`` at the deadline.
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from ..reactor import Reactor, Timer
from ..tls.record import HEADER, MAX_BODY, first_record

_PEEK_NOW = socket.MSG_PEEK | socket.MSG_DONTWAIT
#: what is peeked at most: a whole record of the largest size
PEEK = HEADER + MAX_BODY


class HelloWait:
    """Waits for the first record on ``sock``.

    Args:
        reactor: the loop.
        sock: the connection (blocking; peeks are ``MSG_DONTWAIT``).
        deadline: monotonic time at which to give up (None: never).
        done: the record is there (or will never be: see above).
        late: the deadline passed first.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket, deadline: Optional[float],
                 done: Callable[[], None], late: Callable[[], None]) -> None:
        self.reactor = reactor
        self.sock = sock
        self.done = done
        self.late = late
        self.deadline = deadline
        self.timer: Optional[Timer] = None
        self.watching = False
        self.lowat = 1

    def start(self) -> None:
        if self._ready():
            return
        if self.deadline is not None:
            self.timer = self.reactor.call_at(self.deadline, self._late)
        self.watching = True
        self.reactor.add_reader(self.sock.fileno(), self._readable)

    def cancel(self) -> None:
        """Stop waiting (the connection ends, or the record is there)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watching:
            self.watching = False
            self.reactor.remove_reader(self.sock.fileno())
        self._set_lowat(1)

    def _set_lowat(self, size: int) -> None:
        if size != self.lowat:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
                self.lowat = size
            except OSError:
                pass

    def _readable(self) -> None:
        self._ready(woken=True)

    def _late(self) -> None:
        self.timer = None
        self.cancel()
        self.late()

    def _ready(self, woken: bool = False) -> bool:
        """True once the wait is over (``done`` has been called).  Woken
        with fewer bytes than the low-water mark asked for, the client
        has closed its end: the record will never be complete."""
        try:
            data = self.sock.recv(PEEK, _PEEK_NOW)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""                     # reset: the relay will see it too
        need = first_record(data) if data else 0
        if need and len(data) < need and not (woken and len(data) < self.lowat):
            self._set_lowat(need)
            return False
        self.cancel()
        self.done()
        return True
