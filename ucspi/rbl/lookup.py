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

import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..dns.conf import DnsConfig
from ..dns.lookup import lookup_records
from ..dns.msg import TYPE_A, TYPE_TXT, parse_a, parse_txt
from ..reactor import Cancellable, Reactor, Timer, run_blocking
from .lists import Answer, ListSpec, a_answer, allow_answer, query_name, reversed_ip, txt_answer

Answers = List[Optional[Answer]]
#: ``(answers of the lists, answers of the anti-lists)``
Done = Callable[[Answers, Answers], None]


#: one query: the name, the record type, the parser of its records, and
#: what they mean for the client
Query = Tuple[str, int, Callable[[bytes], List[bytes]], Callable[[List[bytes]], Answer]]


class Batch:
    """DNS list queries of one client asked at once within one deadline;
    ``cancel()`` stops them unreported.  After each answer (``None`` for a
    failure) :meth:`settled` says whether the batch may end; at the
    deadline, or when every query has answered, it ends anyway.
    Subclasses say what ending reports (:meth:`finish`)."""

    def __init__(self, reactor: Reactor, conf: DnsConfig, queries: Sequence[Query],
                 timeout: float) -> None:
        self.answers: Dict[int, Optional[Answer]] = {}
        self.pending = len(queries)
        self.ended = False
        self.handles: List[Cancellable] = []
        for index, (name, qtype, parse, meaning) in enumerate(queries):
            got = self._got(index, meaning)
            self.handles.append(lookup_records(reactor, conf, name, qtype, parse, got,
                                               functools.partial(got, [])))
        self.timer: Optional[Timer] = reactor.call_later(timeout if queries else 0, self._end)

    def _got(self, index: int, meaning: Callable[[List[bytes]], Answer]
             ) -> Callable[[List[bytes], Optional[BaseException]], None]:
        def got(found: List[bytes], error: Optional[BaseException]) -> None:
            if self.ended:
                return
            self.answers[index] = meaning(found) if error is None else None
            self.pending -= 1
            if not self.pending or self.settled():
                self._end()
        return got

    def settled(self) -> bool:
        """May the batch end now, before every answer is in?"""
        return False

    def finish(self) -> None:
        """Report (once, at the end)."""

    def _end(self) -> None:
        if not self.ended:
            self.cancel()
            self.finish()

    def cancel(self) -> None:
        """Stop every query; nothing is reported."""
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for handle in self.handles:
            handle.cancel()
        self.handles = []


def queries(ip: str, lists: Sequence[ListSpec], allow: Sequence[str]) -> List[Query]:
    """The queries for ``ip``: a TXT one per ``base`` list, an A one per
    ``base:message`` list and per anti-list; none for text that is not
    an address (each then counts as failed)."""
    part = reversed_ip(ip)
    if part is None:
        return []
    found: List[Query] = []
    for spec in lists:
        name = query_name(part, spec.base)
        if spec.message is None:
            found.append((name, TYPE_TXT, parse_txt, txt_answer))
        else:
            found.append((name, TYPE_A, parse_a,
                          functools.partial(a_answer, message=spec.message, ip=ip)))
    found += [(query_name(part, base), TYPE_A, parse_a, allow_answer) for base in allow]
    return found


class ListLookups(Batch):
    """tcpserver's: every list and anti-list, all answers reported
    together (``done(lists' answers, anti-lists' answers)``)."""

    def __init__(self, reactor: Reactor, conf: DnsConfig, ip: str, lists: Sequence[ListSpec],
                 allow: Sequence[str], timeout: float, done: Done) -> None:
        self.sizes = (len(lists), len(allow))
        self.done = done
        super().__init__(reactor, conf, queries(ip, lists, allow), timeout)

    def finish(self) -> None:
        count, _ = self.sizes
        every = [self.answers.get(i) for i in range(sum(self.sizes))]
        self.done(every[:count], every[count:])


def ask(conf: DnsConfig, ip: str, lists: Sequence[ListSpec], allow: Sequence[str],
        timeout: float) -> Tuple[Answers, Answers]:
    """The blocking face, for the ``rblsmtpd`` command."""
    def begin(reactor: Reactor, done: Callable[[Tuple[Answers, Answers]], None]
              ) -> Cancellable:
        return ListLookups(reactor, conf, ip, lists, allow, timeout,
                           lambda answers, allowed: done((answers, allowed)))
    result = run_blocking(begin)
    return result if result is not None else ([None] * len(lists), [None] * len(allow))
