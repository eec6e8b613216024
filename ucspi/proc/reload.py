"""What SIGHUP re-reads: a registry of reload actions, run in order.

Whoever owns something that SIGHUP re-reads registers it at start-up:
the server's ``-c`` file and resolver settings (with the cached names
of local addresses), a TLS launcher's certificates, the ``PLUGINn``
init(1) calls.  An action that fails logs one warning and the others
still run: SIGHUP never kills the server.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from ..errors import UcspiError
from ..log import Log

Action = Callable[[], None]


class Reloads:
    """Reload actions by name, in registration order."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.actions: List[Tuple[str, Action]] = []

    def add(self, name: str, action: Action) -> None:
        self.actions.append((name, action))

    def run(self) -> None:
        for name, action in self.actions:
            try:
                action()
            except UcspiError as exc:      # a reason already worded for the log
                self.log.warning(f"unable to reload {name}: {exc}")
            except Exception as exc:
                self.log.warning(f"unable to reload {name}: {type(exc).__name__}: {exc}")
