"""DNS stub resolver drivers: PTR, AAAA and A over UDP and TCP.

The transport half of tcpserver's djbdns-style resolver (subsystems spec
section 4, DECISIONS D50); the messages are built and checked by
:mod:`ucspi.dnsmsg` and the configuration comes from
:mod:`ucspi.dnsconf`.

Two faces:

* non-blocking, for the server's event loop: :func:`lookup_ptr`,
  :func:`lookup_addresses` and :func:`lookup_host` start a lookup on a
  :class:`~ucspi.reactor.Reactor` and call ``done`` exactly once, from a
  reactor callback (never before they return), unless the returned
  handle's ``cancel()`` was called first; ``cancel()`` closes the sockets
  and timers.  Many lookups run at once; each owns its sockets.
* blocking, for tools, start-up and forked children: :func:`ptr`,
  :func:`addresses` and :func:`qualify` run a private reactor.

One question (:class:`Transmit`) is asked as djbdns does: UDP rounds
with per-attempt deadlines of 3, 11 and 45 s, every server in order in
each round, each attempt on a new socket bound to a random port with a
random ID (both from :mod:`secrets`).  A datagram that is not an answer
to our question is ignored; TC switches to TCP (each server once, 10 s
to connect and send, 10 s to read); a server failure or a refused
connection moves on at once, except in the 11 s round where the attempt
waits for its deadline (djbdns's quirk, kept).  The schedule lives in
:class:`~ucspi.dnsconf.DnsConfig` so tests can shrink it.

Deviation, invisible in results: the AAAA and A queries of an address
lookup run concurrently rather than one after the other.
"""

from __future__ import annotations

import errno
import secrets
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Callable, List, Optional, Protocol, Tuple, TypeVar, Union

from .dnsconf import DnsConfig, Server, apply_rules, candidates, literal
from .dnsmsg import (ANSWER, IGNORE, SERVFAIL, TRUNCATED, TYPE_A, TYPE_AAAA, TYPE_PTR,
                     UDP_MAX, BadName, DnsError, FormatError, Question, build_query,
                     classify, encode_name, parse_addresses, parse_ptr, render_name,
                     reverse_name)
from .reactor import Reactor, Timer

__all__ = ["DnsConfig", "DnsError", "Cancellable", "Transmit", "lookup_ptr",
           "lookup_addresses", "lookup_host", "ptr", "addresses", "qualify"]

IP = Union[IPv4Address, IPv6Address]
PacketDone = Callable[[Optional[bytes], Optional[DnsError]], None]
PtrDone = Callable[[Optional[str], Optional[BaseException]], None]
AddressesDone = Callable[[List[IPv6Address], Optional[BaseException]], None]
HostDone = Callable[[Optional[str], Optional[str]], None]

_RANDOM = secrets.SystemRandom()


class Cancellable(Protocol):
    """What the non-blocking lookups return."""

    def cancel(self) -> None: ...


def _error(exc: OSError) -> DnsError:
    num = exc.errno if exc.errno is not None else errno.EIO
    return DnsError(exc.strerror or "socket error", num)


def _open(ip: str, kind: int) -> socket.socket:
    """A non-blocking socket bound to a random port in 1025..65534 (ten
    tries, then one chosen by the kernel), as djbdns does."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        for _ in range(10):
            try:
                sock.bind((host, 1025 + secrets.randbelow(64510)))
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
    """

    def __init__(self, reactor: Reactor, conf: DnsConfig, question: Question,
                 done: PacketDone) -> None:
        self.reactor = reactor
        self.conf = conf
        self.question = question
        self.done: Optional[PacketDone] = done
        self.sock: Optional[socket.socket] = None
        self.timer: Optional[Timer] = None
        self.round = 0
        self.server = 0
        self.qid = 0
        self.out = b""
        self.inbuf = bytearray()
        self.error = DnsError("timed out", errno.ETIMEDOUT)

    def start(self) -> "Transmit":
        """Begin on the next reactor turn; returns self (the handle)."""
        self.timer = self.reactor.call_later(0, self._begin)
        return self

    def cancel(self) -> None:
        """Stop: close the socket and the timer; ``done`` is never called."""
        self.done = None
        self._close()

    # -- common -----------------------------------------------------------
    def _begin(self) -> None:
        self.timer = None
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
        done, self.done = self.done, None
        self._close()
        if done is not None:
            done(packet, error)

    def _new_query(self) -> bytes:
        self.qid = secrets.randbits(16)
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
        self._finish(None, self.error)

    def _udp_next(self) -> None:
        self._close()
        self.server += 1
        self._udp()

    def _udp_send(self, server: Server) -> bool:
        try:
            sock = _open(server[0], socket.SOCK_DGRAM)
        except OSError as exc:
            self.error = _error(exc)
            return False
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
        self._finish(None, self.error)

    def _tcp_next(self, error: DnsError) -> None:
        self.error = error
        self._close()
        self.server += 1
        self._tcp()

    def _tcp_connect(self, server: Server) -> bool:
        try:
            sock = _open(server[0], socket.SOCK_STREAM)
        except OSError as exc:
            self.error = _error(exc)
            return False
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


# -- lookups ---------------------------------------------------------------
def _fail_soon(reactor: Reactor, report: Callable[[], None]) -> Cancellable:
    """Report a failure found before asking, on the next reactor turn."""
    return reactor.call_later(0, report)


def lookup_ptr(reactor: Reactor, conf: DnsConfig, ip: IP, done: PtrDone) -> Cancellable:
    """Look up the host name of an address (subsystems spec 4.2).

    Args:
        reactor: the loop that runs the lookup.
        conf: servers and timing.
        ip: IPv4, IPv4-mapped IPv6 (both asked in ``in-addr.arpa``) or
            IPv6 (``ip6.arpa``).
        done: called once with ``(name, None)``, ``(None, None)`` when
            there is no name (NXDOMAIN or no PTR record), or ``(None,
            error)`` (a :class:`DnsError`; a malformed answer is EPROTO).
            The name is the first PTR record's target, rendered as
            :func:`ucspi.dnsmsg.render_name` does.

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    def got(packet: Optional[bytes], error: Optional[DnsError]) -> None:
        if packet is None:
            done(None, error)
            return
        try:
            name = parse_ptr(packet)
        except FormatError as exc:
            done(None, exc)
            return
        done(None if name is None else render_name(name), None)

    return Transmit(reactor, conf, Question(reverse_name(ip), TYPE_PTR), got).start()


class _Forward:
    """AAAA and A for one name, asked concurrently."""

    def __init__(self, reactor: Reactor, conf: DnsConfig, qname: bytes,
                 done: AddressesDone) -> None:
        self.done = done
        self.found: List[List[bytes]] = [[], []]
        self.errors: List[Optional[DnsError]] = [None, None]
        self.pending = 2
        self.transmits = [Transmit(reactor, conf, Question(qname, qtype), self._got(i)).start()
                          for i, qtype in enumerate((TYPE_AAAA, TYPE_A))]

    def _got(self, index: int) -> PacketDone:
        def got(packet: Optional[bytes], error: Optional[DnsError]) -> None:
            if packet is not None:
                self.found[index] = parse_addresses(packet)
            self.errors[index] = error
            self.pending -= 1
            if not self.pending:
                self._report()
        return got

    def _report(self) -> None:
        found = [IPv6Address(b) for b in self.found[0] + self.found[1]]
        _RANDOM.shuffle(found)
        failed = self.errors[0] is not None and self.errors[1] is not None
        self.done(found, self.errors[0] if failed else None)

    def cancel(self) -> None:
        for transmit in self.transmits:
            transmit.cancel()


def lookup_addresses(reactor: Reactor, conf: DnsConfig, name: str,
                     done: AddressesDone) -> Cancellable:
    """Look up the addresses of a name: AAAA and A (spec 4.5).

    Every AAAA (16 bytes) and A (4 bytes) record of class IN in the
    answers counts, whatever its owner name; A data is returned as
    IPv4-mapped.  No qualification, no literals: see :func:`qualify`.

    Args:
        name: the name, as text with djbdns escapes.
        done: called once with ``(addresses, None)`` (AAAA results, then
            A results, shuffled with a cryptographic generator; ``[]`` for
            none) or, when both queries failed or the name cannot be
            encoded, ``(addresses so far, error)``.

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    try:
        qname = encode_name(name)
    except BadName as exc:
        error = exc
        return _fail_soon(reactor, lambda: done([], error))
    return _Forward(reactor, conf, qname, done)


class _Chain:
    """A handle for a lookup made of successive steps."""

    def __init__(self) -> None:
        self.current: Optional[Cancellable] = None

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()


def _packed16(ip: IP) -> bytes:
    if isinstance(ip, IPv4Address):
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


def lookup_host(reactor: Reactor, conf: DnsConfig, ip: IP, paranoid: bool,
                done: HostDone) -> Cancellable:
    """PTR lookup plus the optional paranoid check (spec 4.2-4.3).

    Args:
        ip: the client's address.
        paranoid: forward-resolve the name found and require ``ip`` among
            the addresses (``-p``).
        done: called once with ``(TCPREMOTEHOST, TCPPARANOID)``: ``(name,
            None)`` if a name was found (and matched); ``(None, name)``
            if the paranoid check failed (mismatch or lookup failure);
            ``(None, None)`` if there is no name or the PTR lookup failed.

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    chain = _Chain()
    want = _packed16(ip)

    def got_name(name: Optional[str], error: Optional[BaseException]) -> None:
        if name is None or not paranoid:
            done(name, None)
            return

        def got_addresses(found: List[IPv6Address], error: Optional[BaseException]) -> None:
            if any(address.packed == want for address in found):
                done(name, None)
            else:
                done(None, name)

        chain.current = lookup_addresses(reactor, conf, name, got_addresses)

    chain.current = lookup_ptr(reactor, conf, ip, got_name)
    return chain


# -- blocking --------------------------------------------------------------
T = TypeVar("T")


def _block(start: Callable[[Reactor, Callable[[T, Optional[BaseException]], None]],
                           Cancellable]) -> T:
    """Run one non-blocking lookup on a private reactor until it is done."""
    reactor = Reactor()
    box: List[Tuple[T, Optional[BaseException]]] = []
    handle = start(reactor, lambda value, error: box.append((value, error)))
    try:
        while not box:
            if not reactor.pending():
                raise RuntimeError("DNS lookup stalled")
            reactor.run_once()
    finally:
        if not box:
            handle.cancel()
        reactor.close()
    value, error = box[0]
    if error is not None:
        raise error
    return value


def ptr(conf: DnsConfig, ip: IP) -> Optional[str]:
    """Blocking :func:`lookup_ptr`.

    Returns:
        The rendered name, or None when there is none.

    Raises:
        DnsError: the lookup failed.
    """
    def start(reactor: Reactor, done: PtrDone) -> Cancellable:
        return lookup_ptr(reactor, conf, ip, done)
    return _block(start)


def addresses(conf: DnsConfig, name: str) -> List[IPv6Address]:
    """Blocking :func:`lookup_addresses`.

    Raises:
        DnsError: both queries failed, or the name cannot be encoded.
    """
    def start(reactor: Reactor, done: AddressesDone) -> Cancellable:
        return lookup_addresses(reactor, conf, name, done)
    return _block(start)


def qualify(conf: DnsConfig, host: str, strict: bool = False) -> List[IPv6Address]:
    """Qualify and resolve tcpserver's host argument (spec 4.4).

    ``""``, ``0`` and ``::`` give ``[::]`` without DNS.  Otherwise the
    rewriting rules are applied, a ``+`` in the result gives candidates
    tried in order until one has an address, and each candidate is an
    address literal (:func:`ucspi.dnsconf.literal`) or a name asked for
    AAAA and A.

    Args:
        strict: False (tcpserver's behaviour, spec 4.10-5): a candidate
            whose queries both failed counts as having no address.  True:
            such a failure raises.

    Returns:
        The addresses of the first candidate that has any (shuffled for a
        name), or ``[]``: the caller prints ``no IP address for HOST``.

    Raises:
        DnsError: the rules could not be read, a candidate merely starts
            with a literal (``1.2.3.4x``; EINVAL), a name cannot be
            encoded (EPROTO), or (strict only) the lookup failed.  The
            caller prints ``temporarily unable to figure out IP address
            for HOST: <errtext>``.
    """
    if host in ("", "0", "::"):
        return [IPv6Address("::")]
    if conf.rules_error is not None:
        raise conf.rules_error
    for candidate in candidates(apply_rules(host, conf.rules)):
        found = literal(candidate)
        if found is None:
            try:
                found = addresses(conf, candidate)
            except BadName:
                raise
            except DnsError:
                if strict:
                    raise
                found = []
        if found:
            return found
    return []
