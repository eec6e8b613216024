"""tcpserver end to end: the environment, banners, socket options and
every start-up or per-connection failure, with the C server beside ours
where the texts are shared
(design: banner, signals, mapped-addresses).

No lookups happen here: every server runs with ``-H -R`` and ``-l``.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Dict, List

import pytest

from tests.fix_dns import fake_dns_on_53, response
from tests.fix_server import C, OURS, alive, clean_env, parse_env, read_all, run_once
from tests.util import free_port, need_root

NOLOOKUP = ["-H", "-R", "-l", "Local"]
TCP6 = ("TCP6LOCALIP", "TCP6LOCALPORT", "TCP6LOCALHOST", "TCP6REMOTEIP", "TCP6REMOTEPORT",
        "TCP6REMOTEHOST", "TCP6REMOTEINFO", "TCP6INTERFACE")
# a stale value for every variable the server sets or removes
STALE = {name: "stale" for name in ("PROTO", "TCPLOCALIP", "TCPLOCALPORT", "TCPLOCALHOST",
                                    "TCPREMOTEIP", "TCPREMOTEPORT", "TCPREMOTEHOST",
                                    "TCPREMOTEINFO", "TCP6REMOTEINFO")}


def _tcp(env: Dict[str, str]) -> Dict[str, str]:
    """The variables of the connection (the C server's set: not s6's
    TCPCONNNUM, which has tests of its own)."""
    return {k: v for k, v in env.items()
            if (k.startswith("TCP") or k == "PROTO") and k != "TCPCONNNUM"}


def _one_fatal(result, text: str, code: int = 111) -> None:  # type: ignore[no-untyped-def]
    err = result.stderr.decode("latin-1")
    assert "Traceback" not in err, err
    assert (result.returncode, err) == (code, f"tcpserver: fatal: {text}\n")
    assert result.stdout == b""


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")


# -- the environment ------------------------------------------------------------------
def test_env_ipv4_bound(servers) -> None:
    server = servers(NOLOOKUP, host="127.0.0.1", env=clean_env(**STALE))
    with server.connect() as sock:
        client_port = sock.getsockname()[1]
        env = _tcp(parse_env(read_all(sock)))
    assert env == {
        "PROTO": "TCP", "TCPLOCALHOST": "Local", "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": str(server.port), "TCPREMOTEIP": "127.0.0.1",
        "TCPREMOTEPORT": str(client_port),
    }


def test_env_wildcard_ipv4_client(servers) -> None:
    ipv6_loopback()
    server = servers(NOLOOKUP, host="0")
    with server.connect("127.0.0.1") as sock:
        client_port = sock.getsockname()[1]
        env = _tcp(parse_env(read_all(sock)))
    port = str(server.port)
    assert env == {
        "PROTO": "TCP",
        "TCPLOCALHOST": "Local", "TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": port,
        "TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": str(client_port),
        "TCP6LOCALHOST": "Local", "TCP6LOCALIP": "::ffff:127.0.0.1", "TCP6LOCALPORT": port,
        "TCP6REMOTEIP": "::ffff:127.0.0.1", "TCP6REMOTEPORT": str(client_port),
    }


def test_env_wildcard_ipv6_client(servers) -> None:
    ipv6_loopback()
    server = servers(NOLOOKUP, host="0")
    with server.connect("::1") as sock:
        client_port = sock.getsockname()[1]
        env = _tcp(parse_env(read_all(sock)))
    port = str(server.port)
    assert env == {
        "PROTO": "TCP6",
        "TCPLOCALHOST": "Local", "TCPLOCALIP": "::1", "TCPLOCALPORT": port,
        "TCPREMOTEIP": "::1", "TCPREMOTEPORT": str(client_port),
        "TCP6LOCALHOST": "Local", "TCP6LOCALIP": "::1", "TCP6LOCALPORT": port,
        "TCP6REMOTEIP": "::1", "TCP6REMOTEPORT": str(client_port),
    }


def test_env_force_ipv6_ipv4_client(servers) -> None:
    ipv6_loopback()
    server = servers(["-6", *NOLOOKUP], host="0")
    env = _tcp(server.env("127.0.0.1"))
    assert env["PROTO"] == "TCP6"
    assert env["TCPREMOTEIP"] == env["TCP6REMOTEIP"] == "::ffff:127.0.0.1"
    assert env["TCPLOCALIP"] == env["TCP6LOCALIP"] == "::ffff:127.0.0.1"
    assert env["TCPLOCALPORT"] == env["TCP6LOCALPORT"] == str(server.port)


def test_env_ipv6_bound(servers) -> None:
    ipv6_loopback()
    server = servers(NOLOOKUP, host="::1")
    env = _tcp(server.env())
    assert env["PROTO"] == "TCP6"
    assert env["TCPLOCALIP"] == env["TCP6LOCALIP"] == env["TCPREMOTEIP"] == "::1"
    assert env["TCP6REMOTEIP"] == "::1"
    with pytest.raises(OSError):                         # not listening on IPv4
        server.talk("127.0.0.1")


def test_env_ipv4_only_wildcard(servers) -> None:
    server = servers(["-4", *NOLOOKUP], host="0")
    env = _tcp(server.env("127.0.0.1"))
    assert env["PROTO"] == "TCP" and env["TCPREMOTEIP"] == "127.0.0.1"
    assert not [k for k in env if k.startswith("TCP6")]


def test_env_mapped_literal_is_ipv4_mode(servers) -> None:
    server = servers(NOLOOKUP, host="::ffff:127.0.0.1")
    env = _tcp(server.env("127.0.0.1"))
    assert env["PROTO"] == "TCP" and env["TCPLOCALIP"] == "127.0.0.1"
    assert not [k for k in env if k.startswith("TCP6")]


def test_env_ipv4_only_and_force_ipv6(servers) -> None:
    # as IndiMail: -4 -6 gives PROTO=TCP6, mapped text, no TCP6* variables
    server = servers(["-4", "-6", "-v", *NOLOOKUP], host="0")
    with server.connect("127.0.0.1") as sock:
        client_port = sock.getsockname()[1]
        env = _tcp(parse_env(read_all(sock)))
    assert env == {
        "PROTO": "TCP6", "TCPLOCALHOST": "Local", "TCPLOCALIP": "::ffff:127.0.0.1",
        "TCPLOCALPORT": str(server.port), "TCPREMOTEIP": "::ffff:127.0.0.1",
        "TCPREMOTEPORT": str(client_port),
    }
    server.wait_log(rf"^tcpserver: ok \d+ Local:::ffff:127\.0\.0\.1:{server.port} "
                    rf":::ffff:127\.0\.0\.1::{client_port}$")


@pytest.mark.parametrize("host", ["::", "0.0.0.0", ""])
def test_other_wildcards_are_dual_stack(servers, host: str) -> None:
    ipv6_loopback()
    server = servers(NOLOOKUP, host=host)
    assert _tcp(server.env("127.0.0.1"))["TCP6REMOTEIP"] == "::ffff:127.0.0.1"
    assert _tcp(server.env("::1"))["PROTO"] == "TCP6"


def test_log_line_ipv6_client(servers) -> None:
    ipv6_loopback()
    server = servers(["-v", *NOLOOKUP], host="0")
    with server.connect("::1") as sock:
        client_port = sock.getsockname()[1]
        read_all(sock)
    # ':' is kept inside IP fields (design: log-lines), the pid line too
    server.wait_log(rf"^tcpserver: ok \d+ Local:::1:{server.port} :::1::{client_port}$")
    server.wait_log(r"^tcpserver: pid \d+ from ::1$")


def test_env_inherited_tcp6_kept_in_ipv4_mode(servers) -> None:
    inherited = dict(STALE, TCP6LOCALIP="old", TCPPARANOID="old", MAXPERIP="7", OTHER="x")
    server = servers(NOLOOKUP, host="127.0.0.1", env=clean_env(**inherited))
    env = server.env()
    assert env["TCP6LOCALIP"] == "old" and env["TCPPARANOID"] == "old"
    assert env["MAXPERIP"] == "7" and env["OTHER"] == "x"
    assert "TCP6REMOTEINFO" not in env and "TCPREMOTEINFO" not in env
    assert "TCPREMOTEHOST" not in env and env["PROTO"] == "TCP"


@pytest.mark.parametrize("name", ["0", "", "a%b:c d\te", "x" * 300, "\u00e9\u00fc"])
def test_localname_verbatim(servers, name: str) -> None:
    server = servers(["-H", "-R", "-l", name])
    env = server.env()
    assert env["TCPLOCALHOST"] == name.encode().decode("latin-1")


def test_localname_empty_means_no_lookup(servers) -> None:
    # -l "" sets TCPLOCALHOST to the empty string (no DNS needed)
    server = servers(["-H", "-R", "-l", ""], env=clean_env(DNSCACHEIP="127.55.0.9"))
    assert server.env()["TCPLOCALHOST"] == ""


# -- banner, -D, -1 --------------------------------------------------------------------
@pytest.mark.parametrize("impl, size", [(OURS, n) for n in [*range(1, 18), 4000, 100000]]
                         + [(C, n) for n in (1, 6, 16, 17, 4000)])
def test_banner_sent_in_full(servers, impl: str, size: int) -> None:
    # design: banner: even 1..16 bytes (IndiMail loses those)
    banner = ("0123456789abcdef" * 300)[:size]
    server = servers(["-B", banner, *NOLOOKUP], prog=["echo", "PROG"], impl=impl)
    assert server.talk() == banner.encode() + b"PROG\n"


def test_banner_bytes(servers) -> None:
    server = servers(["-B", "\u00e9\r\n", *NOLOOKUP], prog=["echo", "x"])
    assert server.talk() == "\u00e9\r\n".encode() + b"x\n"


NODELAY = [sys.executable, "-c",
           "import socket; s = socket.socket(fileno=0); "
           "print(int(bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))))"]


@pytest.mark.parametrize("impl", [OURS, C])
@pytest.mark.parametrize("flags, expected", [([], b"0\n"), (["-D"], b"1\n"),
                                             (["-D", "-d"], b"0\n"), (["-o", "-D"], b"1\n")])
def test_nodelay(servers, impl: str, flags: List[str], expected: bytes) -> None:
    server = servers([*flags, *NOLOOKUP], prog=NODELAY, impl=impl)
    assert server.talk() == expected


def test_print_port(servers) -> None:
    # -1: the fixture read the port from stdout; it is the one we reach
    server = servers(NOLOOKUP, prog=["echo", "here"])
    assert 0 < server.port < 65536
    assert server.talk() == b"here\n"


# -- start-up failures ------------------------------------------------------------------
@pytest.mark.parametrize("impl", [OURS, C])
def test_port_in_use(impl: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        result = run_once(impl, [*NOLOOKUP, "127.0.0.1", port, "echo", "wrong"])
    _one_fatal(result, "unable to bind: address already used")


@pytest.mark.parametrize("impl", [OURS, C])
def test_address_not_available(impl: str) -> None:
    result = run_once(impl, [*NOLOOKUP, "192.0.2.1", "0", "echo", "wrong"])
    _one_fatal(result, "unable to bind: address not available")


@pytest.mark.parametrize("impl", [OURS, C])
@pytest.mark.parametrize("port", ["nonexistentport", "SMTP", "+5", " 80", "0x10"])
def test_unknown_service(impl: str, port: str) -> None:
    result = run_once(impl, [*NOLOOKUP, "127.0.0.1", port, "echo", "wrong"])
    _one_fatal(result, f"unable to figure out port number for {port}")


def test_port_modulo_65536_c(servers) -> None:
    free = free_port()
    server = servers(NOLOOKUP, prog=["echo", "m"], impl=C, port=str(free + 65536))
    assert server.port == free
    assert server.talk() == b"m\n"


@pytest.mark.parametrize("port", ["65536", "99999", "9" * 5000])
def test_port_above_65535_is_a_usage_error(port: str) -> None:
    # the C server wraps (99999 listens on 34463); ours refuses (design: options)
    result = run_once(OURS, [*NOLOOKUP, "127.0.0.1", port, "echo", "wrong"])
    err = result.stderr.decode()
    assert result.returncode == 100 and err.count("\n") == 1, err
    assert err.startswith("tcpserver: fatal: the port wants a number from 0 to 65535"), err


def test_port_service_name(servers) -> None:
    # a name from /etc/services; "tcpmux" is port 1, free in a test box
    try:
        socket.getservbyname("tcpmux", "tcp")
    except OSError:
        pytest.skip("no tcpmux in /etc/services")
    need_root()
    server = servers(NOLOOKUP, prog=["echo", "svc"], port="tcpmux")
    assert server.port == 1
    assert server.talk() == b"svc\n"


@pytest.fixture
def nxdomain_dns():  # type: ignore[no-untyped-def]
    """A name server on port 53 of an address of its own (chosen per run)
    that answers NXDOMAIN to all."""
    with fake_dns_on_53(lambda q: [(0.0, response(q, rcode=3))]) as fake:
        yield fake


@pytest.mark.parametrize("impl", [OURS, C])
def test_host_without_address(nxdomain_dns, impl: str) -> None:
    env = clean_env(DNSCACHEIP=nxdomain_dns.ip)
    result = run_once(impl, [*NOLOOKUP, "nonexistent.local.", "016", "echo", "wrong"], env)
    _one_fatal(result, "no IP address for nonexistent.local.")
    assert nxdomain_dns.queries                          # it did ask


def test_host_without_dns_server() -> None:
    # No server can be asked (connect to the broadcast address fails at
    # once).  IndiMail reports that as "no IP address" (kept);
    # djb says "temporarily unable".
    env = clean_env(DNSCACHEIP="255.255.255.255")
    argv = [*NOLOOKUP, "nonexistent.example.", "0", "echo", "wrong"]
    _one_fatal(run_once(OURS, argv, env), "no IP address for nonexistent.example.")
    _one_fatal(run_once(C, argv, env), "temporarily unable to figure out IP address for "
               "nonexistent.example.: access denied")


LONG = "thislabelistoolongbecausednshasalimitof63charactersinasinglelabel."


@pytest.mark.parametrize("impl", [OURS, C])
def test_host_with_bad_label(nxdomain_dns, impl: str) -> None:
    env = clean_env(DNSCACHEIP=nxdomain_dns.ip)
    result = run_once(impl, [*NOLOOKUP, LONG, "016", "echo", "wrong"], env)
    _one_fatal(result, f"temporarily unable to figure out IP address for {LONG}: protocol error")


@pytest.mark.parametrize("argv, text", [
    (["-u", "no-such-user-x"], "unable to set user: unknown user no-such-user-x"),
    (["-g", "no-such-group-x"], "unable to set gid: unknown group no-such-group-x"),
    (["-g", "daemon,no-such-group-x"], "unable to set gid: unknown group no-such-group-x"),
])
def test_unknown_user_or_group(argv: List[str], text: str) -> None:
    need_root()
    result = run_once(OURS, [*argv, *NOLOOKUP, "127.0.0.1", "0", "echo", "wrong"])
    _one_fatal(result, text)


def test_limit_file_unreadable(tmp_path) -> None:
    result = run_once(OURS, ["-c", str(tmp_path), *NOLOOKUP, "127.0.0.1", "0", "true"])
    _one_fatal(result, f"unable to read {tmp_path}: is a directory")


def test_limit_file_relative_name_printed_as_given(tmp_path) -> None:
    (tmp_path / "conc").mkdir()
    env = clean_env(CONTROLDIR=str(tmp_path))
    result = run_once(OURS, ["-c", "conc", *NOLOOKUP, "127.0.0.1", "0", "true"], env)
    _one_fatal(result, "unable to read conc: is a directory")


@pytest.mark.parametrize("content", [b"abc\n", b"0\n", b"", b" 3\n"])
def test_limit_file_bad_content_is_fatal(tmp_path, content: bytes) -> None:
    path = tmp_path / "conc"
    path.write_bytes(content)
    result = run_once(OURS, ["-c", str(path), *NOLOOKUP, "127.0.0.1", "0", "true"])
    err = result.stderr.decode()
    assert result.returncode == 111, err
    assert err.count("\n") == 1 and err.startswith("tcpserver: fatal: ") and str(path) in err


def test_limit_file_missing_is_a_usage_error(tmp_path) -> None:
    """Issue 18, item 16 (IndiMail starts with 40)."""
    result = run_once(OURS, ["-v", "-c", "missing", *NOLOOKUP, "127.0.0.1", "0", "true"],
                      clean_env(CONTROLDIR=str(tmp_path)))
    assert result.returncode == 100
    assert result.stderr.decode() == (
        "tcpserver: fatal: -c wants a number from 1 to 2147483647 or the name of an existing "
        f"file, not 'missing' (no such file: {tmp_path}/missing)\n")


def test_limit_file_from_controldir(servers, tmp_path) -> None:
    (tmp_path / "conc").write_bytes(b"3 \n")
    server = servers(["-v", "-c", "conc", *NOLOOKUP], prog=["true"],
                     env=clean_env(CONTROLDIR=str(tmp_path)))
    server.wait_log(r"^tcpserver: status: 0/3$")


def test_quiet_leaves_fd2_to_the_program(servers) -> None:
    server = servers(["-q", *NOLOOKUP], prog=["sh", "-c", "echo to-stderr >&2; echo out"])
    assert server.talk() == b"out\n"
    server.wait_log("^to-stderr$")
    assert server.lines() == ["to-stderr"]


def test_quiet_silences_fatal() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        result = run_once(OURS, ["-q", *NOLOOKUP, "127.0.0.1", port, "true"])
    assert (result.returncode, result.stderr) == (111, b"")


# -- a program that cannot run -------------------------------------------------------
@pytest.mark.parametrize("impl", [OURS, C])
def test_program_that_cannot_run(servers, impl: str) -> None:
    server = servers(["-B", "hello", *NOLOOKUP], prog=["/nonexistent/prog"], impl=impl)
    warning = ("tcpserver: warning: dropping connection, unable to run /nonexistent/prog: "
               "file does not exist")
    for count in (1, 2, 3):
        assert server.talk() == b"hello"   # the banner, then EOF
        server.wait_log("^" + warning + "$", count)
    assert server.running()
    # ours also warned once at start-up (issue 7, item 7)
    startup = ["tcpserver: warning: program not found: /nonexistent/prog"] if impl == OURS else []
    assert [line for line in server.lines() if line != warning] == startup


def test_program_not_executable(servers, tmp_path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\necho no\n")
    os.chmod(prog, 0o644)
    server = servers(["-v", *NOLOOKUP], prog=[str(prog)])
    assert server.talk() == b""
    server.wait_log(f"^tcpserver: warning: dropping connection, unable to run {prog}: "
                    "access denied$")
    # the connection ended without a program: the count is back to 0
    server.wait_log(r"^tcpserver: status: 0/40$", 2)
    assert server.running()


def test_program_not_in_path(servers) -> None:
    server = servers(["-v", *NOLOOKUP], prog=["no-such-program-x"])
    assert server.talk() == b""
    server.wait_log("^tcpserver: warning: dropping connection, unable to run "
                    "no-such-program-x: file does not exist$")
    server.wait_log(r"^tcpserver: status: 0/40$", 2)
    prog_server = servers(NOLOOKUP, prog=["echo", "found in PATH"])
    assert prog_server.talk() == b"found in PATH\n"


def test_program_gets_arguments_and_stdio(servers) -> None:
    server = servers(NOLOOKUP, prog=["sh", "-c", 'read line; echo "$0 $1 $line" >&1', "zero", "one"])
    assert server.talk(send=b"input\n") == b"zero one input\n"


def test_program_default_signals(servers) -> None:
    # SIGPIPE and friends are back to their defaults in the program
    server = servers(NOLOOKUP, prog=["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"])
    lines = dict(line.split(":\t") for line in server.talk().decode().splitlines())
    assert int(lines["SigBlk"], 16) == 0
    ignored = int(lines["SigIgn"], 16)
    for sig in (13, 25, 1, 10, 15, 17):                      # PIPE XFSZ HUP USR1 TERM CHLD
        assert not ignored & (1 << (sig - 1)), (sig, lines)


def test_program_fds(servers) -> None:
    # fd 0 and 1 are the socket, 2 is the server's stderr; nothing else leaks
    server = servers(NOLOOKUP, prog=["sh", "-c", "ls /proc/$$/fd; readlink /proc/$$/fd/0 /proc/$$/fd/1"])
    out = server.talk().decode().split()
    fds = sorted(int(x) for x in out if x.isdigit())
    links = [x for x in out if not x.isdigit()]
    assert fds[:3] == [0, 1, 2] and set(fds) - {0, 1, 2} <= {255}, out   # 255: sh's own
    assert links[0] == links[1] and links[0].startswith("socket:")


# -- -e pidfile --------------------------------------------------------------------------
def test_pidfile(servers, tmp_path) -> None:
    pidfile = tmp_path / "pid"
    first = servers(["-e", str(pidfile), *NOLOOKUP], prog=["true"])
    assert pidfile.read_bytes() == b"%d" % first.pid
    result = run_once(OURS, ["-e", str(pidfile), *NOLOOKUP, "127.0.0.1", "0", "true"])
    _one_fatal(result, " already running")
    assert pidfile.read_bytes() == b"%d" % first.pid
    assert first.stop() == 0
    assert pidfile.exists()                       # never removed
    second = servers(["-e", str(pidfile), *NOLOOKUP], prog=["true"])   # stale pid
    assert pidfile.read_bytes() == b"%d" % second.pid


def test_pidfile_empty_is_stale(servers, tmp_path) -> None:
    pidfile = tmp_path / "pid"
    pidfile.write_bytes(b"")
    server = servers(["-e", str(pidfile), *NOLOOKUP], prog=["true"])
    assert pidfile.read_bytes() == b"%d" % server.pid


def test_pidfile_unwritable(tmp_path) -> None:
    path = tmp_path / "no" / "pid"
    result = run_once(OURS, ["-e", str(path), *NOLOOKUP, "127.0.0.1", "0", "true"])
    _one_fatal(result, f"couldn't open {path} for write: file does not exist")


def test_sigterm_exits_zero(servers) -> None:
    server = servers(NOLOOKUP, prog=["true"])
    assert server.stop() == 0
    assert not alive(server.pid)
    assert server.log() == ""                      # it has exited: the whole log
