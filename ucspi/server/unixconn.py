"""A connection to a UNIX-domain listener (design: unix-mode).

IndiMail's UNIX mode (its tcpserver.c): no host names, no ident, no
rules; the banner is sent; the program gets ``PROTO=UNIX`` and
``UNIXLOCALPATH`` and no ``TCP*`` variable is set or removed.  Beyond
IndiMail, the peer's credentials from ``SO_PEERCRED`` are in
``UNIXREMOTEEUID``, ``UNIXREMOTEEGID`` and ``UNIXREMOTEPID`` (the names
of ucspi-unix's ``unixserver``); where the kernel cannot tell, they are
removed.  Every UNIX client counts as the one address ``""`` for the
per-host limit, which the server checks at accept: ``-C`` limits the
UNIX clients together, as in IndiMail.  The log lines are
``pid P from <path>`` and ``ok P [<path>]``.
"""

from __future__ import annotations

import socket
import struct
from typing import Callable, List, Tuple

from ..environ import Change, Endpoints
from ..log import safe
from .conn import Connection, Context

#: ``struct ucred``: pid, uid, gid
_UCRED = struct.Struct("=iII")
_PEERCRED = getattr(socket, "SO_PEERCRED", None)


class UnixConnection(Connection):
    """One client of a UNIX listener bound to ``path``."""

    unix = True

    def __init__(self, ctx: Context, sock: socket.socket, path: str) -> None:
        super().__init__(ctx, sock, ("", 0), False)
        self.ep = Endpoints(False, False, "", "", 0, "", "", 0)
        self.v4client = False
        self.path = path
        self.credentials: List[Change] = []

    def _socket(self) -> None:
        if self.ctx.opts.banner:
            self.banner = self.ctx.opts.banner
            self.sock.setblocking(False)
            self._write_banner()
        else:
            self.next()

    def _local(self) -> None:        # after the banner
        self.next()

    def know_local(self) -> None:
        """The path is all there is to know."""

    def _peer(self) -> None:
        names = (b"UNIXREMOTEPID", b"UNIXREMOTEEUID", b"UNIXREMOTEEGID")
        try:
            if _PEERCRED is None:
                raise OSError("no SO_PEERCRED")
            raw = self.sock.getsockopt(socket.SOL_SOCKET, _PEERCRED, _UCRED.size)
            values = _UCRED.unpack(raw)
        except (OSError, struct.error):
            self.credentials = [(name, None) for name in names]
        else:
            self.credentials = [(name, b"%d" % value) for name, value in zip(names, values)]
        self.next()

    def _launch(self) -> None:
        changes: List[Change] = [(b"PROTO", b"UNIX"),
                                 (b"UNIXLOCALPATH", self.path.encode("utf-8", "surrogateescape"))]
        changes += [self.credentials[1], self.credentials[2], self.credentials[0]]
        self.ctx.launch(self, self.ctx.env.build_plain(changes))

    def origin(self) -> str:
        return self.path

    def fields(self) -> bytes:
        return b"[%s]" % safe(self.path, True)


UNIX_STEPS: Tuple[Callable[[Connection], None], ...] = (
    UnixConnection._socket, UnixConnection._peer, UnixConnection._launch,  # type: ignore[assignment]
)
UnixConnection.STEPS = UNIX_STEPS
