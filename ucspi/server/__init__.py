"""tcpserver itself: start-up, the event loop, the connection steps,
limits, the two launch paths, listening sockets, privileges and the pid
file.  ``main`` is the command (see :mod:`.bootstrap`)."""

from .bootstrap import main

__all__ = ["main"]
