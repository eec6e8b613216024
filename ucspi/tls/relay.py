"""Relaying between a network socket and a program's two pipes, in
plaintext or through a TLS :class:`~.channel.Channel`, for a server or
a client.

* :func:`handshake` drives a channel's handshake on a socket within a
  deadline (``poll``), for either side.
* :class:`Relay` carries data both ways between the socket's end
  (:class:`ClearEnd`, the bytes as they are; :class:`TlsEnd`, through a
  channel) and two pipes, with half-closes both ways: the peer's
  close_notify or end of file closes the program's input, the
  program's end of output sends close_notify (or shuts the socket's
  sending side down).  A relay that starts in plaintext can switch to
  TLS between two reads (:meth:`Relay.upgrade`).

It runs in a process of its own (the server's relay child,
:mod:`.launch`), blocking in ``poll`` with the ``-T`` idle timeout.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import stat
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

from .. import timeouts
from ..log import Log, say
from .channel import Channel, HandshakeFailed
from .context import library_error

#: bytes read at once from the socket or the program
CHUNK = 65536
#: stop reading the program while this much is waiting for the peer
HIGH_WATER = 262144

#: the longest poll() takes, in milliseconds (a C int); longer waits
#: are made of several
POLL_MAX = 2**31 - 1

_IN, _OUT = select.POLLIN, select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def _wait(fd: int, events: int, deadline: Optional[float]) -> bool:
    """Wait for ``events`` on ``fd`` until ``deadline``; False at the
    deadline."""
    poller = select.poll()
    poller.register(fd, events)
    while True:
        if deadline is None:
            left_ms: Optional[int] = None
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            left_ms = min(max(1, int(left * 1000)), POLL_MAX)
        if poller.poll(left_ms):
            return True


def _send(sock: socket.socket, wire: bytearray) -> None:
    """Send what the socket takes now.  Raises OSError."""
    try:
        sent = sock.send(wire)
    except (BlockingIOError, InterruptedError):
        return
    del wire[:sent]


def _receive(sock: socket.socket) -> Optional[bytes]:
    """What the socket has now (``b""`` for nothing yet), or None at its
    end of file.  Raises OSError."""
    try:
        data = sock.recv(CHUNK)
    except (BlockingIOError, InterruptedError):
        return b""
    return data or None


def handshake(chan: Channel, sock: socket.socket, timeout: int) -> None:
    """The handshake on ``sock`` (non-blocking) within ``timeout``
    seconds (0: none).

    Raises:
        HandshakeFailed: with the lines for the failure; the alert for
            the peer, if there is one, has been sent.
    """
    deadline = time.monotonic() + timeout if timeout else None
    fd = sock.fileno()
    try:
        while True:
            done = chan.handshake()
            while chan.wire:
                if not _wait(fd, _OUT, deadline):
                    raise chan.timed_out()
                _send(sock, chan.wire)
            if done:
                return
            if not _wait(fd, _IN, deadline):
                raise chan.timed_out()
            data = _receive(sock)
            if data is None:
                raise chan.ended()
            chan.feed(data)
    except HandshakeFailed:
        try:
            _send(sock, chan.wire)            # the alert, if there is one
        except OSError:
            pass
        raise
    except OSError as exc:
        raise chan.failure(exc) from None


class ClearEnd:
    """The socket's end of a relay, carrying plaintext."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wire = bytearray()
        self.held = b""          # what came from the socket, not passed on yet
        self.closing = False     # shut the sending side once the wire is empty

    def pending(self) -> bool:
        """Bytes received and not handed over yet."""
        return bool(self.held)

    def receive(self) -> bool:
        """Read the socket; False at its end of file.  Raises OSError."""
        data = _receive(self.sock)
        if data is None:
            return False
        self.held += data
        return True

    def plaintext(self) -> Tuple[bytes, bool]:
        """What there is for the program, and whether the peer has ended
        its stream (for plaintext, only its end of file says so)."""
        data, self.held = self.held, b""
        return data, False

    def put(self, data: bytes) -> bool:
        """Plaintext for the peer; True when taken."""
        self.wire += data
        return True

    def finish(self, pending_input: bool) -> bool:
        """The program has no more to say: the socket's sending side is
        shut once what is queued has gone; True (it is queued)."""
        self.closing = True
        self._shut()
        return True

    def send(self) -> None:
        """Send what the socket takes.  Raises OSError."""
        _send(self.sock, self.wire)
        self._shut()

    def _shut(self) -> None:
        if self.closing and not self.wire:
            self.closing = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class TlsEnd:
    """The socket's end of a relay, through a TLS channel."""

    def __init__(self, sock: socket.socket, chan: Channel) -> None:
        self.sock = sock
        self.chan = chan
        self.wire = chan.wire

    def pending(self) -> bool:
        return bool(self.chan.incoming.pending)

    def receive(self) -> bool:
        data = _receive(self.sock)
        if data is None:
            return False
        self.chan.feed(data)
        return True

    def plaintext(self) -> Tuple[bytes, bool]:
        """What the TLS layer has for the program, and whether the peer
        has closed its stream (close_notify).  Raises ssl.SSLError for a
        broken stream."""
        tls = self.chan.tls
        parts: List[bytes] = []
        closed = False
        while True:
            try:
                data = tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                closed = True
                break
            if not data:
                closed = True
                break
            parts.append(data)
        self.chan.collect()
        return b"".join(parts), closed

    def put(self, data: bytes) -> bool:
        """Raises ssl.SSLError."""
        try:
            self.chan.tls.write(data)
        except ssl.SSLWantReadError:
            return False                       # a renegotiation is under way
        self.chan.collect()
        return True

    def finish(self, pending_input: bool) -> bool:
        """close_notify, without waiting for the reply; not while the
        peer's bytes wait to be decrypted."""
        if pending_input:
            return False
        try:
            self.chan.tls.unwrap()
        except (ssl.SSLError, OSError):
            pass
        self.chan.collect()
        return True

    def send(self) -> None:
        _send(self.sock, self.wire)


End = Union[ClearEnd, TlsEnd]


class Relay:
    """Data both ways between the socket's end and the program's pipes.

    Args:
        end: the socket's end (plaintext or TLS).
        to_prog: the pipe to the program's fd 0.
        from_prog: the pipe from the program's fd 1.
        idle: ``-T``: seconds without any data before giving up (0: never).
        log: the log, for the ``translate:`` and timeout lines.
        shared: ``to_prog`` and ``from_prog`` are a client's standard
            output and input rather than pipes of our own: they get
            their blocking mode back when the relay lets go of them.
    """

    def __init__(self, end: End, to_prog: int, from_prog: int, idle: int, log: Log,
                 shared: bool = False) -> None:
        self.end = end
        self.to_prog: Optional[int] = to_prog
        self.from_prog: Optional[int] = from_prog
        self.idle_ms = min(idle * 1000, POLL_MAX) if idle else None
        self.log = log
        self.peer_open = True        # the peer may still send
        self.notified = False        # the end of our stream is queued for the peer
        self.dead = False            # the peer is gone or broke the protocol
        self.down = b""              # plaintext for the program
        self.up = b""                # plaintext the peer's end could not take yet
        #: the blocking mode to give back to shared descriptors
        self.modes = {fd: os.get_blocking(fd) for fd in (to_prog, from_prog)} if shared else {}
        for fd in (to_prog, from_prog):
            os.set_blocking(fd, False)
        end.sock.setblocking(False)

    def upgrade(self, chan: Channel) -> None:
        """Carry on through TLS (its handshake done on the same socket).
        Whatever plaintext was received and not passed on is dropped:
        after STARTTLS, bytes sent in clear must not reach the program
        as if they were protected."""
        self.end = TlsEnd(self.end.sock, chan)

    # -- the two pipes ------------------------------------------------
    def _let_go(self, fd: int, sending: bool) -> None:
        """Close one of the program's descriptors.  A shared one (a
        client's standard input or output, whose open file others may
        hold) first gets its blocking mode back and, if it is a socket
        we send to, a shutdown, so that its reader sees the end even
        while another descriptor keeps it open."""
        mode = self.modes.pop(fd, None)
        if mode is not None:
            try:
                os.set_blocking(fd, mode)
                if sending and stat.S_ISSOCK(os.fstat(fd).st_mode):
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        os.close(fd)

    def _close_to_prog(self) -> None:
        if self.to_prog is not None:
            self._let_go(self.to_prog, True)
            self.to_prog = None
            self.down = b""

    def _close_from_prog(self) -> None:
        if self.from_prog is not None:
            self._let_go(self.from_prog, False)
            self.from_prog = None

    def _complain(self, what: str, exc: BaseException) -> None:
        if self.log.verbosity >= 1:
            say(f"translate: {what}: {library_error(exc)}".encode())

    # -- events ---------------------------------------------------------
    def _from_peer(self) -> None:
        try:
            more = self.end.receive()
        except OSError as exc:
            self._complain("read network", exc)
            self.dead = True
            return
        if not more:
            self.peer_open = False
        self._decrypt()

    def _decrypt(self) -> None:
        """Pass on what the peer's end has for the program."""
        try:
            data, closed = self.end.plaintext()
        except ssl.SSLError as exc:
            self._complain("read network", exc)
            self.dead = True
            return
        if closed:
            self.peer_open = False
        self.down += data
        self._encrypt()

    def _to_program(self) -> None:
        assert self.to_prog is not None
        try:
            written = os.write(self.to_prog, self.down)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._complain("write clear channel", exc)
            self._close_to_prog()
            return
        self.down = self.down[written:]

    def _from_program(self) -> None:
        assert self.from_prog is not None
        try:
            data = os.read(self.from_prog, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._complain("read clear channel", exc)
            data = b""
        if not data:
            self._close_from_prog()
            return
        self.up += data
        self._encrypt()

    def _encrypt(self) -> None:
        end = self.end
        if self.up:
            try:
                if end.put(self.up):
                    self.up = b""
            except ssl.SSLError as exc:
                self._complain("write network", exc)
                self.dead = True
                return
        if self.from_prog is None and not self.up and not self.notified:
            self.notified = end.finish(end.pending())

    def _to_peer(self) -> None:
        try:
            self.end.send()
        except OSError as exc:
            # a peer that has closed its end may reset the connection
            # before it has everything: that is its choice, not an error
            if self.peer_open or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                self._complain("write network", exc)
            self.dead = True

    # -- the loop ---------------------------------------------------------
    def _interest(self) -> Dict[int, int]:
        end = self.end
        wanted: Dict[int, int] = {}
        sock = 0
        if self.peer_open and not self.down and self.to_prog is not None:
            sock |= _IN
        if end.wire:
            sock |= _OUT
        if sock:
            wanted[end.sock.fileno()] = sock
        if self.to_prog is not None:
            # always watched: POLLERR says the program closed its fd 0
            wanted[self.to_prog] = _OUT if self.down else 0
        if self.from_prog is not None and len(end.wire) < HIGH_WATER and not self.up:
            wanted[self.from_prog] = _IN
        return wanted

    def _finished(self) -> bool:
        if self.dead:
            return True
        if self.to_prog is not None and not self.peer_open and not self.down:
            self._close_to_prog()              # the peer's EOF reaches fd 0
        if self.from_prog is None and not self.notified:
            self._encrypt()
        return self.to_prog is None and self.notified and not self.end.wire

    def run(self, pause: Optional[Callable[["Relay"], bool]] = None) -> bool:
        """Relay until both directions have ended, the peer is gone, or
        nothing moved for ``-T`` seconds (False); or, when ``pause`` is
        given, until ``pause(relay)`` says so (True), asked before each
        round and before each read from the peer, whose bytes then stay
        in the socket: the caller may make a handshake there,
        :meth:`upgrade` and run again."""
        poller = select.poll()
        registered: Dict[int, int] = {}
        self._decrypt()            # data that came with the handshake's last flight
        while not self._finished():
            if pause is not None and pause(self):
                return True
            sock_fd = self.end.sock.fileno()
            wanted = self._interest()
            for fd in list(registered):
                if fd not in wanted:
                    poller.unregister(fd)
                    del registered[fd]
            for fd, events in wanted.items():
                if registered.get(fd) != events:
                    poller.register(fd, events)
                    registered[fd] = events
            try:
                ready = poller.poll(self.idle_ms)
            except InterruptedError:
                continue
            if not ready:
                if self.log.verbosity >= 1:
                    say(b"timeout reached without input from network")
                    say(b"timeout reached without output from child")
                return False
            for fd, events in ready:
                if fd == sock_fd:
                    if events & _OUT:
                        self._to_peer()
                    if events & (_IN | _GONE) and not self.dead:
                        if pause is not None and pause(self):
                            return True        # the peer's bytes stay in the socket
                        self._from_peer()
                elif fd == self.to_prog:
                    if self.down and events & (_OUT | _GONE):
                        self._to_program()
                    elif events & _GONE:
                        self._close_to_prog()   # the program closed fd 0
                elif fd == self.from_prog:
                    self._from_program()
            if self.down and self.to_prog is not None:
                self._to_program()
        return False

    def close(self) -> None:
        """Close both pipes; send what is left for the peer, at most
        briefly."""
        self._close_to_prog()
        self._close_from_prog()
        if not self.dead:
            deadline = time.monotonic() + timeouts.RELAY_FLUSH
            end = self.end
            try:
                while end.wire and _wait(end.sock.fileno(), _OUT, deadline):
                    end.send()
            except OSError:
                pass
