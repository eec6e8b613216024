"""DNS stub resolver drivers: PTR, AAAA and A lookups.

The lookup half of tcpserver's djbdns-style resolver
(design: dns-resolver); the messages are built and checked by
:mod:`ucspi.dns.msg`, the configuration comes from :mod:`ucspi.dns.conf`,
and each question is asked over UDP and TCP by
:class:`ucspi.dns.transmit.Transmit` (which documents the retry schedule).

Two faces:

* non-blocking, for the server's event loop: :func:`lookup_ptr`,
  :func:`lookup_addresses` and :func:`lookup_host` start a lookup on a
  :class:`~ucspi.reactor.Reactor` and call ``done`` exactly once, from a
  reactor callback (never before they return), unless the returned
  handle's ``cancel()`` was called first; ``cancel()`` closes the sockets
  and timers.  Many lookups run at once; each owns its sockets.
* blocking, for tools, start-up and forked children: :func:`ptr`,
  :func:`addresses` and :func:`qualify` run a private reactor
  (:func:`ucspi.reactor.run_blocking`).

Deviation, invisible in results: the AAAA and A queries of an address
lookup run concurrently rather than one after the other.
"""

from __future__ import annotations

import secrets
from ipaddress import IPv4Address, IPv6Address
from typing import Callable, List, Optional, Tuple, TypeVar, Union

from .conf import DnsConfig, apply_rules, candidates, literal
from .msg import (TYPE_A, TYPE_AAAA, TYPE_PTR, BadName, DnsError, FormatError, Question,
                  encode_name, parse_addresses, parse_ptr, render_name, reverse_name)
from .transmit import Abort, PacketDone, Transmit
from ..address import mapped_packed
from ..reactor import Cancellable, Reactor, run_blocking

__all__ = ["lookup_ptr", "lookup_addresses", "lookup_host", "lookup_records", "ptr",
           "addresses", "qualify"]

IP = Union[IPv4Address, IPv6Address]
PtrDone = Callable[[Optional[str], Optional[BaseException]], None]
AddressesDone = Callable[[List[IPv6Address], Optional[BaseException]], None]
HostDone = Callable[[Optional[str], Optional[str]], None]

_RANDOM = secrets.SystemRandom()


# -- lookups ---------------------------------------------------------------
def _fail_soon(reactor: Reactor, report: Callable[[], None]) -> Cancellable:
    """Report a failure found before asking, on the next reactor turn."""
    return reactor.call_later(0, report)


def lookup_ptr(reactor: Reactor, conf: DnsConfig, ip: IP, done: PtrDone,
               abort: Optional[Abort] = None) -> Cancellable:
    """Look up the host name of an address (IndiMail's PTR lookup).

    Args:
        reactor: the loop that runs the lookup.
        conf: servers and timing.
        ip: IPv4, IPv4-mapped IPv6 (both asked in ``in-addr.arpa``) or
            IPv6 (``ip6.arpa``).
        done: called once with ``(name, None)``, ``(None, None)`` when
            there is no name (NXDOMAIN or no PTR record), or ``(None,
            error)`` (a :class:`DnsError`; a malformed answer is EPROTO).
            The name is the first PTR record's target, rendered as
            :func:`ucspi.dns.msg.render_name` does.
        abort: if given, called instead of ``done`` when the question
            could not be asked for want of descriptors
            (:class:`~ucspi.dns.transmit.Transmit`).

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

    return Transmit(reactor, conf, Question(reverse_name(ip), TYPE_PTR), got, abort).start()


RecordsDone = Callable[[List[bytes], Optional[BaseException]], None]


def lookup_records(reactor: Reactor, conf: DnsConfig, name: str, qtype: int,
                   parse: Callable[[bytes], List[bytes]], done: RecordsDone,
                   abort: Optional[Abort] = None) -> Cancellable:
    """Look up one type of record of a name (the TXT or A records of a
    DNS list, say), with no qualification.

    Args:
        name: the name, as text.
        qtype: the record type (:data:`ucspi.dns.msg.TYPE_TXT`...).
        parse: the records' data from an answer
            (:func:`ucspi.dns.msg.parse_txt`, :func:`~ucspi.dns.msg.parse_a`).
        done: called once with ``(records, None)`` (``[]`` when the name
            does not exist or has none) or ``([], error)``: a server
            failure, a time-out, a malformed answer (EPROTO), a name that
            cannot be encoded.
        abort: as for :func:`lookup_ptr`.

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    try:
        qname = encode_name(name)
    except BadName as exc:
        error = exc
        return _fail_soon(reactor, lambda: done([], error))

    def got(packet: Optional[bytes], error: Optional[DnsError]) -> None:
        if packet is None:
            done([], error)
            return
        try:
            found = parse(packet)
        except FormatError as exc:
            done([], exc)
            return
        done(found, None)

    return Transmit(reactor, conf, Question(qname, qtype), got, abort).start()


class _Forward:
    """AAAA and A for one name, asked concurrently."""

    def __init__(self, reactor: Reactor, conf: DnsConfig, qname: bytes,
                 done: AddressesDone, abort: Optional[Abort], strict: bool = False) -> None:
        self.done = done
        self.strict = strict
        self.found: List[List[bytes]] = [[], []]
        self.errors: List[Optional[DnsError]] = [None, None]
        self.pending = 2
        self.abort = abort
        self.transmits = [Transmit(reactor, conf, Question(qname, qtype), self._got(i),
                                   None if abort is None else self._abort).start()
                          for i, qtype in enumerate((TYPE_AAAA, TYPE_A))]

    def _abort(self, error: OSError) -> None:
        abort, self.abort = self.abort, None
        self.cancel()
        if abort is not None:
            abort(error)

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
        if self.strict:
            failed = self.errors[0] is not None or self.errors[1] is not None
        self.done(found, (self.errors[0] or self.errors[1]) if failed else None)

    def cancel(self) -> None:
        for transmit in self.transmits:
            transmit.cancel()


def lookup_addresses(reactor: Reactor, conf: DnsConfig, name: str,
                     done: AddressesDone, abort: Optional[Abort] = None,
                     strict: bool = False) -> Cancellable:
    """Look up the addresses of a name: AAAA and A (as IndiMail asks).

    Every AAAA (16 bytes) and A (4 bytes) record of class IN in the
    answers counts, whatever its owner name; A data is returned as
    IPv4-mapped.  No qualification, no literals: see :func:`qualify`.

    Args:
        name: the name, as text with djbdns escapes.
        done: called once with ``(addresses, None)`` (AAAA results, then
            A results, shuffled with a cryptographic generator; ``[]`` for
            none) or, when both queries failed or the name cannot be
            encoded, ``(addresses so far, error)``.
        abort: as for :func:`lookup_ptr` (either query's).
        strict: the failure of either query is an error (with the
            addresses the other one found), for a caller that must not
            take half an answer for the whole one.

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    try:
        qname = encode_name(name)
    except BadName as exc:
        error = exc
        return _fail_soon(reactor, lambda: done([], error))
    return _Forward(reactor, conf, qname, done, abort, strict)


class _Chain:
    """A handle for a lookup made of successive steps."""

    def __init__(self) -> None:
        self.current: Optional[Cancellable] = None

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()


def _packed16(ip: IP) -> bytes:
    return mapped_packed(ip.packed) if isinstance(ip, IPv4Address) else ip.packed


def lookup_host(reactor: Reactor, conf: DnsConfig, ip: IP, paranoid: bool,
                done: HostDone, abort: Optional[Abort] = None) -> Cancellable:
    """PTR lookup plus the optional paranoid check (``-p``, as in IndiMail).

    Args:
        ip: the client's address.
        paranoid: forward-resolve the name found and require ``ip`` among
            the addresses (``-p``).
        done: called once with ``(TCPREMOTEHOST, TCPPARANOID)``: ``(name,
            None)`` if a name was found (and matched); ``(None, name)``
            if the paranoid check failed (mismatch or lookup failure);
            ``(None, None)`` if there is no name or the PTR lookup failed.
        abort: as for :func:`lookup_ptr` (any of the questions).

    Returns:
        A handle whose ``cancel()`` stops the lookup without calling done.
    """
    if not paranoid:        # the usual case: the PTR lookup alone, no chain
        return lookup_ptr(reactor, conf, ip, lambda name, _: done(name, None), abort)
    chain = _Chain()

    def got_name(name: Optional[str], error: Optional[BaseException]) -> None:
        if name is None:
            done(name, None)
            return
        want = _packed16(ip)

        def got_addresses(found: List[IPv6Address], error: Optional[BaseException]) -> None:
            if any(address.packed == want for address in found):
                done(name, None)
            else:
                done(None, name)

        chain.current = lookup_addresses(reactor, conf, name, got_addresses, abort)

    chain.current = lookup_ptr(reactor, conf, ip, got_name, abort)
    return chain


# -- blocking --------------------------------------------------------------
T = TypeVar("T")


def _block(start: Callable[[Reactor, Callable[[T, Optional[BaseException]], None]],
                           Cancellable]) -> T:
    """Run one non-blocking lookup with :func:`ucspi.reactor.run_blocking`;
    return its value or raise its error."""
    def begin(reactor: Reactor,
              report: Callable[[Tuple[T, Optional[BaseException]]], None]) -> Cancellable:
        return start(reactor, lambda value, error: report((value, error)))

    result = run_blocking(begin)
    if result is None:
        raise RuntimeError("DNS lookup stalled")
    value, error = result
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
    """Qualify and resolve tcpserver's host argument (as IndiMail does).

    ``""``, ``0`` and ``::`` give ``[::]`` without DNS.  Otherwise the
    rewriting rules are applied, a ``+`` in the result gives candidates
    tried in order until one has an address, and each candidate is an
    address literal (:func:`ucspi.dns.conf.literal`) or a name asked for
    AAAA and A.

    Args:
        strict: False (IndiMail's behaviour): a candidate
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
