"""DNSBL in the loop (design: dnsbl-in-the-loop): a listed client is
answered by tcpserver itself, with rblsmtpd's dialogue, and no program
is started for it.

The lists of ``$DNSBL`` are asked during the lookups step, with the PTR
and ident lookups (:meth:`.lookups.Lookups.lists`); after the rules
(which may exempt a client with ``DNSBL=""``, ask other lists, or
refuse it with ``RBLSMTPD=text``) the connection's ``rbl`` step
decides (:func:`ucspi.rbl.lists.decide`).  A refused client gets
:class:`RblDialogue`: the greeting, 250 to ``helo``/``ehlo``/``mail``/
``rset``/``noop``, 221 to ``quit``, the refusal to anything else, on
the non-blocking socket in the loop, until ``quit``, the client's end
of file, or ``DNSBL_DIALOGUE_TIMEOUT`` seconds without a complete line
(or without the client taking what it is sent).  The dialogue keeps
the connection's ``-c`` slot and address count while it lasts.

The log gets rblsmtpd's line, ``rblsmtpd: IP pid 0: 451 text``, and at
``-v`` the ``deny 0`` line with `` DNSBL:base`` (`` DNSBL:RBLSMTPD`` for
a rule's refusal, `` DNSBL:failure`` for a failure under
``DNSBL_FAIL=closed``).
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from ..log import Log, safe, say
from ..reactor import Reactor, Timer
from ..rbl.dialogue import Dialogue, refusal_line
from ..rbl.lists import Decision, Settings
from ..rbl.lookup import Answers

#: bytes read at once from a refused client
CHUNK = 4096


def log_refusal(ip: str, line: bytes, verbosity: int) -> None:
    """rblsmtpd's line, ``rblsmtpd: IP pid 0: CODE TEXT``."""
    if verbosity >= 1:
        say(b"rblsmtpd: %s pid 0: %s" % (ip.encode("ascii", "replace"), line))


def log_errors(log: Log, ip: str, settings: Settings, answers: Answers,
               allowed: Answers) -> None:
    """One warning per list that answered with a query error (such as
    Spamhaus' ``Error: open resolver``): a failure, not a listing."""
    bases = [spec.base for spec in settings.lists] + list(settings.allow)
    for base, answer in zip(bases, list(answers) + list(allowed)):
        if answer is not None and answer.error:
            log.warning(f"DNSBL {base}: query error for {ip}: {safe(answer.text).decode()}")


def suffix(decision: Decision) -> bytes:
    """What the ``deny 0`` line gets appended."""
    return b" DNSBL:" + (decision.base or "failure").encode("ascii", "replace")


class RblDialogue:
    """rblsmtpd's dialogue with one refused client, on the loop.

    Args:
        reactor: the loop.
        sock: the client (made non-blocking here).
        decision: the refusal.
        greeting: the name in the greeting.
        timeout: seconds to wait for a line (or for the client to take
            what it is sent); 0: the refusal is the greeting.
        finished: called once when the dialogue is over; the caller
            closes the connection.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket, decision: Decision,
                 greeting: str, timeout: int, finished: Callable[[], None]) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.timeout = timeout
        self.finished: Optional[Callable[[], None]] = finished
        self.dialogue = Dialogue(refusal_line(decision.code, decision.text), greeting,
                                 talk=timeout > 0)
        self.out = bytearray(self.dialogue.start())
        self.timer: Optional[Timer] = None
        self.watching = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._arm()
        self._flush()

    def cancel(self) -> None:
        """Stop (the connection ends); ``finished`` is not called."""
        self.finished = None
        self._stop()

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watching:
            self.watching = False
            self.reactor.forget(self.fd)

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.reactor.call_later(max(self.timeout, 1), self._over)

    def _over(self) -> None:
        self.timer = None
        self._stop()
        finished, self.finished = self.finished, None
        if finished is not None:
            finished()

    def _flush(self) -> None:
        """Send what the socket takes; then wait for what is next."""
        try:
            while self.out:
                sent = self.sock.send(self.out)
                del self.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._over()
            return
        self._watch()

    def _watch(self) -> None:
        if self.out:
            self.reactor.add_writer(self.fd, self._flush)
            self.reactor.remove_reader(self.fd)
        elif self.dialogue.done:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._over()
            return
        else:
            self.reactor.remove_writer(self.fd)
            self.reactor.add_reader(self.fd, self._read)
        self.watching = True

    def _read(self) -> None:
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._over()
            return
        lines = self.dialogue.commands
        self.out += self.dialogue.feed(data)
        if self.dialogue.commands != lines:
            self._arm()                      # a complete line: more time
        self._flush()
