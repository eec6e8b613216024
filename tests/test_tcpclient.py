"""tcpclient (issue 22, item 1; design: tcpclient).

* the pure parts: the command line, the ``-T x+y`` schedule, the
  STARTTLS dialogues, the TLS file names, the variables;
* side by side with Debian's C ``/usr/bin/tcpclient`` (djb 0.88): the
  environment of a connection (names through the suite's dnsmasq, the
  ident answer of a scripted ident server), refusals, connect timeouts,
  ``-i``/``-p``, ``-v``, ``-q``, usage errors, service names, a program
  that cannot run;
* against real servers: our tcpserver and Debian's C tcpserver, client
  mode (no program), IPv6, ``openssl s_server`` for TLS (client
  certificates with ``-Verify``), our tcpserver's delayed TLS with
  ``tests/starttls_prog.py`` for ``-s smtp|pop3|imap``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import subprocess
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.fix_server import C, OURS, Servers, clean_env, parse_env
from tests.fix_tls import Certs, tls_env
from tests.util import PYTHON, ROOT, free_port, missing, need
from ucspi.client import options as client_options
from ucspi.client.connect import connect_any, literal, port_number
from ucspi.client.starttls import Dialogue, Refused
from ucspi.errors import UsageError
from ucspi.options import MissingArgument, OptionError, Request

TCPCLIENT = os.path.join(ROOT, "tcpclient.py")
C_TCPCLIENT = "/usr/bin/tcpclient"
STARTTLS_PROG = os.path.join(ROOT, "tests", "starttls_prog.py")
NOLOOKUP = ["-H", "-R", "-l", "Local"]
#: prints the environment, then END (as the server harness's PRINT_ENV)
PRINT_ENV = ["sh", "-c", "env; echo END"]
TIMEOUT = 30.0


# -- running a client ------------------------------------------------------------------
def argv_of(impl: str, args: Sequence[str]) -> List[str]:
    if impl == OURS:
        return [PYTHON, TCPCLIENT, *args]
    return [need(C_TCPCLIENT), *args]


def run(impl: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
        data: bytes = b"", timeout: float = TIMEOUT,
        pass_fds: Sequence[int] = ()) -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run(argv_of(impl, args), input=data, capture_output=True,
                          env=env if env is not None else client_env(), timeout=timeout,
                          pass_fds=tuple(pass_fds))


def client_env(**extra: str) -> Dict[str, str]:
    """A clean environment, no rewriting file of the host's."""
    return clean_env(DNSREWRITEFILE="/nonexistent/ucspi-test-dnsrewrite", **extra)


def without_ports(env: Dict[str, str]) -> Dict[str, str]:
    """The environment without the one value that differs between two
    connections: our local port."""
    return {k: v for k, v in env.items() if k not in ("TCPLOCALPORT", "TCP6LOCALPORT")}


@contextlib.contextmanager
def listening(host: str = "127.0.0.1", port: int = 0) -> Iterator[Tuple[socket.socket, int]]:
    """A listener that never accepts (connections complete in the
    kernel's queue): enough for a program that only looks at its
    environment."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(64)
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


class FullQueue:
    """A listener whose accept queue is full: connects to it never
    complete (the SYNs are dropped), so tcpclient's connect times out."""

    def __init__(self, host: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: List[socket.socket] = []
        for _ in range(2):
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex((host, self.port))
            self.fillers.append(filler)
        poller = select.poll()
        poller.register(self.fillers[0].fileno(), select.POLLOUT)
        assert poller.poll(5000), "the accept queue never filled"

    def close(self) -> None:
        for sock in self.fillers + [self.sock]:
            sock.close()


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        missing("an IPv6 loopback address (::1)")


# -- the command line ---------------------------------------------------------------
def test_defaults_are_djbs() -> None:
    opts = client_options.parse(["example.org", "25", "prog", "-x"])
    assert (opts.host, opts.port, opts.argv) == ("example.org", "25", ["prog", "-x"])
    assert opts.remote_host and opts.remote_info and not opts.nodelay
    assert opts.connect_timeouts == (2, 58) and opts.ident_timeout == 26
    assert opts.verbosity == 1 and not opts.tls


def test_host_zero_or_empty_is_loopback() -> None:
    assert client_options.parse(["0", "1"]).host == "127.0.0.1"
    assert client_options.parse(["", "1"]).host == "127.0.0.1"


def test_no_program_is_client_mode() -> None:
    assert client_options.parse(["h", "1"]).argv == []


@pytest.mark.parametrize("text, value", [("5", (5, 0)), ("2+58", (2, 58)), ("+3", (0, 3)),
                                         ("7+", (7, 0)), ("0+0", (0, 0))])
def test_connect_timeouts_forms(text: str, value: Tuple[int, int]) -> None:
    assert client_options.parse(["-T", text, "h", "1"]).connect_timeouts == value


@pytest.mark.parametrize("args", [["-T", "5x"], ["-T", "1+2+3"], ["-T", "-1"], ["-t", "5x"],
                                  ["-p", "70000"], ["-i", "1.2.3.4x"], ["-i", "host"],
                                  ["-s", "ftp"], ["-c", "ca.pem"], ["-m", "x"], ["-z"],
                                  ["-I", "99999999999"]])
def test_bad_arguments_are_usage_errors(args: List[str]) -> None:
    with pytest.raises(UsageError):
        client_options.parse([*args, "h", "1"])


def test_options_cluster_and_stop_at_the_host() -> None:
    opts = client_options.parse(["-vDHRt5", "-T1+2", "-i::1", "h", "1", "-v"])
    assert (opts.verbosity, opts.nodelay, opts.remote_host, opts.remote_info) == (2, True,
                                                                               False, False)
    assert (opts.ident_timeout, opts.connect_timeouts, opts.local_ip) == (5, (1, 2), "::1")
    assert opts.argv == ["-v"]


def test_mapped_local_address_is_ipv4() -> None:
    assert client_options.parse(["-i", "::ffff:127.0.0.2", "h", "1"]).local_ip == "127.0.0.2"
    assert client_options.parse(["-i", "fe80::1%lo", "h", "1"]).local_ip == "fe80::1%lo"


def test_tls_options_with_tls() -> None:
    opts = client_options.parse(["-s", "SMTP", "-c", "ca", "-m", "n", "-z", "h", "1"])
    assert (opts.tls, opts.starttls, opts.cafile, opts.match, opts.tls_details) == (
        True, "smtp", "ca", "n", True)
    assert client_options.parse(["-n", "", "h", "1"]).certfile == ""


def test_missing_host_or_port() -> None:
    with pytest.raises(MissingArgument) as info:
        client_options.parse(["-q", "h"])
    assert info.value.quiet
    with pytest.raises(OptionError):
        client_options.parse(["-x", "h", "1"])
    with pytest.raises(Request):
        client_options.parse(["-v", "--help"])


def test_service_names() -> None:
    assert port_number("25") == 25
    assert port_number("smtp") == 25


def test_literals() -> None:
    assert literal("127.0.0.1") == IPv6Address("::ffff:127.0.0.1")
    assert literal("::1") == IPv6Address("::1")
    assert literal("www.example") is None and literal("127.1") is None


# -- -T x+y -------------------------------------------------------------------------
class Script:
    """Fake connection attempts: each address's outcomes in turn."""

    def __init__(self, outcomes: Dict[str, List[str]]) -> None:
        self.outcomes = outcomes
        self.calls: List[Tuple[str, float]] = []
        self.warned: List[Tuple[str, int]] = []

    def connect(self, ip: IPv6Address, timeout: float) -> socket.socket:
        name = str(ip)
        self.calls.append((name, timeout))
        outcome = self.outcomes[name].pop(0)
        if outcome == "ok":
            return socket.socket()
        raise OSError(errno.ETIMEDOUT if outcome == "timeout" else errno.ECONNREFUSED, outcome)

    def warn(self, ip: IPv6Address, exc: OSError) -> None:
        self.warned.append((str(ip), exc.errno or 0))

    def run(self, timeouts: Tuple[int, int]) -> Optional[socket.socket]:
        found = [IPv6Address(name) for name in self.outcomes]
        sock = connect_any(found, timeouts, self.connect, self.warn)
        if sock is not None:
            sock.close()
        return sock


def test_one_address_gets_x_plus_y() -> None:
    script = Script({"::a": ["timeout"]})
    assert script.run((2, 58)) is None
    assert script.calls == [("::a", 60)]
    assert script.warned == [("::a", errno.ETIMEDOUT)]


def test_timeouts_get_a_second_round_and_a_warning_then() -> None:
    script = Script({"::a": ["timeout", "timeout"], "::b": ["refused"],
                     "::c": ["timeout", "timeout"]})
    assert script.run((2, 58)) is None
    assert script.calls == [("::a", 2), ("::b", 2), ("::c", 2), ("::a", 58), ("::c", 58)]
    assert script.warned == [("::b", errno.ECONNREFUSED), ("::a", errno.ETIMEDOUT),
                             ("::c", errno.ETIMEDOUT)]


def test_second_round_can_connect() -> None:
    script = Script({"::a": ["timeout", "ok"], "::b": ["refused"]})
    assert script.run((1, 5)) is not None
    assert script.calls == [("::a", 1), ("::b", 1), ("::a", 5)]
    assert script.warned == [("::b", errno.ECONNREFUSED)]


def test_no_second_round_without_y() -> None:
    script = Script({"::a": ["timeout"], "::b": ["ok"]})
    assert script.run((3, 0)) is not None
    assert script.calls == [("::a", 3), ("::b", 3)]
    assert script.warned == [("::a", errno.ETIMEDOUT)]


# -- STARTTLS dialogues -----------------------------------------------------------------
def talk(dialogue: Dialogue, *replies: bytes) -> List[bytes]:
    return [dialogue.feed(reply) for reply in replies]


def test_smtp_dialogue() -> None:
    d = Dialogue("smtp", "me.example")
    said = talk(d, b"220-first\r\n", b"220 second\r\n", b"250-hi\r\n250-PIPELINING\r\n",
                b"250 STARTTLS\r\n", b"220 go ahead\r\n")
    assert said == [b"", b"EHLO me.example\r\n", b"", b"STARTTLS\r\n", b""]
    assert d.done and d.extra == 0


def test_smtp_reply_split_anywhere() -> None:
    d = Dialogue("smtp", "me")
    out = b"".join(d.feed(bytes([c])) for c in b"220 hi\r\n250 ok\r\n220 go\r\n")
    assert out == b"EHLO me\r\nSTARTTLS\r\n" and d.done


@pytest.mark.parametrize("proto, replies, reason", [
    ("smtp", [b"554 go away\r\n"], "the server's greeting is 554 go away"),
    ("smtp", [b"220 hi\r\n", b"502 no\r\n"], "the server refused EHLO: 502 no"),
    ("smtp", [b"220 hi\r\n", b"250 ok\r\n", b"454 TLS not available\r\n"],
     "the server refused STARTTLS: 454 TLS not available"),
    ("smtp", [b"hello\r\n"], "the server's reply is not SMTP: hello"),
    ("pop3", [b"-ERR busy\r\n"], "the server's greeting is -ERR busy"),
    ("pop3", [b"+OK hi\r\n", b"-ERR no\r\n"], "the server refused STLS: -ERR no"),
    ("imap", [b"* PREAUTH hi\r\n"], "the server's greeting is * PREAUTH hi"),
    ("imap", [b"* OK hi\r\n", b"a1 NO nope\r\n"], "the server refused STARTTLS: a1 NO nope"),
])
def test_refusals_quote_the_server(proto: str, replies: List[bytes], reason: str) -> None:
    d = Dialogue(proto)
    with pytest.raises(Refused) as info:
        talk(d, *replies)
    assert str(info.value) == reason


def test_pop3_and_imap_dialogues() -> None:
    d = Dialogue("pop3")
    assert talk(d, b"+OK ready\r\n", b"+OK begin\r\n") == [b"STLS\r\n", b""] and d.done
    d = Dialogue("imap")
    assert talk(d, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
                b"* CAPABILITY IMAP4rev1\r\n", b"a1 OK begin\r\n") == [
        b"a1 STARTTLS\r\n", b"", b""]
    assert d.done


def test_bytes_after_the_agreement_are_dropped() -> None:
    d = Dialogue("pop3")
    talk(d, b"+OK ready\r\n")
    assert d.feed(b"+OK begin\r\nINJECTED\r\n") == b"" and d.done
    assert d.extra == len(b"INJECTED\r\n")


def test_endless_lines_are_refused() -> None:
    d = Dialogue("smtp")
    with pytest.raises(Refused):
        d.feed(b"2" * 9000)
    d = Dialogue("smtp")
    with pytest.raises(Refused):
        for _ in range(8000):
            d.feed(b"220-more\r\n")


def test_helo_name_is_cleaned() -> None:
    assert Dialogue("smtp", "a b\r\nc").helo == "abc"
    assert Dialogue("smtp", "").helo == "localhost"


# -- TLS file names ----------------------------------------------------------------------
def test_tls_files_defaults() -> None:
    from ucspi.tls.client import client_files
    there = {"/c/clientcert.pem", "/c/serverca.pem"}.__contains__
    files = client_files("", None, None, {"CERTDIR": "/c"}, there)
    assert (files.certfile, files.cafile, files.crlfile) == ("/c/clientcert.pem",
                                                             "/c/serverca.pem", None)
    files = client_files(None, None, None, {"CERTDIR": "/c"}, there)
    assert files.certfile is None                   # no -n: no certificate
    files = client_files("", "", "", {"CERTDIR": "/c", "TLS_CERTFILE": "/x.pem",
                                      "SERVERCA": "ca.pem", "SERVERCRL": "./crl"},
                         {"/x.pem", "/c/ca.pem", "./crl"}.__contains__)
    assert (files.certfile, files.cafile, files.crlfile) == ("/x.pem", "/c/ca.pem", "./crl")
    files = client_files("mine.pem", "my-ca.pem", None, {}, lambda path: False)
    assert (files.certfile, files.cafile) == ("mine.pem", "my-ca.pem")


# -- the variables --------------------------------------------------------------------
def test_ipv4_sets_tcp_variables_only() -> None:
    from ucspi.client.describe import changes
    from ucspi.environ import Endpoints
    ep = Endpoints(False, False, "127.0.0.1", "::ffff:127.0.0.1", 5, "127.0.0.2",
                   "::ffff:127.0.0.2", 6)
    ep.remote_info = b"joe"
    names = [name for name, _ in changes(ep)]
    assert names[0] == b"PROTO" and not [n for n in names if n.startswith(b"TCP6")]
    ep = Endpoints(True, True, "::1", "::1", 5, "::1", "::1", 6)
    found = dict(changes(ep))
    assert found[b"PROTO"] == b"TCP6" and found[b"TCP6REMOTEIP"] == b"::1"


# -- side by side with the C tcpclient ------------------------------------------------------
def both(args: Sequence[str], env: Optional[Dict[str, str]] = None, data: bytes = b"",
         timeout: float = TIMEOUT, ours_only: Sequence[str] = ()
         ) -> Tuple["subprocess.CompletedProcess[bytes]", "subprocess.CompletedProcess[bytes]"]:
    """Ours (with ``ours_only`` options first: ``-4`` is djb's world)
    and C on the same command line."""
    return (run(OURS, [*ours_only, *args], env, data, timeout), run(C, args, env, data, timeout))


def test_usage_like_c() -> None:
    for args in ([], ["0"], ["-q", "0"], ["-x", "0", "1", "true"], ["-t"]):
        ours, c = both(args)
        assert ours.returncode == c.returncode == 100, args
        assert ours.stdout == c.stdout == b""
        first, their_first = ours.stderr.split(b"\n")[0], c.stderr.split(b"\n")[0]
        if c.stderr.startswith(b"tcpclient: usage: "):
            assert ours.stderr.startswith(b"tcpclient: usage: tcpclient [ -")
        else:
            assert first == their_first, args
        assert b"Traceback" not in ours.stderr


def test_help_and_version() -> None:
    out = run(OURS, ["--help"])
    assert out.returncode == 0 and out.stdout.startswith(b"tcpclient: usage: tcpclient [ ")
    for letter in "hHrRdDqQv46zipTltInscmLfM":
        assert re.search(rb"^  -%s\b" % letter.encode(), out.stdout, re.M), letter
    out = run(OURS, ["--version"])
    import ucspi
    assert (out.returncode, out.stdout) == (0, f"tcpclient {ucspi.__version__}\n".encode())


def test_environment_like_c(dns_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Names through DNSCACHEIP (dnsmasq): the address with a name, the
    one without (an empty TCPLOCALHOST/TCPREMOTEHOST, as djb's code
    sets), the whole environment compared."""
    env = client_env(DNSCACHEIP=dns_server.ip, LOCALDOMAIN="example")
    for host in ("127.53.0.10", "127.53.0.200"):
        with listening(host) as (_, port):
            ours, c = both(["-R", "-i", host, host, str(port), *PRINT_ENV], env)
        assert ours.returncode == c.returncode == 0, (ours.stderr, c.stderr)
        assert ours.stderr == c.stderr == b""
        got, want = parse_env(ours.stdout), parse_env(c.stdout)
        assert without_ports(got) == without_ports(want)
        assert got["TCPREMOTEIP"] == host and got["TCPREMOTEPORT"] == str(port)
        assert got["TCPREMOTEHOST"] == ("www.example" if host.endswith(".10") else "")
        assert "TCP6REMOTEIP" not in got and "TCPREMOTEINFO" not in got


def test_host_name_through_dns_like_c(dns_server) -> None:  # type: ignore[no-untyped-def]
    env = client_env(DNSCACHEIP=dns_server.ip, LOCALDOMAIN="example")
    with listening("127.53.0.10") as (_, port):
        for name in ("www.example", "www"):
            ours, c = both(["-v", *NOLOOKUP, name, str(port), *PRINT_ENV], env,
                           ours_only=["-4"])
            assert c.returncode == 0, c.stderr
            assert (ours.returncode, ours.stderr) == (0, c.stderr)
            assert ours.stderr == b"tcpclient: connected to 127.53.0.10 port %d\n" % port
            assert without_ports(parse_env(ours.stdout)) == without_ports(parse_env(c.stdout))
    for name in ("nx.example", "nothing.test"):
        ours, c = both([*NOLOOKUP, name, "25", "true"], env, ours_only=["-4"])
        assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
            111, b"tcpclient: fatal: no IP address for %s\n" % name.encode())


def test_ident_answer_like_c() -> None:
    """TCPREMOTEINFO: the server host's ident service (a scripted one,
    on port 113 of the server's address) asked about our connection."""
    from tests.fix_ident import FakeIdentd
    with FakeIdentd([b"1 , 2 : USERID : UNIX : joe\r\n"]) as identd:
        if identd.port != 113:
            missing("port 113 (root)")
        with listening(identd.ip) as (_, port):
            ours, c = both(["-H", "-l", "L", identd.ip, str(port), *PRINT_ENV])
        assert ours.returncode == c.returncode == 0, (ours.stderr, c.stderr)
        got, want = parse_env(ours.stdout), parse_env(c.stdout)
        assert got["TCPREMOTEINFO"] == want["TCPREMOTEINFO"] == "joe"
        assert without_ports(got) == without_ports(want)
        local = [line.decode() for line in identd.requests]
        assert len(local) == 2 and all(re.match(rf"^{port} , \d+\r\n$", q) for q in local)


def test_refused_like_c() -> None:
    port = free_port()
    ours, c = both([*NOLOOKUP, "127.0.0.1", str(port), "true"])
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
        111, b"tcpclient: unable to connect to 127.0.0.1 port %d: connection refused\n" % port)


@pytest.mark.slow
def test_timeout_like_c() -> None:
    queue = FullQueue("127.0.0.1")
    try:
        started = time.monotonic()
        ours = run(OURS, [*NOLOOKUP, "-T", "1+1", "127.0.0.1", str(queue.port), "true"])
        took = time.monotonic() - started
        c = run(C, [*NOLOOKUP, "-T", "1+1", "127.0.0.1", str(queue.port), "true"])
    finally:
        queue.close()
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
        111, b"tcpclient: unable to connect to 127.0.0.1 port %d: timed out\n" % queue.port)
    assert took >= 1.9          # one address: x+y seconds


@pytest.mark.slow
def test_two_addresses_time_out_twice(dns_server) -> None:  # type: ignore[no-untyped-def]
    """localhost.example has 127.0.0.1 and ::1: both are tried for x
    seconds without a word, then again for y seconds each, with a
    warning each."""
    ipv6_loopback()
    first = FullQueue("127.0.0.1")
    try:
        second = FullQueue("::1", first.port)
    except OSError:
        first.close()
        pytest.skip("the same port is taken on ::1")
    env = client_env(DNSCACHEIP=dns_server.ip)
    try:
        started = time.monotonic()
        out = run(OURS, [*NOLOOKUP, "-T", "1+1", "localhost.example", str(first.port), "true"],
                  env)
        took = time.monotonic() - started
    finally:
        first.close()
        second.close()
    assert out.returncode == 111
    assert sorted(out.stderr.decode().splitlines()) == [
        f"tcpclient: unable to connect to 127.0.0.1 port {first.port}: timed out",
        f"tcpclient: unable to connect to ::1 port {first.port}: timed out"]
    assert took >= 3.9          # 1 + 1, then 1 + 1


def test_local_address_and_port_like_c() -> None:
    with listening("127.0.0.1") as (_, port):
        outs = []
        for impl in (OURS, C):
            local = free_port("127.0.0.2")
            out = run(impl, [*NOLOOKUP, "-i", "127.0.0.2", "-p", str(local), "127.0.0.1",
                             str(port), *PRINT_ENV])
            assert out.returncode == 0, out.stderr
            got = parse_env(out.stdout)
            assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("127.0.0.2", str(local))
            outs.append(without_ports(got))
        assert outs[0] == outs[1]


def test_bind_failure_like_c() -> None:
    with listening("127.0.0.1") as (_, port):
        ours, c = both([*NOLOOKUP, "-i", "192.0.2.1", "127.0.0.1", str(port), "true"])
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
        111, b"tcpclient: fatal: unable to bind socket: address not available\n")


def test_longest_timeouts_and_unknown_interface() -> None:
    port = free_port()
    out = run(OURS, [*NOLOOKUP, "-T", "2147483647+2147483647", "127.0.0.1", str(port), "true"])
    assert (out.returncode, out.stderr) == (
        111, b"tcpclient: unable to connect to 127.0.0.1 port %d: connection refused\n" % port)
    out = run(OURS, [*NOLOOKUP, "-I", "no-such-if0", "::1", str(port), "true"])
    assert (out.returncode, out.stderr) == (
        111, b"tcpclient: fatal: unable to figure out interface no-such-if0\n")


def test_quiet_and_service_names_like_c() -> None:
    port = free_port()
    ours, c = both(["-q", *NOLOOKUP, "127.0.0.1", str(port), "true"])
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (111, b"")
    ours, c = both([*NOLOOKUP, "127.0.0.1", "no-such-service", "true"])
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
        111, b"tcpclient: fatal: unable to figure out port number for no-such-service\n")


def test_program_that_cannot_run_like_c() -> None:
    with listening() as (_, port):
        ours, c = both([*NOLOOKUP, "127.0.0.1", str(port), "/nonexistent/prog"])
    assert (ours.returncode, ours.stderr) == (c.returncode, c.stderr) == (
        111, b"tcpclient: fatal: unable to run /nonexistent/prog: file does not exist\n")


def test_descriptors_signals_and_status_like_c() -> None:
    """The socket on 6 and 7 (one socket), what the caller had on 6 and
    7 gone, SIGPIPE not ignored, the program's exit status."""
    look = ("for fd in 6 7 8; do printf '%s ' $fd; readlink /proc/$$/fd/$fd || echo -; "
            "done; grep SigIgn /proc/$$/status; exit 7")
    outs = []
    with listening() as (_, port):
        for impl in (OURS, C):
            # the caller leaves a file on 6, 7 and 8
            wrapper = ["sh", "-c", 'exec 6</dev/null 7</dev/null 8</dev/null; exec "$@"', "sh"]
            outs.append(subprocess.run(
                [*wrapper, *argv_of(impl, [*NOLOOKUP, "127.0.0.1", str(port), "sh", "-c", look])],
                capture_output=True, env=client_env(), timeout=TIMEOUT))
    for out in outs:
        assert out.returncode == 7, out.stderr
        lines = dict(line.split(" ", 1) for line in out.stdout.decode().splitlines()
                     if line[0].isdigit())
        assert lines["6"] == lines["7"] and lines["6"].startswith("socket:"), lines
        assert lines["8"] == "/dev/null"
        ignored = int(out.stdout.decode().split("SigIgn:")[1].split()[0], 16)
        assert not ignored & (1 << (13 - 1))            # SIGPIPE
    assert outs[0].stdout.split(b"SigIgn")[1] == outs[1].stdout.split(b"SigIgn")[1]


# -- against our server and the C server ------------------------------------------------------
@pytest.mark.parametrize("impl", [OURS, C])
def test_talks_to_a_tcpserver(servers: Servers, impl: str) -> None:
    """The server's program and ours see the same connection."""
    srv = servers(["-HR", "-l", "Server"], impl=impl,
                  prog=["sh", "-c", 'echo "$TCPREMOTEPORT $TCPLOCALPORT"; cat'])
    prog = ('read ports <&6; echo "$ports"; echo "$TCPLOCALPORT $TCPREMOTEPORT"; '
            'echo ping >&7; read back <&6; echo "$back"')
    out = run(OURS, [*NOLOOKUP, "127.0.0.1", str(srv.port), "sh", "-c", prog])
    assert out.returncode == 0, out.stderr
    seen, own, back = out.stdout.decode().splitlines()
    assert seen == own and back == "ping"


def test_client_mode_copies_both_ways(servers: Servers) -> None:
    srv = servers(["-HRl0"], prog=["sh", "-c", "cat; echo after-eof"])
    data = os.urandom(1 << 20)
    out = run(OURS, [*NOLOOKUP, "127.0.0.1", str(srv.port)], data=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data + b"after-eof\n"   # our end of input reached the server
    assert out.stderr == b""


def test_client_mode_server_ends_first(servers: Servers) -> None:
    """The server's end closes our standard output at once, while our
    standard input is still open; we end when it ends."""
    srv = servers(["-HRl0"], prog=["sh", "-c", "echo bye"])
    proc = subprocess.Popen(argv_of(OURS, [*NOLOOKUP, "127.0.0.1", str(srv.port)]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client_env())
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.read() == b"bye\n"        # end of file: stdout closed
        assert proc.poll() is None
        proc.stdin.close()
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_client_mode_restores_blocking_standard_input(servers: Servers) -> None:
    """Standard input is shared with whoever started us: it is left
    blocking, as it was."""
    srv = servers(["-HRl0"], prog=["sh", "-c", "cat"])
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(argv_of(OURS, [*NOLOOKUP, "127.0.0.1", str(srv.port)]),
                                stdin=read_end, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=client_env())
        os.write(write_end, b"x")
        assert proc.stdout is not None and proc.stdout.read(1) == b"x"
        os.close(write_end)
        write_end = -1
        assert proc.wait(TIMEOUT) == 0
        assert os.get_blocking(read_end)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- IPv6 --------------------------------------------------------------------------------
def test_ipv6_connection_sets_tcp6_variables(servers: Servers) -> None:
    ipv6_loopback()
    with listening("::1") as (_, port):
        out = run(OURS, [*NOLOOKUP, "::1", str(port), *PRINT_ENV])
    assert out.returncode == 0, out.stderr
    got = parse_env(out.stdout)
    assert got["PROTO"] == "TCP6"
    for name in ("LOCALIP", "REMOTEIP"):
        assert got["TCP" + name] == got["TCP6" + name] == "::1"
    assert got["TCP6REMOTEPORT"] == got["TCPREMOTEPORT"] == str(port)
    assert got["TCP6LOCALHOST"] == got["TCPLOCALHOST"] == "Local"
    assert "TCP6INTERFACE" not in got


def test_dash_6_describes_ipv4_as_ipv6() -> None:
    with listening() as (_, port):
        out = run(OURS, ["-6", *NOLOOKUP, "127.0.0.1", str(port), *PRINT_ENV])
    got = parse_env(out.stdout)
    assert (got["PROTO"], got["TCPREMOTEIP"], got["TCP6REMOTEIP"]) == (
        "TCP6", "::ffff:127.0.0.1", "::ffff:127.0.0.1")


def test_dash_4_refuses_ipv6(dns_server) -> None:  # type: ignore[no-untyped-def]
    env = client_env(DNSCACHEIP=dns_server.ip)
    out = run(OURS, ["-4", *NOLOOKUP, "::1", "1", "true"], env)
    assert (out.returncode, out.stderr) == (111, b"tcpclient: fatal: no IP address for ::1\n")
    out = run(OURS, ["-4", *NOLOOKUP, "v6only.example", "1", "true"], env)
    assert out.stderr == b"tcpclient: fatal: no IP address for v6only.example\n"


def test_name_with_ipv6_address(dns_server) -> None:  # type: ignore[no-untyped-def]
    """AAAA records count without -4 (localhost.example: 127.0.0.1 and
    ::1; -i ::1 keeps the IPv6 one)."""
    ipv6_loopback()
    env = client_env(DNSCACHEIP=dns_server.ip)
    with listening("::1") as (_, port):
        out = run(OURS, ["-v", *NOLOOKUP, "-i", "::1", "localhost.example", str(port),
                         *PRINT_ENV], env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b"tcpclient: connected to ::1 port %d\n" % port
    assert parse_env(out.stdout)["PROTO"] == "TCP6"


# -- TLS: openssl s_server ---------------------------------------------------------------------
def _openssl(*args: str, cwd: Optional[str] = None) -> None:
    subprocess.run([need("openssl"), *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


class Issued:
    """Certificates signed by the session's test CA: a server's for
    ``localhost.example`` and 127.0.0.1, and a client's."""

    def __init__(self, certs: Certs, folder: Path) -> None:
        self.ca = certs.ca
        self.server = self._issue(certs, folder, "server", "/CN=localhost.example",
                                  "subjectAltName=DNS:localhost.example,IP:127.0.0.1")
        self.client = self._issue(certs, folder, "client", "/CN=tcpclient test",
                                  "extendedKeyUsage=clientAuth")

    @staticmethod
    def _issue(certs: Certs, folder: Path, name: str, subject: str, extension: str) -> str:
        key, csr, crt = (str(folder / f"{name}.{ext}") for ext in ("key", "csr", "crt"))
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", subject)
        ext = folder / f"{name}.ext"
        ext.write_text(extension + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", certs.ca, "-CAkey", certs.ca_key,
                 "-set_serial", "0x" + os.urandom(4).hex(), "-days", "30", "-out", crt,
                 "-extfile", str(ext))
        pem = folder / f"{name}.pem"
        pem.write_bytes(Path(crt).read_bytes() + Path(key).read_bytes())
        return str(pem)


@pytest.fixture
def issued(certs: Certs, tmp_path: Path) -> Issued:
    return Issued(certs, tmp_path)


class SServer:
    """``openssl s_server`` on 127.0.0.1 and a port of the kernel's."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [need("openssl"), "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        self.output = b""
        deadline = time.monotonic() + 15
        while b"ACCEPT" not in self.output or not self.output.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            assert ready, self.output
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, self.output
            self.output += chunk
        self.port = int(re.search(rb"ACCEPT 127\.0\.0\.1:(\d+)", self.output).group(1))  # type: ignore[union-attr]

    def finish(self) -> bytes:
        """Everything it printed (it ends after its one connection)."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        try:
            rest, _ = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return self.output + rest


@contextlib.contextmanager
def s_server(*args: str) -> Iterator[SServer]:
    server = SServer(args)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.communicate()


def tls_client_env(**extra: str) -> Dict[str, str]:
    """No certificate directory of the host's."""
    return {**tls_env(), "CERTDIR": "/nonexistent/ucspi-certs",
            "DNSREWRITEFILE": "/nonexistent/ucspi-test-dnsrewrite", **extra}


def test_tls_client_mode(certs: Certs) -> None:
    """-n "": TLS without a client certificate when none is there; -rev
    answers each line reversed."""
    with s_server("-cert", certs.default, "-rev") as server:
        out = run(OURS, ["-n", "", *NOLOOKUP, "127.0.0.1", str(server.port)],
                  tls_client_env(), data=b"hello tls\n")
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"slt olleh\n"
        assert out.stderr == b""


def test_tls_program_gets_the_session(certs: Certs) -> None:
    prog = ('echo abc >&7; read line <&6; echo "got $line"; '
            'env | grep -E "^(SSL_|TLS_PROVIDER|PROTO)" | sort; exit 5')
    with s_server("-cert", certs.default, "-rev") as server:
        out = run(OURS, ["-v", "-z", "-n", "", *NOLOOKUP, "127.0.0.1", str(server.port),
                         "sh", "-c", prog], tls_client_env())
    assert out.returncode == 5, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "got cba"
    env = dict(line.split("=", 1) for line in lines[1:])
    assert env["PROTO"] == "TCP" and env["SSL_PROTOCOL"].startswith("TLSv1.")
    assert env["TLS_PROVIDER"].startswith("tcpclient, TLS Server=")
    assert "SSL_TLS_SNI_SERVERNAME" not in env      # an address is not a name
    assert re.search(rb"^tcpclient: encrypted session, TLSv1\.[23], \S+, bits=\d+$",
                     out.stderr, re.M)


def test_tls_verified_against_the_ca(certs: Certs, issued: Issued) -> None:
    prog = 'echo "$SSL_TLS_SNI_SERVERNAME"'
    with s_server("-cert", issued.server) as server:
        out = run(OURS, ["-n", "", "-c", issued.ca, "-m", "localhost.example", *NOLOOKUP,
                         "127.0.0.1", str(server.port), "sh", "-c", prog], tls_client_env())
    assert (out.returncode, out.stdout) == (0, b"localhost.example\n"), out.stderr
    with s_server("-cert", issued.server) as server:    # the address is in the certificate
        out = run(OURS, ["-n", "", "-c", issued.ca, *NOLOOKUP, "127.0.0.1",
                         str(server.port), "true"], tls_client_env())
    assert out.returncode == 0, out.stderr


def test_tls_wrong_name_or_ca_fails(certs: Certs, issued: Issued) -> None:
    with s_server("-cert", issued.server) as server:
        out = run(OURS, ["-n", "", "-c", issued.ca, "-m", "other.example", *NOLOOKUP,
                         "127.0.0.1", str(server.port), "true"], tls_client_env())
    assert out.returncode == 111
    lines = out.stderr.decode().splitlines()
    assert lines[-1] == f"tcpclient: fatal: unable to make a TLS connection to 127.0.0.1 " \
                        f"port {server.port}"
    assert "SSL_connect: TLS/SSL err: error:SSL routines::certificate verify failed" in lines
    assert any("other.example" in line for line in lines if "verify err" in line)
    with s_server("-cert", certs.default) as server:     # self-signed: not our CA's
        out = run(OURS, ["-n", "", "-c", issued.ca, *NOLOOKUP, "127.0.0.1",
                         str(server.port), "true"], tls_client_env())
    assert out.returncode == 111 and b"certificate verify failed" in out.stderr


def test_tls_default_ca_from_the_environment(certs: Certs, issued: Issued) -> None:
    """$SERVERCA turns verification on when it exists."""
    with s_server("-cert", certs.default) as server:
        out = run(OURS, ["-n", "", *NOLOOKUP, "127.0.0.1", str(server.port), "true"],
                  tls_client_env(SERVERCA=issued.ca))
    assert out.returncode == 111 and b"certificate verify failed" in out.stderr


def test_tls_client_certificate(certs: Certs, issued: Issued) -> None:
    """s_server -Verify insists on a certificate from our CA.  Without
    one, TLS 1.2 fails in the handshake; TLS 1.3 finishes the client's
    half first, and the server's alert ends the session (client mode:
    111).  With -n the session goes through and s_server shows our
    certificate."""
    args = ["-cert", issued.server, "-Verify", "1", "-CAfile", issued.ca, "-verify_return_error"]
    with s_server(*args) as server:
        out = run(OURS, ["-n", "", "-M", "TLSv1_2", *NOLOOKUP, "127.0.0.1", str(server.port),
                         "true"], tls_client_env())
        server.finish()
    assert out.returncode == 111, out.stdout
    assert out.stderr.decode().splitlines()[-1] == \
        f"tcpclient: fatal: unable to make a TLS connection to 127.0.0.1 port {server.port}"
    with s_server(*args, "-tls1_3") as server:
        out = run(OURS, ["-n", "", *NOLOOKUP, "127.0.0.1", str(server.port)],
                  tls_client_env(), data=b"hi\n")
        server.finish()
    assert out.returncode == 111 and b"certificate required" in out.stderr
    with s_server(*args) as server:
        out = run(OURS, ["-n", issued.client, *NOLOOKUP, "127.0.0.1", str(server.port)],
                  tls_client_env(), data=b"hello from the client\n")
        printed = server.finish()
    assert out.returncode == 0, out.stderr
    assert b"tcpclient test" in printed and b"hello from the client" in printed


def test_tls_bad_files_fail_before_connecting(certs: Certs, tmp_path: Path) -> None:
    port = free_port()
    for args, reason in (
            (["-n", certs.broken], f"client certificate {certs.broken}: "),
            (["-n", "/nonexistent/c.pem"], "client certificate /nonexistent/c.pem: "
                                           "file does not exist"),
            (["-n", "", "-c", certs.keyonly], f"CA file {certs.keyonly}: "
                                              "no certificate in the file"),
            (["-n", "", "-M", "TLSv9"], "-M wants a method name")):
        out = run(OURS, [*args, *NOLOOKUP, "127.0.0.1", str(port), "true"], tls_client_env())
        last = out.stderr.decode().splitlines()[-1]
        assert out.returncode == 111 and last.startswith(
            "tcpclient: fatal: unable to initialize TLS: " + reason), out.stderr
        assert b"connection refused" not in out.stderr
    out = run(OURS, ["-n", "", "-m", "x", *NOLOOKUP, "127.0.0.1", str(port), "true"],
              tls_client_env())
    assert out.returncode == 100 and b"-m needs a CA file" in out.stderr


@pytest.mark.slow
def test_tls_handshake_times_out() -> None:
    """A server that accepts and never answers: the handshake gets -T's
    x+y seconds."""
    with listening() as (_, port):
        started = time.monotonic()
        out = run(OURS, ["-n", "", "-T", "1+1", *NOLOOKUP, "127.0.0.1", str(port), "true"],
                  tls_client_env())
        took = time.monotonic() - started
    assert out.returncode == 111
    assert out.stderr.decode().splitlines() == [
        "SSL_connect: decoded err: unprocessed data availabe for read",
        f"tcpclient: fatal: unable to make a TLS connection to 127.0.0.1 port {port}"]
    assert took >= 1.9


# -- STARTTLS: our tcpserver with delayed TLS and tests/starttls_prog.py --------------------------
def starttls_server(servers: Servers, certs: Certs, proto: str) -> int:
    srv = servers(["-HRl0", "-n", certs.default, "-w"], env=tls_env(),
                  prog=[PYTHON, STARTTLS_PROG, proto, "Y"])
    return srv.port


@pytest.mark.parametrize("proto, command", [("smtp", "EHLO me"), ("pop3", "NOOP"),
                                            ("imap", "a2 NOOP")])
def test_starttls_with_a_program(servers: Servers, certs: Certs, proto: str,
                                 command: str) -> None:
    """After -s's dialogue the program speaks TLS from its first byte:
    the server's program answers with the session it got."""
    port = starttls_server(servers, certs, proto)
    prog = f'printf "{command}\\r\\n" >&7; read answer <&6; echo "$answer"; echo "$SSL_PROTOCOL"'
    out = run(OURS, ["-s", proto, *NOLOOKUP, "127.0.0.1", str(port), "sh", "-c", prog],
              tls_client_env())
    assert out.returncode == 0, out.stderr
    answer, protocol = out.stdout.decode().splitlines()
    assert "SSL_PROTOCOL=" + protocol in answer and protocol.startswith("TLSv1.")


def test_starttls_client_mode(servers: Servers, certs: Certs) -> None:
    port = starttls_server(servers, certs, "pop3")
    out = run(OURS, ["-s", "pop3", "-n", "", *NOLOOKUP, "127.0.0.1", str(port)],
              tls_client_env(), data=b"NOOP\r\nQUIT\r\n")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.decode().splitlines()
    assert first.startswith("+OK tls ") and "SSL_PROTOCOL=TLSv1." in first
    assert second == "+OK bye"


def test_starttls_refused(servers: Servers) -> None:
    prog = 'printf "220 hi\\r\\n"; read l; printf "250 ok\\r\\n"; read l; ' \
           'printf "454 TLS not available\\r\\n"; read l'
    srv = servers(["-HRl0"], prog=["sh", "-c", prog])
    out = run(OURS, ["-s", "smtp", *NOLOOKUP, "127.0.0.1", str(srv.port), "true"],
              tls_client_env())
    assert (out.returncode, out.stderr) == (
        111, b"tcpclient: fatal: STARTTLS failed: the server refused STARTTLS: "
             b"454 TLS not available\n")


@pytest.mark.slow
def test_starttls_within_the_connect_timeouts(servers: Servers) -> None:
    """The dialogue and the handshake get -T's x+y seconds."""
    srv = servers(["-HRl0"], prog=["sh", "-c", 'printf "220 hi\\r\\n"; read l; read l'])
    started = time.monotonic()
    out = run(OURS, ["-s", "smtp", "-T", "1+0", *NOLOOKUP, "127.0.0.1", str(srv.port), "true"],
              tls_client_env())
    assert (out.returncode, out.stderr) == (111, b"tcpclient: fatal: STARTTLS failed: timed out\n")
    assert time.monotonic() - started >= 0.9


# -- the entry points --------------------------------------------------------------------------
def test_no_traceback_on_interrupt(servers: Servers) -> None:
    """Ctrl-C (SIGINT) ends client mode like the C tools: no traceback."""
    import signal
    srv = servers(["-HRl0"], prog=["sh", "-c", "cat"])
    proc = subprocess.Popen(argv_of(OURS, [*NOLOOKUP, "127.0.0.1", str(srv.port)]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client_env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"x")
    proc.stdin.flush()
    assert proc.stdout.read(1) == b"x"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGINT and err == b""


def test_plain_path_does_not_import_ssl_or_dns() -> None:
    """With an address, -H, -R and -l the plain path needs no resolver
    and no ssl: what the start-up costs."""
    code = ("import sys, runpy; sys.argv = [%r] + sys.argv[1:]; "
            "sys.path.insert(0, %r); import os; "
            "from ucspi.client import command; "
            "real = os.execvpe; "
            "os.execvpe = lambda *a: (print(sorted(m for m in sys.modules "
            "if m in ('ssl', 'ucspi.dns.lookup', 'ucspi.ident.lookup', 'dataclasses'))), "
            "sys.exit(0)); "
            "sys.exit(command.main())" % (TCPCLIENT, ROOT))
    with listening() as (_, port):
        out = subprocess.run([PYTHON, "-c", code, *NOLOOKUP, "127.0.0.1", str(port), "true"],
                             capture_output=True, timeout=TIMEOUT, env=client_env())
    assert (out.returncode, out.stdout) == (0, b"[]\n"), out.stderr
