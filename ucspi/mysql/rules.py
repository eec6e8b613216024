"""MySQL rules of ``-m db.conf``: the pure part (IndiMail's ``-m``, with fixes).

Nothing here opens a socket or loads a library; the only I/O is reading
``db.conf`` (:func:`read_dbconf`).  The client that asks the server is
either the C library through ctypes (:mod:`.library`) or the built-in
wire protocol; both hand their rows to :func:`evaluate`.

* :func:`parse_dbconf` / :func:`read_dbconf`: ``server:user:password:
  database:table``, with IndiMail's edge cases; :func:`endpoint` and
  :func:`mysql_timeout` say where and how long to connect.
* :func:`select_sql`, :func:`create_sql`: the two statements, and the
  builders of the log lines that quote them (IndiMail's texts).
* :func:`parse_env`: the ``env`` column (IndiMail's syntax), its escape defect kept.
* :func:`match_fields`: steps 1–3 of IndiMail's ``iprule`` matcher;
  :func:`names_to_resolve` lists the patterns that need step 4 (a
  host-name lookup) so that the caller can resolve them first with its
  own resolver; :func:`evaluate` walks the rows and returns an
  :class:`Outcome`.

Text: the fields of ``db.conf`` are decoded as UTF-8 with
``surrogateescape``, so :func:`to_bytes` gives back the file's bytes
exactly, whatever they are.  Column values arrive as bytes and are read
as Latin-1 (one character per byte, so again nothing is lost); the
matcher and the env parser only look at ASCII characters.

Differences from IndiMail (design: mysql-rules; the man page says the same):

* a failed or missing host-name lookup is **no match** (IndiMail: a
  match, so every wildcard pattern that does not match by fields
  matched everybody); ``compat_fail_matches=True`` brings the defect
  back, together with its sibling: a resolved IPv6 address whose text
  is 16 characters or longer also counts as a match there (IndiMail
  formats it into a 16-byte buffer, which fails, and the failure is
  returned as "match");
* the client address is the connection's own text (``TCPREMOTEIP``):
  an IPv4-mapped client is its dotted quad, a native IPv6 client its
  RFC 5952 text, never a dotted quad made of its last four bytes;
* an IPv6 client matches a rule by ``*``, by the exact text, by an
  IPv6 literal equal to it (``2001:DB8::5`` matches ``2001:db8::5``, as
  IndiMail's numeric getaddrinfo does) or by a host name resolving to
  it; field patterns (``*``, ``?``, ranges) are dotted-quad patterns and
  never match it (IndiMail split an IPv6 text at dots too: it has no
  four fields, so nothing useful could come of it);
* a pattern with fewer than four fields never matches by fields
  (IndiMail reads past the end of the text);
* patterns that cannot be host names (``192.168.1.*``, ``10.0.0.1-9``,
  anything whose last label has no letter) are not sent to the
  resolver: their lookup counts as failed at once (in compat mode: a
  match, as the failed lookup was in IndiMail);
* a NUL byte ends a column value, as it does in C; a NULL ``iprule``
  never applies; a NULL ``decision`` is not a deny (IndiMail crashes);
* an empty table name (``a:b:c:d::``) and a NUL byte in ``db.conf`` are
  ``Invalid db.conf`` (IndiMail: a query that fails for every
  connection, or names cut at the NUL);
* the table name is quoted as an identifier in the statements
  (:func:`quote_table`: ```name``` with inner backticks doubled, or
  ```database`.`name``` for a name with one dot, as IndiMail's
  unquoted name was read); a name that MySQL cannot take even quoted
  (a control character such as the ``\r`` of a CRLF file, a trailing
  space, more than 64 characters, bytes that are not UTF-8) is
  refused at start-up by :func:`read_dbconf` (:func:`table_problem`).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import os
from dataclasses import dataclass, field
from typing import (Dict, Iterator, List, Literal, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from ..address import is_mapped
from ..errors import EXIT_USAGE, Fatal, errtext
from ..scan import INT_MAX, PORT_MAX, ULONG_MAX, cut, decimal, leading

#: the statement run for every connection (``{table}`` quoted, ``{port}``)
QUERY = "select decision, iprule, env from {table} where port = {port}"
#: the statement that creates a missing table, exactly as IndiMail's
#: (the runs of four TABs come from a C string continued over lines)
CREATE = ("create table {table} (port int(5) NOT NULL, timestamp timestamp not null, "
          "\t\t\t\tiprule char(16) not null, "
          "\t\t\t\tdecision char(1) not null, env varchar(255), primary key (port))")

#: MySQL's "no such table": the query is retried once after a create
ER_NO_SUCH_TABLE = 1146
#: "table exists": another server made it between our query and create
ER_TABLE_EXISTS = 1050

#: where ``localhost`` connects without ``$MYSQL_UNIX_PORT``
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEFAULT_PORT = 3306
DEFAULT_TIMEOUT = 30
#: IndiMail maps files up to this size; larger ones are "File too large"
MAX_DBCONF = 0xFFFFFFFF
#: the longest database or table name MySQL and MariaDB accept (characters)
MAX_IDENTIFIER = 64

UnixEndpoint = Tuple[Literal["unix"], str]
TcpEndpoint = Tuple[Literal["tcp"], str, int]
Endpoint = Union[UnixEndpoint, TcpEndpoint]

Row = Sequence[Optional[bytes]]
Change = Tuple[bytes, Optional[bytes]]


# -- db.conf -----------------------------------------------------------------
class DbConf(NamedTuple):
    """The five fields of ``db.conf`` (text; :func:`to_bytes` for the
    file's bytes).  ``server`` ``localhost`` or empty: the UNIX socket;
    an empty ``user`` is left to the client (the login name)."""

    server: str
    user: str
    password: str
    database: str
    table: str


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def to_bytes(text: str) -> bytes:
    """A field of :class:`DbConf` (or a statement built from one) as the
    bytes that were in the file: UTF-8 with ``surrogateescape``."""
    return text.encode("utf-8", "surrogateescape")


def parse_dbconf(data: bytes) -> DbConf:
    """Parse the contents of ``db.conf`` (IndiMail's format).

    The text is split at colons: fields 1–4 are server, user, password
    and database.  With exactly four colons the table is the rest of the
    file less one trailing newline (a ``\\r`` or further lines stay in
    it); with five or more, the text between the fourth and the fifth
    colon (what follows is ignored).  No escapes, no trimming.

    Raises:
        Fatal: ``Invalid db.conf``: fewer than four colons (an empty file
            too), a table that is empty or starts with a newline, or a
            NUL byte in a field.
    """
    pieces = data.split(b":", 5)
    if len(pieces) < 5:
        raise Fatal("Invalid db.conf")
    table = pieces[4]
    if len(pieces) == 5 and table.endswith(b"\n") and not table.startswith(b"\n"):
        table = table[:-1]
    fields = pieces[:4] + [table]
    if not table or table.startswith(b"\n") or any(b"\0" in f for f in fields):
        raise Fatal("Invalid db.conf")
    return DbConf(*(_text(f) for f in fields))


def read_dbconf(path: str) -> DbConf:
    """Read and parse ``path`` (:func:`parse_dbconf`), and check that
    its table name can be quoted (:func:`table_problem`).

    Raises:
        Fatal: ``unable to read PATH: ERROR``, ``unable to fstat PATH:
            ERROR`` (djb's error texts), ``File too large`` (4 GiB or
            more), ``Invalid db.conf``, or ``Invalid db.conf: the table
            name "NAME" PROBLEM``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise Fatal(f"unable to read {cut(path)}: {errtext(exc)}") from None
    try:
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise Fatal(f"unable to fstat {cut(path)}: {errtext(exc)}") from None
        if size > MAX_DBCONF:
            raise Fatal("File too large")
        chunks: List[bytes] = []
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise Fatal(f"unable to read {cut(path)}: {errtext(exc)}") from None
    finally:
        os.close(fd)
    conf = parse_dbconf(b"".join(chunks))
    problem = table_problem(conf.table)
    if problem is not None:
        raise Fatal(f'Invalid db.conf: the table name "{shown(conf.table)}" {problem}')
    return conf


def _identifier_problem(name: str) -> Optional[str]:
    if not name:
        return "has an empty part"
    if len(name) > MAX_IDENTIFIER:
        return f"has a part longer than {MAX_IDENTIFIER} characters"
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            return "is not UTF-8"
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return "has a control character"
        if code > 0xFFFF:
            return "has a character outside Unicode's Basic Multilingual Plane"
    if name.endswith(" "):
        return "ends with a space"
    return None


def table_problem(table: str) -> Optional[str]:
    """Why ``table`` (from ``db.conf``) cannot be quoted as MySQL's table
    name, or None if it can.

    A name is a table name, or ``database.table`` (one dot: IndiMail put
    the name into the statement unquoted, so a dot qualified it).  Each
    part must be 1 to 64 characters of UTF-8 from Unicode's Basic
    Multilingual Plane, without control characters (a CRLF ``db.conf``
    leaves a ``\r`` at the end of the name) and without a trailing
    space: what MySQL and MariaDB accept in a quoted identifier.

    Returns:
        The problem in words (``has a control character``, ...), to
        follow the name in a message.
    """
    parts = table.split(".")
    if len(parts) > 2:
        return "has more than one dot"
    for part in parts:
        problem = _identifier_problem(part)
        if problem is not None:
            return problem
    return None


def quote_table(table: str) -> str:
    """``table`` quoted for a statement: ```name``` (inner backticks
    doubled), or ```database`.`name``` for ``database.name``.

    Raises:
        ValueError: the name cannot be quoted (:func:`table_problem`).
    """
    problem = table_problem(table)
    if problem is not None:
        raise ValueError(f'the table name "{shown(table)}" {problem}')
    return ".".join("`" + part.replace("`", "``") + "`" for part in table.split("."))


def shown(text: str) -> str:
    """``text`` for a one-line message: control characters, backslashes
    and the bytes that were not UTF-8 as backslash escapes (``\r``,
    ``\x00``, ``\xff``)."""
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char == "\r":
            out.append("\\r")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    return "".join(out)


def endpoint(conf: DbConf, environ: Mapping[str, str]) -> Endpoint:
    """Where to connect, as the MySQL client libraries decide it.

    Returns:
        ``("unix", path)`` for server ``localhost`` or an empty server:
        ``$MYSQL_UNIX_PORT`` if set and not empty, else
        :data:`DEFAULT_SOCKET`; otherwise ``("tcp", server, port)`` with
        ``$MYSQL_TCP_PORT`` when it is a number from 1 to 65535, else
        3306.
    """
    if conf.server in ("", "localhost"):
        return ("unix", environ.get("MYSQL_UNIX_PORT") or DEFAULT_SOCKET)
    port = decimal(environ.get("MYSQL_TCP_PORT", ""), PORT_MAX)
    return ("tcp", conf.server, port if port else DEFAULT_PORT)


def mysql_timeout(environ: Mapping[str, str]) -> float:
    """``$MYSQL_TIMEOUT``: the connect timeout in seconds, 30 if unset.

    Read as IndiMail's ``scan_ulong`` reads it: the leading digits, so
    ``"10s"`` is 10 and a text without digits is 0, which means no limit
    of ours (the system's own connect timeout).  Clamped to 2**31 - 1.
    """
    text = environ.get("MYSQL_TIMEOUT")
    if text is None:
        return float(DEFAULT_TIMEOUT)
    return float(leading(text, INT_MAX))


class DbTls(NamedTuple):
    """TLS to a database reached over TCP (a UNIX socket needs none).

    Attributes:
        required: a server that does not offer TLS is refused
            (``$MYSQL_SSL=required``, or a CA).
        ca: ``$MYSQL_SSL_CA``, made absolute: a PEM file of CA
            certificates; the server's certificate must chain to one of
            them and name db.conf's server.  Only this TLS, or a UNIX
            socket, carries the password in clear.  None: TLS (when the
            server offers it) is not verified.
    """

    required: bool
    ca: Optional[str]


def db_tls(environ: Mapping[str, str]) -> DbTls:
    """``$MYSQL_SSL`` (unset, empty or ``preferred``: TLS when the
    server offers it; ``required``: refuse a server without TLS; any
    case) and ``$MYSQL_SSL_CA`` (a CA file: verified TLS, required).

    Raises:
        Fatal: exit 100, ``MYSQL_SSL must be preferred or required,
            not "VALUE"``.
    """
    mode = environ.get("MYSQL_SSL", "")
    if mode.lower() not in ("", "preferred", "required"):
        raise Fatal(f'MYSQL_SSL must be preferred or required, not "{shown(mode[:100])}"',
                    EXIT_USAGE)
    ca = environ.get("MYSQL_SSL_CA") or None
    if ca is not None:
        ca = os.path.abspath(ca)
    return DbTls(mode.lower() == "required" or ca is not None, ca)


# -- statements and log lines ------------------------------------------------
def _port(port: int) -> str:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("the port must be an int")
    return "%d" % port


def select_sql(table: str, port: int) -> str:
    """``select decision, iprule, env from `TABLE` where port = PORT``.

    Only two things go into the statement: the table name, from
    ``db.conf``, which the administrator wrote, quoted as an identifier
    (:func:`quote_table`; IndiMail did not quote it), and the local
    port, an ``int`` formatted here.  Nothing a client sends (its
    address, names, ident answer) is ever put into SQL: the client's
    address is compared with the rows in Python.

    Raises:
        ValueError: a table name that cannot be quoted.
        TypeError: a port that is not an int.
    """
    return QUERY.format(table=quote_table(table), port=_port(port))


def create_sql(table: str) -> str:
    """IndiMail's ``create table`` statement for ``table`` (its exact text),
    TABs included, the name quoted.  The table name comes from
    ``db.conf`` only.

    Raises:
        ValueError: a table name that cannot be quoted.
    """
    return CREATE.format(table=quote_table(table))


def connect_error(error: str) -> str:
    """``Unable to connect to MySQL Server: ERROR``: fatal at start-up,
    or after ``dropping connection, `` in a child that reconnects."""
    return f"Unable to connect to MySQL Server: {error}"


def create_error(table: str, error: str) -> str:
    """The text after ``dropping connection, `` when the create failed."""
    return f"{create_sql(table)}: {error}"


def query_error(table: str, port: int, error: str) -> str:
    """The text after ``dropping connection, `` when the query failed."""
    return f"{select_sql(table, port)}: {error}"


def result_error(table: str, port: int, error: str) -> str:
    """The text after ``dropping connection, `` when fetching the result
    failed: IndiMail puts no separator before ``mysql_store_result``."""
    return f"{select_sql(table, port)}mysql_store_result: {error}"


def deny_line(port: int, rule: str) -> str:
    """``MySQL: Port P: IPrule R`` (after ``tcpserver: ``, verbosity ≥ 1)."""
    return f"MySQL: Port {_port(port)}: IPrule {rule}"


# -- the env column ----------------------------------------------------------
def parse_env(text: str) -> List[Tuple[str, str]]:
    """The ``env`` column: comma-separated ``NAME=VALUE`` items (IndiMail's syntax).

    A backslash right before a comma makes it a literal comma and is
    removed.  IndiMail's defect is kept: the character after such a
    comma is not looked at, so ``A=x\\,,B=y`` gives ``A`` = ``x,,B=y``.
    Each item is split at its first ``=``; items without ``=`` and items
    with an empty name are ignored; nothing is trimmed.

    Returns:
        ``(name, value)`` pairs in order.
    """
    buf = list(text)
    found: List[Tuple[str, str]] = []

    def item(chars: List[str]) -> None:
        name, eq, value = "".join(chars).partition("=")
        if eq and name:
            found.append((name, value))

    start = 0
    pos = 0
    while pos < len(buf):
        if buf[pos] == ",":
            if pos != 0 and buf[pos - 1] == "\\":
                del buf[pos - 1]        # the comma moves to pos - 1 ...
                pos += 1                # ... and the next character is skipped
                continue
            item(buf[start:pos])
            start = pos + 1
        pos += 1
    item(buf[start:])
    return found


# -- the iprule matcher ------------------------------------------------------
_DIGITS = "0123456789"
_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"
_C_SPACE = " \t\n\v\f\r"
INADDR_NONE = 0xFFFFFFFF


def _number(text: str, start: int) -> Tuple[Optional[int], int]:
    """``strtoul(text + start, &end, 0)`` on a text that starts with a
    digit: (value or None if above 32 bits, end)."""
    size = len(text)
    if text.startswith(("0x", "0X"), start) and start + 2 < size and text[start + 2] in _HEX:
        end = start + 2
        while end < size and text[end] in _HEX:
            end += 1
        digits, base, room = text[start + 2:end], 16, 8
    elif text[start] == "0":
        end = start + 1
        while end < size and text[end] in _OCTAL:
            end += 1
        digits, base, room = text[start:end], 8, 11
    else:
        end = start
        while end < size and text[end] in _DIGITS:
            end += 1
        digits, base, room = text[start:end], 10, 10
    significant = digits.lstrip("0")
    if len(significant) > room:         # bounded before int()
        return None, end
    value = int(significant, base) if significant else 0
    return (value if value <= 0xFFFFFFFF else None), end


def inet_aton(text: str, exact: bool = False) -> Optional[int]:
    """glibc's ``inet_aton``: ``a.b.c.d``, ``a.b.c`` (c: 16 bits),
    ``a.b`` (b: 24 bits) or ``a`` (32 bits), each part decimal, octal
    (``0…``) or hex (``0x…``).  Text after the address is accepted when
    it starts with a C space (``inet_aton`` and ``inet_addr`` ignore it)
    unless ``exact`` (getaddrinfo's reading).

    Returns:
        The address as a 32-bit number, or None.
    """
    parts: List[int] = []
    size = len(text)
    pos = 0
    while True:
        if pos >= size or text[pos] not in _DIGITS:
            return None
        value, pos = _number(text, pos)
        if value is None:
            return None
        if pos < size and text[pos] == ".":
            if len(parts) > 2 or value > 0xFF:
                return None
            parts.append(value)
            pos += 1
            continue
        break
    if pos < size and (exact or text[pos] not in _C_SPACE):
        return None
    if value > (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)[len(parts)]:
        return None
    for index, part in enumerate(parts):
        value |= part << (24 - 8 * index)
    return value


def inet_addr_valid(token: str) -> bool:
    """Step 2's test: ``inet_addr(token) != INADDR_NONE`` (so
    ``255.255.255.255``, which is INADDR_NONE, counts as invalid)."""
    value = inet_aton(token)
    return value is not None and value != INADDR_NONE


def _field_matches(pattern: str, client: str) -> bool:
    if pattern == "*":
        return True
    chars: List[str] = []
    for pos, char in enumerate(pattern):
        if char == "?":
            if pos >= len(client):
                break                   # the client field is shorter: cut here
            char = client[pos]
        chars.append(char)
    substituted = "".join(chars)
    if substituted == client:
        return True
    low_text, dash, high_text = substituted.partition("-")
    if not dash:
        return False
    low = leading(low_text, ULONG_MAX)
    high = 256 if not high_text else leading(high_text, ULONG_MAX)
    return low <= leading(client, ULONG_MAX) <= high


def match_fields(token: str, ip: str) -> Optional[bool]:
    """Steps 1–3 of IndiMail's ``iprule`` matcher.

    1. ``token == ip`` → True.
    2. ``token`` a valid ``inet_addr`` address → False (it would have
       been equal).
    3. Field match, dotted-quad clients only: ``*``, ``?`` (takes the
       client's character; cuts the pattern where the client field is
       shorter), ranges ``low-high`` (``-high``: low 0; ``low-``: high
       256) on the decimal value of the client field.  All four fields
       → True.  A pattern with fewer than four fields never matches
       here; fields after the fourth are not looked at.

    Args:
        token: the pattern (the ``iprule`` column).
        ip: the client's address text (``TCPREMOTEIP``; an IPv4-mapped
            text is taken as its dotted quad).

    Returns:
        True (match), False (no match), or None: step 3 did not match,
        so step 4 decides (the pattern as a host name or an address
        literal, :func:`evaluate`).
    """
    ip = _client(ip)
    if token == ip:
        return True
    if inet_addr_valid(token):
        return False
    if ":" not in ip:
        tfields = token.split(".")
        cfields = ip.split(".")
        if len(tfields) >= 4 and len(cfields) >= 4 and all(
                _field_matches(tfields[i], cfields[i]) for i in range(4)):
            return True
    return None


def _literal(token: str) -> Optional[str]:
    """The address a numeric ``getaddrinfo`` makes of ``token``, as
    text, or None if ``token`` is no address literal."""
    value = inet_aton(token, exact=True)
    if value is not None:
        return str(ipaddress.IPv4Address(value))
    if ":" in token:
        try:
            addr = ipaddress.IPv6Address(token.partition("%")[0])
        except ValueError:
            return None
        return _canonical(str(addr))
    return None


def _canonical(text: str) -> str:
    """Address text in one form (IPv4-mapped → dotted quad, IPv6
    compressed and lower-case, scope dropped); other text unchanged."""
    if ":" not in text:
        return text
    try:
        addr = ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return text
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def _client(ip: str) -> str:
    """The client's text, an IPv4-mapped one as its dotted quad."""
    return _canonical(ip) if is_mapped(ip) else ip


def _hostname_like(token: str) -> bool:
    """Could a resolver find ``token``?  Letters, digits, ``-``, ``_``
    and dots, labels of 1–63 characters (a final dot allowed), at most
    253 characters, and a last label with a letter (no top-level domain
    is all digits, so ``10.0.0.1-9`` is a range that did not match, not
    a name)."""
    name = token[:-1] if token.endswith(".") else token
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= 63:
            return False
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            return False
    return any(c.isalpha() for c in labels[-1])


def _clean(value: Optional[bytes]) -> Optional[str]:
    """A column value as text, cut at a NUL as C would; None stays."""
    if value is None:
        return None
    return value.split(b"\0", 1)[0].decode("latin-1")


def _applies_by_fields(rule: str, ip: str) -> Optional[bool]:
    return True if rule == "*" else match_fields(rule, ip)


def names_to_resolve(rows: Sequence[Row], ip: str) -> List[str]:
    """The patterns for which :func:`evaluate` would look at a host-name
    lookup for this client: those that reach step 4 and could be host
    names (address literals are read without a lookup; other text, such
    as ``192.168.1.*``, counts as a failed lookup).  In row order,
    without repeats; none after a deny row that applies by steps 1–3,
    since evaluation stops there.

    The caller resolves each (any family) and passes the textual
    addresses to :func:`evaluate` as ``resolved``.  (:class:`Plan` does
    the same for many clients of one result.)
    """
    return Plan(rows).names_to_resolve(ip)


@dataclass
class Outcome:
    """What the rows say about one client.

    Attributes:
        denied: a deny row applied (the connection is refused later, at
            the ``deny`` line, as in IndiMail).
        deny_rule: that row's ``iprule``, for :func:`deny_line`.
        changes: environment changes from the allowing rows that
            applied (before the deny, if any), in order.
        max_per_host: the per-host limit of the last ``MAXPERIP=``
            assignment among them (leading digits), None if none.
    """

    denied: bool = False
    deny_rule: Optional[str] = None
    changes: List[Change] = field(default_factory=list)
    max_per_host: Optional[int] = None


def resolves_to(ip: str, addresses: Sequence[str]) -> bool:
    """Is the client ``ip`` among ``addresses`` (a host name's, as text;
    IPv4-mapped and IPv6 forms compared as addresses)?"""
    want = _canonical(_client(ip))
    return any(_canonical(text) == want for text in addresses)


def _step4(entry: "_Entry", ip: str, resolved: Mapping[str, List[str]], compat: bool) -> bool:
    if entry.literal is not None:
        addresses: Optional[List[str]] = [entry.literal]
    else:
        addresses = resolved.get(entry.rule) if entry.hostname else None
    if not addresses:                   # failed, missing or empty lookup
        return compat
    want = _canonical(ip)
    for text in addresses:
        canonical = _canonical(text)
        if compat and ":" in canonical and len(canonical) >= 16:
            return True                 # inet_ntop into 16 bytes failed: "match"
        if canonical == want:
            return True
    return False


def evaluate(rows: Sequence[Row], ip: str, resolved: Mapping[str, List[str]],
             port: int, compat_fail_matches: bool = False) -> Outcome:
    """Walk the rows in the server's order (as IndiMail does).

    A row applies if its ``iprule`` is ``*`` or matches ``ip`` (steps 1-3 in
    :func:`match_fields`, then step 4).  The first applying row whose
    ``decision`` starts with ``D`` denies and ends the walk; every other
    applying row adds its ``env`` (:func:`parse_env`).

    Args:
        rows: ``(decision, iprule, env)`` column values, None for NULL.
        ip: the client's address text (``TCPREMOTEIP``).
        resolved: for the patterns of :func:`names_to_resolve`, the
            textual addresses they resolved to; a pattern missing here,
            or with an empty list, is a failed lookup.
        port: the local port (only checked to be an int here; the rows
            are those of this port already).
        compat_fail_matches: IndiMail's defect: a failed lookup (and a
            resolved IPv6 address of 16 characters or more) is a match.

    Returns:
        The :class:`Outcome`.  (:class:`Plan` does the same for many
        clients of one result.)
    """
    _port(port)
    return Plan(rows).evaluate(ip, resolved, compat_fail_matches)


class _Entry(NamedTuple):
    """One row, read once: what it says whoever the client is."""

    rule: str
    deny: bool
    changes: Tuple[Change, ...]
    max_per_host: Optional[int]
    exact: bool                 # an inet_addr address: applies to that text only
    literal: Optional[str]      # step 4 without DNS: the address it is
    hostname: bool              # step 4 by a lookup


@functools.lru_cache(maxsize=1 << 14)
def _entry(decision_raw: Optional[bytes], rule_raw: Optional[bytes],
           env_raw: Optional[bytes]) -> Optional[_Entry]:
    """A row's meaning, cached on its column bytes (a table asked again
    and again costs a lookup per row); None for a NULL ``iprule``, which
    never applies."""
    rule = _clean(rule_raw)
    if rule is None:
        return None
    decision = _clean(decision_raw)
    changes: List[Change] = []
    limit: Optional[int] = None
    text = _clean(env_raw)
    if text is not None:
        for name, value in parse_env(text):
            changes.append((name.encode("latin-1"), value.encode("latin-1")))
            if name == "MAXPERIP":
                limit = leading(value, INT_MAX)
    # steps 1 and 2: a valid inet_addr token applies to its own text or never
    exact = rule != "*" and inet_addr_valid(rule)
    literal = None if exact else _literal(rule)
    return _Entry(rule, decision is not None and decision.startswith("D"), tuple(changes),
                  limit, exact, literal, literal is None and _hostname_like(rule))


class Plan:
    """The rows of one result, read once for all the clients that get it.

    Rows whose ``iprule`` is an ``inet_addr`` address apply only to a
    client of that very text (steps 1-2), so they are indexed by it; the
    other rows are kept in order.  A client then costs a dictionary
    lookup plus the walk of the other rows, whatever the table's size.
    """

    __slots__ = ("entries", "exact", "others")

    def __init__(self, rows: Sequence[Row]) -> None:
        self.entries: List[_Entry] = []
        self.exact: Dict[str, List[int]] = {}
        self.others: List[int] = []
        for row in rows:
            entry = _entry(row[0] if len(row) > 0 else None, row[1] if len(row) > 1 else None,
                           row[2] if len(row) > 2 else None)
            if entry is None:
                continue
            at = len(self.entries)
            self.entries.append(entry)
            if entry.exact:
                self.exact.setdefault(entry.rule, []).append(at)
            else:
                self.others.append(at)

    def _walk(self, ip: str) -> Iterator[Tuple[_Entry, Optional[bool]]]:
        """The rows that may apply to ``ip`` in order, each with steps
        1-3's answer (None: step 4 decides)."""
        hits = self.exact.get(ip)
        order = heapq.merge(hits, self.others) if hits else self.others
        for at in order:
            entry = self.entries[at]
            if entry.exact:
                yield entry, True
            else:
                yield entry, _applies_by_fields(entry.rule, ip)

    def names_to_resolve(self, ip: str) -> List[str]:
        """As :func:`names_to_resolve`."""
        ip = _client(ip)
        wanted: List[str] = []
        for entry, verdict in self._walk(ip):
            if verdict is None:
                if entry.hostname and entry.rule not in wanted:
                    wanted.append(entry.rule)
            elif verdict and entry.deny:
                break
        return wanted

    def evaluate(self, ip: str, resolved: Mapping[str, List[str]],
                 compat_fail_matches: bool = False) -> Outcome:
        """As :func:`evaluate`."""
        ip = _client(ip)
        outcome = Outcome()
        for entry, verdict in self._walk(ip):
            if verdict is None:
                verdict = _step4(entry, ip, resolved, compat_fail_matches)
            if not verdict:
                continue
            if entry.deny:
                outcome.denied = True
                outcome.deny_rule = entry.rule
                break
            if entry.changes:
                outcome.changes.extend(entry.changes)
                if entry.max_per_host is not None:
                    outcome.max_per_host = entry.max_per_host
        return outcome


__all__ = [
    "QUERY", "CREATE", "ER_NO_SUCH_TABLE", "DEFAULT_SOCKET", "DEFAULT_PORT", "DEFAULT_TIMEOUT",
    "DbConf", "Endpoint", "UnixEndpoint", "TcpEndpoint", "Outcome", "Row",
    "parse_dbconf", "read_dbconf", "to_bytes", "endpoint", "mysql_timeout", "DbTls", "db_tls",
    "table_problem", "quote_table", "shown",
    "select_sql", "create_sql", "connect_error", "create_error", "query_error",
    "result_error", "deny_line", "parse_env", "inet_aton", "inet_addr_valid",
    "match_fields", "names_to_resolve", "resolves_to", "evaluate", "Plan",
]
