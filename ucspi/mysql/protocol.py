"""The sans-I/O MySQL/MariaDB client (design: mysql-rules).
It is pure (design: pure-core-thin-shell).

:class:`Session` keeps the state of one connection: feed it what the
server sent (:meth:`Session.receive`), send what :meth:`Session.outgoing`
returns, and read results with :meth:`Session.take_result`.  It never
touches a socket, a clock or ``ssl``; timeouts, reconnects and TLS
belong to the driver.

The conversation::

    greeting  <-  server (seq 0)
    [SSLRequest -> (seq 1); the driver starts TLS; tls_started(verified)]
    HandshakeResponse41 -> (seq 1, or 2 after an SSLRequest)
    then, until OK or ERR:
      AuthSwitchRequest <- (0xFE plugin NUL data)   -> the new response
      AuthMoreData      <- (0x01 0x03)               fast auth: OK follows
      AuthMoreData      <- (0x01 0x04)               -> password NUL (secure only)
    COM_QUERY -> (seq 0) ... OK | ERR | result set <-

"Secure" is a UNIX socket, or TLS whose certificate the driver verified
against a CA the administrator named (``$MYSQL_SSL_CA``): only then does
the password itself leave, for ``caching_sha2_password``'s full
authentication or ``mysql_clear_password``.  TLS that was not verified
keeps passive listeners out, not an impostor, so it is not enough.

Connection-level failures raise :class:`MysqlError` from ``receive``
and leave the session dead (every later ``receive`` raises the same
error); a query's ERR is a :class:`Result` with ``error`` set and the
session stays usable.  Calling a method at the wrong time (``query``
before ``ready``, ``receive`` while ``wants_tls``) is a programming
error: ``ValueError``.
"""

from __future__ import annotations

from typing import Optional, Tuple

from . import auth
from .packets import (
    CLIENT_SSL,
    CR_AUTH_PLUGIN_CANNOT_LOAD,
    CR_AUTH_PLUGIN_ERR,
    CR_SSL_CONNECTION_ERROR,
    DEFAULT_LIMIT,
    NATIVE,
    Framer,
    MysqlError,
    Packet,
    Reader,
    Result,
    ResultParser,
    SECURE_ONLY,
    com_query,
    com_quit,
    frame,
    handshake_response,
    malformed,
    packet_count,
    parse_err,
    parse_handshake,
    parse_ok,
    ssl_request,
)

__all__ = ["MysqlError", "Result", "Session", "CACHING_SHA2", "CLEAR", "NATIVE", "SECURE_ONLY"]

CACHING_SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"

#: AuthMoreData bytes of caching_sha2_password.
_FAST_AUTH_OK = b"\x03"
_FULL_AUTH = b"\x04"

#: Authentication packets the server may send before we give up on it
#: (a switch, more data, the OK: a handful in real life).
MAX_AUTH_ROUNDS = 8
#: the largest answer kept to recognise it again (:meth:`Session._replayed`)
REPLAY_MAX = 4 << 20

_GREETING, _TLS_WAIT, _AUTH, _READY, _QUERY, _CLOSED, _FAILED = range(7)


def tls_unavailable() -> MysqlError:
    """2026: TLS is required (``$MYSQL_SSL``, ``$MYSQL_SSL_CA``) and the
    server does not offer it."""
    return MysqlError(CR_SSL_CONNECTION_ERROR,
                      "SSL connection error: SSL is required but the server doesn't support it")


def plugin_unavailable(name: str, why: str = "") -> MysqlError:
    """2059, as libmysql words it."""
    text = f"Authentication plugin '{name}' cannot be loaded"
    if why:
        text += f": {why}"
    return MysqlError(CR_AUTH_PLUGIN_CANNOT_LOAD, text)


def insecure_full_auth() -> MysqlError:
    """2061: caching_sha2_password wants the password and the transport
    is neither verified TLS nor a UNIX socket (we do not do the RSA
    exchange, whose key an impostor could send as well)."""
    return MysqlError(
        CR_AUTH_PLUGIN_ERR,
        f"Authentication plugin '{CACHING_SHA2}' reported error: full authentication sends "
        "the password, and " + SECURE_ONLY)


class Session:
    """One client connection, without I/O.

    ``secure``: the transport is a UNIX socket, so the password may
    travel in clear (caching_sha2 full authentication,
    mysql_clear_password); TLS makes it so only if it was verified
    (:meth:`tls_started`).  ``use_tls``: ask for TLS when the server
    offers it (CLIENT_SSL); False never asks.  ``require_tls``: a server
    that does not offer TLS is an error (2026).  ``limit``: the largest
    payload accepted from the server (2027 above it)."""

    def __init__(self, user: str, password: str, database: str, secure: bool, *,
                 use_tls: bool = True, require_tls: bool = False,
                 limit: int = DEFAULT_LIMIT) -> None:
        if "\0" in user or "\0" in database:
            raise ValueError("NUL byte in the user or database name")
        self.user = user
        self.database = database
        self.secure = secure
        self.use_tls = use_tls
        self.require_tls = require_tls
        self._password = password.encode("utf-8")
        self._framer = Framer(limit)
        self._out = bytearray()
        self._state = _GREETING
        self._expect = 0                   # sequence id of the next packet either way
        self._rounds = 0
        self._parser: Optional[ResultParser] = None
        self._result: Optional[Result] = None
        self._error: Optional[MysqlError] = None
        self._capabilities = 0
        self._charset = 0
        self._scramble = b""
        #: The plugin of the last response we sent.
        self.plugin = ""
        self.server_version = ""
        self.connection_id = 0
        self.tls_offered = False
        #: True once tls_started() was called.
        self.tls_active = False
        # the answer to the last query, kept to recognise the same answer
        # again (see _replayed): (sql, its bytes, its result)
        self._last: Optional[Tuple[str, bytes, Result]] = None
        self._sql = ""
        self._raw: Optional[bytearray] = None     # the bytes of the answer so far
        self._replay: Optional[bytes] = None      # the bytes it will be if unchanged

    # -- state --------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Authenticated and no query in flight."""
        return self._state == _READY

    @property
    def wants_tls(self) -> bool:
        """The SSLRequest is in :meth:`outgoing` (or was sent): send it,
        start TLS on the transport, then call :meth:`tls_started`."""
        return self._state == _TLS_WAIT

    @property
    def error(self) -> Optional[MysqlError]:
        """The connection-level error that ended the session, if any."""
        return self._error

    @property
    def closed(self) -> bool:
        """quit() was called or the session failed."""
        return self._state in (_CLOSED, _FAILED)

    # -- the driver's side --------------------------------------------

    def outgoing(self) -> bytes:
        """The bytes to send now (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> None:
        """Bytes from the server, in pieces of any size."""
        if self._error is not None:
            raise self._error
        if self._state == _TLS_WAIT:
            raise ValueError("receive() before tls_started()")
        if self._state == _CLOSED:
            return
        if self._raw is not None:
            if self._replay is not None:
                data = self._replayed(data)
                if not data:
                    return
            self._raw += data
        try:
            for packet in self._framer.feed(data):
                if self._state == _TLS_WAIT:
                    # Clear text after the greeting that would be read
                    # as if it came over TLS: refuse it.
                    raise malformed("data after the greeting, before TLS")
                self._packet(packet)
            if self._state == _TLS_WAIT and self._framer.pending:
                raise malformed("data after the greeting, before TLS")
            partial = self._framer.partial_seq
            if partial is not None and partial != self._expect and self._state != _READY:
                raise malformed(f"sequence id {partial}, expected {self._expect}")
        except MysqlError as e:
            self._fail(e)
            raise
        if self._raw is not None and self._state == _READY:
            result = self._result
            if (result is not None and result.error is None and not self._framer.pending
                    and len(self._raw) <= REPLAY_MAX):
                self._last = (self._sql, bytes(self._raw), result)
            self._raw = None

    def _replayed(self, data: bytes) -> bytes:
        """The same query answered with the same bytes as last time has
        the same result: a rules table that did not change costs a
        comparison of bytes, not a parse of every row.  Returns the
        bytes to parse the usual way: none while they still match (or
        once the answer is complete), all received so far once they
        differ."""
        raw, expect = self._raw, self._replay
        assert raw is not None and expect is not None and self._last is not None
        start = len(raw)
        end = start + len(data)
        if end <= len(expect) and expect[start:end] == data:
            raw += data
            if end == len(expect):            # complete, and the same
                self._result = self._last[2]
                self._parser = None
                self._state = _READY
                self._raw = self._replay = None
            return b""
        self._replay = None                   # different: parse it all
        data = bytes(raw) + data
        raw.clear()
        return data

    def tls_started(self, verified: bool = False) -> None:
        """TLS is on: the HandshakeResponse41 goes out next (over it).
        ``verified``: the driver checked the server's certificate against
        the administrator's CA and name, so the transport is secure."""
        if self._state != _TLS_WAIT:
            raise ValueError("tls_started() without an SSLRequest")
        self.secure = self.secure or verified
        self.tls_active = True
        self._state = _AUTH
        self._send_response()

    def query(self, sql: str) -> None:
        """Send COM_QUERY; the result comes from :meth:`take_result`."""
        if self._state != _READY:
            raise ValueError("query() while the session is not ready")
        self._result = None
        self._parser = ResultParser()
        self._state = _QUERY
        self._expect = 0
        self._sql = sql
        self._raw = bytearray()
        self._replay = self._last[1] if self._last is not None and self._last[0] == sql else None
        self._send(com_query(sql))

    def take_result(self) -> Optional[Result]:
        """The finished result of the last query, once; None until then."""
        result, self._result = self._result, None
        return result

    def quit(self) -> bytes:
        """The COM_QUIT packet (sequence 0); the session is closed."""
        if self._state != _FAILED:
            self._state = _CLOSED
        self._out.clear()
        return frame(com_quit(), 0)

    # -- inside -------------------------------------------------------

    def _fail(self, error: MysqlError) -> None:
        self._error = error
        self._state = _FAILED
        self._out.clear()

    def _send(self, payload: bytes) -> None:
        self._out += frame(payload, self._expect)
        self._expect = (self._expect + packet_count(len(payload))) & 0xFF

    def _packet(self, packet: Packet) -> None:
        payload = packet.payload
        state = self._state
        if state == _READY:
            if payload[:1] == b"\xff":
                # Unasked, whatever its sequence id: the server says why
                # it is closing (idle timeout, shutdown, killed).
                raise parse_err(payload)
            raise malformed("packet while no command is in flight")
        if packet.seq != self._expect:
            raise malformed(f"sequence id {packet.seq}, expected {self._expect}")
        self._expect = packet.next_seq
        if state == _GREETING:
            self._greeting(payload)
        elif state == _AUTH:
            self._auth(payload)
        elif state == _QUERY:
            assert self._parser is not None
            if self._parser.feed(payload):
                self._result = self._parser.result
                self._parser = None
                self._state = _READY

    def _greeting(self, payload: bytes) -> None:
        hello = parse_handshake(payload)
        self.server_version = hello.server_version
        self.connection_id = hello.connection_id
        self._capabilities = hello.capabilities
        self._charset = hello.charset
        self._scramble = hello.scramble
        self.plugin = hello.auth_plugin
        self.tls_offered = bool(hello.capabilities & CLIENT_SSL)
        if self.require_tls and not (self.tls_offered and self.use_tls):
            raise tls_unavailable()
        if self.tls_offered and self.use_tls:
            self._send(ssl_request(self._capabilities, self._charset, self.database))
            self._state = _TLS_WAIT
        else:
            self._state = _AUTH
            self._send_response()

    def _send_response(self) -> None:
        plugin = self.plugin
        if plugin not in (NATIVE, CACHING_SHA2) and not (plugin == CLEAR and self.secure):
            # The server's default is one we lack: answer as
            # mysql_native_password; the server switches us if the
            # account needs another plugin.
            plugin = NATIVE
        self.plugin = plugin
        self._send(handshake_response(
            user=self.user,
            auth_response=self._response(plugin, self._scramble),
            database=self.database,
            plugin=plugin,
            charset=self._charset,
            server_capabilities=self._capabilities,
            tls=self.tls_active,
        ))

    def _response(self, plugin: str, scramble: bytes) -> bytes:
        if plugin == NATIVE:
            return auth.native_password(self._password, scramble)
        if plugin == CACHING_SHA2:
            return auth.caching_sha2(self._password, scramble)
        if plugin == CLEAR:
            if not self.secure:
                raise plugin_unavailable(CLEAR, SECURE_ONLY)
            return auth.clear_password(self._password)
        raise plugin_unavailable(plugin)

    def _auth(self, payload: bytes) -> None:
        self._rounds += 1
        if self._rounds > MAX_AUTH_ROUNDS:
            raise malformed("authentication does not end")
        head = payload[:1]
        if head == b"\x00":
            parse_ok(payload)
            self._state = _READY
        elif head == b"\xff":
            raise parse_err(payload)
        elif head == b"\xfe":
            self._switch(payload)
        elif head == b"\x01":
            self._more_data(payload[1:])
        else:
            raise malformed("unexpected packet during authentication")

    def _switch(self, payload: bytes) -> None:
        if len(payload) == 1:
            # The pre-4.1 "old password" switch.
            raise plugin_unavailable("mysql_old_password")
        r = Reader(payload, 1)
        name = r.nul_string().decode("utf-8", "replace")
        data = r.rest()
        if data.endswith(b"\0"):
            data = data[:-1]
        self.plugin = name
        self._scramble = data
        self._send(self._response(name, data))

    def _more_data(self, data: bytes) -> None:
        if self.plugin != CACHING_SHA2:
            raise malformed(f"AuthMoreData for {self.plugin}")
        if data == _FAST_AUTH_OK:
            return                              # the OK packet follows
        if data == _FULL_AUTH:
            if not self.secure:
                raise insecure_full_auth()
            self._send(auth.clear_password(self._password))
            return
        raise malformed("unknown AuthMoreData")
