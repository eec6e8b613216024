"""Readiness and status for a supervisor: systemd's ``sd_notify``
protocol (design: readiness-notification), with the standard library only.

When ``NOTIFY_SOCKET`` names a UNIX datagram socket (a path, or
``@name`` for the abstract namespace), the server sends it:

* ``READY=1`` once it listens and has dropped its privileges;
* ``STATUS=<n>/<limit> connections`` when the number of connections
  changes, at most :data:`STATUS_PER_SECOND` times a second: a change
  within the interval arms one timer that sends the latest count, so a
  busy server costs one ``sendto`` per interval, never one per
  connection;
* ``RELOADING=1`` with ``MONOTONIC_USEC=<µs>`` before a SIGHUP's
  reload, ``READY=1`` after it;
* ``STOPPING=1`` on SIGTERM (from the signal handler: one ``sendto`` on
  the socket made at start-up).

The datagram socket is made at start-up, before the privilege drop.
Send errors are ignored: a supervisor that went away must not stop the
server.  ``NOTIFY_SOCKET`` is removed from the programs' environment,
so that a program cannot speak for the service.
"""

from __future__ import annotations

import socket
import time
from typing import Mapping, Optional, Tuple

from ..errors import errtext
from ..log import Log
from ..reactor import Reactor, Timer

STATUS_PER_SECOND = 4
VARIABLE = "NOTIFY_SOCKET"


class Notifier:
    """One supervisor's notification socket."""

    def __init__(self, sock: socket.socket, address: str, reactor: Reactor) -> None:
        self.sock = sock
        self.address = address
        self.reactor = reactor
        self.interval = 1.0 / STATUS_PER_SECOND
        self._wanted: Tuple[int, int] = (0, 0)
        self._sent: Optional[Tuple[int, int]] = None
        self._last = float("-inf")
        self._timer: Optional[Timer] = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], log: Log,
                     reactor: Reactor) -> Optional["Notifier"]:
        """The notifier ``NOTIFY_SOCKET`` asks for, or None.  A value
        that is neither a path nor ``@name`` is ignored with a warning."""
        name = environ.get(VARIABLE, "")
        if not name:
            return None
        if name.startswith("@") and len(name) > 1:
            address = "\0" + name[1:]
        elif name.startswith("/"):
            address = name
        else:
            log.warning(f"{VARIABLE} is neither a path nor @name, not notifying: {name[:100]}")
            return None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
        except OSError as exc:
            log.warning(f"unable to create the {VARIABLE} socket: {errtext(exc)}")
            return None
        return cls(sock, address, reactor)

    def send(self, text: str) -> None:
        """One datagram, errors ignored."""
        try:
            self.sock.sendto(text.encode(), self.address)
        except (OSError, ValueError):
            pass

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        self.send("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, count: int, limit: int) -> None:
        """The count changed: send it now, or when the interval is up."""
        self._wanted = (count, limit)
        if self._timer is not None:
            return
        wait = self._last + self.interval - self.reactor.time()
        if wait <= 0:
            self._flush()
        else:
            self._timer = self.reactor.call_later(wait, self._due)

    def _due(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        if self._wanted == self._sent:
            return
        self._last = self.reactor.time()
        self._sent = self._wanted
        self.send("STATUS=%d/%d connections" % self._wanted)
