"""The launch seam: how a connection's program is started.

One interface, :class:`Launch`; those that start a program also
implement :class:`Program` (``start_on``: fd 0 and fd 1 on two given
descriptors), which the TLS relay uses behind its pipes.

* :class:`Spawn`, the plain path (design: one-event-loop): ``os.posix_spawn`` with
  fd 0 and 1 on the connection, the built environment, the server's
  signals back to their defaults and an empty signal mask.  The
  interpreter is never forked.
* the fork path (design: fork-only-where-needed): a ``prog.so``
  (:class:`ucspi.plugin.loader.SharedObject`) and the TLS relay
  (:class:`ucspi.tls.relay.TlsLaunch`) are launchers of their own that
  run in a forked copy of the server (see :mod:`.child` for its hygiene).

Either way the server sees one process per program: its pid goes into
the connection table, its exit status into the ``end`` line.  A
launcher whose processes are another process's children (the TLS relay
server's relay processes, which serve one connection after another)
also has ``reaped() -> [(pid, wait status)]``, which the loop calls when
it reaps.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Protocol, Sequence, Tuple

from .reload import Reloads
from .signals import SIGDEF

Environment = Dict[bytes, bytes]
#: the server's ``(connections, limit)``, for a child's status line
Counts = Callable[[], Tuple[int, int]]


class Launch(Protocol):
    """Starts the program of one connection."""

    #: the name in ``unable to run <name>: <error>``
    name: str

    def start(self, fd: int, env: Environment) -> int:
        """Start the program with fd 0 and 1 on ``fd``; return its pid.

        Raises:
            OSError, ValueError: it could not be started.
        """

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Called once by the server: register what SIGHUP must reload,
        and take the server's counts for the children's status lines."""

    def ready(self) -> None:
        """Called once after the privilege drop, before the first accept:
        load what the program needs (a ``prog.so``).  Raises Fatal."""


class Program(Launch, Protocol):
    """A launcher that can put fd 0 and fd 1 on different descriptors."""

    def start_on(self, fd0: int, fd1: int, env: Environment, keep: Sequence[int] = ()) -> int:
        """Start the program with fd 0 on ``fd0`` and fd 1 on ``fd1``,
        and the descriptors ``keep`` open under their own numbers;
        return its pid.  Raises OSError, ValueError."""


class Spawn:
    """``os.posix_spawn`` (``posix_spawnp`` for a name without ``/``)."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.name = argv[0]
        self._spawn = os.posix_spawn if "/" in self.name else os.posix_spawnp

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Nothing to reload."""

    def ready(self) -> None:
        """Nothing to load."""

    def start(self, fd: int, env: Environment) -> int:
        return self.start_on(fd, fd, env)

    def start_on(self, fd0: int, fd1: int, env: Environment, keep: Sequence[int] = ()) -> int:
        for fd in keep:
            os.set_inheritable(fd, True)
        return self._spawn(
            self.name, self.argv, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd0, 0), (os.POSIX_SPAWN_DUP2, fd1, 1)],
            setsigdef=SIGDEF, setsigmask=(),
        )
