"""MySQL/MariaDB client protocol packets: pure code over bytes
(design: pure-core-thin-shell).

* Framing: every packet is a 3-byte little-endian payload length, a
  1-byte sequence id and the payload.  A payload of 0xFFFFFF bytes or
  more is cut into packets of 0xFFFFFF bytes; a packet of exactly
  0xFFFFFF bytes means "continued in the next packet" (so a payload
  whose length is a multiple of 0xFFFFFF ends with an empty packet).
  :func:`frame` builds packets, :class:`Framer` reassembles them.
* Length-encoded integers and strings, with bounds checks.
* The server's greeting (Initial Handshake, protocol version 10),
  HandshakeResponse41, SSLRequest, OK, ERR and EOF packets, COM_QUERY,
  COM_QUIT and the text result set (:class:`ResultParser`).

Anything that does not parse raises :class:`MysqlError` 2027
("Malformed packet"), never ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

from ..errors import UcspiError

# -- error numbers (client side: libmysql's CR_* numbers) ---------------

CR_VERSION_ERROR = 2007
CR_SERVER_HANDSHAKE_ERR = 2012
CR_MALFORMED_PACKET = 2027
CR_AUTH_PLUGIN_CANNOT_LOAD = 2059
CR_AUTH_PLUGIN_ERR = 2061
CR_SSL_CONNECTION_ERROR = 2026

MALFORMED = "Malformed packet"
#: why the password is not sent in clear (the end of the error texts of
#: both clients)
SECURE_ONLY = ("a secure connection (a UNIX socket, or TLS verified with $MYSQL_SSL_CA) "
               "is required")


class MysqlError(UcspiError):
    """An error of the MySQL protocol: one the server sent (an ERR
    packet: its code, SQLSTATE and message) or one of the client
    (libmysql's numbers: 2027 malformed packet, 2059 unsupported
    authentication plugin, 2061 authentication plugin error, ...).

    ``str(e)`` is the message alone.  ``detail`` says more about a
    client-side error (what exactly was malformed) for debugging; it is
    not part of the message."""

    def __init__(self, code: int, message: str, sqlstate: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"MysqlError({self.code!r}, {self.message!r})"


def malformed(detail: str = "") -> MysqlError:
    """The error 2027 "Malformed packet"."""
    return MysqlError(CR_MALFORMED_PACKET, MALFORMED, detail=detail)


# -- capability flags ---------------------------------------------------

CLIENT_LONG_PASSWORD = 0x1
CLIENT_LONG_FLAG = 0x4
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_DEPRECATE_EOF = 0x1000000

#: What we always ask for (never CLIENT_DEPRECATE_EOF: result sets end
#: with EOF packets).
BASE_CAPABILITIES = (CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41
                     | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION)

SERVER_MORE_RESULTS_EXISTS = 0x0008

# -- framing ------------------------------------------------------------

#: The largest payload of one packet; a packet this long is continued.
MAX_CHUNK = 0xFFFFFF
#: The default limit on a reassembled payload, and the max packet size
#: we announce to the server.
DEFAULT_LIMIT = 16 * 1024 * 1024
HEADER = 4


def packet_count(length: int) -> int:
    """How many wire packets carry a payload of ``length`` bytes."""
    return length // MAX_CHUNK + 1


def frame(payload: bytes, seq: int) -> bytes:
    """The packets of ``payload``, the first with sequence id ``seq``
    (the next one to use is ``(seq + packet_count(len(payload))) & 0xFF``)."""
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_CHUNK]
        out += len(chunk).to_bytes(3, "little")
        out.append(seq & 0xFF)
        out += chunk
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_CHUNK:
            return bytes(out)


class Packet(NamedTuple):
    """One reassembled payload: ``seq`` is the sequence id of its first
    wire packet, ``packets`` how many wire packets carried it (so the
    next sequence id is ``(seq + packets) & 0xFF``)."""

    seq: int
    packets: int
    payload: bytes

    @property
    def next_seq(self) -> int:
        return (self.seq + self.packets) & 0xFF


class Framer:
    """Reassembles payloads from the bytes of the stream, fed in pieces
    of any size.

    A payload whose total length would exceed ``limit`` is refused as
    soon as a header announces it (before its bytes are buffered), and
    the sequence ids of the packets of one payload must follow each
    other: both raise 2027.  After an error the framer is dead (every
    later ``feed`` raises again)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError("negative limit")
        self.limit = limit
        self._buf = bytearray()
        self._parts: List[bytes] = []
        self._total = 0
        self._first_seq = -1
        self._count = 0
        self._error: Optional[MysqlError] = None

    @property
    def pending(self) -> int:
        """Bytes held back: a packet or a payload not yet complete (at the
        end of the stream this means the last packet was cut short)."""
        return len(self._buf) + self._total

    @property
    def partial_seq(self) -> Optional[int]:
        """The sequence id of the first packet of the payload being
        assembled, once its header is in (None otherwise): lets the
        caller refuse a packet out of order before its payload, which
        may be megabytes, has come."""
        if self._count:
            return self._first_seq
        if len(self._buf) >= HEADER:
            return self._buf[3]
        return None

    def feed(self, data: bytes) -> List[Packet]:
        """Take ``data``; return the payloads it completed, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: List[Packet] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= HEADER:
                length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                seq = buf[pos + 3]
                if self._count and seq != (self._first_seq + self._count) & 0xFF:
                    raise malformed("packet out of order inside a continued payload")
                if self._total + length > self.limit:
                    raise malformed(f"payload longer than {self.limit} bytes")
                if len(buf) - pos - HEADER < length:
                    break
                start = pos + HEADER
                if not self._count:
                    self._first_seq = seq
                self._count += 1
                self._parts.append(bytes(buf[start:start + length]))
                self._total += length
                pos = start + length
                if length < MAX_CHUNK:
                    payload = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                    out.append(Packet(self._first_seq, self._count, payload))
                    self._parts = []
                    self._total = 0
                    self._count = 0
        except MysqlError as e:
            self._error = e
            self._buf = bytearray()
            self._parts = []
            raise
        del buf[:pos]
        return out


# -- little-endian integers and length-encoded values -------------------

class Reader:
    """A cursor over one payload; every read checks the bounds and raises
    2027 past the end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise malformed("truncated payload")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise malformed("truncated payload")
        self.pos += 1
        return self.data[self.pos - 1]

    def nul_string(self, optional_nul: bool = False) -> bytes:
        """Bytes up to a NUL (consumed, not returned).  With
        ``optional_nul`` the end of the payload also ends the string."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            if not optional_nul:
                raise malformed("string without its NUL")
            end = len(self.data)
            out = self.data[self.pos:end]
            self.pos = end
            return out
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out

    def lenenc_int(self) -> int:
        value, self.pos = decode_lenenc_int(self.data, self.pos)
        return value

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def encode_lenenc_int(value: int) -> bytes:
    """The length-encoded form of ``value`` (0 to 2**64 - 1)."""
    if value < 0:
        raise ValueError("negative length-encoded integer")
    if value < 0xFB:
        return bytes((value,))
    if value < 0x10000:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 0x1000000:
        return b"\xfd" + value.to_bytes(3, "little")
    if value < 1 << 64:
        return b"\xfe" + value.to_bytes(8, "little")
    raise ValueError("length-encoded integer above 2**64 - 1")


_LENENC_SIZES = {0xFC: 2, 0xFD: 3, 0xFE: 8}


def decode_lenenc_int(data: bytes, pos: int = 0) -> Tuple[int, int]:
    """Read a length-encoded integer at ``pos``: ``(value, next pos)``.
    0xFB (NULL) and 0xFF (an ERR marker) are not integers: 2027, as is
    truncated input."""
    if pos < 0 or pos >= len(data):
        raise malformed("truncated length-encoded integer")
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = _LENENC_SIZES.get(first)
    if size is None:
        raise malformed(f"0x{first:02x} where a length-encoded integer belongs")
    end = pos + 1 + size
    if end > len(data):
        raise malformed("truncated length-encoded integer")
    return int.from_bytes(data[pos + 1:end], "little"), end


def encode_lenenc_str(value: bytes) -> bytes:
    return encode_lenenc_int(len(value)) + value


def decode_lenenc_str(data: bytes, pos: int = 0) -> Tuple[bytes, int]:
    """Read a length-encoded string at ``pos``: ``(bytes, next pos)``."""
    length, start = decode_lenenc_int(data, pos)
    end = start + length
    if end > len(data):
        raise malformed("truncated length-encoded string")
    return data[start:end], end


# -- the server's greeting ----------------------------------------------

@dataclass(frozen=True)
class Handshake:
    """The fields of an Initial Handshake packet (protocol version 10)."""

    protocol: int
    server_version: str
    connection_id: int
    scramble: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str


NATIVE = "mysql_native_password"


def parse_handshake(payload: bytes) -> Handshake:
    """Parse the server's greeting.  An ERR packet instead (host blocked,
    too many connections) raises its :class:`MysqlError`; another
    protocol version raises 2007; a server without the 4.1 protocol
    and its 20-byte scramble raises 2012."""
    if payload[:1] == b"\xff":
        raise parse_err(payload)
    r = Reader(payload)
    protocol = r.u8()
    if protocol != 10:
        raise MysqlError(CR_VERSION_ERROR, "Protocol mismatch; server version = %d, client version = 10"
                         % protocol)
    version = r.nul_string().decode("utf-8", "replace")
    connection_id = r.uint(4)
    part1 = r.take(8)
    r.take(1)                          # filler
    capabilities = r.uint(2)
    if not capabilities & CLIENT_PROTOCOL_41 or not capabilities & CLIENT_SECURE_CONNECTION:
        raise MysqlError(CR_SERVER_HANDSHAKE_ERR, "Error in server handshake",
                         detail="the server lacks the 4.1 protocol")
    # A 4.1 server always sends the rest: its absence is a cut packet.
    charset = r.u8()
    status = r.uint(2)
    capabilities |= r.uint(2) << 16
    auth_len = r.u8()
    r.take(10)                         # reserved (MariaDB: extended capabilities)
    part2 = r.take(max(13, auth_len - 8))
    plugin = r.nul_string() if capabilities & CLIENT_PLUGIN_AUTH else b""
    if part2.endswith(b"\0"):
        part2 = part2[:-1]
    return Handshake(
        protocol=protocol,
        server_version=version,
        connection_id=connection_id,
        scramble=part1 + part2,
        capabilities=capabilities,
        charset=charset,
        status=status,
        auth_plugin=plugin.decode("utf-8", "replace") or NATIVE,
    )


# -- what the client sends ----------------------------------------------

def _client_flags(server_capabilities: int, database: str, tls: bool) -> int:
    flags = BASE_CAPABILITIES
    if database:
        flags |= CLIENT_CONNECT_WITH_DB
    if server_capabilities & CLIENT_PLUGIN_AUTH:
        flags |= CLIENT_PLUGIN_AUTH
    if tls:
        flags |= CLIENT_SSL
    return flags


def ssl_request(server_capabilities: int, charset: int, database: str = "",
                max_packet: int = DEFAULT_LIMIT) -> bytes:
    """The SSLRequest payload: the first 32 bytes of the
    HandshakeResponse41 that will follow over TLS (same flags)."""
    flags = _client_flags(server_capabilities, database, True)
    return (flags.to_bytes(4, "little") + max_packet.to_bytes(4, "little")
            + bytes((charset & 0xFF,)) + bytes(23))


def handshake_response(*, user: str, auth_response: bytes, database: str, plugin: str,
                       charset: int, server_capabilities: int, tls: bool,
                       max_packet: int = DEFAULT_LIMIT) -> bytes:
    """The HandshakeResponse41 payload.

    Flags: LONG_PASSWORD, LONG_FLAG, PROTOCOL_41, TRANSACTIONS,
    SECURE_CONNECTION; CONNECT_WITH_DB when a database is named (the
    database field is there only then); PLUGIN_AUTH when the server has
    it (the plugin name is there only then); SSL with ``tls``.  Never
    DEPRECATE_EOF."""
    if len(auth_response) > 255:
        raise ValueError("auth response longer than 255 bytes")
    flags = _client_flags(server_capabilities, database, tls)
    out = bytearray(flags.to_bytes(4, "little"))
    out += max_packet.to_bytes(4, "little")
    out.append(charset & 0xFF)
    out += bytes(23)
    out += _no_nul(user.encode("utf-8"), "user") + b"\0"
    out.append(len(auth_response))
    out += auth_response
    if flags & CLIENT_CONNECT_WITH_DB:
        out += _no_nul(database.encode("utf-8"), "database") + b"\0"
    if flags & CLIENT_PLUGIN_AUTH:
        out += _no_nul(plugin.encode("utf-8"), "plugin") + b"\0"
    return bytes(out)


def _no_nul(value: bytes, what: str) -> bytes:
    if b"\0" in value:
        raise ValueError(f"NUL byte in the {what} name")
    return value


COM_QUIT = 0x01
COM_QUERY = 0x03


def com_query(sql: str) -> bytes:
    """The COM_QUERY payload (the text in UTF-8)."""
    return bytes((COM_QUERY,)) + sql.encode("utf-8")


def com_quit() -> bytes:
    """The COM_QUIT payload."""
    return bytes((COM_QUIT,))


# -- OK, ERR, EOF -------------------------------------------------------

@dataclass(frozen=True)
class Ok:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes


def parse_ok(payload: bytes) -> Ok:
    """An OK packet (0x00 header, the 4.1 protocol's fields)."""
    r = Reader(payload)
    if r.u8() != 0x00:
        raise malformed("not an OK packet")
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.uint(2) if r.left >= 2 else 0
    warnings = r.uint(2) if r.left >= 2 else 0
    return Ok(affected, insert_id, status, warnings, r.rest())


def parse_err(payload: bytes) -> MysqlError:
    """The :class:`MysqlError` of an ERR packet: 0xFF, the code (2 bytes
    LE), optionally ``#`` and a 5-character SQLSTATE, the message."""
    r = Reader(payload)
    if r.u8() != 0xFF:
        raise malformed("not an ERR packet")
    code = r.uint(2)
    sqlstate = b""
    if r.left >= 6 and payload[r.pos] == 0x23:        # '#'
        r.take(1)
        sqlstate = r.take(5)
    message = r.rest().decode("utf-8", "replace")
    return MysqlError(code, message, sqlstate.decode("ascii", "replace"))


def is_eof(payload: bytes) -> bool:
    """An EOF packet: 0xFE and shorter than 9 bytes (a row or an OK
    starting with 0xFE is longer)."""
    return payload[:1] == b"\xfe" and len(payload) < 9


def parse_eof(payload: bytes) -> Tuple[int, int]:
    """``(warnings, status)`` of an EOF packet (zeros when absent)."""
    if not is_eof(payload):
        raise malformed("not an EOF packet")
    if len(payload) >= 5:
        return (int.from_bytes(payload[1:3], "little"), int.from_bytes(payload[3:5], "little"))
    return 0, 0


# -- text result sets ---------------------------------------------------

@dataclass
class Result:
    """The outcome of one query.

    ``error`` is the server's ERR (the query failed, the session stays
    usable); otherwise ``rows`` (each value ``bytes``, ``None`` for SQL
    NULL), ``columns`` (0 for a statement without a result set) and
    ``affected_rows`` (from the OK packet; for a result set, the number
    of rows, as ``mysql_affected_rows`` after ``mysql_store_result``)."""

    rows: List[List[Optional[bytes]]] = field(default_factory=list)
    affected_rows: int = 0
    error: Optional[MysqlError] = None
    columns: int = 0
    last_insert_id: int = 0
    warnings: int = 0


class ResultParser:
    """The response to a COM_QUERY, one payload at a time: an OK, an ERR,
    or a text result set (column count, column definitions (skipped),
    EOF, rows, EOF or ERR).  :meth:`feed` returns True when the response
    is complete; :attr:`result` is then final."""

    _FIRST, _COLUMNS, _COLUMNS_EOF, _ROWS, _DONE = range(5)

    #: More columns than this is no answer to a query of ours.
    MAX_COLUMNS = 4096

    def __init__(self) -> None:
        self.result = Result()
        self._state = self._FIRST
        self._left = 0

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, payload: bytes) -> bool:
        state = self._state
        if state == self._DONE:
            raise malformed("packet after the end of the result")
        if not payload:
            raise malformed("empty packet in a result")
        head = payload[0]
        if head == 0xFF:
            self.result.error = parse_err(payload)
            self.result.rows = []
            self._state = self._DONE
        elif state == self._FIRST:
            self._first(payload)
        elif state == self._COLUMNS:
            self._left -= 1
            if not self._left:
                self._state = self._COLUMNS_EOF
        elif state == self._COLUMNS_EOF:
            if not is_eof(payload):
                raise malformed("no EOF after the column definitions")
            self._state = self._ROWS
        elif is_eof(payload):
            warnings, status = parse_eof(payload)
            self.result.warnings = warnings
            self.result.affected_rows = len(self.result.rows)
            self._end(status)
        else:
            self.result.rows.append(self._row(payload))
        return self._state == self._DONE

    def _first(self, payload: bytes) -> None:
        if payload[0] == 0x00:
            ok = parse_ok(payload)
            self.result.affected_rows = ok.affected_rows
            self.result.last_insert_id = ok.last_insert_id
            self.result.warnings = ok.warnings
            self._end(ok.status)
            return
        r = Reader(payload)
        count = r.lenenc_int()
        if r.left or not 0 < count <= self.MAX_COLUMNS:
            # 0xFB (LOCAL INFILE) is refused here too: we never allow it.
            raise malformed("bad column count")
        self.result.columns = count
        self._left = count
        self._state = self._COLUMNS

    def _end(self, status: int) -> None:
        if status & SERVER_MORE_RESULTS_EXISTS:
            # We never ask for multiple results (no CLIENT_MULTI_RESULTS).
            raise malformed("more results announced")
        self._state = self._DONE

    def _row(self, payload: bytes) -> List[Optional[bytes]]:
        row: List[Optional[bytes]] = []
        pos = 0
        n = len(payload)
        for _ in range(self.result.columns):
            if pos < n and payload[pos] == 0xFB:
                row.append(None)
                pos += 1
            else:
                value, pos = decode_lenenc_str(payload, pos)
                row.append(value)
        if pos != n:
            raise malformed("row longer than its columns")
        return row
