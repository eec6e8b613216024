"""Conditions that must not break the server: closed standard
descriptors, few file descriptors, absurd numbers, far deadlines, odd
ident replies."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.fix_ident import FakeIdentd
from tests.fix_server import children_of, wait_until
from tests.util import need, ours
from ucspi.reactor import Reactor

NOLOOKUP = ["-v", "-HR", "-l", "Local"]


def test_closed_stdin_at_start(servers) -> None:
    # fd 0 closed: the signal wake-up pipe must not land on it
    server = servers(NOLOOKUP, prefix=["sh", "-c", 'exec "$@" <&-', "sh"],
                     prog=["sh", "-c", "echo hi"])
    for _ in range(3):
        assert server.talk() == b"hi\n"
    server.wait_log(r"end \d+ status 0", count=3)
    assert wait_until(lambda: not children_of(server.pid))
    assert "Exception" not in server.log()


def test_soft_file_limit_is_raised(servers) -> None:
    need("prlimit")
    server = servers(NOLOOKUP, prefix=["prlimit", "--nofile=64:4096"])
    with open(f"/proc/{server.pid}/limits") as handle:
        line = [l for l in handle if l.startswith("Max open files")][0]
    assert line.split()[3:5] == ["4096", "4096"], line


@pytest.mark.parametrize("args", [
    ["-b", "4294967296"], ["-t", "99999999999"], ["-c", "3000000000"],
    ["-u", "99999999999"], ["-C", "4294967296"],
])
def test_numbers_out_of_range_are_usage_errors(args) -> None:
    proc = subprocess.run(ours(*args, "127.0.0.1", "0", "true"), capture_output=True, timeout=20)
    assert proc.returncode == 100
    assert proc.stderr.startswith(b"tcpserver: fatal: -") and proc.stderr.count(b"\n") == 1


def test_group_number_out_of_range() -> None:
    # a bad number is a usage error (issue 7, defect 4), names are looked up later
    proc = subprocess.run(ours("-g", "daemon,99999999999", "127.0.0.1", "0", "true"),
                          capture_output=True, timeout=20)
    assert proc.returncode == 100
    assert proc.stderr == (b"tcpserver: fatal: -g wants group names or numbers from 0 to "
                           b"4294967294, not '99999999999'\n")


def test_far_deadline_does_not_overflow_the_poll() -> None:
    reactor = Reactor()
    fired = []
    reactor.call_later(3e9, lambda: fired.append(1))
    reactor.call_later(0.01, lambda: fired.append(2))
    t0 = time.monotonic()
    while 2 not in fired:
        reactor.run_once(30.0)
    # the 10 ms timer woke the poll, not the 30 s limit (nor the far one)
    assert fired == [2] and time.monotonic() - t0 < 10


def test_cancelled_timers_do_not_pile_up() -> None:
    reactor = Reactor()
    reactor.call_later(3600, lambda: None)          # one long deadline in front
    for _ in range(10000):
        reactor.call_later(1800, lambda: None).cancel()
    assert len(reactor._timers) < 200


def test_far_ident_timeout_serves(servers) -> None:
    with FakeIdentd([b"1 , 2 : USERID : UNIX : jo\0e\r\n"]) as fake:
        server = servers(["-v", "-H", "-l", "L", "-t", "2000000000"])
        env = server.env(source=fake.ip)
    assert env["TCPREMOTEINFO"] == "jo"              # cut at the NUL, as a C string
    assert "warning" not in server.log()
