"""RFC 1413 ident client: the value of ``TCPREMOTEINFO``.

For an accepted connection tcpserver asks the client's host who owns
the client's end (design: ident; IndiMail's tcpremoteinfo.c):

1. an overall deadline of ``timeout`` seconds (``-t``, default 26) starts;
2. a TCP socket is bound to the connection's *local* address (its port
   chosen at the connect where the system can: :data:`_NO_PORT`), and
   connected to the client's address, port 113 -- the connect on a
   clock of its own, also ``timeout`` seconds;
3. the line of :func:`ucspi.ident.msg.request` is sent and the reply is
   read with :class:`ucspi.ident.msg.ReplyParser`, both bounded by the
   overall deadline.

Any error, refusal, end of input or deadline before the reply is
complete gives ``None`` (``TCPREMOTEINFO`` unset); an ``ERROR`` reply
gives ``b""`` (set but empty).  ``timeout <= 0`` fails at once.

A socket that cannot be had for want of descriptors (EMFILE, ENFILE,
ENOBUFS, ENOMEM) is asked for again, with growing pauses
(:class:`~ucspi.reactor.Backoff`), until the overall deadline; then the
lookup gives up: through ``abort(error)`` if the caller gave one (the
tcpserver parent drops the connection rather than take it for "no
answer"), else as a failure (``None``).

Two faces over one implementation:

* :func:`lookup` is non-blocking: it runs on a
  :class:`ucspi.reactor.Reactor` beside the accept loop and any number
  of other lookups, and calls ``done(value)`` from the reactor -- never
  from inside :func:`lookup` itself -- exactly once, unless the lookup
  was cancelled first.
* :func:`query` blocks: it runs :func:`lookup` on a private reactor
  (:func:`ucspi.reactor.run_blocking`).  For tools and for code that
  already runs in a forked child.

IPv4 addresses (an IPv4-mapped IPv6 text is turned back into one) use
``AF_INET`` sockets, IPv6 addresses ``AF_INET6`` with the scope id of
the accepted connection (IndiMail uses an IPv6 socket for both).  The port asked is
:data:`PORT` unless a ``port`` keyword says otherwise; both exist for
tests only.
"""

from __future__ import annotations

import errno
import _socket
import socket
import sys
from typing import Any, Callable, Optional, Tuple

from .msg import ReplyParser, request
from ..address import MAPPED_PACKED, scope_id as parse_scope
from ..errors import out_of_resources
from ..reactor import Backoff, Reactor, Timer, nonblocking_socket, run_blocking

__all__ = ["PORT", "IdentLookup", "lookup", "query"]

#: The ident port; change it (or pass ``port=``) only in tests.
PORT = 113

Done = Callable[[Optional[bytes]], None]
Abort = Callable[[OSError], None]
SockAddr = Tuple[Any, ...]

_RECV_SIZE = 1024


def sockaddr(ip: str, port: int, scope_id: int = 0) -> Tuple[int, SockAddr]:
    """Turn an address text into a socket family and address.

    Args:
        ip: dotted IPv4, or IPv6 text with an optional ``%scope``; an
            IPv4-mapped IPv6 address becomes plain IPv4.
        port: the port number.
        scope_id: IPv6 scope id; when 0, the ``%scope`` of ``ip`` is used.

    Returns:
        ``(family, address)`` ready for ``bind`` or ``connect``.

    Raises:
        ValueError: ``ip`` is not an address, or its scope names no
            interface.
    """
    try:
        socket.inet_pton(socket.AF_INET, ip)
        return socket.AF_INET, (ip, port)
    except OSError:
        pass
    host, _, scope = ip.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"not an IP address: {ip!r}") from None
    if packed.startswith(MAPPED_PACKED):
        return socket.AF_INET, (socket.inet_ntop(socket.AF_INET, packed[12:]), port)
    if not scope_id and scope:
        scope_id = parse_scope(scope)
    return socket.AF_INET6, (host, port, 0, scope_id)


#: ``IP_BIND_ADDRESS_NO_PORT`` (Linux 4.2): the query's socket is bound
#: to the connection's local address but takes its port at ``connect``,
#: where only the four-tuple has to be unique.  A ``bind`` to port 0
#: needs a port no other socket of that address holds, TIME_WAIT ones
#: included: with many of those about, the kernel's search took
#: milliseconds per query (``bench/PROFILE.md`` §8), in the server's one
#: process, and it fails once the range is held.
_NO_PORT: Optional[int] = getattr(socket, "IP_BIND_ADDRESS_NO_PORT",
                                  24 if sys.platform.startswith("linux") else None)


class IdentLookup:
    """One non-blocking ident exchange on a reactor; see :func:`lookup`."""

    def __init__(self, reactor: Reactor, done: Done, abort: Optional[Abort] = None) -> None:
        self._reactor = reactor
        self._done: Optional[Done] = done
        self._abort = abort
        self._sock: Optional[_socket.socket] = None
        self._timer: Optional[Timer] = None
        self._parser = ReplyParser()
        self._out = b""
        self._deadline = 0.0
        self._timeout = 0.0
        self._where: Tuple[int, SockAddr, SockAddr] = (0, (), ())
        self._backoff = Backoff()

    # -- start ----------------------------------------------------------
    def start(self, family: int, local: SockAddr, remote: SockAddr,
              timeout: float, line: bytes) -> None:
        """Arm the overall deadline, then connect (:meth:`_connect`)."""
        now = self._reactor.time()
        self._deadline = now + timeout
        self._timeout = timeout
        self._out = line
        self._where = (family, local, remote)
        if not timeout > 0:
            self.fail_soon()
            return
        self._connect()

    def _connect(self) -> None:
        """Bind, start connecting and arm the connect timer; without a
        descriptor to spare, try again later (until the deadline)."""
        self._timer = None
        family, local, remote = self._where
        try:
            sock = nonblocking_socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if out_of_resources(exc):
                self._starved(exc)
            else:
                self.fail_soon()
            return
        self._sock = sock
        try:
            if _NO_PORT is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, _NO_PORT, 1)
                except OSError:
                    pass
            sock.bind(local)
            err = sock.connect_ex(remote)
        except OSError:
            err = errno.EINVAL
        if err not in (0, errno.EINPROGRESS):
            self.fail_soon()
            return
        if self._send_at_once(sock):
            return
        # The connect has a clock of its own (as in IndiMail), started here.
        self._timer = self._reactor.call_later(self._timeout, self._expire)
        self._reactor.add_writer(sock.fileno(), self._on_connect)

    def _send_at_once(self, sock: _socket.socket) -> bool:
        """Send the query now if the connection is already up (on
        loopback it usually is by the time ``connect`` returns): that
        saves a turn of the loop.  True if the query went out, and the
        reply is now awaited until the overall deadline."""
        try:
            sent = sock.send(self._out)
        except OSError:        # not connected yet (or failed): wait for it
            return False
        self._out = self._out[sent:]
        if self._out:
            return False
        self._timer = self._reactor.call_at(self._deadline, self._expire)
        self._reactor.add_reader(sock.fileno(), self._on_readable)
        return True

    def _starved(self, exc: OSError) -> None:
        self._timer = self._backoff.retry(self._reactor, self._deadline, self._connect)
        if self._timer is None:
            self._timer = self._reactor.call_later(0, lambda: self._give_up(exc))

    def _give_up(self, exc: OSError) -> None:
        self._timer = None
        abort, self._abort = self._abort, None
        if abort is None:
            self._finish(None)
        else:
            self.cancel()
            abort(exc)

    def fail_soon(self) -> None:
        """Report failure on the reactor's next turn."""
        self._close()
        self._timer = self._reactor.call_later(0, self._expire)

    # -- events ---------------------------------------------------------
    def _on_connect(self) -> None:
        sock = self._sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err or self._reactor.time() >= self._deadline:
            self._finish(None)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._reactor.call_at(self._deadline, self._expire)
        self._reactor.add_writer(sock.fileno(), self._on_writable)
        self._on_writable()

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(None)
            return
        self._out = self._out[sent:]
        if not self._out:
            self._reactor.remove_writer(sock.fileno())
            self._reactor.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(None)
            return
        if not data:
            self._finish(None)
            return
        value = self._parser.feed(data)
        if value is not None:
            self._finish(value)

    def _expire(self) -> None:
        self._timer = None
        self._finish(None)

    # -- end ------------------------------------------------------------
    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            self._reactor.forget(sock.fileno())
            sock.close()

    def _finish(self, value: Optional[bytes]) -> None:
        done, self._done = self._done, None
        self._abort = None
        self._close()
        if done is not None:
            done(value)

    def cancel(self) -> None:
        """Stop the lookup and close its socket; ``done`` is not called.
        Harmless after the lookup has finished."""
        self._done = self._abort = None
        self._close()


def lookup(reactor: Reactor, local_ip: str, remote_ip: str, remote_port: int,
           local_port: int, timeout: float, done: Done, scope_id: int = 0,
           *, port: Optional[int] = None, abort: Optional[Abort] = None) -> IdentLookup:
    """Start a non-blocking ident lookup.

    Args:
        reactor: the reactor that runs the exchange.
        local_ip: the local address of the accepted connection (text);
            the query goes out from it.
        remote_ip: the client's address (text); the query goes to it.
        remote_port: the client's port.
        local_port: our port, the one the client connected to.
        timeout: seconds for the connect, and for the whole exchange.
        done: called with the value (``bytes``, maybe empty) or ``None``
            on failure, exactly once, from the reactor, unless the
            lookup is cancelled first.
        scope_id: the IPv6 scope id of the connection (0: none).
        port: the port to ask instead of :data:`PORT` (tests).
        abort: if given, called (from the reactor) instead of ``done``
            when no socket could be had before the deadline.

    Returns:
        The running lookup; its ``cancel()`` calls it off.

    Raises:
        ValueError: a port number is out of range.
    """
    line = request(remote_port, local_port)
    job = IdentLookup(reactor, done, abort)
    try:
        family, local = sockaddr(local_ip, 0, scope_id)
        remote_family, remote = sockaddr(remote_ip, PORT if port is None else port, scope_id)
    except (ValueError, OSError):
        job.fail_soon()
        return job
    if remote_family != family:
        job.fail_soon()
        return job
    job.start(family, local, remote, timeout, line)
    return job


def query(local_ip: str, remote_ip: str, remote_port: int, local_port: int,
          timeout: float, scope_id: int = 0, *, port: Optional[int] = None) -> Optional[bytes]:
    """Blocking ident lookup: :func:`lookup` on a private reactor.

    Args:
        local_ip, remote_ip, remote_port, local_port, timeout, scope_id,
        port: as for :func:`lookup`.

    Returns:
        The value (``bytes``, maybe empty), or ``None`` on failure.

    Raises:
        ValueError: a port number is out of range.
    """
    def start(reactor: Reactor, done: Done) -> IdentLookup:
        return lookup(reactor, local_ip, remote_ip, remote_port, local_port, timeout,
                      done, scope_id, port=port)
    return run_blocking(start)
