"""The limits of issue 19 on a running server (ours, ``sys.executable
tcpserver.py``): real clients from several loopback addresses, the
limits from tcpserver's environment and from rules, at accept and after
the rules, behind PROXY, with ``DIEMSG``, and the counters after every
way a connection can end."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path
from typing import List

import pytest

from tests.fix_server import HOLD, PRINT_ENV, Server, Servers, clean_env, parse_env, read_all
from tests.util import PYTHON, ROOT, wait_until

#: a program that holds its connection until the client closes it
HELD = ["sh", "-c", 'echo "hi $TCPCONNNUM"; cat >/dev/null']
NOLOOKUP = ["-v", "-HRl0"]


def rules(path: Path, text: str) -> str:
    cdb = str(path / "rules.cdb")
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), cdb, cdb + ".tmp"],
                   input=text.encode(), check=True, timeout=30)
    return cdb


def hold(server: Server, source: str) -> socket.socket:
    """A client that is being served (its program runs) until closed."""
    sock = server.connect(source=source, timeout=10)
    assert sock.recv(100).startswith(b"hi ")
    return sock


def refused(server: Server, source: str) -> bytes:
    """What a refused client reads before the close (b"" if nothing)."""
    try:
        with server.connect(source=source, timeout=10) as sock:
            return read_all(sock, 10)
    except ConnectionResetError:
        return b""


def deny_lines(server: Server, suffix: str, count: int = 1) -> List[str]:
    return server.wait_log(r"^tcpserver: deny 0 \S+ \S+ " + re.escape(suffix) + "$", count)


def quiet(server: Server) -> None:
    """Every connection has ended: the next status line says 0/limit."""
    assert wait_until(lambda: server.lines() and
                      server.lines()[-1].startswith("tcpserver: status: 0/")), \
        server.lines()[-5:]


# -- from the environment, at accept ------------------------------------------------------------
def test_maxconnip_with_diemsg(servers: Servers) -> None:
    server = servers(NOLOOKUP, prog=HELD,
                     env=clean_env(MAXCONNIP="2", DIEMSG="421 too many connections"))
    held = [hold(server, "127.0.61.1") for _ in range(2)]
    assert refused(server, "127.0.61.1") == b"421 too many connections\r\n"
    line = deny_lines(server, "MAXCONNIP:2")[0]
    assert ":127.0.61.1::" in line and line.startswith("tcpserver: deny 0 0:127.0.0.1:")
    other = hold(server, "127.0.61.2")              # per address
    for sock in held + [other]:
        sock.close()
    quiet(server)
    again = hold(server, "127.0.61.1")              # the count went back down
    again.close()
    # the program's greeting can come before the server logs its pid:
    # read the log once that pid is there and the connection has ended
    assert wait_until(lambda: server.log().count("pid ") >= 4 and
                      server.lines()[-1].startswith("tcpserver: status: 0/")), server.log()
    log = server.log()
    assert "PROGRAM" not in log and "Traceback" not in log
    assert log.count("pid ") == 4                   # no program for the refused one


def test_maxconip_zero_is_no_limit_and_maxconnip_zero_refuses(servers: Servers) -> None:
    free = servers(NOLOOKUP, prog=PRINT_ENV, env=clean_env(MAXCONIP="0"))
    assert free.env(source="127.0.62.1")["PROTO"] == "TCP"
    shut = servers(NOLOOKUP, prog=PRINT_ENV, env=clean_env(MAXCONNIP="0"))
    assert refused(shut, "127.0.62.1") == b""
    deny_lines(shut, "MAXCONNIP:0")


def test_maxconnc_counts_the_network(servers: Servers) -> None:
    server = servers(NOLOOKUP, prog=HELD, env=clean_env(MAXCONNC="2"))
    held = [hold(server, "127.0.63.1"), hold(server, "127.0.63.2")]
    assert refused(server, "127.0.63.3") == b""            # same /24
    deny_lines(server, "MAXCONNC:2")
    other = hold(server, "127.0.64.1")                     # another /24
    for sock in held + [other]:
        sock.close()


def test_maxload(servers: Servers) -> None:
    """MAXLOAD=1 refuses while the load average is above 0.01 (it is,
    while the suite runs: the exact comparison is a unit test's);
    a high MAXLOAD refuses nobody."""
    low = servers(NOLOOKUP, prog=PRINT_ENV, env=clean_env(MAXLOAD="1", DIEMSG="busy"))
    if os.getloadavg()[0] > 0.05:
        assert refused(low, "127.0.65.1") == b"busy\r\n"
        low.wait_log(r"^tcpserver: deny 0 \S+ \S+ LOAD:\d+$")
    high = servers(NOLOOKUP, prog=PRINT_ENV, env=clean_env(MAXLOAD="100000"))
    assert high.env(source="127.0.65.1")["PROTO"] == "TCP"


def test_maxconnrate(servers: Servers) -> None:
    server = servers(NOLOOKUP, prog=PRINT_ENV,
                     env=clean_env(MAXCONNRATE="3", CONNRATEWINDOW="600"))
    for _ in range(3):
        assert server.env(source="127.0.66.1")["PROTO"] == "TCP"
    assert refused(server, "127.0.66.1") == b""
    assert refused(server, "127.0.66.1") == b""            # refusals are not counted...
    deny_lines(server, "MAXCONNRATE:3/600", 2)
    assert server.env(source="127.0.66.2")["PROTO"] == "TCP"    # ...and it is per address


def test_tcpconnnum(servers: Servers) -> None:
    server = servers(NOLOOKUP, prog=HELD)
    first = server.connect(source="127.0.67.1", timeout=10)
    assert first.recv(100) == b"hi 0\n"
    second = server.connect(source="127.0.67.1", timeout=10)
    assert second.recv(100) == b"hi 1\n"
    other = server.connect(source="127.0.67.2", timeout=10)
    assert other.recv(100) == b"hi 0\n"
    for sock in (first, second, other):
        sock.close()


@pytest.mark.parametrize("name, value", [
    ("MAXCONNIP", "x"), ("CONNRATEWINDOW", "0"), ("MAXCONNC", "99999999999999999999"),
    ("MAXCONIP", "-1"),
])
def test_bad_environment_value_is_a_usage_error(name: str, value: str) -> None:
    out = subprocess.run([PYTHON, os.path.join(ROOT, "tcpserver.py"), "-HRl0", "127.0.0.1",
                          "0", "true"], env=clean_env(**{name: value}),
                         capture_output=True, timeout=30)
    assert out.returncode == 100
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tcpserver: fatal: {name} wants a number")


# -- from rules, after the rules ----------------------------------------------------------------
def test_rules_override_the_environment(servers: Servers, tmp_path: Path) -> None:
    cdb = rules(tmp_path, '127.0.68.1:allow,MAXCONNIP="1",DIEMSG="bye"\n'
                          '127.0.68.2:allow,MAXCONNIP=""\n'
                          '127.0.68.3:allow,MAXCONNIP="x"\n'
                          ':allow\n')
    server = servers([*NOLOOKUP, "-x", cdb], prog=HELD, env=clean_env(MAXCONNIP="2"))
    one = hold(server, "127.0.68.1")
    assert refused(server, "127.0.68.1") == b"bye\r\n"          # the rule's limit and text
    line = deny_lines(server, "MAXCONNIP:1")[0]
    assert ":127.0.68.1::" in line
    free = [hold(server, "127.0.68.2") for _ in range(3)]        # empty: no limit
    bad = [hold(server, "127.0.68.3") for _ in range(3)]         # bad: warned, not applied
    server.wait_log(r"^tcpserver: warning: rule for 127\.0\.68\.3: MAXCONNIP wants a number "
                    r"from 0 to 2147483647, not 'x': that limit is not applied to this client$")
    rest = [hold(server, "127.0.68.9") for _ in range(2)]        # the default: 2
    assert refused(server, "127.0.68.9") == b""
    deny_lines(server, "MAXCONNIP:2")
    for sock in [one] + free + bad + rest:
        sock.close()
    quiet(server)


def test_rate_from_a_rule(servers: Servers, tmp_path: Path) -> None:
    cdb = rules(tmp_path, '127.0.69.1:allow,MAXCONNRATE="1",CONNRATEWINDOW="300"\n:allow\n')
    server = servers([*NOLOOKUP, "-x", cdb], prog=PRINT_ENV)
    assert server.env(source="127.0.69.1")["MAXCONNRATE"] == "1"   # rule variables stay
    assert refused(server, "127.0.69.1") == b""
    deny_lines(server, "MAXCONNRATE:1/300")
    assert server.env(source="127.0.69.2")["PROTO"] == "TCP"


# -- the counters after every way a connection ends ----------------------------------------------
def test_counters_after_denials_drops_and_programs(servers: Servers, tmp_path: Path) -> None:
    """A rules denial, a drop for an unreadable rules file, a limit
    refusal and programs that end: afterwards the address's count is
    0 again (a limit of 1 lets the next client in)."""
    cdb = rules(tmp_path, "127.0.70.1:deny\n:allow\n")
    server = servers([*NOLOOKUP, "-x", cdb], prog=HELD, env=clean_env(MAXCONNIP="1"))
    assert refused(server, "127.0.70.1") == b""                   # denied by the rule
    server.wait_log(r"^tcpserver: deny 0 .*:127\.0\.70\.1::\d+$")
    held = hold(server, "127.0.70.2")
    assert refused(server, "127.0.70.2") == b""                   # the limit
    held.close()
    quiet(server)
    os.rename(cdb, cdb + ".kept")                                # unreadable: dropped
    os.mkdir(cdb)
    assert refused(server, "127.0.70.2") == b""
    server.wait_log(r"^tcpserver: warning: dropping connection, unable to read ")
    os.rmdir(cdb)
    os.rename(cdb + ".kept", cdb)
    again = hold(server, "127.0.70.2")                            # counts are back at 0
    again.close()
    quiet(server)
    assert "Traceback" not in server.log()


# -- PROXY: the header's address ------------------------------------------------------------------
def test_limits_apply_to_the_header_address(servers: Servers) -> None:
    from tests.proxy_build import build_v1
    server = servers(NOLOOKUP, prog=HELD,
                     env=clean_env(PROXY_FROM="127.0.71.1", MAXCONNIP="1", DIEMSG="no"))
    first = server.connect(source="127.0.71.1", timeout=10)
    first.sendall(build_v1("192.0.2.5", 1000, "127.0.0.1", server.port))
    assert first.recv(100) == b"hi 0\n"
    second = server.connect(source="127.0.71.1", timeout=10)     # another real client
    second.sendall(build_v1("192.0.2.6", 1001, "127.0.0.1", server.port))
    assert second.recv(100) == b"hi 0\n"
    third = server.connect(source="127.0.71.1", timeout=10)      # the first one again
    third.sendall(build_v1("192.0.2.5", 1002, "127.0.0.1", server.port))
    assert read_all(third, 10) == b"no\r\n"
    deny_lines(server, "MAXCONNIP:1")
    for sock in (first, second, third):
        sock.close()


# -- UNIX clients: MAXLOAD only ----------------------------------------------------------------
def test_unix_clients_ignore_per_address_limits(servers: Servers, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    server = servers(["-v"], host=path, port=None, prog=HOLD,
                     env=clean_env(MAXCONNIP="0", MAXCONNC="0", MAXCONNRATE="1"))
    socks = [server.connect() for _ in range(3)]
    for sock in socks:
        assert sock.recv(10) == b"hi\n"
        sock.close()
