"""The ``-x`` rules cdb as the access source of the connections.

Imported only when ``-x`` is given, at start-up (before privileges are
dropped).  A lookup runs in the loop when its work is small, which is
always the case for a file built by ``tcprules``: the file is held in
memory while it is small and unchanged, else read with a budget of
:data:`LOOP_SLOTS` hash slots (:class:`~ucspi.rules.cache.RulesCache`).
A lookup that would pass the budget (a huge or hostile hash chain) is
made again in a helper child (:class:`ucspi.proc.offload.Offload`), as the C
server makes every lookup in its child: its answer comes back through
the loop, so no other client waits for it.
"""

from __future__ import annotations

import os
from typing import Optional

from ..cdb.format import TooMuchWork
from ..environ import Endpoints
from ..errors import UcspiError
from ..rules.cache import RulesCache, decide, pack_found, unpack_found
from ..rules.lookup import Decision, find
from .access import Answer, Verdict
from ..proc.offload import Offload

#: hash slots one lookup may visit inside the loop (a lookup in a file
#: built by tcprules visits a few per key; 4096 cost about a millisecond)
LOOP_SLOTS = 4096


class RulesAccess:
    """The ``-x`` rules cdb (``-X``: a missing file means no rules).

    Args:
        path: the cdb as given (shown in messages).
        missing_ok: ``-X``.
        max_per_host: the ``-C`` limit, unless a rule's MAXPERIP says other.
        offload: runs the lookups that are too much work for the loop.
    """

    def __init__(self, path: str, missing_ok: bool, max_per_host: int,
                 offload: Offload) -> None:
        self.path = path
        self.missing_ok = missing_ok
        self.max_per_host = max_per_host
        self.offload = offload
        self._absolute = os.path.abspath(path)
        self._cache = RulesCache(self._absolute)

    def check(self, ep: Endpoints, answer: Answer) -> None:
        """Look the client up: at once, or from a helper child."""
        try:
            decision = self._cache.check(self.missing_ok, ep.remote_ip, ep.remote_host,
                                         ep.remote_info, LOOP_SLOTS)
        except TooMuchWork:
            self._elsewhere(ep, answer)
            return
        except (OSError, UcspiError) as exc:
            answer(self._failed(exc))
            return
        answer(self._verdict(decision))

    def _elsewhere(self, ep: Endpoints, answer: Answer) -> None:
        path, ip, host, info = self._absolute, ep.remote_ip, ep.remote_host, ep.remote_info

        def work() -> bytes:
            try:
                return pack_found(find(path, ip, host, info))
            except (OSError, UcspiError) as exc:
                return pack_found(exc)

        def got(data: bytes, error: Optional[OSError]) -> None:
            if error is not None:
                answer(self._failed(error))
                return
            try:
                decision = decide(self.missing_ok, lambda: unpack_found(data))
            except (OSError, UcspiError) as exc:
                answer(self._failed(exc))
                return
            answer(self._verdict(decision))

        self.offload.run(work, got)

    def _failed(self, exc: BaseException) -> Verdict:
        return Verdict(False, [], 0, (f"unable to read {self.path}", exc))

    def _verdict(self, decision: Optional[Decision]) -> Verdict:
        if decision is None:
            return Verdict(True, [], self.max_per_host)
        if decision.deny:
            return Verdict(False, [], 0)
        limit = self.max_per_host if decision.maxperip is None else decision.maxperip
        return Verdict(True, decision.changes, limit)
