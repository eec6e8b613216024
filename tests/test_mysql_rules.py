"""The pure part of ``-m db.conf`` (ucspi/mysql/rules.py): db.conf, the
statements, the env column, the iprule matcher and the walk over rows
(IndiMail's ``-m``; design: mysql-rules)."""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from ucspi.errors import Fatal
from ucspi.mysql import rules
from ucspi.mysql.rules import (
    DbConf,
    Outcome,
    create_sql,
    evaluate,
    inet_addr_valid,
    match_fields,
    names_to_resolve,
    parse_dbconf,
    parse_env,
    read_dbconf,
    select_sql,
)


# -- db.conf -----------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    (b"db.example:u:p:mail:rules", ("db.example", "u", "p", "mail", "rules")),
    (b"db.example:u:p:mail:rules\n", ("db.example", "u", "p", "mail", "rules")),
    # one trailing newline only; a CR or further lines stay in the table
    (b"h:u:p:d:t\n\n", ("h", "u", "p", "d", "t\n")),
    (b"h:u:p:d:t\r\n", ("h", "u", "p", "d", "t\r")),
    (b"h:u:p:d:t\nmore\n", ("h", "u", "p", "d", "t\nmore")),
    # five or more colons: the table ends at the fifth, the rest ignored
    (b"h:u:p:d:t:", ("h", "u", "p", "d", "t")),
    (b"h:u:p:d:t:junk:more\n", ("h", "u", "p", "d", "t")),
    (b"h:u:p:d:t\n:x", ("h", "u", "p", "d", "t\n")),
    # empty fields, no trimming
    (b"::::t", ("", "", "", "", "t")),
    (b" h : u :p:d: t \n", (" h ", " u ", "p", "d", " t ")),
    (b"localhost:u:p\xff:d:t", ("localhost", "u", "p\udcff", "d", "t")),
])
def test_dbconf_fields(data: bytes, expected: Tuple[str, str, str, str, str]) -> None:
    assert parse_dbconf(data) == DbConf(*expected)


@pytest.mark.parametrize("data", [
    b"", b"\n", b"h:u:p:d", b"h:u:p:d\n", b"h:u:p", b"no colons at all\n",
    b"h:u:p:d:", b"h:u:p:d:\n", b"h:u:p:d:\nt", b"h:u:p:d::",  b"h:u:p:d::t",
    b"h:u:p:d:\n:", b"h:u\0:p:d:t", b"h:u:p:d:t\0",
])
def test_dbconf_invalid(data: bytes) -> None:
    with pytest.raises(Fatal) as info:
        parse_dbconf(data)
    assert str(info.value) == "Invalid db.conf"
    assert info.value.code == 111


def test_dbconf_bytes_round_trip() -> None:
    conf = parse_dbconf(b"h:us\xe9r:p\xff\xfe:d:t")
    assert rules.to_bytes(conf.user) == b"us\xe9r"
    assert rules.to_bytes(conf.password) == b"p\xff\xfe"


def test_read_dbconf(tmp_path: Path) -> None:
    path = tmp_path / "db.conf"
    path.write_bytes(b"localhost:tcp:secret:indimail:tcprules\n")
    assert read_dbconf(str(path)) == DbConf("localhost", "tcp", "secret", "indimail", "tcprules")
    path.write_bytes(b"")
    with pytest.raises(Fatal, match="^Invalid db.conf$"):
        read_dbconf(str(path))


def test_read_dbconf_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothere")
    with pytest.raises(Fatal) as info:
        read_dbconf(missing)
    assert str(info.value) == f"unable to read {missing}: file does not exist"
    with pytest.raises(Fatal) as info:
        read_dbconf(str(tmp_path))
    assert str(info.value) == f"unable to read {tmp_path}: is a directory"


def test_read_dbconf_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge.conf"
    with open(path, "wb") as handle:
        handle.truncate(2**32)                   # sparse: 4 GiB of nothing
    with pytest.raises(Fatal, match="^File too large$"):
        read_dbconf(str(path))


# -- where to connect ---------------------------------------------------------
CONF = DbConf("db.example", "u", "p", "d", "t")


def test_endpoint_unix() -> None:
    for server in ("localhost", ""):
        conf = CONF._replace(server=server)
        assert rules.endpoint(conf, {}) == ("unix", "/run/mysqld/mysqld.sock")
        assert rules.endpoint(conf, {"MYSQL_UNIX_PORT": "/tmp/my.sock"}) == ("unix", "/tmp/my.sock")
        assert rules.endpoint(conf, {"MYSQL_UNIX_PORT": ""}) == ("unix", "/run/mysqld/mysqld.sock")
    # only the exact name: 127.0.0.1 and LOCALHOST are TCP, as in libmysql
    assert rules.endpoint(CONF._replace(server="127.0.0.1"), {}) == ("tcp", "127.0.0.1", 3306)
    assert rules.endpoint(CONF._replace(server="LOCALHOST"), {})[0] == "tcp"


@pytest.mark.parametrize("text, port", [
    (None, 3306), ("3307", 3307), ("1", 1), ("65535", 65535), ("065535", 65535),
    ("0", 3306), ("65536", 3306), ("", 3306), ("33x", 3306), (" 3307", 3306),
    ("9" * 5000, 3306), ("\u0664", 3306),
])
def test_endpoint_tcp_port(text: Optional[str], port: int) -> None:
    env = {} if text is None else {"MYSQL_TCP_PORT": text}
    assert rules.endpoint(CONF, env) == ("tcp", "db.example", port)


@pytest.mark.parametrize("text, seconds", [
    (None, 30.0), ("5", 5.0), ("0", 0.0), ("abc", 0.0), ("", 0.0), ("10s", 10.0),
    ("9" * 5000, float(2**31 - 1)),
])
def test_mysql_timeout(text: Optional[str], seconds: float) -> None:
    env = {} if text is None else {"MYSQL_TIMEOUT": text}
    assert rules.mysql_timeout(env) == seconds


# -- statements and lines -----------------------------------------------------
def test_select_sql() -> None:
    assert select_sql("tcprules", 25) == \
        "select decision, iprule, env from `tcprules` where port = 25"
    assert rules.QUERY.format(table="x", port=1) == "select decision, iprule, env from x where port = 1"
    with pytest.raises(TypeError):
        select_sql("t", "25; drop table t")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        select_sql("t", True)


def test_create_sql_exact() -> None:
    assert create_sql("tcprules") == (
        "create table `tcprules` (port int(5) NOT NULL, timestamp timestamp not null, "
        "\t\t\t\tiprule char(16) not null, \t\t\t\tdecision char(1) not null, "
        "env varchar(255), primary key (port))")


def test_error_lines() -> None:
    assert rules.connect_error("Access denied") == "Unable to connect to MySQL Server: Access denied"
    assert rules.query_error("t", 25, "gone") == \
        "select decision, iprule, env from `t` where port = 25: gone"
    assert rules.result_error("t", 25, "gone") == \
        "select decision, iprule, env from `t` where port = 25mysql_store_result: gone"
    assert rules.create_error("t", "denied") == create_sql("t") + ": denied"
    assert rules.deny_line(25, "10.*.*.*") == "MySQL: Port 25: IPrule 10.*.*.*"


@pytest.mark.parametrize("table, quoted", [
    ("tcprules", "`tcprules`"),
    ("odd`name", "`odd``name`"),
    ("``", "``````"),
    ("with space", "`with space`"),
    (" lead", "` lead`"),
    ("t; drop table x", "`t; drop table x`"),
    ("r\u00e8gles", "`r\u00e8gles`"),
    ("indimail.tcprules", "`indimail`.`tcprules`"),     # a dot qualified it in IndiMail
    ("x" * 64, "`" + "x" * 64 + "`"),
])
def test_quote_table(table: str, quoted: str) -> None:
    assert rules.table_problem(table) is None
    assert rules.quote_table(table) == quoted
    assert select_sql(table, 7) == f"select decision, iprule, env from {quoted} where port = 7"
    assert create_sql(table).startswith(f"create table {quoted} (port int(5) NOT NULL, ")


@pytest.mark.parametrize("table, problem", [
    ("t\r", "has a control character"),
    ("t\nmore", "has a control character"),
    ("t\x7f", "has a control character"),
    ("t\x85", "has a control character"),
    ("t ", "ends with a space"),
    ("db.t ", "ends with a space"),
    ("a.b.c", "has more than one dot"),
    (".t", "has an empty part"),
    ("db.", "has an empty part"),
    ("x" * 65, "has a part longer than 64 characters"),
    ("t\udcff", "is not UTF-8"),
    ("t\U0001f600", "has a character outside Unicode's Basic Multilingual Plane"),
])
def test_table_that_cannot_be_quoted(table: str, problem: str) -> None:
    assert rules.table_problem(table) == problem
    with pytest.raises(ValueError):
        rules.quote_table(table)
    with pytest.raises(ValueError):
        select_sql(table, 25)


@pytest.mark.parametrize("data, message", [
    (b"h:u:p:d:t\r\n", 'Invalid db.conf: the table name "t\\r" has a control character'),
    (b"h:u:p:d:t\nmore\n",
     'Invalid db.conf: the table name "t\\nmore" has a control character'),
    (b"h:u:p:d:t \n", 'Invalid db.conf: the table name "t " ends with a space'),
    (b"h:u:p:d:t\xff\n", 'Invalid db.conf: the table name "t\\xff" is not UTF-8'),
])
def test_read_dbconf_refuses_a_table_that_cannot_be_quoted(tmp_path: Path, data: bytes,
                                                            message: str) -> None:
    path = tmp_path / "db.conf"
    path.write_bytes(data)
    with pytest.raises(Fatal) as info:
        read_dbconf(str(path))
    assert (str(info.value), info.value.code) == (message, 111)


# -- env ----------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("A=1,B=2", [("A", "1"), ("B", "2")]),
    ("A=1", [("A", "1")]),
    ("", []),
    ("A=", [("A", "")]),
    ("A=b=c", [("A", "b=c")]),
    ("A=1, B=2", [("A", "1"), (" B", "2")]),            # nothing trimmed
    ("A=1,NOEQ,B=2", [("A", "1"), ("B", "2")]),         # no '=': ignored
    ("=x,A=1", [("A", "1")]),                           # empty name: ignored
    (",A=1,", [("A", "1")]),
    ("A=1,,B=2", [("A", "1"), ("B", "2")]),
    ("A=x\\,y,B=2", [("A", "x,y"), ("B", "2")]),        # escaped comma
    ("A=x\\,,B=y", [("A", "x,,B=y")]),                  # the kept defect
    ("A=x\\,yB=1,C=2", [("A", "x,yB=1"), ("C", "2")]),
    ("A=\\\\,B=1", [("A", "\\,B=1")]),                  # no escape for the backslash
    ("A=x\\", [("A", "x\\")]),
    ("A=x\\,", [("A", "x,")]),
    ("\\,A=1", [(",A", "1")]),                          # a leading escaped comma stays
])
def test_parse_env(text: str, expected: List[Tuple[str, str]]) -> None:
    assert parse_env(text) == expected


# -- the matcher --------------------------------------------------------------
@pytest.mark.parametrize("token, ip, expected", [
    # examples of IndiMail's matcher (with the fix)
    ("202.144.*.?", "202.144.7.3", True),
    ("202.144.*.?", "202.144.7.33", None),
    ("202.144.10-20.1", "202.144.15.1", True),
    ("202.144.10-20.1", "202.144.10.1", True),
    ("202.144.10-20.1", "202.144.20.1", True),
    ("202.144.10-20.1", "202.144.21.1", None),
    ("10.1.1.1", "10.1.1.2", False),
    ("12?.0.0.1", "12.0.0.1", True),
    ("12?.0.0.1", "123.0.0.1", True),
    ("12?.0.0.1", "1.0.0.1", None),
    ("1-.2.3.4", "200.2.3.4", True),
    ("1-.2.3.4", "0.2.3.4", None),
    ("-5.2.3.4", "0.2.3.4", True),
    ("-5.2.3.4", "6.2.3.4", None),
    # exact
    ("10.1.1.1", "10.1.1.1", True),
    ("*.*.*.*", "1.2.3.4", True),
    ("1.*.*.*", "2.2.3.4", None),
    ("1?.2.3.4", "1.2.3.4", True),
    ("??.2.3.4", "123.2.3.4", None),
    ("1??.2.3.4", "123.2.3.4", True),
    ("*.2.3.4?", "1.2.3.4", True),
    # only "*" alone is a wildcard
    ("1*.2.3.4", "10.2.3.4", None),
    # fewer than four fields never match by fields; more are not looked at
    ("10.*.*", "10.1.2.3", None),
    ("10.*", "10.1.2.3", None),
    ("*", "10.1.2.3", None),                # the caller checks "*" itself
    ("1.2.3.4.5", "1.2.3.4", True),
    # inet_addr forms: valid -> no match, even when the value is equal
    ("10.1", "10.0.0.1", False),
    ("167772161", "10.0.0.1", False),
    ("0x0a.0.0.1", "10.0.0.1", False),
    ("012.0.0.1", "10.0.0.1", False),
    ("10.1.1.1 junk", "10.1.1.1", False),   # inet_addr ignores text after a space
    # 255.255.255.255 is INADDR_NONE: "invalid", falls through to the fields
    ("255.255.255.255", "255.255.255.255", True),
    ("255.255.255.*", "255.255.255.255", True),
    # ranges use the leading digits
    ("1-3x.2.3.4", "2.2.3.4", True),
    ("x-3.2.3.4", "0.2.3.4", True),
    # IPv6 clients: exact only here; field patterns never match
    ("2001:db8::5", "2001:db8::5", True),
    ("*.*.*.*", "2001:db8::5", None),
    ("2001:db8::*", "2001:db8::5", None),
    ("*.2.3.4", "64:ff9b::1.2.3.4", None),
    ("10.0.0.1", "2001:db8::5", False),
    # mapped clients are their dotted quad
    ("10.0.0.*", "::ffff:10.0.0.1", True),
    ("host.example", "10.0.0.1", None),
])
def test_match_fields(token: str, ip: str, expected: Optional[bool]) -> None:
    assert match_fields(token, ip) is expected


@pytest.mark.parametrize("token", [
    "1", "1.2", "1.2.3", "1.2.3.4", "0x7f.1", "0X7F000001", "017700000001", "0.0.0.0",
    "255.255.255.254", "4294967294", "1.2.3.4 ", "1.2.3.4\tx", "1.2.3.4\n", "00000000001.2.3.4",
    "0xff.0xfffffe",
])
def test_inet_addr_valid(token: str) -> None:
    assert inet_addr_valid(token)


@pytest.mark.parametrize("token", [
    "", " 1.2.3.4", "1.2.3.4.5", "256.1.1.1", "1.256.1.1", "1.2.65536", "1.16777216",
    "4294967296", "255.255.255.255", "4294967295", "0xffffffff", "08.1.1.1", "0x.1.1.1",
    "1..2.3", "1.2.3.", "1.2.3.4x", "-1.2.3.4", "+1.2.3.4", "1.2.3.*", "a.b.c.d",
    "\u0661.2.3.4", "1" * 5000, "0x" + "f" * 5000, "1.2.3.4\u00a0",
])
def test_inet_addr_invalid(token: str) -> None:
    assert not inet_addr_valid(token)


def _libc_inet_addr() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def test_inet_addr_against_libc() -> None:
    """Our reading agrees with this system's inet_addr and, in the exact
    form, with inet_aton that getaddrinfo uses (differential)."""
    libc = _libc_inet_addr()
    if libc is None:
        pytest.skip("no libc")
    libc.inet_addr.argtypes = [ctypes.c_char_p]
    libc.inet_addr.restype = ctypes.c_uint32
    samples = [
        "1", "1.2", "1.2.3", "1.2.3.4", "0x7f.1", "017.1.2.3", "08.1.2.3", "0x.1", "0x1g",
        "255.255.255.255", "255.255.255.254", "4294967295", "4294967296", "1.2.3.4 x",
        "1.2.3.4x", "1.2.3.4.5", "1..2", "1.2.3.", ".1.2.3", "", "1.256.2.3", "1.2.65535",
        "1.2.65536", "1.16777215", "0xffffffff", "0xFFFFFFFe", "00000000000000000001.2",
        "1.2.3.4\t", "1.2.3.4\v", "9" * 30, "0xff.0xffffff", "0377.0377.0377.0377", "0x" + "0" * 30 + "1", "10.1.1.*", "1-2.3.4.5",
    ]
    for text in samples:
        value = libc.inet_addr(text.encode())
        assert inet_addr_valid(text) == (value != 0xFFFFFFFF), text
        ours = rules.inet_aton(text)
        if value != 0xFFFFFFFF:
            assert ours is not None
            assert socket.inet_ntoa(ours.to_bytes(4, "big")) == \
                socket.inet_ntoa(value.to_bytes(4, "little")), text


# -- evaluate -----------------------------------------------------------------
def row(decision: Optional[bytes], iprule: Optional[bytes], env: Optional[bytes] = None) -> List[Optional[bytes]]:
    return [decision, iprule, env]


NONE: Dict[str, List[str]] = {}


def test_evaluate_nothing_applies() -> None:
    assert evaluate([], "10.0.0.1", NONE, 25) == Outcome()
    rows = [row(b"D", b"10.0.0.2"), row(b"A", b"11.*.*.*", b"X=1")]
    assert evaluate(rows, "10.0.0.1", NONE, 25) == Outcome()


def test_evaluate_star_and_order() -> None:
    rows = [
        row(b"A", b"10.0.0.*", b"A=1,B=2"),
        row(b"A", b"*", b"B=3,MAXPERIP=7x"),
        row(b"A", b"10.0.0.01", b"C=4"),                # never: inet_addr-valid
        row(b"A", b"11.*.*.*", b"D=5"),
    ]
    outcome = evaluate(rows, "10.0.0.1", NONE, 25)
    assert not outcome.denied and outcome.deny_rule is None
    assert outcome.changes == [(b"A", b"1"), (b"B", b"2"), (b"B", b"3"), (b"MAXPERIP", b"7x")]
    assert outcome.max_per_host == 7


def test_evaluate_deny_stops() -> None:
    rows = [
        row(b"A", b"*", b"A=1"),
        row(b"Deny", b"10.0.*.*", b"B=2"),
        row(b"A", b"*", b"C=3"),
        row(b"D", b"*"),
    ]
    outcome = evaluate(rows, "10.0.0.1", NONE, 25)
    assert outcome.denied and outcome.deny_rule == "10.0.*.*"
    assert outcome.changes == [(b"A", b"1")]
    assert rules.deny_line(25, outcome.deny_rule) == "MySQL: Port 25: IPrule 10.0.*.*"


def test_evaluate_decisions() -> None:
    for decision in (b"A", b"d", b"", b" D", None, b"allow"):
        assert not evaluate([row(decision, b"*", b"X=1")], "1.2.3.4", NONE, 25).denied
    assert evaluate([row(b"D", b"*", b"X=1")], "1.2.3.4", NONE, 25).changes == []


def test_evaluate_nulls_and_nul_bytes() -> None:
    rows = [row(b"D", None), row(None, b"*", None), row(b"A", b"*\0junk", b"A=1\0,B=2")]
    outcome = evaluate(rows, "1.2.3.4", NONE, 25)
    assert not outcome.denied
    assert outcome.changes == [(b"A", b"1")]


def test_evaluate_maxperip() -> None:
    rows = [row(b"A", b"*", b"MAXPERIP=3"), row(b"A", b"*", b"MAXPERIP=abc")]
    assert evaluate(rows[:1], "1.2.3.4", NONE, 25).max_per_host == 3
    assert evaluate(rows, "1.2.3.4", NONE, 25).max_per_host == 0
    huge = [row(b"A", b"*", b"MAXPERIP=" + b"9" * 100)]
    assert evaluate(huge, "1.2.3.4", NONE, 25).max_per_host == 2**31 - 1
    assert evaluate([row(b"A", b"*", b"MAXPERIPX=3")], "1.2.3.4", NONE, 25).max_per_host is None


def test_evaluate_bytes_kept() -> None:
    rows = [row(b"A", b"*", b"N\xe9=v\xff\x80,X=a\\,b")]
    assert evaluate(rows, "1.2.3.4", NONE, 25).changes == [(b"N\xe9", b"v\xff\x80"), (b"X", b"a,b")]


def test_evaluate_port_is_an_int() -> None:
    with pytest.raises(TypeError):
        evaluate([], "1.2.3.4", NONE, "25")  # type: ignore[arg-type]


# -- host names, the fix (design: mysql-rules) and the compat switch ----------------
def test_names_to_resolve() -> None:
    rows = [
        row(b"A", b"*"),
        row(b"A", b"10.0.0.*"),              # matches by fields: no lookup
        row(b"A", b"mail.example.com"),
        row(b"A", b"192.168.1.*"),           # cannot be a name: failed at once
        row(b"A", b"10.0.0.1-9"),            # a range, not a name
        row(b"A", b"2001:db8::1"),           # a literal: no lookup
        row(b"A", b"mail.example.com"),      # once only
        row(b"D", b"Relay-Host"),
        row(b"A", b"bad name"),
        row(b"A", None),
        row(b"A", b"xn--bcher-kva.example."),
    ]
    assert names_to_resolve(rows, "172.16.0.1") == [
        "mail.example.com", "Relay-Host", "xn--bcher-kva.example."]
    # nothing after a deny that applies without a lookup
    stop = [row(b"A", b"a.example"), row(b"D", b"172.16.*.*"), row(b"A", b"b.example")]
    assert names_to_resolve(stop, "172.16.0.1") == ["a.example"]
    assert names_to_resolve(stop, "10.0.0.1") == ["a.example", "b.example"]


def test_hostname_rule_resolved() -> None:
    rows = [row(b"D", b"bad.example"), row(b"A", b"good.example", b"OK=1")]
    resolved = {"bad.example": ["192.0.2.9", "2001:db8::9"], "good.example": ["192.0.2.1"]}
    assert evaluate(rows, "192.0.2.9", resolved, 25).denied
    assert evaluate(rows, "2001:db8::9", resolved, 25).deny_rule == "bad.example"
    outcome = evaluate(rows, "192.0.2.1", resolved, 25)
    assert not outcome.denied and outcome.changes == [(b"OK", b"1")]
    assert evaluate(rows, "192.0.2.2", resolved, 25) == Outcome()
    # resolved texts are compared as addresses
    assert evaluate([row(b"D", b"h.example")], "2001:db8::9",
                    {"h.example": ["2001:DB8:0::9"]}, 25).denied
    assert evaluate([row(b"D", b"h.example")], "10.0.0.1",
                    {"h.example": ["::ffff:10.0.0.1"]}, 25).denied


def test_failed_lookup_is_no_match() -> None:
    """design: mysql-rules: a failed or missing lookup never matches (IndiMail: always)."""
    rows = [row(b"D", b"192.168.1.*"), row(b"A", b"unknown.example", b"X=1")]
    for ip in ("10.0.0.1", "2001:db8::5"):
        assert evaluate(rows, ip, NONE, 25) == Outcome()
        assert evaluate(rows, ip, {"unknown.example": []}, 25) == Outcome()


def test_compat_fail_matches() -> None:
    rows = [row(b"A", b"unknown.example", b"X=1"), row(b"D", b"192.168.1.*")]
    outcome = evaluate(rows, "10.0.0.1", NONE, 25, compat_fail_matches=True)
    assert outcome.denied and outcome.deny_rule == "192.168.1.*"
    assert outcome.changes == [(b"X", b"1")]
    # an IPv6 client too, and an empty answer counts as a failure
    assert evaluate(rows, "2001:db8::5", {"unknown.example": []}, 25,
                    compat_fail_matches=True).denied
    # a lookup that worked is compared as usual
    resolved = {"unknown.example": ["192.0.2.1"]}
    assert evaluate(rows[:1], "10.0.0.1", resolved, 25, compat_fail_matches=True) == Outcome()
    # IndiMail's 16-byte inet_ntop buffer: a long IPv6 answer is a "match"
    resolved = {"unknown.example": ["2001:db8::1234:5678"]}
    assert evaluate(rows[:1], "10.0.0.1", resolved, 25, compat_fail_matches=True).changes
    assert not evaluate(rows[:1], "10.0.0.1", resolved, 25).changes
    # what matches or fails by steps 1-3 is the same in both modes
    assert evaluate([row(b"D", b"10.0.0.2")], "10.0.0.1", NONE, 25,
                    compat_fail_matches=True) == Outcome()


def test_literal_rules() -> None:
    """Address literals are step 4 without a lookup (a numeric
    getaddrinfo): IPv6 in any spelling, and INADDR_NONE forms."""
    assert evaluate([row(b"D", b"2001:DB8:0::5")], "2001:db8::5", NONE, 25).denied
    assert not evaluate([row(b"D", b"2001:db8::6")], "2001:db8::5", NONE, 25).denied
    assert evaluate([row(b"D", b"0xffffffff")], "255.255.255.255", NONE, 25).denied
    assert not evaluate([row(b"D", b"0xffffffff")], "10.0.0.1", NONE, 25).denied
    assert evaluate([row(b"D", b"::ffff:10.0.0.1")], "10.0.0.1", NONE, 25).denied
    # compat: a literal resolves, so it is no "failure" (but a long IPv6
    # text overflows IndiMail's buffer)
    assert not evaluate([row(b"D", b"::1")], "10.0.0.1", NONE, 25, compat_fail_matches=True).denied
    assert evaluate([row(b"D", b"2001:db8::1234:5678")], "10.0.0.1", NONE, 25,
                    compat_fail_matches=True).denied


def test_ipv6_client() -> None:
    rows = [row(b"D", b"*.*.*.*"), row(b"A", b"2001:db8::5", b"V6=1"), row(b"A", b"*", b"ALL=1")]
    outcome = evaluate(rows, "2001:db8::5", NONE, 25)
    assert not outcome.denied
    assert outcome.changes == [(b"V6", b"1"), (b"ALL", b"1")]
    # no fake dotted quad from the last four bytes (IndiMail's sticky flag)
    assert not evaluate([row(b"D", b"192.168.1.1")], "2001:db8::c0a8:101", NONE, 25).denied
