"""Known-answer tests for the pure modules of the core server.

options (djb getopt, design: options), log (djb ``safecats``, design: log-lines),
ipfmt (IndiMail's formats, design: mapped-addresses; the rest of
ucspi.address is in test_address.py), reactor.run_blocking, environ (IndiMail's
order of changes and the Builder fast path), listen (port and host arguments), limits
(``-c`` file, connection table) and pidfile.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from typing import Callable, List, Optional

import pytest

from ucspi import environ
from ucspi import address as ipfmt
from ucspi.policy import Policy
from ucspi.server.admission import Admission
from ucspi.server import limits
from ucspi.server import listen
from ucspi import log
from ucspi import options
from ucspi import reactor
from ucspi.server import pidfile
from ucspi.errors import Fatal, UsageError
from ucspi.options import OptionError, getopt, parse

PROG = ["0", "0", "prog"]


# -- options: getopt ------------------------------------------------------------
@pytest.mark.parametrize("argv, opts, rest", [
    (["-vo", "0"], [("v", None), ("o", None)], ["0"]),
    (["-Rt5", "0"], [("R", None), ("t", "5")], ["0"]),
    (["-t5", "0"], [("t", "5")], ["0"]),
    (["-t", "5", "0"], [("t", "5")], ["0"]),
    (["-hp", "-Bbanner", "0"], [("h", None), ("p", None), ("B", "banner")], ["0"]),
    # the argument may be empty or look like an option
    (["-B", "", "0"], [("B", "")], ["0"]),
    (["-B", "-x", "0"], [("B", "-x")], ["0"]),
    (["-Xx", "rules.cdb", "0"], [("X", None), ("x", "rules.cdb")], ["0"]),
    # "--" ends the options and is dropped
    (["-v", "--", "-q", "0"], [("v", None)], ["-q", "0"]),
    (["--", "--", "0"], [], ["--", "0"]),
    # a lone "-" ends them and stays (it is the host)
    (["-v", "-", "0", "x"], [("v", None)], ["-", "0", "x"]),
    # no permutation: everything after the first non-option is positional
    (["-v", "0", "0", "prog", "-q"], [("v", None)], ["0", "0", "prog", "-q"]),
    (["0", "-v"], [], ["0", "-v"]),
    ([], [], []),
])
def test_getopt(argv: List[str], opts: list, rest: List[str]) -> None:
    assert getopt(argv) == (opts, rest)


@pytest.mark.parametrize("argv, message", [
    (["-Z", "0", "0", "p"], "illegal option -- Z"),
    (["-vZ", "0", "0", "p"], "illegal option -- Z"),
    (["-x"], "option requires an argument -- x"),
    (["-v", "-c"], "option requires an argument -- c"),
    (["-k", "0"], "illegal option -- k"),
])
def test_getopt_errors(argv: List[str], message: str) -> None:
    with pytest.raises(OptionError) as info:
        getopt(argv)
    assert str(info.value) == message


# -- options: parse -------------------------------------------------------------
def test_parse_defaults() -> None:
    o = parse(PROG, {})
    assert (o.verbosity, o.limit, o.limit_file, o.max_per_host, o.backlog) == (1, 40, None, 20, 20)
    assert (o.remote_host, o.remote_info, o.paranoid, o.kill_ip_options, o.nodelay) == (
        True, True, False, True, False)
    assert (o.ident_timeout, o.localname, o.banner, o.print_port) == (26, None, b"", False)
    assert (o.host, o.port, o.argv) == ("0", "0", ["prog"])


def test_parse_positionals() -> None:
    o = parse(["-v", "127.0.0.1", "smtp", "prog", "-x", "--", "arg"], {})
    assert (o.host, o.port, o.argv) == ("127.0.0.1", "smtp", ["prog", "-x", "--", "arg"])
    assert parse(["", "0", "p"], {}).host == "0"       # empty host = 0


@pytest.mark.parametrize("argv, attr, value", [
    (["-v", "-q"], "verbosity", 0),
    (["-q", "-Q"], "verbosity", 1),
    (["-q", "-v"], "verbosity", 2),
    (["-h", "-H"], "remote_host", False),
    (["-H", "-h"], "remote_host", True),
    (["-r", "-R"], "remote_info", False),
    (["-p"], "paranoid", True),
    (["-p", "-P"], "paranoid", False),
    (["-o"], "kill_ip_options", False),
    (["-o", "-O"], "kill_ip_options", True),
    (["-D"], "nodelay", True),
    (["-D", "-d"], "nodelay", False),
    (["-1"], "print_port", True),
    (["-4"], "ipv4_only", True),
    (["-6"], "force_ipv6", True),
    (["-c", "7"], "limit", 7),
    (["-c7"], "limit", 7),
    (["-C", "0"], "max_per_host", 0),
    (["-C", "3"], "max_per_host", 3),
    (["-b", "0"], "backlog", 0),
    (["-b", "128"], "backlog", 128),
    (["-t", "0"], "ident_timeout", 0),
    (["-t5"], "ident_timeout", 5),
    (["-l", "a%b c"], "localname", "a%b c"),
    (["-l", ""], "localname", ""),
    (["-Bhello"], "banner", b"hello"),
    (["-B", "\u00e9"], "banner", "\u00e9".encode()),
    (["-e", "/run/x.pid"], "pidfile", "/run/x.pid"),
    (["-I", "lo"], "interface", "lo"),
    (["-g", "daemon,3"], "groups", "daemon,3"),
])
def test_parse_letters(argv: List[str], attr: str, value: object) -> None:
    assert getattr(parse(argv + PROG, {}), attr) == value


def test_parse_limit_file_and_number() -> None:
    o = parse(["-c", "concurrency"] + PROG, {})
    assert (o.limit_file, o.limit) == ("concurrency", 40)
    o = parse(["-c", "/x/y", "-c", "5"] + PROG, {})          # later wins
    assert (o.limit_file, o.limit) == (None, 5)
    assert parse(["-c", "./file"] + PROG, {}).limit_file == "./file"


def test_parse_V_is_v_plus_table() -> None:
    o = parse(["-V"] + PROG, {})
    assert (o.verbosity, o.table_after_status) == (2, True)
    o = parse(["-V", "-v"] + PROG, {})
    assert (o.verbosity, o.table_after_status) == (2, False)
    assert parse(["-V", "-q"] + PROG, {}).verbosity == 0


def test_parse_users() -> None:
    o = parse(["-u", "nobody"] + PROG, {})
    assert (o.user, o.uid) == ("nobody", None)
    o = parse(["-u", "65534"] + PROG, {})
    assert (o.user, o.uid) == (None, 65534)
    # -U reads $UID/$GID; later options override earlier ones
    o = parse(["-u", "1", "-U"] + PROG, {"UID": "2", "GID": "3"})
    assert (o.user, o.uid, o.gid) == (None, 2, 3)
    o = parse(["-U", "-u", "nobody"] + PROG, {"UID": "2"})
    assert (o.user, o.uid) == ("nobody", None)
    o = parse(["-u", "7", "-U"] + PROG, {})                    # nothing set: unchanged
    assert (o.uid, o.gid) == (7, None)


def test_parse_maxperip_environment() -> None:
    assert parse(PROG, {"MAXPERIP": "5"}).max_per_host == 5
    assert parse(["-C", "2"] + PROG, {"MAXPERIP": "5"}).max_per_host == 2
    assert parse(PROG, {"MAXPERIP": "7x"}).max_per_host == 7     # scan_ulong, as C


@pytest.mark.parametrize("argv", [
    ["-c", "4x"], ["-c", "0"], ["-c", ""], ["-c", "00"], ["-C", "-1"], ["-C", "1.5"],
    ["-b", "x"], ["-b", "-1"], ["-t", "5x"], ["-t", ""], ["-c", "\u0664"],
])
def test_parse_numbers_are_checked(argv: List[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse(argv + PROG, {})
    assert not isinstance(info.value, OptionError)
    assert str(info.value).startswith(f"-{argv[0][1]} wants a number")


def test_parse_bad_uid_environment() -> None:
    with pytest.raises(UsageError):
        parse(["-U"] + PROG, {"UID": "abc"})


@pytest.mark.parametrize("argv", [[], ["0"], ["0", "0"], ["-v", "0", "0"], ["-v"]])
def test_parse_missing_arguments(argv: List[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse(argv, {})
    assert str(info.value) == ""
    assert getattr(info.value, "quiet", False) is False


def test_parse_missing_arguments_quiet() -> None:
    with pytest.raises(UsageError) as info:
        parse(["-q", "0", "0"], {})
    assert getattr(info.value, "quiet", False) is True


def test_parse_mysql_option() -> None:
    o = parse(["-m", "db.conf"] + PROG, {})
    assert (o.mysql, o.argv) == ("db.conf", ["prog"])


def test_parse_tls_options() -> None:
    o = parse(["-n", "c.pem", "-i", "/d", "-a", "ca", "-L", "", "-f", "HIGH", "-M",
               "TLSv1_2:", "-NzS5", "-T", "0"] + PROG, {})
    assert (o.tls, o.certfile, o.certdir, o.cafile, o.crlfile) == (True, "c.pem", "/d", "ca", None)
    assert (o.ciphers, o.tls_method, o.renegotiation, o.tls_details) == ("HIGH", "TLSv1_2:",
                                                                         True, True)
    assert (o.handshake_timeout, o.idle_timeout, o.argv) == (5, 0, ["prog"])
    o = parse(["-s"] + PROG, {})
    assert (o.tls, o.certfile, o.handshake_timeout, o.idle_timeout) == (True, None, 60, 300)
    assert parse(["-n", ""] + PROG, {}).certfile is None
    assert not parse(["-T", "5"] + PROG, {}).tls          # -T alone: no TLS


def test_parse_takes_so_and_unix() -> None:
    assert parse(["0", "0", "/lib/x.so"], {}).argv == ["/lib/x.so"]
    o = parse(["/tmp/sock", "prog"], {})
    assert o.unix and o.argv == ["prog"] and o.port == ""


def test_usage_text() -> None:
    # djb's one line (issue 7, defect 9), with the letters that work
    usage = options.USAGE
    assert usage.startswith("tcpserver: usage: tcpserver [ -")
    assert usage.endswith(" host port program\n") and usage.count("\n") == 1
    flags = set(usage.split("[ -", 1)[1].split(" ]", 1)[0])
    assert flags == set(options.FLAGS)
    with_arg = {word[1] for word in usage.split() if word.startswith("-") and len(word) == 2}
    assert with_arg == set(options.WITH_ARG)


# -- log: safecats and line formats ---------------------------------------------------
@pytest.mark.parametrize("text, keep, expected", [
    ("a%b:c" + "x" * 110, False, b"a?b?c" + b"x" * 95 + b"..."),
    ("a%b:c" + "x" * 110, True, b"a?b:c" + b"x" * 95 + b"..."),
    ("\u00e9 \u00fc", False, b"?????"),
    ("x" * 100, False, b"x" * 100 + b"..."),
    ("x" * 99, False, b"x" * 99),
    ("x" * 101, False, b"x" * 100 + b"..."),
    ("joe%x", False, b"joe?x"),
    ("tab\there\r\n\x7f~!", False, b"tab?here???~!"),
    ("::ffff:127.0.0.1", True, b"::ffff:127.0.0.1"),
    ("::1", False, b"??1"),
    (b"\xff\x80ok", False, b"??ok"),
    (b"cut\0here", False, b"cut"),
    (None, False, b""),
    ("", True, b""),
])
def test_safe(text: object, keep: bool, expected: bytes) -> None:
    assert log.safe(text, keep) == expected  # type: ignore[arg-type]


def test_connection_fields() -> None:
    assert log.connection_fields(b"Local", "127.0.0.1", 50016, None, "127.0.0.1", None,
                                 50017) == b"Local:127.0.0.1:50016 :127.0.0.1::50017"
    assert log.connection_fields(b"a:b", "::1", 1, b"h%x", "::ffff:1.2.3.4", b"jo e", 2) == (
        b"a?b:::1:1 h?x:::ffff:1.2.3.4:jo?e:2")
    weird = ("a%b:c" + "x" * 110).encode()
    assert log.connection_fields(weird, "127.0.0.1", 5, None, "127.0.0.1", b"", 6) == (
        b"a?b?c" + b"x" * 95 + b"...:127.0.0.1:5 :127.0.0.1::6")


def _logged(verbosity: int, action) -> bytes:  # type: ignore[no-untyped-def]
    rfd, wfd = os.pipe()
    try:
        action(log.Log(verbosity, fd=wfd))
        os.close(wfd)
        wfd = -1
        data = b""
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def _all_lines(lg: log.Log) -> None:
    lg.status(1, 40)
    lg.pid(123, "127.0.0.1")
    lg.verdict(True, 123, b"Local:127.0.0.1:5 :127.0.0.1::6")
    lg.verdict(False, 0, b"x")
    lg.end(123, 768)
    lg.per_host("127.0.0.1", 1)
    lg.sighup(0, 2)
    lg.table([(0, "127.0.0.1", 123), (1, "::1", 124)])
    lg.warning("dropping connection, unable to run x: file does not exist")
    lg.fatal("unable to bind: address already used")


def test_log_lines_verbose() -> None:
    assert _logged(2, _all_lines).decode().splitlines() == [
        "tcpserver: status: 1/40",
        "tcpserver: pid 123 from 127.0.0.1",
        "tcpserver: ok 123 Local:127.0.0.1:5 :127.0.0.1::6",
        "tcpserver: deny 0 x",
        "tcpserver: end 123 status 768",
        "tcpserver: end 127.0.0.1 perIPlimit 1",
        "tcpserver: sighup: 0/2",
        "tcpserver: 0: IP 127.0.0.1: PID 123",
        "tcpserver: 1: IP ::1: PID 124",
        "tcpserver: warning: dropping connection, unable to run x: file does not exist",
        "tcpserver: fatal: unable to bind: address already used",
    ]


def test_log_verbosity_levels() -> None:
    assert _logged(1, _all_lines).decode().splitlines() == [
        "tcpserver: end 127.0.0.1 perIPlimit 1",
        "tcpserver: sighup: 0/2",
        # the table is printed whenever asked (the server asks at >= 1)
        "tcpserver: 0: IP 127.0.0.1: PID 123",
        "tcpserver: 1: IP ::1: PID 124",
        "tcpserver: warning: dropping connection, unable to run x: file does not exist",
        "tcpserver: fatal: unable to bind: address already used",
    ]
    quiet = _logged(0, _all_lines).decode().splitlines()
    assert not [line for line in quiet if "warning" in line or "fatal" in line or "status" in line]


def test_log_filters_pid_line() -> None:
    assert _logged(2, lambda lg: lg.pid(1, "a%b:c")) == b"tcpserver: pid 1 from a?b:c\n"


# -- ipfmt ----------------------------------------------------------------------------
V6_VECTORS = [                                   # RFC 5952 (design: mapped-addresses)
    ("::", "::"), ("::1", "::1"), ("1::", "1::"),
    ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),           # longest run (design: mapped-addresses)
    ("0:0:1:0:0:0:0:1", "0:0:1::1"),
    ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),      # a single zero group stays
    ("1:2:3:4:5:6:0:0", "1:2:3:4:5:6::"),
    ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"),
    ("fe80::a:b:cd:1234", "fe80::a:b:cd:1234"),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),        # mapped: dotted on every Python
    ("::ffff:102:304", "::ffff:1.2.3.4"),
    ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
    ("::1.2.3.4", "::102:304"),                  # no other embedded-IPv4 form
    ("FFFF::", "ffff::"),
]


@pytest.mark.parametrize("text, expected", V6_VECTORS)
def test_ip6_text(text: str, expected: str) -> None:
    assert ipfmt.ip6_text(ipaddress.IPv6Address(text)) == expected


@pytest.mark.parametrize("text, expected", V6_VECTORS)
def test_normalise6_of_inet_ntop(text: str, expected: str) -> None:
    ntop = socket.inet_ntop(socket.AF_INET6, ipaddress.IPv6Address(text).packed)
    assert ipfmt.normalise6(ntop) == expected
    assert ipfmt.normalise6(ntop + "%lo") == expected


def test_normalise6_random() -> None:
    rnd = random.Random(5952)
    for _ in range(3000):
        groups = [rnd.choice([0, 0, 0, 1, 0xffff, rnd.randrange(65536)]) for _ in range(8)]
        if rnd.random() < 0.1:
            groups[:6] = [0, 0, 0, 0, 0, 0xffff]
        packed = b"".join(g.to_bytes(2, "big") for g in groups)
        addr = ipaddress.IPv6Address(packed)
        ntop = socket.inet_ntop(socket.AF_INET6, packed)
        assert ipfmt.normalise6(ntop) == ipfmt.ip6_text(addr), ntop
        plain, is_mapped = ipfmt.unmap(ntop)
        assert is_mapped == (addr.ipv4_mapped is not None)
        if is_mapped:
            assert plain == str(addr.ipv4_mapped)
        else:
            assert ipaddress.IPv6Address(plain) == addr


def test_unmap_mapped_parse() -> None:
    assert ipfmt.unmap("::ffff:127.0.0.1") == ("127.0.0.1", True)
    assert ipfmt.unmap("::1") == ("::1", False)
    assert ipfmt.unmap("fe80::1%eth0") == ("fe80::1", False)
    assert ipfmt.mapped_text("1.2.3.4") == "::ffff:1.2.3.4"
    assert ipfmt.strip_scope("fe80::1%2") == "fe80::1"


# -- reactor: the blocking runner -------------------------------------------------------
class _Job:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_run_blocking_returns_the_result() -> None:
    jobs: List[_Job] = []

    def start(r: reactor.Reactor, done: Callable[[str], None]) -> _Job:
        r.call_later(0.01, lambda: done("first"))
        r.call_later(0.02, lambda: done("second"))
        jobs.append(_Job())
        return jobs[-1]

    assert reactor.run_blocking(start) == "first"
    assert not jobs[0].cancelled


def test_run_blocking_stall_and_errors_cancel() -> None:
    jobs: List[_Job] = []
    seen: List[reactor.Reactor] = []

    def stall(r: reactor.Reactor, done: Callable[[str], None]) -> _Job:
        seen.append(r)
        jobs.append(_Job())
        return jobs[-1]

    assert reactor.run_blocking(stall) is None
    assert jobs[-1].cancelled

    def boom() -> None:
        raise KeyError("boom")

    def failing(r: reactor.Reactor, done: Callable[[str], None]) -> _Job:
        seen.append(r)
        r.call_later(0, boom)
        jobs.append(_Job())
        return jobs[-1]

    with pytest.raises(KeyError):
        reactor.run_blocking(failing)
    assert jobs[-1].cancelled
    assert all(not r.pending() for r in seen)     # closed


# -- environ ---------------------------------------------------------------------------
def test_apply_order_later_wins_removal_nul() -> None:
    base = {b"A": b"1", b"B": b"2", b"C": b"3"}
    env = environ.apply(base, [
        (b"A", b"new"), (b"B", None), (b"D", b"x\0y"), (b"A", b"newer"), (b"E", None),
        (b"", b"bad"), (b"X=Y", b"bad"), (b"N\0", b"bad"),
    ])
    assert list(env.items()) == [(b"C", b"3"), (b"D", b"x"), (b"A", b"newer")]
    assert base == {b"A": b"1", b"B": b"2", b"C": b"3"}       # not edited


def _ep(v6sock: bool, proto6: bool = False, **kw: object) -> environ.Endpoints:
    ep = environ.Endpoints(proto6, v6sock, "127.0.0.1", "::ffff:127.0.0.1", 50016,
                           "127.0.0.1", "::ffff:127.0.0.1", 50017)
    for name, value in kw.items():
        assert hasattr(ep, name), name
        setattr(ep, name, value)
    return ep


def test_connection_changes_ipv4_mode() -> None:
    changes = environ.connection_changes(_ep(False, local_host=b"Local"))
    assert changes == [
        (b"PROTO", b"TCP"), (b"TCPLOCALIP", b"127.0.0.1"), (b"TCPLOCALPORT", b"50016"),
        (b"TCPLOCALHOST", b"Local"), (b"TCPREMOTEIP", b"127.0.0.1"),
        (b"TCPREMOTEPORT", b"50017"), (b"TCPREMOTEHOST", None),
        (b"TCPREMOTEINFO", None), (b"TCP6REMOTEINFO", None),
    ]


def test_connection_changes_v6sock() -> None:
    ep = _ep(True, remote_host=b"h", remote_info=b"", paranoid=None, interface=None)
    env = dict(environ.connection_changes(ep))
    assert env[b"TCP6LOCALIP"] == b"::ffff:127.0.0.1"
    assert env[b"TCP6REMOTEIP"] == b"::ffff:127.0.0.1"
    assert env[b"TCP6LOCALPORT"] == b"50016" and env[b"TCP6REMOTEPORT"] == b"50017"
    assert env[b"TCP6LOCALHOST"] is None and env[b"TCP6REMOTEHOST"] == b"h"
    assert env[b"TCPREMOTEINFO"] == b"" and env[b"TCP6REMOTEINFO"] == b""
    assert b"TCPPARANOID" not in env and b"TCP6INTERFACE" not in env
    ep = _ep(True, True, local_ip="fe80::1", remote_ip="fe80::2", local_ip6="fe80::1",
             remote_ip6="fe80::2", paranoid=b"bad.example", interface=b"eth0")
    env = dict(environ.connection_changes(ep))
    assert env[b"PROTO"] == b"TCP6"
    assert env[b"TCPPARANOID"] == b"bad.example" and env[b"TCP6INTERFACE"] == b"eth0"


def test_builder_keeps_untouched_inherited_variables() -> None:
    base = {b"PATH": b"/bin", b"TCPPARANOID": b"old", b"TCP6LOCALIP": b"old6",
            b"TCPREMOTEHOST": b"stale", b"TCP6REMOTEINFO": b"stale"}
    builder = environ.Builder(base)
    assert not builder.fast
    env = builder.build(False, environ.connection_changes(_ep(False)), [])
    assert env[b"TCPPARANOID"] == b"old"          # only set on a -p failure
    assert env[b"TCP6LOCALIP"] == b"old6"         # IPv4 mode: TCP6* untouched
    assert b"TCPREMOTEHOST" not in env and b"TCP6REMOTEINFO" not in env
    fast = environ.Builder({b"PATH": b"/bin", b"TCP6LOCALIP": b"old6"})
    assert fast.fast
    env = fast.build(False, environ.connection_changes(_ep(False)), [])
    assert env[b"TCP6LOCALIP"] == b"old6"
    env = fast.build(True, environ.connection_changes(_ep(True)), [])
    assert env[b"TCP6LOCALIP"] == b"::ffff:127.0.0.1"


NAMES = sorted(environ.ALWAYS | environ.ON_V6SOCK | environ.SOMETIMES) + [b"PATH", b"X", b"MAXPERIP"]


def _random_ep(rnd: random.Random) -> environ.Endpoints:
    def maybe(value: bytes) -> Optional[bytes]:
        return rnd.choice([None, value, b""])
    v6sock = rnd.random() < 0.5
    return _ep(v6sock, rnd.random() < 0.5, local_host=maybe(b"l"), remote_host=maybe(b"r"),
               paranoid=rnd.choice([None, b"p"]), remote_info=maybe(b"i"),
               interface=rnd.choice([None, b"lo"]))


def test_builder_equals_apply_random() -> None:
    rnd = random.Random(35)
    for _ in range(3000):
        base = {name: b"inherited-" + name for name in NAMES if rnd.random() < 0.4}
        ep = _random_ep(rnd)
        changes = environ.connection_changes(ep)
        more = [(rnd.choice(NAMES), rnd.choice([None, b"rule"])) for _ in range(rnd.randrange(3))]
        built = environ.Builder(base).build(ep.v6sock, changes, more)
        expected = environ.apply(environ.apply(base, changes), more)
        assert list(built.items()) == list(expected.items()), (base, changes, more)


# -- listen: port and host arguments -------------------------------------------------
@pytest.mark.parametrize("text, port", [
    ("0", 0), ("", 0), ("50016", 50016), ("016", 16), ("65535", 65535),
    ("0000000000000000000000000000080", 80), ("smtp", 25), ("http", 80),
])
def test_parse_port(text: str, port: int) -> None:
    assert listen.parse_port(text) == port


@pytest.mark.parametrize("text", ["65536", "115586", "9" * 5000])
def test_parse_port_above_65535_is_a_usage_error(text: str) -> None:
    # the C server takes the port modulo 65536 (a usage error here: design: options)
    with pytest.raises(UsageError) as info:
        listen.parse_port(text)
    assert str(info.value).startswith("the port wants a number from 0 to 65535")
    assert len(str(info.value)) < 120


@pytest.mark.parametrize("text", ["+5", " 80", "80 ", "0x10", "-1", "SMTP", "nonexistentport",
                                  "\u0664\u0665"])
def test_parse_port_fatal(text: str) -> None:
    with pytest.raises(Fatal) as info:
        listen.parse_port(text)
    assert str(info.value) == f"unable to figure out port number for {text}"
    assert info.value.code == 111


@pytest.mark.parametrize("text, quad", [
    ("127.0.0.1", "127.0.0.1"), ("127.000.000.001", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"),
    ("255.255.255.255", "255.255.255.255"), ("[127.0.0.1]", "127.0.0.1"),
    ("127.1", None), ("1.2", None), ("00", None), ("1.2.3.256", None), ("1.2.3.4.5", None),
    ("1.2.3.", None), ("a.b.c.d", None), ("1.2.3.0004", None), ("\u0661.2.3.4", None),
    ("1.2.3.-4", None), ("1 .2.3.4", None),
])
def test_dotted_quad(text: str, quad: Optional[str]) -> None:
    assert listen.dotted_quad(text) == quad


def _no_dns(host: str) -> list:
    raise AssertionError(f"asked DNS about {host}")


@pytest.mark.parametrize("host, ipv4_only, result", [
    ("0", False, (False, "::", 0)), ("", False, (False, "::", 0)),
    ("::", False, (False, "::", 0)), ("0.0.0.0", False, (False, "::", 0)),
    ("0", True, (True, "0.0.0.0", 0)),
    ("127.0.0.1", False, (True, "127.0.0.1", 0)),
    ("::ffff:127.0.0.1", False, (True, "127.0.0.1", 0)),
    ("::1", False, (False, "::1", 0)),
    ("0:0:0:0:0:0:0:1", False, (False, "::1", 0)),
    ("fe80::1%1", False, (False, "fe80::1", 1)),
])
def test_host_address_literals(host: str, ipv4_only: bool, result: tuple) -> None:
    assert listen.host_address(host, ipv4_only, _no_dns) == result


def test_host_address_names() -> None:
    v6 = ipaddress.IPv6Address
    assert listen.host_address("x", False, lambda h: [v6("::ffff:10.1.2.3"), v6("::1")]) == (
        True, "10.1.2.3", 0)
    assert listen.host_address("x", False, lambda h: [v6("2001:db8::1")]) == (
        False, "2001:db8::1", 0)
    with pytest.raises(Fatal) as info:
        listen.host_address("nonexistent.local.", False, lambda h: [])
    assert str(info.value) == "no IP address for nonexistent.local."

    def broken(host: str) -> list:
        raise OSError(71, "Protocol error")
    with pytest.raises(Fatal) as info:
        listen.host_address("x.example", False, broken)
    assert str(info.value) == "temporarily unable to figure out IP address for x.example: protocol error"
    with pytest.raises(Fatal) as info:
        listen.host_address("1::2::3", False, _no_dns)
    assert str(info.value) == "no IP address for 1::2::3"


def test_interface_index() -> None:
    assert listen.interface_index(None) == 0
    assert listen.interface_index("no-such-interface0") == 0
    assert listen.interface_index("lo") == socket.if_nametoindex("lo")


# -- limits --------------------------------------------------------------------------
def test_control_path(tmp_path) -> None:
    assert limits.control_path("conc", {}) == "/etc/indimail/control/conc"
    assert limits.control_path("conc", {"CONTROLDIR": "/x"}) == "/x/conc"
    assert limits.control_path("conc", {"CONTROLDIR": "/x/"}) == "/x/conc"
    assert limits.control_path("sub/conc", {"CONTROLDIR": "/x"}) == "/x/sub/conc"
    assert limits.control_path("/abs/conc", {"CONTROLDIR": "/x"}) == "/abs/conc"
    assert limits.control_path("./conc", {"CONTROLDIR": "/x"}) == os.path.abspath("conc")
    assert limits.control_path("../conc", {}) == os.path.abspath("../conc")


@pytest.mark.parametrize("content, value", [
    (b"7", 7), (b"7\n", 7), (b"7 \t\r\n", 7), (b"12\nabc\n", 12), (b"40", 40),
])
def test_read_limit(tmp_path, content: bytes, value: int) -> None:
    path = tmp_path / "c"
    path.write_bytes(content)
    assert limits.read_limit(str(path)) == value


@pytest.mark.parametrize("content", [b"abc", b"0", b"", b"\n", b" 7", b"7x", b"-1", b"1.5"])
def test_read_limit_bad(tmp_path, content: bytes) -> None:
    path = tmp_path / "c"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        limits.read_limit(str(path))


def test_read_limit_missing_and_unreadable(tmp_path) -> None:
    assert limits.read_limit(str(tmp_path / "missing")) is None
    with pytest.raises(OSError):
        limits.read_limit(str(tmp_path))          # a directory


def test_limit_from_options(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CONTROLDIR", str(tmp_path))
    (tmp_path / "conc").write_bytes(b"3\n")
    limit = limits.Limit.from_options(parse(["-c", "conc"] + PROG, {}))
    assert (limit.value, limit.path) == (3, str(tmp_path / "conc"))
    with pytest.raises(UsageError) as typo:        # issue 18, item 16
        limits.Limit.from_options(parse(["-c", "nothere"] + PROG, {}))
    assert str(typo.value).endswith(f"not 'nothere' (no such file: {tmp_path}/nothere)")
    assert limits.Limit.from_options(parse(["-c", "9"] + PROG, {})).value == 9
    (tmp_path / "bad").write_bytes(b"abc\n")
    with pytest.raises(Fatal):
        limits.Limit.from_options(parse(["-c", "bad"] + PROG, {}))
    with pytest.raises(Fatal) as info:
        limits.Limit.from_options(parse(["-c", str(tmp_path)] + PROG, {}))
    assert str(info.value) == f"unable to read {tmp_path}: is a directory"


def test_limit_reread(tmp_path) -> None:
    path = tmp_path / "conc"
    path.write_bytes(b"1\n")
    limit = limits.Limit(1, str(path), "conc")
    out: List[str] = []

    def reread() -> None:
        limit.reread(_ListLog(out))  # type: ignore[arg-type]
    path.write_bytes(b"2\n")
    reread()
    assert limit.value == 2 and out == []
    path.write_bytes(b"abc\n")
    reread()
    assert limit.value == 2 and len(out) == 1 and "keeping 2" in out[0]
    path.unlink()
    reread()
    assert limit.value == 2 and out[1:] == ["unable to read conc: file does not exist, keeping 2"]
    path.mkdir()
    reread()
    assert limit.value == 2 and out[-1] == "unable to read conc: is a directory"
    fixed = limits.Limit(5)
    fixed.reread(_ListLog(out))  # type: ignore[arg-type]
    assert fixed.value == 5


class _ListLog:
    def __init__(self, out: List[str]) -> None:
        self.out = out

    def warning(self, message: str) -> None:
        self.out.append(message)


def test_programs_table() -> None:
    table = limits.Programs()
    table.started(100, "127.0.0.1")
    table.started(101, "::1")
    assert table.entries() == [(0, "127.0.0.1", 100), (1, "::1", 101)]
    assert table.ended(999) is None
    assert table.ended(100) == "127.0.0.1"
    table.started(102, "127.0.0.2")                # the lowest free slot, as IndiMail
    assert table.entries() == [(0, "127.0.0.2", 102), (1, "::1", 101)]
    assert table.ended(102) == "127.0.0.2"
    assert table.ended(101) == "::1" and table.entries() == []


def _admission(limit: int = 3, available: int = 100) -> Admission:
    return Admission(limits.Limit(limit), limits.Descriptors(1, available=available))


def test_admission_counts_by_address() -> None:
    adm = _admission()
    assert adm.accept("127.0.0.1", final=True) is None
    assert adm.accept("127.0.0.1", final=True) is None
    assert adm.accept("::1", final=True) is None
    assert (adm.count, adm.hosts) == (3, {"127.0.0.1": 2, "::1": 1})
    assert not adm.room()                          # -c 3 reached
    adm.set_up()                                   # a program started
    adm.program_ended("127.0.0.1")
    adm.ended("::1", slot=True)                    # ended without a program
    assert (adm.count, adm.hosts) == (1, {"127.0.0.1": 1})
    assert adm.room()


def test_admission_two_moments() -> None:
    adm = _admission(limit=10)
    adm.policy = Policy(1)
    assert adm.accept("10.0.0.1", final=True) is None
    refusal = adm.accept("10.0.0.1", final=True)              # known at accept
    assert refusal is not None and (refusal.what, refusal.limit, refusal.count) == \
        ("MAXPERIP", 1, 1)
    assert adm.count == 1                                     # a refusal is not counted
    assert adm.accept("10.0.0.1", final=False) is None        # rules may say other
    refusal = adm.identified("10.0.0.1", Policy(1))
    assert refusal is not None and refusal.count == 1
    assert adm.identified("10.0.0.1", Policy(0)) is None      # 0: no limit
    assert adm.identified("10.0.0.1", Policy(2)) is None
    adm.moved("10.0.0.1", "192.0.2.9")                        # a PROXY header
    assert adm.hosts == {"10.0.0.1": 1, "192.0.2.9": 1}


def test_admission_slots_queue_and_refill() -> None:
    adm = _admission(limit=1)
    granted: List[str] = []
    assert adm.accept("a", final=True, slot=False) is None      # TLS: no slot yet
    assert adm.count == 0 and adm.wait_slot(lambda: granted.append("a"))
    assert adm.accept("b", final=True, slot=False) is None
    assert not adm.wait_slot(lambda: granted.append("b"))      # queued
    assert adm.accept("c", final=True, slot=False) is None
    late = lambda: granted.append("c")                         # noqa: E731
    assert not adm.wait_slot(late)
    adm.leave_queue(late)                                      # c ended while queued
    adm.ended("c", slot=False)
    adm.set_up()
    adm.program_ended("a")                                     # a's slot goes to b
    assert granted == ["b"] and adm.count == 1
    assert not adm.wait_slot(lambda: granted.append("d"))     # -c 1 still full
    adm.limit.value = 3                                        # SIGHUP raised it
    adm.refill()
    assert granted == ["b", "d"] and adm.count == 2 and not adm.queue


def test_admission_descriptor_budget() -> None:
    adm = _admission(limit=100, available=2)
    adm.accept("a", final=True)
    adm.accept("b", final=True)
    assert not adm.room()                          # the descriptors, not -c
    adm.set_up()
    assert adm.room()


# -- pidfile ---------------------------------------------------------------------------
def test_pidfile(tmp_path) -> None:
    path = str(tmp_path / "pid")
    assert not pidfile.running(path)               # missing
    for stale in (b"", b"abc", b"0", b"-5", b"99999999999999999999"):
        with open(path, "wb") as handle:
            handle.write(stale)
        assert not pidfile.running(path), stale
    pidfile.claim(path)
    with open(path, "rb") as handle:
        assert handle.read() == b"%d" % os.getpid()    # no newline
    assert pidfile.running(path)
    with pytest.raises(Fatal) as info:
        pidfile.claim(path)
    assert str(info.value) == " already running"
    with pytest.raises(Fatal) as info:
        pidfile.claim(str(tmp_path / "no" / "pid"))
    assert str(info.value) == f"couldn't open {tmp_path}/no/pid for write: file does not exist"
