"""The access step's sources: may this client in, and with what.

A source (an :class:`Access`) answers through a callback, so the step
works the same for a source that knows at once and one that must ask
somebody or something: the ``-x`` cdb
(:class:`~.rules_access.RulesAccess`) usually answers at once, but from
a child when the file is unusual; the MySQL rules of ``-m`` ask
a database.  The answer is a :class:`Verdict`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Protocol, Tuple

from ..environ import Change, Endpoints


class Verdict:
    """What the access step learnt.

    Attributes:
        allow: the client may in (False: ``deny`` it).
        changes: environment changes from the rule, in order.
        max_per_host: the client's per-host limit (0 = none).
        failure: ``(what, error)`` when the source could not answer:
            the connection is dropped with ``<what>: <error text>``.
        quiet: the source could not answer and has said so in the log
            already (once per failure burst): drop without a line.
    """

    __slots__ = ("allow", "changes", "max_per_host", "failure", "quiet")

    def __init__(self, allow: bool, changes: List[Change], max_per_host: int,
                 failure: Optional[Tuple[str, BaseException]] = None,
                 quiet: bool = False) -> None:
        self.allow = allow
        self.changes = changes
        self.max_per_host = max_per_host
        self.failure = failure
        self.quiet = quiet


Answer = Callable[[Verdict], None]


class Access(Protocol):
    """A source of access decisions."""

    def check(self, ep: Endpoints, answer: Answer) -> None:
        """Decide on the client of ``ep``; call ``answer`` once, now or
        later from the loop."""
