"""The PROXY protocol on the server's side (design: proxy-protocol): which
sources are trusted, and reading a header in the loop.

``PROXY_FROM`` is a comma-separated list of IPv4 and IPv6 addresses and
networks (``10.0.0.0/8``, ``::1``, ``2001:db8::/32``).  Unset or empty,
the PROXY protocol is off and nothing here runs.  An IPv4-mapped entry
(``::ffff:10.0.0.0/104``) means its IPv4 network, since a client that
arrives mapped is an IPv4 client (design: mapped-addresses).  A bad entry is a usage error
at start-up (exit 100).

A connection from a trusted source must begin with a header.
:class:`HeaderReader` reads it without blocking and without taking a
byte past it: it peeks, asks :func:`ucspi.proxy.needed`, and either
takes the bytes it peeked (all of them belong to the header when the
size is not known yet) or, once the size is known, reads exactly the
rest.  The whole header must arrive within :data:`HEADER_TIMEOUT`
seconds.  The loop goes on serving other connections meanwhile.

The parser (:mod:`ucspi.proxy`) is imported by :func:`proxy_sources`,
at start-up and only when ``PROXY_FROM`` is set: before the privilege
drop, and not at all for a server that does not use it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Callable, List, Mapping, Optional, Tuple

from .. import timeouts
from ..address import MAPPED_PACKED, strip_scope
from ..errors import UsageError, errtext
from ..reactor import Reactor, Timer
from ..scan import shown

if TYPE_CHECKING:
    from ..proxy import Header

#: seconds for the whole header
HEADER_TIMEOUT = timeouts.PROXY_HEADER
#: bytes peeked at a time: a whole v1 line, or v2's fixed part and more
PEEK = 256
VARIABLE = "PROXY_FROM"
_NOW = socket.MSG_DONTWAIT
_PEEK_NOW = socket.MSG_PEEK | socket.MSG_DONTWAIT

Network = Tuple[int, int]    # (address, mask) as integers


class Trusted:
    """The trusted sources of ``PROXY_FROM``."""

    def __init__(self, v4: List[Network], v6: List[Network]) -> None:
        self.v4 = v4
        self.v6 = v6

    def __contains__(self, text: object) -> bool:
        """Is the address text a socket gave (dotted, IPv6, mapped,
        with or without ``%scope``) trusted?"""
        if not isinstance(text, str):
            return False
        text = strip_scope(text)
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            nets = self.v4
        except OSError:
            try:
                packed = socket.inet_pton(socket.AF_INET6, text)
            except OSError:
                return False
            if packed.startswith(MAPPED_PACKED):
                value, nets = int.from_bytes(packed[12:], "big"), self.v4
            else:
                value, nets = int.from_bytes(packed, "big"), self.v6
        return any(value & mask == net for net, mask in nets)


def proxy_sources(environ: Mapping[str, str]) -> Optional[Trusted]:
    """The trusted sources, or None when the PROXY protocol is off.

    Raises:
        UsageError: an entry is not an address or network.
    """
    value = environ.get(VARIABLE, "").strip()
    if not value:
        return None
    v4: List[Network] = []
    v6: List[Network] = []
    for entry in value.split(","):
        entry = entry.strip()
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise UsageError(f"{VARIABLE} wants IP addresses and networks separated by "
                             f"commas, not {shown(entry) if entry else 'an empty entry'}"
                             ) from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                and net.network_address.packed.startswith(MAPPED_PACKED):
            net = ipaddress.IPv4Network((net.network_address.packed[12:], net.prefixlen - 96))
        target = v4 if net.version == 4 else v6
        target.append((int(net.network_address), int(net.netmask)))
    from .. import proxy  # noqa: F401  (the parser, imported before the drop)
    return Trusted(v4, v6)


class HeaderReader:
    """Reads one PROXY header from a non-blocking socket on the reactor.

    Args:
        reactor: the loop.
        sock: the connection (left blocking: reads are ``MSG_DONTWAIT``).
        done: called with the parsed header; the socket is then at the
            first byte after it.
        bad: called with the reason when the header is malformed, too
            long, truncated (end of stream) or late.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket,
                 done: Callable[["Header"], None], bad: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.sock = sock
        self.done = done
        self.bad = bad
        self.head = b""
        self.size = 0
        self.timer: Optional[Timer] = None
        self.watching = False

    def start(self) -> None:
        """Read what has arrived (usually the whole header: a proxy sends
        it with its connect); wait for the rest on the reactor."""
        if self._readable():
            return
        self.timer = self.reactor.call_later(HEADER_TIMEOUT, self._late)
        self.watching = True
        self.reactor.add_reader(self.sock.fileno(), self._on_readable)

    def cancel(self) -> None:
        """Stop reading (the connection ends)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watching:
            self.watching = False
            self.reactor.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        self._readable()

    def _late(self) -> None:
        self.timer = None
        self._fail(f"no complete header within {HEADER_TIMEOUT:g} seconds")

    def _fail(self, reason: str) -> None:
        self.cancel()
        self.bad(reason)

    def _readable(self) -> bool:
        """Read what has arrived; True once the connection is done with
        (the header complete, or refused)."""
        from ..proxy import ProxyError
        try:
            header = self._read()
        except (BlockingIOError, InterruptedError):
            return False
        except ProxyError as exc:
            self._fail(str(exc))
            return True
        except OSError as exc:
            self._fail(errtext(exc))
            return True
        if header is None:
            return False
        self.cancel()
        self.done(header)
        return True

    def _read(self) -> Optional["Header"]:
        """The socket stays blocking (the program gets it so): every
        read here is ``MSG_DONTWAIT``."""
        from ..proxy import ProxyError, needed, parse
        sock = self.sock
        if not self.size:
            data = sock.recv(PEEK, _PEEK_NOW)
            if not data:
                raise ProxyError("truncated header")
            size = needed(self.head + data)
            if not size:
                self.head += sock.recv(len(data), _NOW)   # all of it is header
                return None
            self.size = size
        chunk = sock.recv(self.size - len(self.head), _NOW)
        if not chunk:
            raise ProxyError("truncated header")
        self.head += chunk
        if len(self.head) < self.size:
            return None
        return parse(self.head)
