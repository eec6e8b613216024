"""Asking DNS lists about one client: every list and anti-list at the
same time, on a reactor, within one deadline for them all.

:class:`ListLookups` starts a TXT query (a ``base`` list) or an A query
(a ``base:message`` list, an anti-list) for each, through
:func:`ucspi.dns.lookup.lookup_records`, and reports once, when all
have answered or at the deadline: an :class:`~.lists.Answer` per list
and per anti-list, None for one that gave no answer in time (or got no
descriptor): a failure, for :func:`~.lists.decide`.  The server runs it
in its loop during the lookups step; the ``rblsmtpd`` command runs it
on a reactor of its own (:func:`ask`).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from ..dns.conf import DnsConfig
from ..dns.lookup import lookup_records
from ..dns.msg import TYPE_A, TYPE_TXT, parse_a, parse_txt
from ..reactor import Cancellable, Reactor, Timer, run_blocking
from .lists import Answer, ListSpec, a_answer, allow_answer, query_name, reversed_ip, txt_answer

Answers = List[Optional[Answer]]
#: ``(answers of the lists, answers of the anti-lists)``
Done = Callable[[Answers, Answers], None]


class ListLookups:
    """The lookups of one client; ``cancel()`` stops them unreported."""

    def __init__(self, reactor: Reactor, conf: DnsConfig, ip: str, lists: Sequence[ListSpec],
                 allow: Sequence[str], timeout: float, done: Done) -> None:
        self.reactor = reactor
        self.conf = conf
        self.answers: Answers = [None] * len(lists)
        self.allowed: Answers = [None] * len(allow)
        self.pending = len(lists) + len(allow)
        self.done: Optional[Done] = done
        self.handles: List[Cancellable] = []
        self.timer: Optional[Timer] = None
        part = reversed_ip(ip)
        if part is None or not self.pending:
            self.timer = reactor.call_later(0, self._report)
            return
        for i, spec in enumerate(lists):
            name = query_name(part, spec.base)
            if spec.message is None:
                self._ask(name, TYPE_TXT, parse_txt, self._setter(self.answers, i, txt_answer))
            else:
                message = spec.message

                def listed(found: List[bytes], message: str = message) -> Answer:
                    return a_answer(found, message, ip)
                self._ask(name, TYPE_A, parse_a, self._setter(self.answers, i, listed))
        for i, base in enumerate(allow):
            self._ask(query_name(part, base), TYPE_A, parse_a,
                      self._setter(self.allowed, i, allow_answer))
        self.timer = reactor.call_later(timeout, self._report)

    def _ask(self, name: str, qtype: int, parse: Callable[[bytes], List[bytes]],
             got: Callable[[List[bytes], Optional[BaseException]], None]) -> None:
        self.handles.append(lookup_records(self.reactor, self.conf, name, qtype, parse, got,
                                           lambda error: got([], error)))

    def _setter(self, into: Answers, index: int, meaning: Callable[[List[bytes]], Answer]
                ) -> Callable[[List[bytes], Optional[BaseException]], None]:
        def got(found: List[bytes], error: Optional[BaseException]) -> None:
            if self.done is None:
                return
            into[index] = meaning(found) if error is None else None
            self.pending -= 1
            if not self.pending:
                self._report()
        return got

    def _report(self) -> None:
        done, self.done = self.done, None
        self.cancel()
        if done is not None:
            done(self.answers, self.allowed)

    def cancel(self) -> None:
        """Stop every lookup; nothing is reported."""
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for handle in self.handles:
            handle.cancel()
        self.handles = []


def ask(conf: DnsConfig, ip: str, lists: Sequence[ListSpec], allow: Sequence[str],
        timeout: float) -> Tuple[Answers, Answers]:
    """The blocking face, for the ``rblsmtpd`` command."""
    def begin(reactor: Reactor, done: Callable[[Tuple[Answers, Answers]], None]
              ) -> Cancellable:
        return ListLookups(reactor, conf, ip, lists, allow, timeout,
                           lambda answers, allowed: done((answers, allowed)))
    result = run_blocking(begin)
    return result if result is not None else ([None] * len(lists), [None] * len(allow))
