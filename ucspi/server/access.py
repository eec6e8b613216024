"""The access step's sources: may this client in, and with what.

A source answers through a callback, so the step works the same for a
source that knows at once (the ``-x`` cdb, :class:`RulesAccess`) and one
that must ask somebody (the MySQL rules of ``-m``, later).  The answer
is a :class:`Verdict`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from ..environ import Change, Endpoints
from ..errors import UcspiError

if TYPE_CHECKING:
    from ..rules.cache import RulesCache


class Verdict:
    """What the access step learnt.

    Attributes:
        allow: the client may in (False: ``deny`` it).
        changes: environment changes from the rule, in order.
        max_per_host: the client's per-host limit (0 = none).
        failure: ``(what, error)`` when the source could not answer:
            the connection is dropped with ``<what>: <error text>``.
    """

    __slots__ = ("allow", "changes", "max_per_host", "failure")

    def __init__(self, allow: bool, changes: List[Change], max_per_host: int,
                 failure: Optional[Tuple[str, BaseException]] = None) -> None:
        self.allow = allow
        self.changes = changes
        self.max_per_host = max_per_host
        self.failure = failure


Answer = Callable[[Verdict], None]


class RulesAccess:
    """The ``-x`` rules cdb (``-X``: a missing file means no rules),
    held in memory while it is unchanged (:class:`~ucspi.rules.cache.RulesCache`).

    Args:
        path: the cdb as given (shown in messages).
        missing_ok: ``-X``.
        max_per_host: the ``-C`` limit, unless a rule's MAXPERIP says other.
    """

    def __init__(self, path: str, missing_ok: bool, max_per_host: int) -> None:
        # imported here, at start-up: before privileges are dropped, when
        # the package can still be read whatever its permissions
        from ..rules.cache import RulesCache
        self.path = path
        self.missing_ok = missing_ok
        self.max_per_host = max_per_host
        self._cache: "RulesCache" = RulesCache(os.path.abspath(path))

    def check(self, ep: Endpoints, answer: Answer) -> None:
        """Look the client up and answer at once."""
        cache = self._cache
        try:
            decision = cache.check(self.missing_ok, ep.remote_ip, ep.remote_host,
                                   ep.remote_info)
        except (OSError, UcspiError) as exc:
            answer(Verdict(False, [], 0, (f"unable to read {self.path}", exc)))
            return
        if decision is None:
            answer(Verdict(True, [], self.max_per_host))
        elif decision.deny:
            answer(Verdict(False, [], 0))
        else:
            limit = self.max_per_host if decision.maxperip is None else decision.maxperip
            answer(Verdict(True, decision.changes, limit))
