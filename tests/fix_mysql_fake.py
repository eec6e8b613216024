"""A scripted MySQL server for the protocol tests (loopback TCP or a
UNIX socket), written from the server's side of the protocol and
sharing no code with ``ucspi.mysql``.

:class:`FakeMysql` accepts any number of connections, each in a thread
of its own, and for each one:

1. sends a greeting (protocol 10) announcing ``greeting_plugin`` and a
   fresh 20-byte scramble, with CLIENT_SSL when ``offer_tls``;
2. on an SSLRequest, starts TLS with ``tls_context`` (a server-side
   ``ssl.SSLContext``) or, without one, "pretends": goes on in clear
   (to test the session's sequencing without ``ssl``);
3. reads the HandshakeResponse41 and checks the user and the scramble
   the way a server does (from the stored hash, never from the
   password): when the client answered with another plugin than
   ``account_plugin`` it sends an AuthSwitchRequest first.  For
   ``caching_sha2_password`` it answers ``0x01 0x03`` (``sha2="fast"``)
   and OK, or ``0x01 0x04`` (``sha2="full"``) and expects the password
   and a NUL;
4. answers COM_QUERY from ``results`` (SQL text -> :class:`Canned`
   result set, or an ``int``: an OK with that many affected rows); any
   other query gets ``fallback`` if set, else ERR 1146; COM_QUIT ends
   the connection.

Misbehaviour: ``greeting_raw`` bytes are sent instead of the greeting
(garbage, an oversized packet), ``query_raw`` instead of every query's
answer, ``extra_after_greeting`` right after the greeting (injection
before TLS), and ``stall`` ("greeting", "auth" or "query") stops
answering at that point until the fake is stopped.

Every authentication answer the client sent (the first response, the
one after a switch, the full-authentication password) is kept in
``auth_data``, so a test can show that the password never went out.

What happened is in ``events`` (strings such as ``"switch
caching_sha2_password"``, ``"auth ok"``, ``"auth denied"``, ``"tls"``,
``"query select 1"``, ``"quit"``, ``"eof"``, ``"bad seq ..."``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

NATIVE = "mysql_native_password"
SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"

CAPS = (0x1 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000)
SSL_FLAG = 0x800
PLUGIN_AUTH = 0x80000
CONNECT_WITH_DB = 0x8
UTF8MB4 = 45


@dataclass
class Canned:
    columns: List[str]
    rows: List[List[Optional[bytes]]] = field(default_factory=list)


def header(length: int, seq: int) -> bytes:
    return length.to_bytes(3, "little") + bytes((seq & 0xFF,))


def lenenc(n: int) -> bytes:
    if n < 251:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def lenstr(b: bytes) -> bytes:
    return lenenc(len(b)) + b


def err_packet(code: int, state: str, message: str) -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#" + state.encode() + message.encode()


def ok_packet(affected: int = 0) -> bytes:
    return b"\x00" + lenenc(affected) + lenenc(0) + b"\x02\x00\x00\x00"


EOF_PACKET = b"\xfe\x00\x00\x02\x00"


def scramble20() -> bytes:
    """20 random bytes without NUL (as servers make them)."""
    return bytes(1 + b % 127 for b in os.urandom(20))


def sha1(b: bytes) -> bytes:
    return hashlib.sha1(b).digest()


def sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_ok(stored: bytes, scramble: bytes, response: bytes) -> bool:
    """The server's check: stored = SHA1(SHA1(pw))."""
    if len(response) != 20:
        return False
    candidate = xor(response, sha1(scramble + stored))
    return sha1(candidate) == stored


def sha2_ok(stored: bytes, scramble: bytes, response: bytes) -> bool:
    """The server's fast-path check: stored = SHA256(SHA256(pw))."""
    if len(response) != 32:
        return False
    candidate = xor(response, sha256(stored + scramble))
    return sha256(candidate) == stored


class Closed(Exception):
    pass


class Conn:
    """One client connection of the fake (blocking, in its own thread)."""

    def __init__(self, fake: "FakeMysql", sock: socket.socket) -> None:
        self.fake = fake
        self.sock: Union[socket.socket, ssl.SSLSocket] = sock
        self.seq = 0

    def send(self, payload: bytes) -> None:
        self.sock.sendall(header(len(payload), self.seq) + payload)
        self.seq += 1

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise Closed()
            out += chunk
        return out

    def read(self) -> bytes:
        head = self.recv_exact(4)
        length = int.from_bytes(head[:3], "little")
        if head[3] != self.seq & 0xFF:
            self.fake.events.append(f"bad seq {head[3]} expected {self.seq & 0xFF}")
        self.seq = head[3] + 1
        return self.recv_exact(length)

    def stall(self) -> None:
        self.fake.stopping.wait()
        raise Closed()

    def greeting(self, plugin: str, scramble: bytes) -> bytes:
        f = self.fake
        caps = CAPS | (SSL_FLAG if f.offer_tls else 0)
        return (b"\x0a" + f.version.encode() + b"\0" + f.connection_id.to_bytes(4, "little")
                + scramble[:8] + b"\0" + (caps & 0xFFFF).to_bytes(2, "little")
                + bytes((UTF8MB4,)) + b"\x02\x00" + (caps >> 16).to_bytes(2, "little")
                + bytes((21,)) + bytes(10) + scramble[8:] + b"\0" + plugin.encode() + b"\0")

    def run(self) -> None:
        f = self.fake
        try:
            if f.stall == "greeting":
                self.stall()
            if f.greeting_raw is not None:
                self.sock.sendall(f.greeting_raw)
                self.stall()
            scramble = scramble20()
            self.send(self.greeting(f.greeting_plugin, scramble))
            if f.extra_after_greeting:
                self.sock.sendall(f.extra_after_greeting)
            response = self.read()
            caps = int.from_bytes(response[:4], "little")
            f.client_caps.append(caps)
            if caps & SSL_FLAG and len(response) == 32:
                f.events.append("sslrequest")
                if f.tls_context is not None:
                    assert isinstance(self.sock, socket.socket)
                    self.sock = f.tls_context.wrap_socket(self.sock, server_side=True)
                    f.events.append("tls")
                else:
                    f.events.append("pretend tls")
                response = self.read()
                caps = int.from_bytes(response[:4], "little")
            if f.stall == "auth":
                self.stall()
            if not self.authenticate(caps, response, scramble):
                return
            self.commands()
        except (Closed, OSError, ssl.SSLError):
            f.events.append("eof")
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def authenticate(self, caps: int, response: bytes, scramble: bytes) -> bool:
        f = self.fake
        pos = 32
        end = response.index(b"\0", pos)
        user = response[pos:end].decode()
        pos = end + 1
        alen = response[pos]
        auth = response[pos + 1:pos + 1 + alen]
        pos += 1 + alen
        db = ""
        if caps & CONNECT_WITH_DB:
            end = response.index(b"\0", pos)
            db = response[pos:end].decode()
            pos = end + 1
        plugin = NATIVE
        if caps & PLUGIN_AUTH:
            end = response.index(b"\0", pos)
            plugin = response[pos:end].decode()
        f.logins.append((user, db, plugin))
        f.auth_data.append(auth)
        if plugin != f.account_plugin:
            scramble = scramble20()
            f.events.append(f"switch {f.account_plugin}")
            self.send(b"\xfe" + f.account_plugin.encode() + b"\0" + scramble + b"\0")
            auth = self.read()
            f.auth_data.append(auth)
        pw = f.password.encode()
        if f.account_plugin == NATIVE:
            good = (auth == b"") if not pw else native_ok(sha1(sha1(pw)), scramble, auth)
        elif f.account_plugin == CLEAR:
            good = auth == pw + b"\0"
        elif f.account_plugin == SHA2:
            if not pw:
                good = auth == b""
            elif f.sha2 == "fast":
                good = sha2_ok(sha256(sha256(pw)), scramble, auth)
                if good:
                    self.send(b"\x01\x03")
            else:
                self.send(b"\x01\x04")
                f.events.append("full auth")
                sent = self.read()
                f.auth_data.append(sent)
                good = sent == pw + b"\0"
        else:
            self.send(b"\x01junk")       # an unknown plugin's data
            good = False
        if user != f.user or not good:
            f.events.append("auth denied")
            self.send(err_packet(1045, "28000", f"Access denied for user '{user}'@'localhost' "
                                 "(using password: YES)"))
            return False
        f.events.append("auth ok")
        self.send(ok_packet())
        return True

    def commands(self) -> None:
        f = self.fake
        while True:
            self.seq = 0
            packet = self.read()
            if packet[:1] == b"\x01":
                f.events.append("quit")
                return
            if packet[:1] != b"\x03":
                self.send(err_packet(1047, "08S01", "Unknown command"))
                continue
            sql = packet[1:].decode()
            f.events.append(f"query {sql}")
            if f.stall == "query":
                self.stall()
            if f.query_raw is not None:
                self.sock.sendall(f.query_raw)
                continue
            answer = f.results.get(sql, f.fallback)
            if answer is None:
                self.send(err_packet(1146, "42S02", "Table 'test.nosuch' doesn't exist"))
            elif isinstance(answer, int):
                self.send(ok_packet(answer))
            else:
                self.result_set(answer)

    def result_set(self, canned: Canned) -> None:
        self.send(lenenc(len(canned.columns)))
        for name in canned.columns:
            self.send(lenstr(b"def") + lenstr(b"test") + lenstr(b"t") + lenstr(b"t")
                      + lenstr(name.encode()) + lenstr(name.encode()) + b"\x0c"
                      + UTF8MB4.to_bytes(2, "little") + (255).to_bytes(4, "little")
                      + b"\xfd" + b"\x00\x00" + b"\x00" + b"\x00\x00")
        self.send(EOF_PACKET)
        for row in canned.rows:
            self.send(b"".join(b"\xfb" if v is None else lenstr(v) for v in row))
        self.send(EOF_PACKET)


class FakeMysql:
    """See the module's docstring; use as a context manager.  ``unix``:
    listen on that UNIX socket path instead of 127.0.0.1 (``.port`` is
    then 0, ``.address`` is what to connect to)."""

    def __init__(self, *, user: str = "alice", password: str = "secret",
                 greeting_plugin: str = NATIVE, account_plugin: Optional[str] = None,
                 sha2: str = "fast", offer_tls: bool = False,
                 tls_context: Optional[ssl.SSLContext] = None,
                 results: Optional[Dict[str, Union[Canned, int]]] = None,
                 fallback: Optional[Union[Canned, int]] = None,
                 greeting_raw: Optional[bytes] = None, query_raw: Optional[bytes] = None,
                 extra_after_greeting: bytes = b"", stall: str = "",
                 unix: Optional[str] = None, version: str = "8.0.99-fake",
                 connection_id: int = 4242) -> None:
        self.user = user
        self.password = password
        self.greeting_plugin = greeting_plugin
        self.account_plugin = account_plugin or greeting_plugin
        self.sha2 = sha2
        self.offer_tls = offer_tls
        self.tls_context = tls_context
        self.results: Dict[str, Union[Canned, int]] = results or {}
        self.fallback = fallback
        self.greeting_raw = greeting_raw
        self.query_raw = query_raw
        self.extra_after_greeting = extra_after_greeting
        self.stall = stall
        self.version = version
        self.connection_id = connection_id
        self.events: List[str] = []
        self.logins: List[Tuple[str, str, str]] = []
        self.auth_data: List[bytes] = []
        self.client_caps: List[int] = []
        self.stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._conns: List[socket.socket] = []
        if unix is None:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.address: Union[str, Tuple[str, int]] = self.listener.getsockname()
            self.port: int = self.listener.getsockname()[1]
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(unix)
            self.address = unix
            self.port = 0
        self.listener.listen(16)
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "FakeMysql":
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A client socket connected to the fake."""
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.address)
        return sock

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(10)
            self._conns.append(sock)
            t = threading.Thread(target=Conn(self, sock).run, daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in self._conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        if self._accepter.is_alive():
            self._accepter.join(5)

    def wait_event(self, event: str, timeout: float = 5.0) -> bool:
        """Wait until ``event`` was recorded."""
        done = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if event in self.events:
                return True
            done.wait(0.01)
        return event in self.events
