"""The built-in MySQL client, driven non-blocking by the parent's loop.

:class:`Driver` keeps one connection to the database and runs the
pure :class:`~.protocol.Session` over it on the server's
:class:`~ucspi.reactor.Reactor`: connect, (TLS if the server offers
it), authenticate, then one query at a time.  The rules query of many
clients is the same text (the listener's port), so requests are
batched: a request joins the batch of the same text that has not been
sent yet, and every member gets its answer; a database that answers in
10 ms serves any number of clients in those 10 ms with one query.

Over TCP it asks for TLS when the server offers it.  With a CA
(``$MYSQL_SSL_CA``, :func:`verified_context`) the server's certificate
must chain to it and name the server of db.conf, TLS is required, and
only then does the session count the connection as secure enough for
the password in clear; without one, TLS is not verified (it keeps
passive listeners out, not an impostor) and is required only when
asked (``$MYSQL_SSL=required``).

Every step has the ``$MYSQL_TIMEOUT`` deadline.  After a failure the
connection is closed, the waiting requests fail with the error, and
requests fail at once (fail closed, design: mysql-rules) until a back-off
delay has passed; the next request then reconnects.  Nothing here
blocks the loop.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, List, Optional, Tuple

from .. import timeouts
from ..reactor import Reactor, Timer
from .protocol import MysqlError, Result, Session

Done = Callable[[Optional[Result], Optional[BaseException]], None]
#: ``("unix", path)`` or ``("tcp", host, port)``
Endpoint = Tuple[Any, ...]

#: the first and the longest pause before a reconnection
BACKOFF_FIRST, BACKOFF_MAX = timeouts.MYSQL_BACKOFF
CHUNK = 65536

CR_CONNECTION_ERROR = 2002
CR_CONN_HOST_ERROR = 2003
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013


class _Batch:
    """One query text and the requests waiting for its answer."""

    __slots__ = ("sql", "waiters")

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.waiters: List[Done] = []


class Driver:
    """One connection to the database, run by ``reactor``.

    Args:
        reactor: the server's loop.
        endpoint: where the database listens.
        user, password, database: from db.conf.
        timeout: ``$MYSQL_TIMEOUT`` in seconds (0: none) for connecting
            and for each query.
        tls_context: an ``ssl.SSLContext`` that verifies the server
            (:func:`verified_context`), or None: TLS unverified.
        tls_required: fail when a TCP server does not offer TLS (always
            so with a ``tls_context``).
    """

    def __init__(self, reactor: Reactor, endpoint: Endpoint, user: str, password: str,
                 database: str, timeout: float, tls_context: Any = None,
                 tls_required: bool = False) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.database = database
        self.timeout = timeout
        self.tls_context = tls_context
        self.tls_required = tls_required or tls_context is not None
        self.sock: Optional[socket.socket] = None
        self.session: Optional[Session] = None
        self.tls: Any = None                 # ssl.SSLObject once TLS is on
        self._in: Any = None
        self._out: Any = None
        self._want_read: Any = None          # ssl.SSLWantReadError, once ssl is imported
        self.tls_handshake = False
        self.connected = False               # socket connect() finished
        self.outgoing = bytearray()
        self.queue: List[_Batch] = []
        self.running: Optional[_Batch] = None
        self.timer: Optional[Timer] = None
        self.backoff = 0.0
        self.down_until = 0.0
        self.last_error: Optional[BaseException] = None
        self._addresses: Optional[List[Any]] = None

    # -- requests ------------------------------------------------------------
    def request(self, sql: str, done: Done) -> None:
        """Run ``sql`` (batched with the same text not sent yet); ``done``
        gets ``(result, None)`` or ``(None, error)``, now or later."""
        if self.sock is None and self.reactor.time() < self.down_until:
            done(None, self.last_error or MysqlError(CR_SERVER_GONE, "MySQL server has gone away"))
            return
        for batch in self.queue:
            if batch.sql == sql:
                batch.waiters.append(done)
                return
        batch = _Batch(sql)
        batch.waiters.append(done)
        self.queue.append(batch)
        if self.sock is None:
            self._connect()
        else:
            self._next()

    # -- connecting -------------------------------------------------------------
    def _address(self) -> Tuple[int, Any, str]:
        kind = self.endpoint[0]
        if kind == "unix":
            return socket.AF_UNIX, self.endpoint[1], self.endpoint[1]
        host, port = self.endpoint[1], self.endpoint[2]
        if self._addresses is None:
            # the server's name is resolved once (at start-up, where blocking is fine)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            self._addresses = [(family, addr) for family, _, _, _, addr in infos]
        family, addr = self._addresses[0]
        return family, addr, f"{host}:{port}"

    def _connect(self) -> None:
        try:
            family, addr, shown = self._address()
        except (OSError, UnicodeError) as exc:
            self._fail(MysqlError(2005, f"Unknown MySQL server host '{self.endpoint[1]}' "
                                        f"({getattr(exc, 'errno', 0) or 0})"))
            return
        self._shown = shown
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._fail(self._connect_error(exc))
            return
        sock.setblocking(False)
        self.sock = sock
        local = family == socket.AF_UNIX      # secure already; no TLS over it
        self.session = Session(self.user, self.password, self.database,
                               secure=local, use_tls=not local,
                               require_tls=self.tls_required and not local)
        self.connected = False
        self._deadline()
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._fail(self._connect_error(OSError(err, os.strerror(err))))
            return
        self.reactor.add_writer(sock.fileno(), self._writable)
        self.reactor.add_reader(sock.fileno(), self._readable)

    def _connect_error(self, exc: BaseException) -> MysqlError:
        number = getattr(exc, "errno", 0) or 0
        if self.endpoint[0] == "unix":
            return MysqlError(CR_CONNECTION_ERROR, "Can't connect to local MySQL server "
                              f"through socket '{self.endpoint[1]}' ({number})")
        return MysqlError(CR_CONN_HOST_ERROR, "Can't connect to MySQL server on "
                          f"'{self._shown}' ({number})")

    def _deadline(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.timeout > 0:
            self.timer = self.reactor.call_later(self.timeout, self._expired)

    def _expired(self) -> None:
        self.timer = None
        if self.running is not None or self.session is None or not self.session.ready:
            what = ("Lost connection to MySQL server during query" if self.running
                    else f"Can't connect to MySQL server on '{self._shown}' (110)"
                    if self.endpoint[0] == "tcp" and not self.connected
                    else "Lost connection to MySQL server at 'handshake', timed out")
            code = CR_SERVER_LOST if self.running or self.connected else CR_CONN_HOST_ERROR
            self._fail(MysqlError(code, what))

    # -- I/O ------------------------------------------------------------------
    def _writable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        if not self.connected:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(self._connect_error(OSError(err, os.strerror(err))))
                return
            self.connected = True
        if self.outgoing:
            try:
                sent = sock.send(self.outgoing)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(exc)
                return
            del self.outgoing[:sent]
        if not self.outgoing:
            self.reactor.remove_writer(sock.fileno())

    def _send(self, data: bytes) -> None:
        if not data or self.sock is None:
            return
        if self.tls is not None:
            if not self.tls_handshake:
                self.tls.write(data)
            data = self._out.read()
        self.outgoing += data
        if self.connected:
            self._writable()
        if self.outgoing and self.sock is not None:
            self.reactor.add_writer(self.sock.fileno(), self._writable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        self.connected = True
        try:
            if self.tls is not None:
                self._in.write(data)
                if self.tls_handshake:
                    self._tls_step()
                    return
                data = self._tls_read()
            self._feed(data)
        except MysqlError as exc:
            self._fail(exc)
        except OSError as exc:        # ssl.SSLError included
            self._fail(MysqlError(2026, f"SSL connection error: {exc}"))

    def _tls_read(self) -> bytes:
        parts = []
        while True:
            try:
                chunk = self.tls.read(CHUNK)
            except self._want_read:
                break
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)

    def _start_tls(self) -> None:
        import ssl
        ctx = self.tls_context
        name: Optional[str] = None
        if ctx is not None:
            name = self.endpoint[1]          # the certificate must name db.conf's server
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the C library's "preferred" mode
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_side=False, server_hostname=name)
        self._want_read = ssl.SSLWantReadError
        self.tls_handshake = True
        self._tls_step()

    def _tls_step(self) -> None:
        try:
            self.tls.do_handshake()
        except self._want_read:
            self._send_raw(self._out.read())
            return
        self._send_raw(self._out.read())
        self.tls_handshake = False
        assert self.session is not None
        self.session.tls_started(verified=self.tls_context is not None)
        self._feed(self._tls_read())

    def _send_raw(self, data: bytes) -> None:
        if data:
            self.outgoing += data
            self._writable()
            if self.outgoing and self.sock is not None:
                self.reactor.add_writer(self.sock.fileno(), self._writable)

    def _feed(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        if data:
            session.receive(data)
        self._send(session.outgoing())
        if session.wants_tls and self.tls is None:
            self._start_tls()
            return
        if self.running is not None:
            result = session.take_result()
            if result is not None:
                batch, self.running = self.running, None
                self._deadline_off()
                self.backoff = 0.0
                for done in batch.waiters:
                    done(result, None)
        if session.ready:
            self.backoff = 0.0
            self._deadline_off()
            self._next()

    def _deadline_off(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _next(self) -> None:
        session = self.session
        if session is None or not session.ready or self.running is not None or not self.queue:
            return
        self.running = self.queue.pop(0)
        session.query(self.running.sql)
        self._deadline()
        self._send(session.outgoing())

    # -- failures -----------------------------------------------------------------
    def _lost(self, exc: Optional[BaseException]) -> None:
        if self.session is not None and self.session.ready and self.running is None:
            # an idle connection closed by the server (wait_timeout, restart):
            # reconnect at once for the requests to come
            self._close()
            self.down_until = 0.0
            if self.queue:
                self._connect()
            return
        suffix = f" ({exc.errno})" if isinstance(exc, OSError) and exc.errno else ""
        if not self.connected:
            self._fail(self._connect_error(exc or OSError(0, "")))
        elif self.running is not None:
            self._fail(MysqlError(CR_SERVER_LOST,
                                  "Lost connection to MySQL server during query" + suffix))
        else:
            self._fail(MysqlError(CR_SERVER_LOST, "Lost connection to MySQL server at "
                                  "'reading initial communication packet'" + suffix))

    def _close(self) -> None:
        self._deadline_off()
        sock, self.sock = self.sock, None
        if sock is not None:
            self.reactor.forget(sock.fileno())
            try:
                sock.close()
            except OSError:
                pass
        self.session = None
        self.tls = None
        self.tls_handshake = False
        self.outgoing = bytearray()

    def _fail(self, exc: BaseException) -> None:
        """Close, fail every waiting request, and refuse new ones for the
        back-off delay."""
        self._close()
        self.last_error = exc
        self.backoff = min(BACKOFF_MAX, self.backoff * 2) if self.backoff else BACKOFF_FIRST
        self.down_until = self.reactor.time() + self.backoff
        waiting = ([self.running] if self.running is not None else []) + self.queue
        self.running = None
        self.queue = []
        for batch in waiting:
            for done in batch.waiters:
                done(None, exc)

    def close(self) -> None:
        """Say goodbye (COM_QUIT) if connected, and close."""
        if self.sock is not None and self.session is not None and self.session.ready:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                data = self.session.quit()
                if self.tls is not None:
                    self.tls.write(data)
                    data = self._out.read()
                self.sock.sendall(data)
            except OSError:
                pass
        self._close()


def verified_context(ca: str) -> Any:
    """An ``ssl.SSLContext`` that accepts only a server whose certificate
    chains to the CA certificates of the PEM file ``ca`` and names the
    server (host name or address) it was asked for.  Made at start-up,
    before privileges are dropped, and kept for every reconnection.

    Raises:
        OSError: the file cannot be read (``ssl.SSLError``: it holds no
            usable certificate).
    """
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED, host names checked
    ctx.load_verify_locations(cafile=ca)
    return ctx


def connect_now(driver: Driver) -> None:
    """Connect and authenticate at start-up, running the loop until it is
    done.

    Raises:
        MysqlError: the connection failed (the caller makes it fatal).
    """
    driver._connect()
    while driver.sock is not None and not (driver.session is not None and driver.session.ready):
        driver.reactor.run_once(0.5)
    if driver.sock is None:
        error = driver.last_error
        raise error if isinstance(error, MysqlError) else MysqlError(CR_SERVER_GONE, str(error))
    driver.backoff = 0.0
    driver.down_until = 0.0
