"""The lookup service of the connections: DNS and ident, with what they
share across connections.

A connection's lookup step asks this service (through the
:class:`LookupService` protocol), never the DNS and ident drivers
directly, so the step can be tested with a fake service and the state
shared by every connection lives in one place:

* the resolver configuration (:class:`~ucspi.dns.conf.DnsConfig`),
  loaded on first use and re-read every ten minutes or after SIGHUP;
* the PTR answers for the server's own addresses, reused for a minute:
  they are few, and asking DNS for them on every connection is a third
  of the lookup work of ``-h -r`` (forgotten on SIGHUP).

Each lookup takes an ``abort`` callback besides ``done``: it is called
instead of ``done`` when the lookup could not be made at all because
no descriptor could be had before its deadline, so that the connection
is dropped rather than decided as if there were no answer.

The DNS and ident modules are imported by :meth:`Lookups.preload`, at
start-up and only for the lookups the options ask for (a server with
``-HRl`` never loads them): after the privilege drop the package, or
the interpreter's own library, may no longer be readable.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

from .. import address, timeouts
from ..reactor import Cancellable, Reactor

if TYPE_CHECKING:
    from ..dns.conf import DnsConfig
    from ..rbl.lists import Settings
    from ..rbl.lookup import Done as ListsDone

DNS_CONFIG_AGE = timeouts.DNS_CONFIG_AGE
LOCAL_NAME_AGE = timeouts.LOCAL_NAME_AGE

NameDone = Callable[[Optional[str], Optional[BaseException]], None]
AddressesDone = Callable[[List[ipaddress.IPv6Address], Optional[BaseException]], None]
HostDone = Callable[[Optional[str], Optional[str]], None]
InfoDone = Callable[[Optional[bytes]], None]
Abort = Callable[[OSError], None]
IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: the descriptors each kind of lookup holds at once: a PTR query; the
#: client's PTR, or with -p its AAAA and A queries after it; an ident
#: connection; the AAAA and A queries of a host name (``-m`` rules)
DESCRIPTORS = {"name": 1, "host": 1, "paranoid": 2, "info": 1, "addresses": 2}


class LookupService(Protocol):
    """What a connection's lookups step asks (see :class:`Lookups`)."""

    def known_local_name(self, ip6: str) -> Optional[Tuple[Optional[bytes]]]: ...

    def remember_local_name(self, ip6: str, name: Optional[bytes]) -> None: ...

    def name(self, ip6: str, v4: bool, done: NameDone, abort: Abort) -> Cancellable: ...

    def host(self, ip6: str, v4: bool, paranoid: bool, done: HostDone,
             abort: Abort) -> Cancellable: ...

    def info(self, local: str, remote: str, remote_port: int, local_port: int,
             scope: int, done: InfoDone, abort: Abort) -> Cancellable: ...

    def lists(self, ip: str, settings: "Settings", done: "ListsDone") -> Cancellable: ...


def _target(text6: str, v4: bool) -> IP:
    """The address to look up, parsed by ``inet_pton`` (much cheaper
    than ``ipaddress``'s own parser); ``text6`` is the IPv6 form."""
    if v4:
        return ipaddress.IPv4Address(socket.inet_aton(address.strip_mapped(text6)))
    return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text6))


class Lookups:
    """DNS and ident lookups on the server's reactor."""

    def __init__(self, reactor: Reactor, ipv4_only: bool, ident_timeout: float) -> None:
        self.reactor = reactor
        self.ipv4_only = ipv4_only
        self.ident_timeout = ident_timeout
        self._dns: Optional["DnsConfig"] = None
        self._dns_loaded = 0.0
        # local address (IPv6 form) -> (until, name)
        self._local_names: Dict[str, Tuple[float, Optional[bytes]]] = {}
        # the drivers of every connection, kept once imported: an import
        # statement costs about 2 µs even when the module is loaded
        self._lookup_ptr: Optional[Callable[..., Cancellable]] = None
        self._lookup_host: Optional[Callable[..., Cancellable]] = None
        self._ident: Optional[Callable[..., Cancellable]] = None

    def preload(self, dns: bool, ident: bool) -> None:
        """Import the drivers the server will use, and read the resolver
        settings, before privileges are dropped."""
        if dns:
            from ..dns import conf, lookup, msg, transmit  # noqa: F401
            self.dns_config()
        if ident:
            from ..ident import lookup as ident_lookup, msg as ident_msg  # noqa: F401

    def dns_config(self) -> "DnsConfig":
        """The resolver settings, re-read every ten minutes."""
        now = self.reactor.time()
        if self._dns is None or now - self._dns_loaded > DNS_CONFIG_AGE:
            from ..dns.conf import DnsConfig
            self._dns = DnsConfig.load(os.environ, self.ipv4_only)
            self._dns_loaded = now
        return self._dns

    def reload(self) -> None:
        """SIGHUP: read the resolver settings again, forget local names."""
        self._dns = None
        self._local_names.clear()

    # -- the server's own addresses --------------------------------------
    def known_local_name(self, ip6: str) -> Optional[Tuple[Optional[bytes]]]:
        """``(name,)`` if the PTR answer for ``ip6`` is fresh, else None."""
        known = self._local_names.get(ip6)
        if known is not None and known[0] > self.reactor.time():
            return (known[1],)
        return None

    def remember_local_name(self, ip6: str, name: Optional[bytes]) -> None:
        """Keep a local address's PTR answer for ``LOCAL_NAME_AGE``."""
        if len(self._local_names) > 64:
            self._local_names.clear()
        self._local_names[ip6] = (self.reactor.time() + LOCAL_NAME_AGE, name)

    # -- lookups --------------------------------------------------------
    def name(self, ip6: str, v4: bool, done: NameDone, abort: Abort) -> Cancellable:
        """PTR of an address (``TCPLOCALHOST``); see
        :func:`ucspi.dns.lookup.lookup_ptr`.  Returns a cancellable handle."""
        if self._lookup_ptr is None:
            from ..dns.lookup import lookup_ptr
            self._lookup_ptr = lookup_ptr
        return self._lookup_ptr(self.reactor, self.dns_config(), _target(ip6, v4), done, abort)

    def host(self, ip6: str, v4: bool, paranoid: bool, done: HostDone,
             abort: Abort) -> Cancellable:
        """PTR of the client and the ``-p`` check; see
        :func:`ucspi.dns.lookup.lookup_host`."""
        if self._lookup_host is None:
            from ..dns.lookup import lookup_host
            self._lookup_host = lookup_host
        return self._lookup_host(self.reactor, self.dns_config(), _target(ip6, v4), paranoid,
                                 done, abort)

    def addresses(self, name: str, done: AddressesDone, abort: Abort) -> Cancellable:
        """The addresses of a host name of the ``-m`` rules (AAAA and A,
        :func:`ucspi.dns.lookup.lookup_addresses`), strictly: ``done``
        gets ``(addresses, None)`` (``[]`` for a name that does not
        exist or has none), or ``(what was found, error)`` when either
        query failed, so that a temporary failure is never taken for
        "no such address".  Returns a cancellable handle."""
        from ..dns.lookup import lookup_addresses
        return lookup_addresses(self.reactor, self.dns_config(), name, done, abort,
                                strict=True)

    def info(self, local: str, remote: str, remote_port: int, local_port: int,
             scope: int, done: InfoDone, abort: Abort) -> Cancellable:
        """The ident answer for a connection (``TCPREMOTEINFO``); see
        :func:`ucspi.ident.lookup.lookup`."""
        if self._ident is None:
            from ..ident.lookup import lookup
            self._ident = lookup
        return self._ident(self.reactor, local, remote, remote_port, local_port,
                           self.ident_timeout, done, scope, abort=abort)

    def lists(self, ip: str, settings: "Settings", done: "ListsDone") -> Cancellable:
        """The DNS lists of ``settings`` about ``ip``, all at once within
        ``DNSBL_TIMEOUT``; see :class:`ucspi.rbl.lookup.ListLookups`."""
        from ..rbl.lookup import ListLookups
        return ListLookups(self.reactor, self.dns_config(), ip, settings.lists, settings.allow,
                           settings.timeout, done)
