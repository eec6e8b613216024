"""One accepted connection, from ``accept`` to the start of its program.

The parent runs many of these at once (DECISIONS D1).  A connection:

1. gets its socket options (``-o``/``-O``, ``-d``/``-D``);
2. writes the banner (``-B``), waiting for the socket if it is slow;
3. learns its local address, then runs the lookups it needs at the same
   time: PTR of the local address (unless ``-l``), PTR of the client
   (unless ``-H``) followed by the forward check of ``-p``, and the
   ident query (unless ``-R``);
4. hands itself back to the server (:meth:`Host.ready`), which applies
   the rules and starts the program.

Nothing here blocks: every wait is a reactor callback, and every lookup
has its own deadline inside the DNS and ident drivers.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union
from .. import address as ipfmt
from ..environ import Endpoints

if TYPE_CHECKING:
    from .loop import Server


def render_address(text: str, v6sock: bool, force6: bool) -> Tuple[str, str, bool]:
    """(primary form, IPv6 form, IPv4?) of an address from the socket:
    the primary form is dotted for IPv4 (and IPv4-mapped) addresses
    unless ``-6`` (D18); the IPv6 form shows them as ``::ffff:a.b.c.d``."""
    if v6sock:
        plain, is_mapped = ipfmt.unmap(text)
        six = ipfmt.mapped(plain) if is_mapped else plain
        if is_mapped and not force6:
            return plain, six, True
        return six, six, is_mapped
    six = ipfmt.mapped(text)
    return (six if force6 else text), six, True


class Connection:
    """The state of one connection until its program starts."""

    def __init__(self, server: "Server", sock: socket.socket, peer: Any, v6sock: bool) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        opts = server.opts
        self.v4client: bool
        remote, remote6, self.v4client = render_address(peer[0], v6sock, opts.force_ipv6)
        self.ep = Endpoints(
            proto6=opts.force_ipv6 or not self.v4client, v6sock=v6sock,
            local_ip="", local_ip6="", local_port=0,
            remote_ip=remote, remote_ip6=remote6, remote_port=peer[1],
        )
        self.scope = peer[3] if v6sock and not self.v4client else 0
        self.banner = b""
        self.pending = 0
        self.handles: List[Any] = []
        self.closed = False

    # -- set-up -----------------------------------------------------------
    def start(self) -> None:
        """Socket options and banner, then the lookups."""
        opts = self.server.opts
        self.pending = 1  # held until every step below has been started
        if opts.kill_ip_options and self.v4client:
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
            except OSError:
                pass
        if opts.nodelay:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if opts.banner:
            self.banner = opts.banner
            self.sock.setblocking(False)
            self.pending += 1
            self._write_banner()
            if self.closed:
                return
        if not self._local():
            return
        self._lookups()
        self._done()

    def _write_banner(self) -> None:
        try:
            sent = self.sock.send(self.banner)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.server.drop(self, "unable to print banner", exc)
            return
        self.banner = self.banner[sent:]
        if self.banner:
            self.server.reactor.add_writer(self.fd, self._write_banner)
            return
        self.server.reactor.remove_writer(self.fd)
        self.sock.setblocking(True)
        self._done()

    def _local(self) -> bool:
        try:
            local = self.sock.getsockname()
        except OSError as exc:
            self.server.drop(self, "unable to get local address", exc)
            return False
        ep = self.ep
        ep.local_ip, ep.local_ip6, _ = render_address(local[0], ep.v6sock, self.server.opts.force_ipv6)
        ep.local_port = local[1]
        if ep.v6sock and not self.v4client and self.scope:
            try:
                ep.interface = socket.if_indextoname(self.scope).encode()
            except OSError:
                ep.interface = b"[unknown]"
        return True

    # -- lookups ----------------------------------------------------------
    def _lookups(self) -> None:
        opts = self.server.opts
        if opts.localname is not None:
            self.ep.local_host = self.server.localname
        else:
            known = self.server.local_names.get(self.ep.local_ip6)
            if known is not None and known[0] > self.server.reactor.time():
                self.ep.local_host = known[1]
            else:
                self._lookup_local()
        if opts.remote_host:
            self._lookup_remote(opts.paranoid)
        if opts.remote_info:
            self._ident()

    def _target(self, text6: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        """The address to look up, parsed by ``inet_pton`` (much cheaper
        than ``ipaddress``'s own parser)."""
        if self.v4client:
            return ipaddress.IPv4Address(socket.inet_aton(text6[len(ipfmt.MAPPED_PREFIX):]))
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text6))

    def _lookup_local(self) -> None:
        from ..dns import lookup as dns
        self.pending += 1
        self.handles.append(dns.lookup_ptr(
            self.server.reactor, self.server.dns_config(),
            self._target(self.ep.local_ip6), self._got_local))

    def _got_local(self, name: Optional[str], error: Optional[BaseException]) -> None:
        if name:
            self.ep.local_host = name.encode()
        if error is None:
            self.server.remember_local_name(self.ep.local_ip6, self.ep.local_host)
        self._done()

    def _lookup_remote(self, paranoid: bool) -> None:
        from ..dns import lookup as dns
        self.pending += 1
        self.handles.append(dns.lookup_host(
            self.server.reactor, self.server.dns_config(),
            self._target(self.ep.remote_ip6), paranoid, self._got_remote))

    def _got_remote(self, name: Optional[str], failed: Optional[str]) -> None:
        if name:
            self.ep.remote_host = name.encode()
        if failed:
            self.ep.paranoid = failed.encode()
        self._done()

    def _ident(self) -> None:
        from ..ident import lookup as ident
        ep = self.ep
        local = ep.local_ip6[7:] if self.v4client else ep.local_ip6
        remote = ep.remote_ip6[7:] if self.v4client else ep.remote_ip6
        self.pending += 1
        self.handles.append(ident.lookup(
            self.server.reactor, local, remote, ep.remote_port, ep.local_port,
            float(self.server.opts.ident_timeout), self._got_info, self.scope))

    def _got_info(self, info: Optional[bytes]) -> None:
        if info is not None:
            info = info.split(b"\0", 1)[0]   # as a C string would end there
        self.ep.remote_info = info
        self._done()

    def _done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.closed:
            self.handles = []
            self.server.ready(self)

    # -- end ----------------------------------------------------------------
    def close(self) -> None:
        """Forget this connection: cancel lookups, close the socket."""
        if self.closed:
            return
        self.closed = True
        for handle in self.handles:
            handle.cancel()
        self.handles = []
        reactor = self.server.reactor
        if reactor.watching(self.fd):
            reactor.forget(self.fd)
        self.sock.close()
