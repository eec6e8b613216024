"""What tcpclient's program learns about its connection (design: tcpclient).

The variables are tcpserver's for the same address family
(:func:`ucspi.environ.connection_changes`): an IPv4 connection sets
``PROTO=TCP`` and the ``TCP*`` variables only, as djb's tcpclient does;
an IPv6 one, or an IPv4 one under ``-6`` (described as
``::ffff:a.b.c.d``), sets ``PROTO=TCP6`` and the ``TCP6*`` variables as
well, and ``TCP6INTERFACE`` for a link-local address.

The names come as djb's tcpclient finds them: a PTR lookup that
succeeds sets the variable, to the empty string when the address has
no name; a lookup that fails leaves it unset; ``-l`` gives the local
name without a lookup, ``-H`` leaves the server's unset.  The ident
answer (``-r``, the default) is ``TCPREMOTEINFO``, unset when there is
none.  The two PTR lookups and the ident exchange run at the same time,
on one reactor (the C code makes them one after the other).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Callable, List, Optional, Union

from ..address import MAPPED_PREFIX, normalise6
from ..environ import Change, Endpoints, connection_changes
from ..errors import Fatal, errtext

if False:  # for mypy only: imported when a lookup needs them
    from ..dns.conf import DnsConfig  # noqa: F401
    from ..reactor import Reactor  # noqa: F401

IP = Union[IPv4Address, IPv6Address]


def _interface(scope: int) -> bytes:
    """``TCP6INTERFACE``: the interface's name (``[unknown]`` as in
    IndiMail when it has none)."""
    try:
        return socket.if_indextoname(scope).encode()
    except OSError:
        return b"[unknown]"


def endpoints(sock: socket.socket, force_ipv6: bool) -> Endpoints:
    """The addresses and ports of a connected socket.

    Raises:
        Fatal: ``unable to get local address: <error>`` (or remote), as
            in C.
    """
    try:
        local = sock.getsockname()
    except OSError as exc:
        raise Fatal(f"unable to get local address: {errtext(exc)}") from None
    try:
        remote = sock.getpeername()
    except OSError as exc:
        raise Fatal(f"unable to get remote address: {errtext(exc)}") from None
    if sock.family == socket.AF_INET:
        local_ip6, remote_ip6 = MAPPED_PREFIX + local[0], MAPPED_PREFIX + remote[0]
        if force_ipv6:
            return Endpoints(True, True, local_ip6, local_ip6, local[1],
                             remote_ip6, remote_ip6, remote[1])
        return Endpoints(False, False, local[0], local_ip6, local[1],
                         remote[0], remote_ip6, remote[1])
    local_text, remote_text = normalise6(local[0]), normalise6(remote[0])
    ep = Endpoints(True, True, local_text, local_text, local[1],
                   remote_text, remote_text, remote[1])
    if local[3]:
        ep.interface = _interface(local[3])
    return ep


def _ip(text: str) -> IP:
    """The address of a variable's text (mapped texts as IPv4)."""
    if text.startswith(MAPPED_PREFIX) and "." in text:
        return IPv4Address(text[len(MAPPED_PREFIX):])
    return IPv6Address(text) if ":" in text else IPv4Address(text)


class Lookups:
    """The names and the ident answer of one connection, asked at once.

    Args:
        ep: the connection; ``local_host``, ``remote_host`` and
            ``remote_info`` are filled in by :meth:`run`.
        scope: the connection's IPv6 scope id (0: none), for ident.
        conf: gives the resolver's configuration (called only if a name
            is looked up).
    """

    def __init__(self, ep: Endpoints, scope: int, conf: Callable[[], "DnsConfig"]) -> None:
        self.ep = ep
        self.scope = scope
        self.conf = conf
        self._reactor: Optional["Reactor"] = None
        self.pending = 0

    @property
    def reactor(self) -> "Reactor":
        """The reactor of the lookups, made (and ``selectors`` imported)
        only if there is one to make."""
        if self._reactor is None:
            from ..reactor import Reactor
            self._reactor = Reactor()
        return self._reactor

    def _name(self, text: str, store: Callable[[Optional[bytes]], None]) -> None:
        from ..dns.lookup import lookup_ptr

        def done(name: Optional[str], error: Optional[BaseException]) -> None:
            self.pending -= 1
            if error is None:
                store(b"" if name is None else name.encode("ascii", "replace"))

        self.pending += 1
        lookup_ptr(self.reactor, self.conf(), _ip(text), done)

    def _set_local(self, name: Optional[bytes]) -> None:
        self.ep.local_host = name

    def _set_remote(self, name: Optional[bytes]) -> None:
        self.ep.remote_host = name

    def _ident(self, timeout: int) -> None:
        from ..ident.lookup import lookup

        def done(value: Optional[bytes]) -> None:
            self.pending -= 1
            self.ep.remote_info = value

        ep = self.ep
        self.pending += 1
        try:
            lookup(self.reactor, ep.local_ip, ep.remote_ip, ep.remote_port, ep.local_port,
                   timeout, done, self.scope)
        except ValueError:
            self.pending -= 1

    def run(self, localname: Optional[str], remote_host: bool,
            ident_timeout: Optional[int]) -> None:
        """Look up what is asked for, at once, and wait for all of it.

        Args:
            localname: ``-l`` (no lookup of the local name), else None.
            remote_host: ``-h``: look up the server's name.
            ident_timeout: ``-t`` when ``-r``, else None (no ident).
        """
        ep = self.ep
        if localname is not None:
            ep.local_host = localname.encode("utf-8", "surrogateescape")
        else:
            self._name(ep.local_ip, self._set_local)
        if remote_host:
            self._name(ep.remote_ip, self._set_remote)
        if ident_timeout is not None:
            self._ident(ident_timeout)
        if self._reactor is None:
            return
        try:
            while self.pending and self._reactor.pending():
                self._reactor.run_once()
        finally:
            self._reactor.close()


def changes(ep: Endpoints) -> List[Change]:
    """The program's variables, tcpserver's for the address family: an
    IPv4 connection touches no ``TCP6*`` variable (not even
    ``TCP6REMOTEINFO``, which tcpserver always sets or removes)."""
    found = connection_changes(ep)
    if not ep.v6sock:
        found = [(name, value) for name, value in found if not name.startswith(b"TCP6")]
    return found
