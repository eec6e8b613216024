"""Admission: may this connection be served now?  Decided in one place
(design: one-admission-point).

Every limit on how many connections are served is a rule of
:class:`Admission`, asked at two moments:

* **at accept** (:meth:`Admission.accept`), before a byte is read or a
  lookup made: the ``-c`` limit and the descriptor budget (through
  :meth:`Admission.room`, which the loop asks before it accepts at all),
  and the per-address limit when nothing later can change it (no rules,
  no PROXY header to wait for);
* **once the client is known** (:meth:`Admission.identified`): after the
  PROXY header has given the real address and the rules their limit.

It keeps the counters those rules need, keyed by address: the
connections holding a ``-c`` slot (from accept, or from the end of a
TLS client's wait for its ClientHello, to the exit of its program) and
the live connections per client address.  It answers; it does not
reap, log or close: the loop does (a refusal is a :class:`Refusal`).
Where a future multi-process server would share counts between its
processes, it is these counters that would move into shared memory.

A connection that may not take a ``-c`` slot yet (a TLS client whose
ClientHello has arrived while every slot is busy) waits in a queue and
is given the next slot that frees (:meth:`Admission.wait_slot`).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, Optional

from .limits import Descriptors, Limit

Grant = Callable[[], None]


class Refusal:
    """Why a connection may not be served.

    Attributes:
        limit: the rule's value (``-C``/``MAXPERIP``...).
        count: the other live connections it counted.
    """

    __slots__ = ("limit", "count")

    def __init__(self, limit: int, count: int) -> None:
        self.limit = limit
        self.count = count


class Admission:
    """The counters and the rules.

    Args:
        limit: ``-c`` (a number, or a file re-read on SIGHUP).
        descriptors: the parent's descriptor budget.
    """

    def __init__(self, limit: Limit, descriptors: Descriptors) -> None:
        self.limit = limit
        self.descriptors = descriptors
        #: connections holding a -c slot: being set up, or running a program
        self.count = 0
        #: live connections per client address, from accept to the end
        self.hosts: Dict[str, int] = {}
        self.queue: Deque[Grant] = deque()

    # -- the loop's question --------------------------------------------
    def room(self) -> bool:
        """Below ``-c``, with descriptors for one more connection's
        lookups: else the loop stops accepting."""
        return self.count < self.limit.value and self.descriptors.room()

    # -- the first moment: accept ------------------------------------------
    def accept(self, ip: str, max_per_host: int, final: bool, slot: bool = True
               ) -> Optional[Refusal]:
        """A connection from ``ip`` was accepted.

        Args:
            max_per_host: the per-address limit known now (``-C``).
            final: nothing later can change the limit (no rules, no
                PROXY header): it is checked now.
            slot: take a ``-c`` slot now (a TLS client takes one when its
                ClientHello has arrived, :meth:`wait_slot`).

        Returns:
            None when it is counted; the refusal otherwise (not counted).
        """
        if final:
            refusal = self.over(ip, max_per_host, 0)
            if refusal is not None:
                return refusal
        self.hosts[ip] = self.hosts.get(ip, 0) + 1
        self.descriptors.take()
        if slot:
            self.count += 1
        return None

    # -- the second moment: the client is known ------------------------------
    def identified(self, ip: str, max_per_host: int) -> Optional[Refusal]:
        """The limits once the header and the rules have spoken; the
        connection is counted already."""
        return self.over(ip, max_per_host, 1)

    def over(self, ip: str, limit: int, own: int) -> Optional[Refusal]:
        """The refusal if the other live connections from ``ip`` reach
        ``limit`` (0: no limit); ``own`` is 1 if the connection being
        checked is counted already."""
        if not limit:
            return None
        count = self.hosts.get(ip, 0) - own
        return Refusal(limit, count) if count >= limit else None

    def moved(self, old: str, new: str) -> None:
        """A PROXY header gave a connection its real address."""
        self._forget(old)
        self.hosts[new] = self.hosts.get(new, 0) + 1

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
