"""The ``rblsmtpd`` command's lookups: every ``-r`` and ``-a`` list
asked at once, the decision taken in command-line order
(design: rblsmtpd).

djb's rblsmtpd asks its lists one after the other and stops at the
first that decides.  :class:`OrderedLookups` starts them all together
(a TXT or an A query each, through
:func:`ucspi.dns.lookup.lookup_records`) and, after every answer, asks
:func:`.order.evaluate` whether the answers in so far settle djb's walk:
a listing by the first list is acted on at once, without waiting for a
slower list after it, and a slow list before it is waited for, as djb
would.  At the deadline the lookups still out count as failures.  The
decision is djb's; only the time differs (at most the slowest list that
djb's walk needs, never the sum of them).

:func:`ask` is the blocking face the command calls; the deadline is
:data:`DEADLINE`, about the resolver's own schedule for one question
(3 + 11 + 45 seconds), so that no single list is given up on sooner
than djb's resolver would.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence

from ..dns.conf import DnsConfig
from ..dns.msg import TYPE_A, TYPE_TXT, parse_a, parse_txt
from ..reactor import Cancellable, Reactor, run_blocking
from .lists import Answer, Decision, query_name, reversed_ip
from .lookup import Batch, Query
from .order import Outcome, Step, evaluate, lookups, meaning

#: seconds for all the lookups of a client
DEADLINE = 60.0


class OrderedLookups(Batch):
    """The lookups of one client; reports one :class:`~.order.Outcome`.

    Args:
        reactor: runs the lookups.
        conf: the resolver's servers.
        ip: the client's address (text); not an address: every lookup
            fails at once.
        steps: the options, in order.
        timeout: seconds for them all.
        done: called once with the outcome (never before this returns).
    """

    def __init__(self, reactor: Reactor, conf: DnsConfig, ip: str, steps: Sequence[Step],
                 timeout: float, done: Callable[[Outcome], None]) -> None:
        self.steps = list(steps)
        self.done = done
        part = reversed_ip(ip)
        self.indexes = lookups(self.steps) if part is not None else []
        asked: List[Query] = []
        for index in self.indexes:
            step = self.steps[index]
            assert step.spec is not None and part is not None
            qtype, parse = (TYPE_TXT, parse_txt) if step.wants_txt else (TYPE_A, parse_a)
            asked.append((query_name(part, step.spec.base), qtype, parse,
                          functools.partial(meaning, step, ip=ip)))
        super().__init__(reactor, conf, asked, timeout)

    def _by_step(self) -> Dict[int, Optional[Answer]]:
        return {self.indexes[i]: answer for i, answer in self.answers.items()}

    def settled(self) -> bool:
        return evaluate(self.steps, None, self._by_step(), False) is not None

    def finish(self) -> None:
        outcome = evaluate(self.steps, None, self._by_step(), True)
        assert outcome is not None
        self.done(outcome)


def ask(ip: str, steps: Sequence[Step], preset: Optional[Decision],
        conf: Optional[DnsConfig] = None, timeout: float = DEADLINE) -> Outcome:
    """The decision for the client: ``preset`` (``$RBLSMTPD``) if there
    is one, else djb's walk over the lists' answers, asked on a private
    reactor within ``timeout`` seconds.

    Args:
        conf: the resolver's settings (default: read from the
            environment, ``$DNSCACHEIP`` or ``/etc/resolv.conf``, when
            there is something to ask).
    """
    settled = evaluate(steps, preset, {}, not lookups(steps))
    if settled is not None:
        return settled
    resolver = DnsConfig.load() if conf is None else conf

    def begin(reactor: Reactor, done: Callable[[Outcome], None]) -> Cancellable:
        return OrderedLookups(reactor, resolver, ip, steps, timeout, done)
    result = run_blocking(begin)
    if result is None:                       # stalled: nothing more can come
        result = evaluate(steps, None, {}, True)
        assert result is not None
    return result
