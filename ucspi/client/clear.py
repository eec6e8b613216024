"""Client mode in clear: tcpclient with no program (design: tcpclient).

Standard input goes to the server and what the server sends to
standard output, both ways at once (``poll``), with half-closes: the
end of standard input shuts the socket's sending side down, the
server's end of file closes standard output (a socket there is shut
down for writing too, so that the reader sees the end even when
standard input is the same socket, as under tcpserver).  tcpclient
ends when both directions have ended.

Standard input and output are shared with whoever started tcpclient
(a terminal, the shell's pipes): they are made non-blocking only while
we use them, and each gets its mode back before it is closed.

The TLS client mode is :func:`ucspi.client.secure.client_mode` (the
relay of :mod:`ucspi.tls.relay`); this one does not import ``ssl``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
from typing import Dict, Optional

from ..errors import errtext
from ..log import Log

#: bytes read at once
CHUNK = 65536

_IN, _OUT = select.POLLIN, select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def usable(fd: int) -> None:
    """Open ``/dev/null`` on ``fd`` if it is closed: a closed standard
    input is an empty one, a closed standard output a sink."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


class Copy:
    """The two directions between ``sock`` and standard input/output."""

    def __init__(self, sock: socket.socket, log: Log, infd: int = 0, outfd: int = 1) -> None:
        self.sock = sock
        self.log = log
        self.infd: Optional[int] = infd
        self.outfd: Optional[int] = outfd
        self.up = b""              # read from standard input, not sent yet
        self.down = b""            # from the server, not written yet
        self.peer_open = True      # the server may still send
        self.sent_end = False      # our end of file went to the server
        self.broken = False        # the connection failed
        self.modes: Dict[int, bool] = {}
        for fd in (infd, outfd):
            self.modes[fd] = os.get_blocking(fd)
            os.set_blocking(fd, False)
        sock.setblocking(False)

    # -- closing ---------------------------------------------------------------
    def _let_go(self, fd: int, sending: bool) -> None:
        try:
            os.set_blocking(fd, self.modes.pop(fd, True))
            if sending and stat.S_ISSOCK(os.fstat(fd).st_mode):
                with socket.socket(fileno=os.dup(fd)) as other:
                    other.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        os.close(fd)

    def _close_in(self) -> None:
        if self.infd is not None:
            self._let_go(self.infd, False)
            self.infd = None

    def _close_out(self) -> None:
        if self.outfd is not None:
            self._let_go(self.outfd, True)
            self.outfd = None
            self.down = b""

    def _complain(self, what: str, exc: OSError) -> None:
        if self.log.verbosity >= 1:
            self.log.line(f"unable to {what}: {errtext(exc)}".encode())

    # -- moving bytes -------------------------------------------------------------
    def _read_in(self) -> None:
        assert self.infd is not None
        try:
            data = os.read(self.infd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._complain("read input", exc)
            data = b""
        if data:
            self.up += data
        else:
            self._close_in()

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.up)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if self.peer_open or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                self._complain("write to network", exc)
            self.broken = True
            return
        self.up = self.up[sent:]

    def _receive(self) -> None:
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._complain("read from network", exc)
            self.broken = True
            return
        if data:
            self.down += data
        else:
            self.peer_open = False

    def _write_out(self) -> None:
        assert self.outfd is not None
        try:
            written = os.write(self.outfd, self.down)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._complain("write output", exc)
            self._close_out()
            return
        self.down = self.down[written:]

    # -- the loop -------------------------------------------------------------------
    def _ends(self) -> bool:
        """Pass the ends of file on; True when both directions are over."""
        if self.infd is None and not self.up and not self.sent_end:
            self.sent_end = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not self.peer_open and not self.down:
            self._close_out()
        return self.broken or (self.sent_end and self.outfd is None)

    def _interest(self) -> Dict[int, int]:
        wanted: Dict[int, int] = {}
        sock = (_IN if self.peer_open and self.outfd is not None and not self.down else 0)
        sock |= _OUT if self.up else 0
        if sock:
            wanted[self.sock.fileno()] = sock
        if self.infd is not None and not self.up:
            wanted[self.infd] = _IN
        if self.outfd is not None:
            wanted[self.outfd] = _OUT if self.down else 0     # 0: POLLERR still comes
        return wanted

    def run(self) -> bool:
        """Copy until both directions have ended; False if the
        connection broke.  Standard input and output are closed."""
        sock_fd = self.sock.fileno()
        try:
            while not self._ends():
                poller = select.poll()
                for fd, events in self._interest().items():
                    poller.register(fd, events)
                for fd, events in poller.poll():
                    if fd == sock_fd:
                        if events & _OUT:
                            self._send()
                        if events & (_IN | _GONE) and not self.broken:
                            self._receive()
                    elif fd == self.infd:
                        self._read_in()
                    elif fd == self.outfd:
                        if self.down and events & (_OUT | _GONE):
                            self._write_out()
                        elif events & _GONE:
                            self._close_out()      # nobody reads our output
        finally:
            self._close_in()
            self._close_out()
        return not self.broken


def client_mode(sock: socket.socket, log: Log) -> int:
    """No program: copy both ways; 0, or 111 if the connection broke."""
    usable(0)
    usable(1)
    try:
        done = Copy(sock, log).run()
    finally:
        sock.close()
    return 0 if done else 111
