"""One DNS question over UDP and TCP: the transmission half of the resolver.

:class:`Transmit` asks one :class:`~ucspi.dns.msg.Question` on a
:class:`~ucspi.reactor.Reactor` and reports the answer packet (or the
last failure) once; the lookups of :mod:`ucspi.dns.lookup` are built on it.
It only moves bytes: the query is built and each response judged by
:mod:`ucspi.dns.msg`, and the servers and timing come from
:class:`~ucspi.dns.conf.DnsConfig`.

The question is asked as djbdns does: UDP rounds with per-attempt
deadlines of 3, 11 and 45 s, every server in order in each round, each
attempt on a new socket bound to a random port with a random ID (both
from the system's CSPRNG, as :mod:`secrets` reads it, a few hundred
bytes at a time: :class:`_Pool`).  A datagram that is not an answer to our question
is ignored; TC switches to TCP (each server once, 10 s to connect and
send, 10 s to read); a server failure or a refused connection moves on
at once, except in the 11 s round where the attempt waits for its
deadline (djbdns's quirk, kept).  The schedule lives in
:class:`~ucspi.dns.conf.DnsConfig` so tests can shrink it.

A socket that cannot be had for want of descriptors (EMFILE, ENFILE,
ENOBUFS, ENOMEM) is not a failure of the server asked: the attempt
waits and tries again (:class:`~ucspi.reactor.Backoff`) until its own
deadline.  If it still has no socket then, the question is given up: a
caller that passed ``abort`` hears of it there (the tcpserver parent
drops the connection rather than take it for "no answer"), other
callers get the error through ``done``.
"""

from __future__ import annotations

import errno
import os
import _socket
import socket
from typing import Callable, Optional, Tuple

from .conf import DnsConfig, Server
from .msg import (ANSWER, IGNORE, SERVFAIL, TRUNCATED, UDP_MAX, DnsError, Question,
                  build_query, classify)
from ..address import wildcard
from ..errors import out_of_resources
from ..reactor import Backoff, Reactor, Timer, nonblocking_socket

__all__ = ["Abort", "PacketDone", "Transmit"]

PacketDone = Callable[[Optional[bytes], Optional[DnsError]], None]
#: told why a lookup could not be made at all (no descriptor to spare)
Abort = Callable[[OSError], None]

class _Pool:
    """Unpredictable numbers from the system's CSPRNG, read a few hundred
    bytes at a time (one system call for many queries, each of which
    wants a random ID and a random port; design: dns-resolver)."""

    SIZE = 512

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0

    def below(self, bound: int) -> int:
        """A uniform integer in ``0 .. bound - 1`` (``bound`` <= 65536),
        by rejection."""
        limit = 65536 - 65536 % bound
        while True:
            if self.pos + 2 > len(self.data):
                self.data, self.pos = os.urandom(self.SIZE), 0
            value = self.data[self.pos] << 8 | self.data[self.pos + 1]
            self.pos += 2
            if value < limit:
                return value % bound


    def forget(self) -> None:
        """In a forked child: never the parent's numbers."""
        self.data, self.pos = b"", 0


_POOL = _Pool()
random_below = _POOL.below
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


def _error(exc: OSError) -> DnsError:
    num = exc.errno if exc.errno is not None else errno.EIO
    return DnsError(exc.strerror or "socket error", num)


def _open(ip: str, kind: int) -> _socket.socket:
    """A non-blocking socket bound to a random port in 1025..65534 (ten
    tries, then one chosen by the kernel), as djbdns does."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = nonblocking_socket(family, kind)
    try:
        host = wildcard(family == socket.AF_INET)
        for _ in range(10):
            try:
                sock.bind((host, 1025 + random_below(64510)))
                return sock
            except OSError:
                continue
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _address(server: Server, port: int) -> Tuple[object, ...]:
    ip, scope = server
    return (ip, port, 0, scope) if ":" in ip else (ip, port)


class Transmit:
    """One question asked until it is answered or every try has failed.

    ``done(packet, None)`` receives a response that :func:`classify` calls
    an answer (NOERROR or NXDOMAIN); ``done(None, error)`` reports the
    failure of the last try (``ETIMEDOUT`` after a silent server).
    ``abort(error)``, if given, is called instead when no socket could
    be had before the attempt's deadline.
    """

    def __init__(self, reactor: Reactor, conf: DnsConfig, question: Question,
                 done: PacketDone, abort: Optional[Abort] = None) -> None:
        self.reactor = reactor
        self.conf = conf
        self.question = question
        self.done: Optional[PacketDone] = done
        self.abort = abort
        self.backoff = Backoff()
        self.starved_until: Optional[float] = None
        self.sock: Optional[_socket.socket] = None
        self.timer: Optional[Timer] = None
        self.round = 0
        self.server = 0
        self.qid = 0
        self.out = b""
        self.inbuf = bytearray()
        # the last try's failure; made when there is one (an exception
        # object per question is a microsecond most questions never use)
        self.error: Optional[DnsError] = None
        self.starting = False

    def start(self) -> "Transmit":
        """Ask now (no turn of the loop in between); returns self (the
        handle).  ``done`` is never called before this returns: an
        outcome known at once is reported on the next turn."""
        self.starting = True
        try:
            self._begin()
        finally:
            self.starting = False
        return self

    def cancel(self) -> None:
        """Stop: close the socket and the timer; ``done`` is never called."""
        self.done = self.abort = None
        self._close()

    # -- common -----------------------------------------------------------
    def _begin(self) -> None:
        if self.conf.servers_error is not None:
            self._finish(None, self.conf.servers_error)
        else:
            self._udp()

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.reactor.forget(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _finish(self, packet: Optional[bytes], error: Optional[DnsError]) -> None:
        if self.starting:               # not before start() has returned
            self._close()
            self.timer = self.reactor.call_later(0, lambda: self._finish(packet, error))
            return
        done, self.done = self.done, None
        self.abort = None
        self._close()
        if done is not None:
            done(packet, error)

    def _open(self, ip: str, kind: int, timeout: float,
              again: Callable[[], None]) -> Optional[_socket.socket]:
        """A socket for the current attempt, or None: then either it
        failed (``self.error``; move on), or the attempt waits for a
        descriptor and ``again`` runs later (``self.timer`` is set), or
        the question was given up (``self.done`` is None)."""
        try:
            sock = _open(ip, kind)
        except OSError as exc:
            if out_of_resources(exc):
                self._starved(exc, timeout, again)
            else:
                self.error = _error(exc)
            return None
        self.starved_until = None
        self.backoff.reset()
        return sock

    def _starved(self, exc: OSError, timeout: float, again: Callable[[], None]) -> None:
        if self.starved_until is None:
            self.starved_until = self.reactor.time() + timeout
        self.timer = self.backoff.retry(self.reactor, self.starved_until, again)
        if self.timer is None:
            abort, self.abort = self.abort, None
            if abort is None:
                self._finish(None, _error(exc))
            else:
                self.done = None
                self._close()
                abort(exc)

    def _waiting(self) -> bool:
        """After :meth:`_open` gave None: True if this attempt is not
        over (it waits for a descriptor, or the question was given up)."""
        return self.timer is not None or self.done is None

    def _last_error(self) -> DnsError:
        """Why the question failed: the last try's error, or a time-out
        when no try could say more."""
        if self.error is None:
            return DnsError("timed out", errno.ETIMEDOUT)
        return self.error

    def _new_query(self) -> bytes:
        self.qid = random_below(65536)
        return build_query(self.question, self.qid)

    def _wait(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.reactor.call_later(delay, callback)

    # -- UDP --------------------------------------------------------------
    def _udp(self) -> None:
        """Start the current attempt, or the first one that can start."""
        servers = self.conf.servers
        while self.round < len(self.conf.udp_timeouts):
            while self.server < len(servers):
                if self._udp_send(servers[self.server]):
                    return
                self.server += 1
            self.round += 1
            self.server = 0
        self._finish(None, self._last_error())

    def _udp_next(self) -> None:
        self._close()
        self.server += 1
        self._udp()

    def _udp_send(self, server: Server) -> bool:
        sock = self._open(server[0], socket.SOCK_DGRAM,
                          self.conf.udp_timeouts[self.round], self._udp_again)
        if sock is None:
            return self._waiting()
        try:
            sock.connect(_address(server, self.conf.port))
            sock.send(self._new_query())
        except OSError as exc:
            sock.close()
            self.error = _error(exc)
            return False
        self.sock = sock
        self.reactor.add_reader(sock.fileno(), self._udp_read)
        self._wait(self.conf.udp_timeouts[self.round], self._udp_timeout)
        return True

    def _udp_again(self) -> None:
        self.timer = None
        self._udp()

    def _patient(self) -> bool:
        return self.round == self.conf.patient_round

    def _udp_timeout(self) -> None:
        self.timer = None
        self.error = DnsError("timed out", errno.ETIMEDOUT)
        self._udp_next()

    def _udp_read(self) -> None:
        assert self.sock is not None
        try:
            packet = self.sock.recv(UDP_MAX + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = _error(exc)
            if not (exc.errno == errno.ECONNREFUSED and self._patient()):
                self._udp_next()
            return
        if len(packet) > UDP_MAX:
            return
        verdict = classify(packet, self.qid, self.question)
        if verdict == ANSWER:
            self._finish(packet, None)
        elif verdict == TRUNCATED:
            self._close()
            self.server = 0
            self._tcp()
        elif verdict == SERVFAIL:
            self.error = DnsError("server failure", errno.EAGAIN)
            if not self._patient():
                self._udp_next()

    # -- TCP --------------------------------------------------------------
    def _tcp(self) -> None:
        servers = self.conf.servers
        while self.server < len(servers):
            if self._tcp_connect(servers[self.server]):
                return
            self.server += 1
        self._finish(None, self._last_error())

    def _tcp_next(self, error: DnsError) -> None:
        self.error = error
        self._close()
        self.server += 1
        self._tcp()

    def _tcp_connect(self, server: Server) -> bool:
        sock = self._open(server[0], socket.SOCK_STREAM, self.conf.tcp_timeout,
                          self._tcp_again)
        if sock is None:
            return self._waiting()
        query = self._new_query()
        self.out = len(query).to_bytes(2, "big") + query
        self.inbuf = bytearray()
        err = sock.connect_ex(_address(server, self.conf.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.error = DnsError("connect failed", err)
            return False
        self.sock = sock
        self.reactor.add_writer(sock.fileno(), self._tcp_write)
        self._wait(self.conf.tcp_timeout, self._tcp_timeout)
        return True

    def _tcp_again(self) -> None:
        self.timer = None
        self._tcp()

    def _tcp_timeout(self) -> None:
        self.timer = None
        self._tcp_next(DnsError("timed out", errno.ETIMEDOUT))

    def _tcp_write(self) -> None:
        assert self.sock is not None
        try:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, "connect failed")
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._tcp_next(_error(exc))
            return
        self.out = self.out[sent:]
        if not self.out:
            fd = self.sock.fileno()
            self.reactor.remove_writer(fd)
            self.reactor.add_reader(fd, self._tcp_read)
            self._wait(self.conf.tcp_timeout, self._tcp_timeout)

    def _tcp_read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._tcp_next(_error(exc))
            return
        if not data:
            self._tcp_next(DnsError("connection closed early", errno.EPROTO))
            return
        self.inbuf += data
        if len(self.inbuf) < 2:
            return
        need = 2 + int.from_bytes(self.inbuf[:2], "big")
        if len(self.inbuf) < need:
            return
        packet = bytes(self.inbuf[2:need])
        verdict = classify(packet, self.qid, self.question)
        if verdict == ANSWER:
            self._finish(packet, None)
        elif verdict == SERVFAIL:
            self._tcp_next(DnsError("server failure", errno.EAGAIN))
        else:
            assert verdict in (IGNORE, TRUNCATED)
            self._tcp_next(DnsError("irrelevant response", errno.EPROTO))

