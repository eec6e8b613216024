"""tcpserver itself: start-up, the event loop, the connection steps,
admission, listening sockets, privileges and the pid file.

Importing this package loads nothing else: :func:`main` (the command,
see :mod:`.bootstrap`) imports the start-up when it is called, so a
module that needs one piece of the server (``server.listen``, say) does
not pull in the whole of it.
"""

from __future__ import annotations

from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """The tcpserver command (:func:`.bootstrap.main`)."""
    from .bootstrap import main as run
    return run(argv)


__all__ = ["main"]
