"""Admission: may this connection be served now?  Decided in one place
(design: one-admission-point).

Every limit on how many connections are served is a rule of
:class:`Admission`, asked at two moments:

* **at accept** (:meth:`Admission.accept`), before a byte is read or a
  lookup made: the ``-c`` limit and the descriptor budget (through
  :meth:`Admission.room`, which the loop asks before it accepts at all),
  and the client's limits (:class:`ucspi.policy.Policy`) when nothing
  later can change them: no rules, no PROXY header to wait for;
* **once the client is known** (:meth:`Admission.identified`): after the
  PROXY header has given the real address and the rules their limits.

The rules, in the order they are asked: ``MAXLOAD``; the per-address
limits ``MAXPERIP`` (``-C``), ``MAXCONIP``, ``MAXCONNIP``; the
per-network ``MAXCONNC``; the rate ``MAXCONNRATE``.  The first that
refuses is the :class:`Refusal`.

It keeps the counters those rules need, keyed by address: the
connections holding a ``-c`` slot (from accept, or from the end of a
TLS client's wait for its ClientHello, to the exit of its program), the
live connections per client address and per network, and the recent
admissions per address for the rate (:class:`RateTable`).  It answers;
it does not reap, log or close: the loop does.  Where a future
multi-process server would share counts between its processes, it is
these counters that would move into shared memory.

A connection that may not take a ``-c`` slot yet (a TLS client whose
ClientHello has arrived while every slot is busy) waits in a queue and
is given the next slot that frees (:meth:`Admission.wait_slot`).
"""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict, deque
from typing import Callable, Deque, Dict, Optional

from ..address import network_key
from ..policy import Policy
from .limits import Descriptors, Limit

Grant = Callable[[], None]
Clock = Callable[[], float]

#: addresses the rate table remembers at most (see :class:`RateTable`)
RATE_ENTRIES = 16384
#: how long one reading of the load average is used, in seconds
LOAD_AGE = 1.0


class Refusal:
    """Why a connection may not be served.

    Attributes:
        what: the limit's name as the log shows it (``MAXCONNIP``,
            ``LOAD``...; ``MAXPERIP`` for ``-C``, whose line is
            IndiMail's ``perIPlimit``).
        limit: the limit's value.
        count: what it counted (the other live connections; the load
            × 100; the admissions in the window).
        window: the rate's window (``MAXCONNRATE`` only).
    """

    __slots__ = ("what", "limit", "count", "window")

    def __init__(self, what: str, limit: int, count: int, window: int = 0) -> None:
        self.what = what
        self.limit = limit
        self.count = count
        self.window = window

    def suffix(self) -> bytes:
        """What the ``deny`` line gets appended (`` MAXCONNIP:2``)."""
        if self.what == "MAXCONNRATE":
            return b" MAXCONNRATE:%d/%d" % (self.limit, self.window)
        if self.what == "LOAD":
            return b" LOAD:%d" % self.count
        return b" %s:%d" % (self.what.encode(), self.limit)


class RateTable:
    """The times of the latest admissions per address, for
    ``MAXCONNRATE``: a sliding window of the last ``n`` admissions.

    Memory is bounded, in entries and in bytes: an address's entry is
    one ``array`` of its window and at most its limit of times (8 bytes
    each: the ones that can still matter), dropped once its newest time
    is older than its window; the table holds at most
    :data:`RATE_ENTRIES` addresses (about 230 bytes each with one time,
    480 with twenty: at most 4 and 8 MB), and at that cap the address admitted least
    recently is forgotten (it may then come back early: a client
    rotating through more addresses than that is for the per-network
    and ``-c`` limits).
    """

    def __init__(self, cap: int = RATE_ENTRIES) -> None:
        self.cap = cap
        #: address -> array(window, times...), least recently admitted first
        self.entries: "OrderedDict[str, array[float]]" = OrderedDict()

    def count(self, ip: str, window: int, now: float) -> int:
        """Admissions from ``ip`` in the last ``window`` seconds."""
        times = self.entries.get(ip)
        if times is None:
            return 0
        since = now - window
        return sum(1 for t in times[1:] if t > since)

    def admitted(self, ip: str, limit: int, window: int, now: float) -> None:
        """Remember one admission (only admitted connections count)."""
        times = self.entries.pop(ip, None)
        if times is None:
            times = array("d", (window, now))
        else:
            times[0] = window
            times.append(now)
            keep = max(limit, 1)
            if len(times) - 1 > keep:
                del times[1:len(times) - keep]
        self.entries[ip] = times            # now the most recent
        self.expire(now)

    def expire(self, now: float) -> None:
        """Drop what no window can still see; keep to the cap."""
        entries = self.entries
        while entries:
            times = next(iter(entries.values()))
            if len(entries) <= self.cap and times[-1] > now - times[0]:
                break
            entries.popitem(last=False)

    @property
    def windows(self) -> Dict[str, float]:
        """Each address's window (for tests)."""
        return {ip: times[0] for ip, times in self.entries.items()}


class Admission:
    """The counters and the rules.

    Args:
        limit: ``-c`` (a number, or a file re-read on SIGHUP).
        descriptors: the parent's descriptor budget.
        policy: the limits every client gets (tcpserver's environment).
        clock: monotonic time (tests give their own).
        load: the 1-minute load average (tests give their own).
    """

    def __init__(self, limit: Limit, descriptors: Descriptors,
                 policy: Optional[Policy] = None, clock: Optional[Clock] = None,
                 load: Optional[Callable[[], float]] = None) -> None:
        self.limit = limit
        self.descriptors = descriptors
        self.policy = policy if policy is not None else Policy()
        self.clock: Clock = clock if clock is not None else _monotonic
        self._load = load if load is not None else _loadavg
        self._load_read = (float("-inf"), 0.0)
        #: connections holding a -c slot: being set up, or running a program
        self.count = 0
        #: live connections per client address, from accept to the end
        self.hosts: Dict[str, int] = {}
        #: live connections per network (/24, /64) when MAXCONNC is in use
        self.networks: Dict[str, int] = {}
        self.rates = RateTable()
        self.queue: Deque[Grant] = deque()

    # -- the loop's question --------------------------------------------
    def room(self) -> bool:
        """Below ``-c``, with descriptors for one more connection's
        lookups: else the loop stops accepting."""
        return self.count < self.limit.value and self.descriptors.room()

    # -- the first moment: accept ------------------------------------------
    def accept(self, ip: str, final: bool, slot: bool = True,
               policy: Optional[Policy] = None, unix: bool = False) -> Optional[Refusal]:
        """A connection from ``ip`` was accepted.

        Args:
            final: nothing later can change its limits (no rules, no
                PROXY header): they are checked now.
            slot: take a ``-c`` slot now (a TLS client takes one when its
                ClientHello has arrived, :meth:`wait_slot`).
            policy: the client's limits (default: everyone's).
            unix: a UNIX client: ``MAXLOAD`` and ``-C`` over all of them
                (they count as one address, ``""``) apply, nothing else.

        Returns:
            None when it is counted; the refusal otherwise (not counted).
        """
        if final:
            policy = policy if policy is not None else self.policy
            refusal = self._unix(ip, policy) if unix else self.check(ip, policy, 0)
            if refusal is not None:
                return refusal
            if not unix:
                self.admitted(ip, policy)
        self.hosts[ip] = self.hosts.get(ip, 0) + 1
        self._add_network(ip, 1)
        self.descriptors.take()
        if slot:
            self.count += 1
        return None

    def _unix(self, ip: str, policy: Policy) -> Optional[Refusal]:
        refusal = self._loaded(policy)
        if refusal is None and policy.max_per_host:
            count = self.hosts.get(ip, 0)
            if count >= policy.max_per_host:
                refusal = Refusal("MAXPERIP", policy.max_per_host, count)
        return refusal

    # -- the second moment: the client is known ------------------------------
    def identified(self, ip: str, policy: Policy) -> Optional[Refusal]:
        """The limits once the header and the rules have spoken; the
        connection is counted already.  Admitted, it counts for the
        rate."""
        refusal = self.check(ip, policy, 1)
        if refusal is None:
            self.admitted(ip, policy)
        return refusal

    def check(self, ip: str, policy: Policy, own: int) -> Optional[Refusal]:
        """The first limit of ``policy`` that refuses ``ip``, or None;
        ``own`` is 1 if the connection being checked is counted already."""
        refusal = self._loaded(policy)
        if refusal is not None:
            return refusal
        others = self.hosts.get(ip, 0) - own
        for what, limit, zero_refuses in (("MAXPERIP", policy.max_per_host, False),
                                          ("MAXCONIP", policy.maxconip, False),
                                          ("MAXCONNIP", policy.maxconnip, True)):
            if limit is None or (limit == 0 and not zero_refuses):
                continue
            if others >= limit:
                return Refusal(what, limit, others)
        if policy.maxconnc is not None:
            near = self.networks.get(network_key(ip), 0) - own
            if near >= policy.maxconnc:
                return Refusal("MAXCONNC", policy.maxconnc, near)
        if policy.rate:
            recent = self.rates.count(ip, policy.window, self.clock())
            if recent >= policy.rate:
                return Refusal("MAXCONNRATE", policy.rate, recent, policy.window)
        return None

    def admitted(self, ip: str, policy: Policy) -> None:
        """The connection passed every limit: it counts for the rate."""
        if policy.rate:
            self.rates.admitted(ip, policy.rate, policy.window, self.clock())

    def _loaded(self, policy: Policy) -> Optional[Refusal]:
        if not policy.maxload:
            return None
        now = self.clock()
        read, value = self._load_read
        if now - read >= LOAD_AGE:
            value = self._load()
            self._load_read = (now, value)
        load = int(value * 100)
        return Refusal("LOAD", policy.maxload, load) if load > policy.maxload else None

    def moved(self, old: str, new: str) -> None:
        """A PROXY header gave a connection its real address."""
        self._forget(old)
        self.hosts[new] = self.hosts.get(new, 0) + 1
        self._add_network(new, 1)

    def others(self, ip: str) -> int:
        """The other live connections from ``ip`` (``TCPCONNNUM``)."""
        return max(self.hosts.get(ip, 1) - 1, 0)

    # -- slots --------------------------------------------------------------
    def wait_slot(self, grant: Grant) -> bool:
        """Take a ``-c`` slot now (True) or queue ``grant``, called when
        one frees (False)."""
        if self.count < self.limit.value and not self.queue:
            self.count += 1
            return True
        self.queue.append(grant)
        return False

    def leave_queue(self, grant: Grant) -> None:
        """A queued connection ended before it got its slot."""
        try:
            self.queue.remove(grant)
        except ValueError:
            pass

    def refill(self) -> None:
        """The ``-c`` limit was raised (SIGHUP): give the new slots to
        the queue."""
        while self.queue and self.count < self.limit.value:
            self.count += 1
            self.queue.popleft()()

    def _free_slot(self) -> None:
        if self.queue and self.count <= self.limit.value:
            self.queue.popleft()()       # the slot passes to the next in line
        else:
            self.count -= 1

    # -- the end ------------------------------------------------------------
    def set_up(self) -> None:
        """The program started: the connection's lookup descriptors are
        free again; its slot and address count stay with the program."""
        self.descriptors.give()

    def ended(self, ip: str, slot: bool) -> None:
        """A connection ended without a program (``slot``: it held one)."""
        self.descriptors.give()
        self._forget(ip)
        if slot:
            self._free_slot()

    def program_ended(self, ip: str) -> None:
        """A program exited."""
        self._forget(ip)
        self._free_slot()

    def _forget(self, ip: str) -> None:
        left = self.hosts.get(ip, 1) - 1
        if left > 0:
            self.hosts[ip] = left
        else:
            self.hosts.pop(ip, None)
        self._add_network(ip, -1)

    def _add_network(self, ip: str, change: int) -> None:
        """Per-network counts, kept only when some policy may ask for
        them (:attr:`track_networks`): entries live as long as their
        connections, so the table never outgrows them."""
        if not self.track_networks or not ip:
            return
        key = network_key(ip)
        left = self.networks.get(key, 0) + change
        if left > 0:
            self.networks[key] = left
        else:
            self.networks.pop(key, None)

    #: count per network: the service turns it off when no ``MAXCONNC``
    #: can apply (none in the environment, no rules)
    track_networks = True


def _monotonic() -> float:
    import time
    return time.monotonic()


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0
