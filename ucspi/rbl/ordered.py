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

from typing import Callable, Dict, List, Optional, Sequence

from ..dns.conf import DnsConfig
from ..dns.lookup import lookup_records
from ..dns.msg import TYPE_A, TYPE_TXT, parse_a, parse_txt
from ..reactor import Cancellable, Reactor, Timer, run_blocking
from .lists import Answer, Decision, query_name, reversed_ip
from .order import Outcome, Step, evaluate, lookups, meaning

#: seconds for all the lookups of a client
DEADLINE = 60.0


class OrderedLookups:
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
        self.answers: Dict[int, Optional[Answer]] = {}
        self.done: Optional[Callable[[Outcome], None]] = done
        self.handles: List[Cancellable] = []
        self.count = len(lookups(self.steps))
        part = reversed_ip(ip)
        if part is None:
            self.timer: Optional[Timer] = reactor.call_later(0, self._final)
            return
        for index in lookups(self.steps):
            step = self.steps[index]
            assert step.spec is not None
            qtype, parse = (TYPE_TXT, parse_txt) if step.wants_txt else (TYPE_A, parse_a)
            self.handles.append(lookup_records(reactor, conf, query_name(part, step.spec.base),
                                               qtype, parse, self._got(index, ip)))
        self.timer = reactor.call_later(timeout if self.handles else 0, self._final)

    def _got(self, index: int, ip: str) -> Callable[[List[bytes], Optional[BaseException]],
                                                    None]:
        def got(records: List[bytes], error: Optional[BaseException]) -> None:
            if self.done is None:
                return
            self.answers[index] = None if error is not None else \
                meaning(self.steps[index], records, ip)
            final = len(self.answers) == self.count
            outcome = evaluate(self.steps, None, self.answers, final)
            if outcome is not None:
                self._report(outcome)
        return got

    def _final(self) -> None:
        self.timer = None
        outcome = evaluate(self.steps, None, self.answers, True)
        assert outcome is not None
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        done, self.done = self.done, None
        self.cancel()
        if done is not None:
            done(outcome)

    def cancel(self) -> None:
        """Stop every lookup; nothing is reported."""
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for handle in self.handles:
            handle.cancel()
        self.handles = []


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
