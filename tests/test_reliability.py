"""The reliability suite of issue 7: the server under a flood, against
name and ident servers that misbehave, with broken rules files and
under signal storms.

Every test runs our server (``sys.executable tcpserver.py``) through the
harness of ``tests/fix_server.py`` on a kernel-chosen port; the fakes
listen on loopback addresses of their own (``tests/fix_dns.py``,
``tests/fix_ident.py``), so two runs of the suite on one machine do not
meet.  The whole file is bounded to well under three minutes: its
longest part is the DNS silence, which takes the resolver's whole retry
schedule (3 + 11 + 45 s) once, for every DNS fault at the same time.

What each part shows, for every fault: the connection is served (the
program runs) within the time the fault allows, the variables the fault
touches are absent or a sanitised correct value, the log has no
traceback and no internal error, and the server goes on serving the next
client.  The numbered defects of issue 7 have tests of their own
elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest

from tests.fix_dns import Query, RawTcp, fake_dns_on_53, random_loopback, response, rr
from tests.fix_ident import DRIBBLE, HANG, RESET, FakeIdentd, FullBacklog, Step
from tests.fix_load import Reply, flood, rss_kb, status_lines, zombies
from tests.fix_server import (Server, Servers, children_of, clean_env, fd_count, parse_env,
                              read_all, wait_until)
from tests.util import PYTHON, ROOT, ServerWallClock, need_root
from ucspi.dns import msg as dnsmsg

#: prints the client's own port: each reply names the connection it ends
ECHO_PORT = ["sh", "-c", 'echo "$TCPREMOTEPORT"']
#: 32 client addresses: a flood of 128 keeps 4 connections per address,
#: well under the default -C 20
SOURCES = ["127.0.%d.%d" % (1 + i // 8, 1 + i % 8) for i in range(32)]
TCPRULES = [PYTHON, os.path.join(ROOT, "tcprules.py")]
#: DNSREWRITEFILE that does not exist: /etc/dnsrewrite never leaks in
NO_REWRITE = "/nonexistent/ucspi-test-dnsrewrite"

_STATUS = r"^tcpserver: status: \d+/\d+$"
_TABLE = re.compile(r"^tcpserver: (\d+): IP (\S+): PID (\d+)$")
#: the lines a -v server writes about connections that go well
_NORMAL = re.compile(r"^tcpserver: (status: \d+/\d+|sighup: \d+/\d+|pid \d+ from \S+|"
                     r"ok \d+ \S+ \S+|end \d+ status \d+|\d+: IP \S+: PID \d+)$")


def clean_log(server: Server) -> None:
    """No traceback, no internal error anywhere in the log."""
    log = server.log()
    assert "Traceback" not in log, log
    assert "internal error" not in log, log
    assert "Error:" not in log, log


def quiet(server: Server, limit: int, timeout: float = 30.0) -> None:
    """Wait until every program has ended and been reaped and the last
    status line says ``0/limit``; then check with a SIGHUP marker."""
    last = f"tcpserver: status: 0/{limit}"

    def done() -> bool:
        statuses = [line for line in server.lines() if re.match(_STATUS, line)]
        return not children_of(server.pid) and bool(statuses) and statuses[-1] == last

    assert wait_until(done, timeout), (children_of(server.pid), server.lines()[-5:])
    assert server.marker() == f"tcpserver: sighup: 0/{limit}"


def lost(replies: Sequence[Reply]) -> List[Reply]:
    """The replies of an ECHO_PORT server that are not the client's own port."""
    return [r for r in replies if r.error is not None or r.data != b"%d\n" % r.port]


def count(server: Server, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.lines() if regex.search(line))


# -- a flood -----------------------------------------------------------------------------
@pytest.mark.slow
def test_flood_loses_nothing_and_returns_to_baseline(servers) -> None:
    """5,000 connections, 128 at a time, against -c 40: every client gets
    its own program's output; the server never runs more than 40
    programs, leaves no zombie, and its descriptors, memory and status
    come back to where they were.

    ``-b 256``: with the default backlog of 20, 88 clients waiting on 40
    slots overflow the kernel's accept queue; with SYN cookies the
    kernel then forgets connections whose client never sends first, and
    the C tcpserver loses them exactly as ours does (tried: 42 of 5,000
    lost by Debian's, 90 by ours).  That is the kernel, not the server;
    the backlog takes it out of the measurement."""
    server = servers(["-v", "-HRl0", "-c", "40", "-b", "256"], prog=ECHO_PORT)
    warm = flood(server.address(), 300, 40, SOURCES)         # imports, caches, buffers
    assert not lost(warm), lost(warm)[:3]
    quiet(server, 40)
    fds, rss = fd_count(server.pid), rss_kb(server.pid)

    most = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            most[0] = max(most[0], len(children_of(server.pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        started = time.monotonic()
        replies = flood(server.address(), 5000, 128, SOURCES)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sampler.join()
    assert len(replies) == 5000
    assert not lost(replies), (len(lost(replies)), lost(replies)[:3], elapsed)
    assert 0 < most[0] <= 40, most[0]                    # -c 40: never more programs

    quiet(server, 40)
    assert not zombies(server.pid)
    assert fd_count(server.pid) == fds, os.listdir(f"/proc/{server.pid}/fd")
    assert rss_kb(server.pid) <= rss + 8 * 1024, (rss, rss_kb(server.pid))
    statuses = status_lines(server.lines())
    assert all(0 <= n <= 40 and m == 40 for n, m in statuses), max(statuses)
    assert statuses[-1] == (0, 40)
    assert count(server, r"^tcpserver: pid \d+ from ") == 5300
    assert count(server, r"^tcpserver: end \d+ status 0$") == 5300
    clean_log(server)
    assert [line for line in server.lines() if not _NORMAL.match(line)] == []


def test_flood_of_clients_that_reset(servers) -> None:
    """1,000 clients that connect and reset at once (half of them after
    the first byte of a 64 kB banner), 8 at a time: each connection the
    server could not finish is dropped with one warning, and descriptors
    and status come back; the server still answers."""
    banner = "b" * 65536
    server = servers(["-v", "-HRl0", "-c", "40", "-b", "256", "-B", banner],
                     prog=["sh", "-c", "exec 2>/dev/null; echo hi"])
    assert server.talk()[-3:] == b"hi\n"
    quiet(server, 40)
    fds = fd_count(server.pid)

    def reset(count: int, source: str) -> None:
        for i in range(count):
            with socket.socket() as sock:
                sock.bind((source, 0))
                sock.connect(server.address())
                if i % 2:
                    sock.recv(1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    threads = [threading.Thread(target=reset, args=(125, SOURCES[k])) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    quiet(server, 40)
    assert fd_count(server.pid) == fds
    with server.connect() as sock:
        assert read_all(sock)[-3:] == b"hi\n"
    clean_log(server)
    drop = re.compile(r"^tcpserver: warning: dropping connection, unable to print banner: "
                      r"(connection reset|broken pipe)$")
    assert [line for line in server.lines() if not _NORMAL.match(line)
            and not drop.match(line)] == []
    # every program ended; a client gone before its accept is never
    # counted (Linux may hand it over or not), so at most all were seen
    # (the last client's program may not be reaped yet: wait for its end)
    assert wait_until(lambda: count(server, r"^tcpserver: pid \d+ from ")
                      == count(server, r"^tcpserver: end \d+ status "), 10), server.log()[-2000:]
    ends = count(server, r"^tcpserver: end \d+ status ")
    assert ends + count(server, drop.pattern) <= 1002


# -- signal storms -----------------------------------------------------------------------
def _ptr_for_sources(q: Query) -> Sends:
    """PTR answers for the SOURCES (127.0.x.y -> c-x-y.example), 20 ms late."""
    labels = _labels(q.name)
    if q.qtype != _PTR or len(labels) != 6 or labels[2:4] != [b"0", b"127"]:
        return [(0, response(q, rcode=3))]
    name = wire(b"c-%s-%s" % (labels[1], labels[0]), b"example")
    return [(0.02, response(q, [rr(_TO_QUESTION, _PTR, name)]))]


@pytest.mark.parametrize("lookups", [False, True], ids=["plain", "dns"])
def test_signal_storm_while_serving(servers, tmp_path, lookups: bool) -> None:
    """Hundreds of SIGHUP, SIGUSR1 and SIGCHLD, as fast as they can be
    sent, while 2,000 connections are served 64 at a time: nothing is
    lost, nothing is logged but the usual lines, every table line is a
    real slot, and the server is quiet at ``0/40`` afterwards.  The -c
    limit comes from a file, so every SIGHUP that gets through reads it
    again; with ``dns``, every connection waits for a PTR answer while
    SIGHUP throws the resolver settings away, and must still get its own
    name."""
    limit = tmp_path / "limit"
    limit.write_text("40\n")
    prog = ["sh", "-c", 'echo "$TCPREMOTEPORT $TCPREMOTEHOST"']
    with contextlib.ExitStack() as stack:
        if lookups:
            fake = stack.enter_context(fake_dns_on_53(_ptr_for_sources))
            server = servers(["-v", "-R", "-l0", "-c", str(limit), "-b", "128"], prog=prog,
                             env=clean_env(DNSCACHEIP=fake.ip, DNSREWRITEFILE=NO_REWRITE))
        else:
            server = servers(["-v", "-HRl0", "-c", str(limit), "-b", "128"], prog=prog)
        assert server.handlers_ready()
        storm = [signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD]
        sent = {sig: 0 for sig in storm}
        stop = threading.Event()

        def blow() -> None:
            n = 0
            while not stop.is_set() or min(sent.values()) < 300:
                sig = storm[n % 3]
                os.kill(server.pid, sig)
                sent[sig] += 1
                n += 1
                if n % 16 == 0:
                    time.sleep(0.002)

        blower = threading.Thread(target=blow)
        blower.start()
        try:
            replies = flood(server.address(), 2000, 64, SOURCES)
        finally:
            stop.set()
            blower.join(60)

        def expected(reply: Reply) -> bytes:
            if not lookups:
                return b"%d \n" % reply.port
            _, _, x, y = reply.source.split(".")
            return b"%d c-%s-%s.example\n" % (reply.port, x.encode(), y.encode())

        wrong = [r for r in replies if r.error is not None or r.data != expected(r)]
        assert min(sent.values()) >= 300, sent
        assert not wrong, (len(wrong), wrong[:3])
        assert server.running()
        with server.connect(source=SOURCES[0]) as sock:          # still answers
            assert read_all(sock) == expected(Reply(SOURCES[0], sock.getsockname()[1], b"",
                                                    None, 0.0))
        quiet(server, 40)
    clean_log(server)
    lines = server.lines()
    assert [line for line in lines if not _NORMAL.match(line)] == []
    assert count(server, r"^tcpserver: sighup: ") >= 10      # they coalesce, but got through
    assert all(0 <= n <= 40 and m == 40 for n, m in status_lines(lines))
    slots = [int(m.group(1)) for m in map(_TABLE.match, lines) if m]
    assert slots and all(0 <= slot < 40 for slot in slots)
    pids = count(server, r"^tcpserver: pid \d+ from ")
    assert pids == 2001 and count(server, r"^tcpserver: end \d+ status 0$") == pids
    # the table is empty now: a SIGUSR1 prints no line before the next marker
    tables = len(slots)
    server.signal(signal.SIGUSR1)
    server.marker()
    assert len([line for line in server.lines() if _TABLE.match(line)]) == tables


# -- broken files: -x and -c -------------------------------------------------------------
#: what a connection prints: the RULE variable its rule set
ECHO_RULE = ["sh", "-c", 'echo "$RULE"']
FIXED_RULES = '127.0.0.1:allow,RULE="fixed"\n:allow,RULE="fixed"\n'


def compile_rules(path: str, text: str) -> None:
    """tcprules: the new cdb is written to ``path.tmp``, then renamed over
    ``path`` (the atomic swap of djb's tcprules)."""
    subprocess.run([*TCPRULES, path, path + ".tmp"], input=text.encode(), check=True,
                   capture_output=True, timeout=30)


def _empty(path: str) -> None:
    open(path, "wb").close()


def _truncated(path: str) -> None:
    compile_rules(path, "".join(f'10.0.{i}.1:allow,PAD="{"x" * 20}"\n' for i in range(100)))
    size = os.path.getsize(path)
    os.truncate(path, 2048 + (size - 2048) // 2)          # header whole, records cut


def _directory(path: str) -> None:
    os.mkdir(path)


def _fifo(path: str) -> None:
    os.mkfifo(path)


def _fifo_with_writer(path: str) -> int:
    """A FIFO somebody holds open and has written to: an open for reading
    succeeds at once and a read finds data, so only the file type can
    tell the server it is no cdb."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"\0" * 4096)
    return fd


def _symlink_loop(path: str) -> None:
    os.symlink(path + ".other", path)
    os.symlink(path, path + ".other")


#: a broken -x file: how to make it, and the error text of its drop line
BROKEN: Dict[str, Tuple[Callable[[str], Optional[int]], str]] = {
    "empty": (_empty, "invalid argument"),                 # IndiMail's, verified on C
    "truncated": (_truncated, "protocol error"),           # IndiMail's, verified on C
    "directory": (_directory, "is a directory"),           # errno's text (C: SIGSEGV)
    "fifo": (_fifo, "invalid argument"),                   # never opened blocking
    "fifo-with-writer": (_fifo_with_writer, "invalid argument"),
    "symlink-loop": (_symlink_loop, "symbolic link loop"),  # djb's text for ELOOP
}


@pytest.mark.parametrize("forgiving", [False, True], ids=["x", "Xx"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_rules_file(servers, tmp_path, kind: str, forgiving: bool) -> None:
    """Spec 5.8: a -x file that cannot be read drops each connection with
    ``warning: dropping connection, unable to read <cdb>: <err>``, -X or
    not (-X forgives a missing file only).  Nothing hangs, no -c slot
    leaks (more drops than slots), and once the file is replaced (by
    tcprules' rename) the very next connection is decided by it."""
    path = str(tmp_path / "rules.cdb")
    make, text = BROKEN[kind]
    held = make(path)
    try:
        server = servers(["-v", "-HRl0", "-c", "3", *(["-X"] if forgiving else []), "-x", path],
                         prog=ECHO_RULE)
        warning = f"tcpserver: warning: dropping connection, unable to read {path}: {text}"
        for n in range(1, 5):
            with server.connect() as sock:
                started = time.monotonic()
                assert read_all(sock, 10) == b"", server.log()
                assert time.monotonic() - started < 5
            server.wait_log("^" + re.escape(warning) + "$", n)
        quiet(server, 3)
        if kind == "directory":
            os.rmdir(path)                     # a rename cannot replace a directory
        compile_rules(path, FIXED_RULES)
        assert server.talk() == b"fixed\n", server.log()
    finally:
        if held is not None:
            os.close(held)
    clean_log(server)
    drops = [line for line in server.lines() if line == warning]
    assert len(drops) == 4
    # besides the drops, only normal lines (and a start-up word about the
    # file, should the server check -x when it starts)
    odd = [line for line in server.lines()
           if line != warning and not _NORMAL.match(line)
           and not (line.startswith("tcpserver: warning: ") and path in line)]
    assert odd == []
    quiet(server, 3)


@pytest.mark.parametrize("forgiving", [False, True], ids=["x", "Xx"])
def test_dangling_symlink_is_a_missing_rules_file(servers, tmp_path, forgiving: bool) -> None:
    """A symlink to nothing is a missing file: -X serves without rules,
    -x alone drops with ``file does not exist``."""
    path = str(tmp_path / "rules.cdb")
    os.symlink(str(tmp_path / "nowhere.cdb"), path)
    server = servers(["-v", "-HRl0", *(["-X"] if forgiving else []), "-x", path],
                     prog=["sh", "-c", 'echo "rule=$RULE"'])
    if forgiving:
        assert server.talk() == b"rule=\n"
    else:
        assert server.talk() == b""
        server.wait_log("^" + re.escape(f"tcpserver: warning: dropping connection, unable to "
                                        f"read {path}: file does not exist") + "$")
    compile_rules(str(tmp_path / "nowhere.cdb"), FIXED_RULES)   # the link now leads somewhere
    assert server.talk() == b"rule=fixed\n"
    clean_log(server)


def _big_line(path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(b"7" * (1 << 20))                    # 1 MB of digits, no newline


#: a -c file gone bad: how to make it, and the warning on SIGHUP
LIMIT_FILES: Dict[str, Tuple[Callable[[str], Optional[int]], str]] = {
    "fifo": (_fifo, "unable to read {path}: invalid argument"),
    "fifo-with-writer": (_fifo_with_writer, "unable to read {path}: invalid argument"),
    "dev-zero": (lambda path: os.symlink("/dev/zero", path),
                 "unable to read {path}: invalid argument"),
    "one-huge-line": (_big_line, "{path} does not hold a number from 1 to 2147483647, keeping 5"),
}


@pytest.mark.parametrize("kind", list(LIMIT_FILES))
def test_limit_file_gone_bad_on_sighup(servers, tmp_path, kind: str) -> None:
    """The -c file is read in the loop, at start-up and on SIGHUP: a FIFO
    there must not stall the server (found by this suite: it blocked in
    open() for good), /dev/zero must not eat its memory (it grew by a
    gigabyte a few seconds), a huge line is no number.  SIGHUP warns and
    keeps the limit (design: signals); at start-up it is fatal (design: options),
    without hanging."""
    path = str(tmp_path / "limit")
    make, text = LIMIT_FILES[kind]
    with open(path, "w") as handle:
        handle.write("5\n")
    server = servers(["-v", "-HRl0", "-c", path], prog=["echo", "hi"])
    assert server.talk() == b"hi\n"
    rss = rss_kb(server.pid)
    os.unlink(path)
    held = make(path)
    try:
        server.signal(signal.SIGHUP)
        server.wait_log("^" + re.escape("tcpserver: warning: " + text.format(path=path)) + "$")
        assert server.marker() == "tcpserver: sighup: 0/5"   # the limit kept
        with server.connect() as sock:
            assert read_all(sock, 5) == b"hi\n"
        assert rss_kb(server.pid) < rss + 8 * 1024
        started = time.monotonic()
        proc = subprocess.run([PYTHON, os.path.join(ROOT, "tcpserver.py"), "-c", path, "-HRl0",
                               "127.0.0.1", "0", "true"], stdin=subprocess.DEVNULL,
                              capture_output=True, env=clean_env(), timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 111, proc
        assert proc.stderr.decode() == "tcpserver: fatal: %s\n" % text.format(path=path).split(
            ", keeping")[0]
    finally:
        if held is not None:
            os.close(held)
    clean_log(server)


def test_rules_swapped_under_load(servers, tmp_path) -> None:
    """tcprules replaces the cdb (new file, rename) again and again while
    32 clients keep connecting: every connection is decided by the old
    rules or by the new ones, never an error.  Unlike
    test_rules_server.py's rebuild test, the decision itself flips
    (127.0.0.3 is allowed by one set and denied by the other), and the
    swaps cross both of the server's paths: a file left alone for 2 s is
    held in memory, a fresh one is read from disk.  The server's wall
    clock is moved ahead instead of waiting for a file to settle."""
    path = str(tmp_path / "rules.cdb")
    old = '127.0.0.3:allow,GEN="old"\n:allow,GEN="old"\n'
    new = '127.0.0.3:deny\n:allow,GEN="new"\n'
    compile_rules(path, old)
    wall = ServerWallClock(str(tmp_path))
    wall.set(3)                                           # settled: held in memory
    server = servers(["-v", "-HRl0", "-c", "40", "-b", "128", "-x", path],
                     prog=["sh", "-c", 'echo "$GEN"'], env=clean_env(**wall.env()))
    assert server.talk(source="127.0.0.3") == b"old\n"   # loaded (a small file: at once)
    wall.set(0)                                           # the next ones are fresh
    swaps = [0]
    stop = threading.Event()
    failures: List[BaseException] = []
    decided = r"^tcpserver: (pid \d+ from|deny) "

    def settle() -> None:
        """Let the current file settle: it looks old while more
        connections than can be in flight at once are decided."""
        wall.set(3)
        seen = count(server, decided)
        wait_until(lambda: stop.is_set() or count(server, decided) >= seen + 200, 60)
        wall.set(0)

    def swap() -> None:
        try:
            while not stop.is_set():
                compile_rules(path, (new, old)[swaps[0] % 2])
                swaps[0] += 1
                if swaps[0] in (4, 9):
                    settle()                              # then replace it
        except BaseException as exc:    # reported below
            failures.append(exc)

    sources = ["127.0.0.3", "127.0.0.4"]
    swapper = threading.Thread(target=swap)
    swapper.start()
    replies: List[Reply] = []
    try:
        while swaps[0] < 14 and not failures:
            replies += flood(server.address(), 400, 32, sources)
    finally:
        stop.set()
        swapper.join(60)
    assert not failures, failures
    assert not [r for r in replies if r.error], [r for r in replies if r.error][:3]
    mine = {source: [r.data for r in replies if r.source == source] for source in sources}
    assert set(mine["127.0.0.4"]) == {b"old\n", b"new\n"}
    assert set(mine["127.0.0.3"]) == {b"old\n", b""}      # allowed by old, denied by new
    denies = count(server, r"^tcpserver: deny 0 \S+ :127\.0\.0\.3::\d+$")
    assert denies == mine["127.0.0.3"].count(b"")          # every empty one was a deny
    assert count(server, r"^tcpserver: deny ") == denies
    clean_log(server)
    assert [line for line in server.lines()
            if not _NORMAL.match(line) and not line.startswith("tcpserver: deny 0 ")] == []
    quiet(server, 40)


# -- ident faults ------------------------------------------------------------------------
def safecats(value: bytes) -> str:
    """djb's log filter for a field (design: log-lines), written out again here: cut at
    100 bytes (then ``...``), and ``:``, ``%`` and every byte outside
    ``!``..``~`` shown as ``?``."""
    value = value.split(b"\0", 1)[0]
    cut = value[:100]
    text = "".join(chr(c) if 33 <= c <= 126 and c not in b":%" else "?" for c in cut)
    return text + ("..." if len(value) >= 100 else "")


class IdentFault(NamedTuple):
    steps: Sequence[Step]
    info: Optional[bytes]      # TCPREMOTEINFO expected; None: absent
    slow: bool                 # True: ends at the -t deadline
    read_request: bool = True


_USERID = b"40123 , 25 : USERID : UNIX : "
IDENT_FAULTS: Dict[str, IdentFault] = {
    # silence without even reading the query (the query itself is
    # covered by test_lookups.py::test_slow_ident_does_not_block_others)
    "unread-silence": IdentFault([HANG], None, True, read_request=False),
    "drip-within-deadline": IdentFault([DRIBBLE(_USERID + b"joe\r\n", 0.01)], b"joe", False),
    "drip-past-deadline": IdentFault([DRIBBLE(_USERID + b"joe\r\n", 0.1)], None, True),
    "drip-blanks-forever": IdentFault([_USERID, DRIBBLE(b" \t\r" * 4000, 0.005)], None, True),
    "oversize-value": IdentFault([_USERID + b"a" * 100000 + b"\r\n", HANG], b"a" * 257, False),
    "oversize-no-colon": IdentFault([b"x" * 100000, HANG], None, True),
    "oversize-many-lines": IdentFault([b"1,2:ERROR:X\r\n" * 20000], b"", False),
    "cr-in-user": IdentFault([_USERID + b"jo\re\r\n"], b"joe", False),     # blanks dropped
    "lf-in-user": IdentFault([_USERID + b"jo\ne\r\n"], b"jo", False),      # LF ends it
    "nul-in-user": IdentFault([_USERID + b"jo\0e\r\n"], b"jo", False),     # a C string
    "nul-cr-lf-first": IdentFault([_USERID + b"\0root\r\n\r\nroot\r\n"], b"", False),
    "controls-in-user": IdentFault([_USERID + b"\x01x\x1b[2J\x7f\xff%:y\r\n"],
                                   b"\x01x\x1b[2J\x7f\xff%:y", False),
    "closed-before-lf": IdentFault([_USERID + b"joe"], None, False),
    "reset": IdentFault([_USERID + b"jo", RESET], None, False),
}
#: -t 1: the ident deadline of the faults that end at it
IDENT_OPTIONS = ["-v", "-H", "-l", "L", "-t", "1"]
#: -t 30: for the faults that must end long before any deadline
FAR_DEADLINE = ["-v", "-H", "-l", "L", "-t", "30"]
#: served within 10 s: ten times the -t 1 deadline, room enough for a
#: loaded machine, and well short of what a wrong wait costs (the
#: default -t 26, the 30 s of FAR_DEADLINE, a drip of 60 s)
SERVED_WITHIN = 10.0


def _served(server: Server, source: str,
            timeout: float = 30.0) -> Tuple[Dict[str, str], int, float]:
    """(environment, client port, seconds) of one PRINT_ENV connection."""
    started = time.monotonic()
    with server.connect(source=source, timeout=timeout) as sock:
        port = sock.getsockname()[1]
        data = read_all(sock, timeout)
    return parse_env(data), port, time.monotonic() - started


def _check_ident(server: Server, source: str, info: Optional[bytes], lo: float, hi: float) -> None:
    """One connection from ``source``: served within ``[lo, hi)`` s, with
    ``info`` as TCPREMOTEINFO (None: absent) and in the log line."""
    env, port, elapsed = _served(server, source)
    assert lo <= elapsed < hi, (elapsed, server.log())
    value = env.get("TCPREMOTEINFO")
    if info is None:
        assert value is None, value
    else:
        assert value is not None and value.encode("latin-1") == info
        assert not set(value) & set("\0\r\n")
    pattern = (rf"^tcpserver: ok \d+ L:127\.0\.0\.1:{server.port} "
               rf":{re.escape(source)}:(.*):{port}$")
    line = server.wait_log(pattern)[0]
    field = re.match(pattern, line).group(1)  # type: ignore[union-attr]
    assert field == safecats(info or b""), line


@pytest.mark.parametrize("fault", list(IDENT_FAULTS))
def test_ident_fault(servers, fault: str) -> None:
    """Each misbehaving ident server: the connection is served, by the -t
    deadline when the reply never completes; TCPREMOTEINFO is absent or
    the value as djb's remoteinfo reads it (never a CR, LF or NUL in the
    environment; the log line filtered); the next client, whose ident
    server answers, gets its user."""
    need_root()                                  # the fakes answer on port 113
    case = IDENT_FAULTS[fault]
    with FakeIdentd(case.steps, read_request=case.read_request) as fake, \
            FakeIdentd([_USERID + b"next\r\n"]) as good:
        if case.slow:                  # at the -t 1 deadline, not before
            server = servers(IDENT_OPTIONS)
            lo = 0.9
        else:                          # by the reply itself, not the deadline
            server = servers(FAR_DEADLINE)
            lo = 0.0
        _check_ident(server, fake.ip, case.info, lo, SERVED_WITHIN)
        _check_ident(server, good.ip, b"next", 0.0, SERVED_WITHIN)
    clean_log(server)
    assert [line for line in server.lines() if not _NORMAL.match(line)] == []
    assert all(0x20 <= ord(c) < 0x7F for c in server.log().replace("\n", ""))
    quiet(server, 40)


def test_ident_connect_never_completes(servers) -> None:
    """The client's port 113 drops every SYN (its accept queue is full):
    the connect itself runs into the -t deadline."""
    need_root()
    with FullBacklog() as full, FakeIdentd([_USERID + b"next\r\n"]) as good:
        assert full.port == 113
        server = servers(IDENT_OPTIONS)
        _check_ident(server, full.ip, None, 0.9, SERVED_WITHIN)
        _check_ident(server, good.ip, b"next", 0.0, SERVED_WITHIN)
    clean_log(server)
    quiet(server, 40)


# -- DNS faults --------------------------------------------------------------------------
# One fake name server (UDP and TCP on port 53 of an address of its own,
# named by DNSCACHEIP) and two servers, -h and -hp, take every fault at
# the same time: each fault is the PTR answer for one client address
# (127.77.i.1 for -h, 127.78.i.1 for -hp), and a second address per
# fault (127.7x.i.2) is the next client, answered properly.  The faults
# that make the resolver wait out its whole schedule (3 + 11 + 45 s)
# therefore cost that minute once for all of them.

_PTR, _A, _AAAA, _CNAME = dnsmsg.TYPE_PTR, dnsmsg.TYPE_A, dnsmsg.TYPE_AAAA, 5
_TO_QUESTION = b"\xc0\x0c"                 # a pointer to the question name
FAST = (0.0, 5.0)
TCP_SILENCE = (9.5, 20.0)                  # the 10 s TCP deadline
WHOLE_SCHEDULE = (58.5, 80.0)              # UDP: 3 + 11 + 45 s


def wire(*labels: bytes) -> bytes:
    """A wire-form name from its labels (lengths not checked: faults)."""
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _labels(name: bytes) -> List[bytes]:
    out, pos = [], 0
    while name[pos]:
        out.append(name[pos + 1:pos + 1 + name[pos]])
        pos += 1 + name[pos]
    return out


_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def djb_name(name: bytes) -> str:
    """A wire name as djb's tcpserver shows it (dns_domain_todot),
    written out again here: lowercase, ``a-z0-9-_`` kept, any
    other byte as ``\\ooo``, labels joined by dots; the root is ``.``."""
    labels = _labels(name)
    if not labels:
        return "."
    return ".".join("".join(chr(c) if c in _KEEP else "\\%03o" % c for c in label.lower())
                    for label in labels)


class Client(NamedTuple):
    ip: str
    good: bytes        # the name the fault's honest answer carries
    evil: bytes        # a name only a forged answer carries


class Spoofers(NamedTuple):
    other_address: socket.socket      # another 127.x address, port 53
    other_port: socket.socket         # the fake's address, another port


Sends = List[Tuple[float, bytes]]
Plan = Callable[[Query, Client, Spoofers], Optional[Sends]]


def ptr_reply(q: Query, target: bytes, **kw: object) -> bytes:
    """A reply to ``q`` with one PTR record naming ``target``; ``kw``
    spoils it (see :func:`tests.fix_dns.response`)."""
    return response(q, [rr(_TO_QUESTION, _PTR, target)], **kw)  # type: ignore[arg-type]


def honest(q: Query, c: Client, s: Spoofers) -> Sends:
    return [(0, ptr_reply(q, c.good))]


def _then(first: Plan, then: Plan) -> Plan:
    """``first``'s sends, then ``then``'s 50 ms later."""
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        return (first(q, c, s) or []) + [(0.05 + d, p) for d, p in then(q, c, s) or []]
    return plan


def _then_honest(first: Plan) -> Plan:
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        return (first(q, c, s) or []) + [(0.05, ptr_reply(q, c.good))]
    return plan


def _garbage(q: Query, c: Client, s: Spoofers) -> Sends:
    pick = random.Random(q.qid)
    out = []
    for size in (3, 12, 100, 511):
        data = bytes(pick.randrange(256) for _ in range(size))
        if data[:2] == q.packet[:2]:
            data = bytes([data[0] ^ 1]) + data[1:]
        out.append((0.0, data))
    return out


def _wrong_id(q: Query, c: Client, s: Spoofers) -> Sends:
    return [(0, ptr_reply(q, c.evil, qid=q.qid ^ 0x5A5A))]


def _wrong_question(q: Query, c: Client, s: Spoofers) -> Sends:
    return [(0, ptr_reply(q, c.evil, name=wire(b"other", b"example")))]


def _from(which: str) -> Plan:
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        getattr(s, which).sendto(ptr_reply(q, c.evil), q.source)
        return []
    return plan


def _cut(size: int) -> Plan:
    """The honest answer cut to ``size`` bytes (negative: from the end)."""
    return lambda q, c, s: [(0, ptr_reply(q, c.good)[:size])]


def _no_answer_section(q: Query, c: Client, s: Spoofers) -> Sends:
    packet = response(q)
    return [(0, packet[:6] + b"\x00\x01" + packet[8:])]          # ANCOUNT 1, nothing there


def _rdlength_past_end(q: Query, c: Client, s: Spoofers) -> Sends:
    record = _TO_QUESTION + _rr_head(_PTR, 200) + c.good
    packet = response(q)
    return [(0, packet[:6] + b"\x00\x01" + packet[8:] + record)]         # ANCOUNT 1


def _rr_head(rtype: int, rdlength: int) -> bytes:
    """A record's type, class IN, TTL and RDLENGTH."""
    return rtype.to_bytes(2, "big") + b"\x00\x01" + (60).to_bytes(4, "big") + \
        rdlength.to_bytes(2, "big")


def _pointer(at: int) -> bytes:
    return bytes([0xC0 | at >> 8, at & 0xFF])


def _raw_answer(rdata: Callable[[int], bytes], owner: Optional[Callable[[int], bytes]] = None,
                rtype: int = _PTR) -> Plan:
    """One record whose owner and rdata may point anywhere: ``rdata(at)``
    and ``owner(at)`` get the offset where they will sit."""
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        start = 12 + len(q.name) + 4             # after the header and the question
        own = _TO_QUESTION if owner is None else owner(start)
        data = rdata(start + len(own) + 10)
        record = own + _rr_head(rtype, len(data)) + data
        return [(0, response(q, [record]))]
    return plan


def _forward_to(ip: str) -> Plan:
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        if q.qtype == _AAAA:
            return [(0, response(q))]
        return [(0, response(q, [rr(_TO_QUESTION, _A, socket.inet_aton(ip or c.ip))]))]
    return plan


def _forward_forged(q: Query, c: Client, s: Spoofers) -> Sends:
    """The right address, from the wrong one: never believed."""
    if q.qtype == _A:
        s.other_address.sendto(response(q, [rr(_TO_QUESTION, _A, socket.inet_aton(c.ip))]),
                               q.source)
    else:
        s.other_address.sendto(response(q), q.source)
    return []


def _forward_owner_loop(q: Query, c: Client, s: Spoofers) -> Sends:
    """The right address in a record whose owner name points at itself."""
    if q.qtype == _AAAA:
        return [(0, response(q))]
    start = 12 + len(q.name) + 4
    record = _pointer(start) + _rr_head(_A, 4) + socket.inet_aton(c.ip)
    return [(0, response(q, [record]))]


def _largest_tcp(q: Query, c: Client, s: Spoofers) -> Sends:
    """The honest record first, then others up to 65,535 bytes in all."""
    records = [rr(_TO_QUESTION, _PTR, c.good)]
    size = len(response(q, records))
    filler = rr(_TO_QUESTION, _PTR, wire(b"x" * 40, b"example"))
    while size + len(filler) <= 65535:
        records.append(filler)
        size += len(filler)
    return [(0, response(q, records))]


def _name(name: bytes) -> Plan:
    return lambda q, c, s: [(0, ptr_reply(q, name))]


def _tc(q: Query, c: Client, s: Spoofers) -> Sends:
    return [(0, response(q, tc=True))]


def _many(count: int) -> Plan:
    def plan(q: Query, c: Client, s: Spoofers) -> Sends:
        others = [rr(_TO_QUESTION, _PTR, wire(b"other%d" % i, b"example")) for i in range(count)]
        return [(0, response(q, [rr(_TO_QUESTION, _PTR, c.good)] + others))]
    return plan


MAX_NAME = wire(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)      # 255 bytes
HOSTILE = {
    "nonprintable": wire(bytes(range(32)), b"\x7f\xff \x80", b"example"),
    "colon-newline": wire(b"evil:name\ntcpserver: ok 1 x", b"example"),
    "dot-in-label": wire(b"a.b", b"example"),
    "backslash-percent": wire(b"back\\slash%25", b"example"),
    "uppercase": wire(b"HoSt", b"EXAMPLE"),
}


class DnsFault(NamedTuple):
    udp: Plan
    tcp: Optional[Plan]                      # None: TCP closes at once
    host: Callable[[Client], Optional[bytes]]   # TCPREMOTEHOST expected (wire), None: absent
    window: Tuple[float, float]              # seconds from connect to EOF
    # -p only: the answers to the forward (A, AAAA) queries for the
    # client's name, and what -p then gives; None: honest answers
    forward: Optional[Plan] = None
    paranoid_host: Callable[[Client], Optional[bytes]] = lambda c: None
    paranoid_window: Tuple[float, float] = FAST


def _good(c: Client) -> Optional[bytes]:
    return c.good


def _none(c: Client) -> Optional[bytes]:
    return None


def _fixed(name: bytes) -> Callable[[Client], Optional[bytes]]:
    return lambda c: name


def _ptr_dot_question(c: Client) -> Optional[bytes]:
    """``ptr.`` + the client's PTR question name (a pointer back to it)."""
    octets = c.ip.split(".")
    return wire(b"ptr", *(o.encode() for o in reversed(octets)), b"in-addr", b"arpa")


DNS_FAULTS: Dict[str, DnsFault] = {
    "honest": DnsFault(honest, None, _good, FAST),
    # garbage, forged and irrelevant datagrams are ignored: the honest answer counts
    "garbage-then-answer": DnsFault(_then_honest(_garbage), None, _good, FAST),
    "wrong-id-then-answer": DnsFault(_then_honest(_wrong_id), None, _good, FAST),
    "wrong-address-then-answer": DnsFault(_then_honest(_from("other_address")), None, _good,
                                          FAST),
    "wrong-port-then-answer": DnsFault(_then_honest(_from("other_port")), None, _good, FAST),
    "wrong-question-then-answer": DnsFault(_then_honest(_wrong_question), None, _good, FAST),
    "cut-header-then-answer": DnsFault(_then_honest(_cut(7)), None, _good, FAST),
    # ... and when nothing else comes, the whole schedule runs out
    "silence": DnsFault(lambda q, c, s: [], None, _none, WHOLE_SCHEDULE),
    "garbage": DnsFault(_garbage, None, _none, WHOLE_SCHEDULE),
    "wrong-id": DnsFault(_wrong_id, None, _none, WHOLE_SCHEDULE),
    "wrong-address": DnsFault(_from("other_address"), None, _none, WHOLE_SCHEDULE),
    "wrong-port": DnsFault(_from("other_port"), None, _none, WHOLE_SCHEDULE),
    "cut-header": DnsFault(_cut(7), None, _none, WHOLE_SCHEDULE),
    # a server failure moves on at once, except in djbdns's patient second round
    "servfail": DnsFault(lambda q, c, s: [(0, response(q, rcode=2))], None, _none,
                         (10.5, 20.0)),
    # answers cut short (no TC bit): a protocol error at once
    "cut-record": DnsFault(_cut(-5), None, _none, FAST),
    "no-answer-section": DnsFault(_no_answer_section, None, _none, FAST),
    "rdlength-past-end": DnsFault(_rdlength_past_end, None, _none, FAST),
    # TC, then TCP
    "tc-then-tcp-answer": DnsFault(_tc, honest, _good, FAST),
    "tc-then-tcp-garbage": DnsFault(_tc, _garbage, _none, FAST),
    "tc-then-tcp-unframed": DnsFault(
        _tc, lambda q, c, s: [(0, RawTcp(b"HTTP/1.0 400 Bad Request\r\n\r\n")),
                              (0.01, RawTcp())], _none, FAST),
    "tc-then-tcp-short": DnsFault(
        _tc, lambda q, c, s: [(0, RawTcp(b"\xff\xff" + b"x" * 10)), (0.01, RawTcp())],
        _none, FAST),
    "tc-then-tcp-closed": DnsFault(_tc, None, _none, FAST),
    "tc-then-tcp-wrong-id": DnsFault(_tc, _wrong_id, _none, FAST),
    "tc-then-tcp-tc": DnsFault(_tc, _tc, _none, FAST),
    "tc-then-tcp-silence": DnsFault(_tc, lambda q, c, s: [], _none, TCP_SILENCE),
    "tc-then-tcp-many": DnsFault(_tc, _many(300), _good, FAST),
    "tc-then-tcp-65535-bytes": DnsFault(_tc, _largest_tcp, _good, FAST),
    # compression
    "pointer-to-itself": DnsFault(_raw_answer(_pointer), None, _none, FAST),
    "pointer-label-loop": DnsFault(_raw_answer(lambda at: b"\x01a" + _pointer(at)), None,
                                   _none, FAST),
    "owner-pointer-loop": DnsFault(_raw_answer(lambda at: wire(b"x"), owner=_pointer), None,
                                   _none, FAST),
    "pointer-past-end": DnsFault(_raw_answer(lambda at: _pointer(0x3FFF)), None, _none, FAST),
    "pointer-backwards-ok": DnsFault(_raw_answer(lambda at: b"\x03ptr" + _pointer(12)), None,
                                     _ptr_dot_question, FAST),
    # hostile names
    "name-255-bytes": DnsFault(_name(MAX_NAME), None, _fixed(MAX_NAME), FAST),
    "name-256-bytes": DnsFault(_name(wire(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62)), None,
                               _none, FAST),
    "label-64-bytes": DnsFault(_raw_answer(lambda at: b"\x40" + b"a" * 64 + b"\0"), None,
                               _none, FAST),
    "root-name": DnsFault(_name(b"\0"), None, _fixed(b"\0"), FAST),
    "cname-not-ptr": DnsFault(lambda q, c, s: [(0, response(q, [rr(_TO_QUESTION, _CNAME,
                                                                   c.good)]))],
                              None, _none, FAST),
    "first-of-several": DnsFault(_many(8), None, _good, FAST),
    "nxdomain": DnsFault(lambda q, c, s: [(0, response(q, rcode=3))], None, _none, FAST),
    # -p: the PTR answer is honest, the forward lookup of the name is not
    "forward-silence": DnsFault(honest, None, _good, FAST, forward=lambda q, c, s: [],
                                paranoid_window=WHOLE_SCHEDULE),
    "forward-other-address": DnsFault(honest, None, _good, FAST,
                                      forward=_forward_to("127.0.0.99")),
    "forward-garbage-then-answer": DnsFault(honest, None, _good, FAST,
                                            forward=_then(_garbage, _forward_to("")),
                                            paranoid_host=_good),
    "forward-wrong-address-then-answer": DnsFault(honest, None, _good, FAST,
                                                  forward=_then(_forward_forged, _forward_to("")),
                                                  paranoid_host=_good),
    "forward-wrong-address": DnsFault(honest, None, _good, FAST, forward=_forward_forged,
                                      paranoid_window=WHOLE_SCHEDULE),
    "forward-owner-loop": DnsFault(honest, None, _good, FAST, forward=_forward_owner_loop),
    "forward-nxdomain": DnsFault(honest, None, _good, FAST,
                                 forward=lambda q, c, s: [(0, response(q, rcode=3))]),
}
DNS_FAULTS.update({name: DnsFault(_name(value), None, _fixed(value), FAST)
                   for name, value in HOSTILE.items()})

DNS_MODES = {"h": 77, "hp": 78}            # -h alone, -h with -p: second octet of the clients


class DnsRun(NamedTuple):
    env: Dict[str, str]
    port: int
    elapsed: float
    next_env: Dict[str, str]
    next_elapsed: float


class DnsLab:
    """The fake's answers: per client address (from the PTR question)
    its fault, and for -p the addresses of the names it hands out."""

    def __init__(self) -> None:
        self.plans: Dict[str, Tuple[DnsFault, Client]] = {}
        self.forward: Dict[bytes, str] = {}
        self.spoofers: Optional[Spoofers] = None
        self.errors: List[Tuple[bytes, BaseException]] = []   # (question, error)

    def client(self, mode: str, index: int, fault: DnsFault) -> Client:
        base = DNS_MODES[mode]
        ip = f"127.{base}.{index}.1"
        client = Client(ip, wire(b"host-%d-%d" % (base, index), b"example"),
                        wire(b"evil-%d-%d" % (base, index), b"example"))
        self.plans[ip] = (fault, client)
        for name in (fault.host(client), client.evil):
            if name is not None and mode == "hp":
                self.forward[name.lower()] = ip
        after = f"127.{base}.{index}.2"
        nxt = Client(after, wire(b"next-%d-%d" % (base, index), b"example"), client.evil)
        self.plans[after] = (DNS_FAULTS["honest"], nxt)
        self.forward[nxt.good.lower()] = after
        return client

    def _target(self, q: Query) -> Optional[Tuple[DnsFault, Client]]:
        labels = _labels(q.name)
        if len(labels) != 6 or [x.lower() for x in labels[4:]] != [b"in-addr", b"arpa"]:
            return None
        return self.plans.get(".".join(x.decode() for x in reversed(labels[:4])))

    def udp(self, q: Query) -> Optional[Sends]:
        try:
            if q.qtype in (_A, _AAAA):
                ip = self.forward.get(q.name.lower())
                if ip is None:
                    return [(0, response(q, rcode=3))]
                fault, client = self.plans[ip]
                if fault.forward is not None:
                    assert self.spoofers is not None
                    return fault.forward(q, client, self.spoofers)
                if q.qtype == _AAAA:
                    return [(0, response(q))]
                return [(0, response(q, [rr(_TO_QUESTION, _A, socket.inet_aton(ip))]))]
            found = self._target(q)
            if q.qtype != _PTR or found is None:
                return [(0, response(q, rcode=3))]
            assert self.spoofers is not None
            return found[0].udp(q, found[1], self.spoofers)
        except BaseException as exc:   # the fake's thread must survive: reported by the tests
            self.errors.append((q.name, exc))
            return []

    def tcp(self, q: Query) -> Optional[Sends]:
        try:
            found = self._target(q)
            if found is None or found[0].tcp is None:
                return None
            assert self.spoofers is not None
            return found[0].tcp(q, found[1], self.spoofers)
        except BaseException as exc:
            self.errors.append((q.name, exc))
            return None


def _udp_socket(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def _other_address_on_53() -> socket.socket:
    for _ in range(20):
        try:
            return _udp_socket(random_loopback(), 53)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "port 53 taken on 20 addresses")


class DnsFaults:
    """The module's DNS scene: the fake, both servers, every client running."""

    def __init__(self, lab: DnsLab, servers: Dict[str, Server],
                 runs: Dict[Tuple[str, str], "concurrent.futures.Future[DnsRun]"],
                 clients: Dict[Tuple[str, str], Client]) -> None:
        self.lab = lab
        self.servers = servers
        self.runs = runs
        self.clients = clients

    def result(self, mode: str, fault: str) -> DnsRun:
        return self.runs[mode, fault].result(timeout=150)


def _dns_client(server: Server, client: Client, after: str) -> DnsRun:
    env, port, elapsed = _served(server, client.ip, timeout=120)
    next_env, _, next_elapsed = _served(server, after, timeout=30)
    return DnsRun(env, port, elapsed, next_env, next_elapsed)


@pytest.fixture(scope="module")
def dns_faults(tmp_path_factory) -> Iterator[DnsFaults]:
    """The fake and both servers, with every fault's client started at
    once (each followed by its next client); the tests collect them."""
    lab = DnsLab()
    with fake_dns_on_53(lab.udp) as fake:
        fake.tcp_handler = lab.tcp
        lab.spoofers = Spoofers(_other_address_on_53(), _udp_socket(fake.ip, 0))
        pool = Servers(str(tmp_path_factory.mktemp("dns")))
        workers = concurrent.futures.ThreadPoolExecutor(max_workers=len(DNS_FAULTS) * 2)
        try:
            env = clean_env(DNSCACHEIP=fake.ip, DNSREWRITEFILE=NO_REWRITE)
            servers = {mode: pool(["-v", "-R", "-l", "Local", "-c", "200", "-b", "200",
                                   *(["-p"] if mode == "hp" else [])], env=env)
                       for mode in DNS_MODES}
            runs, clients = {}, {}
            for index, (name, fault) in enumerate(DNS_FAULTS.items()):
                for mode, server in servers.items():
                    client = clients[mode, name] = lab.client(mode, index, fault)
                    after = client.ip[:-1] + "2"
                    runs[mode, name] = workers.submit(_dns_client, server, client, after)
            yield DnsFaults(lab, servers, runs, clients)
        finally:
            pool.cleanup()                  # first: a client still waiting then gets EOF
            workers.shutdown(wait=True)
            for sock in lab.spoofers:
                sock.close()


@pytest.mark.parametrize("mode", list(DNS_MODES))
@pytest.mark.parametrize("fault", list(DNS_FAULTS))
@pytest.mark.slow
def test_dns_fault(dns_faults: DnsFaults, fault: str, mode: str) -> None:
    """One DNS fault for one client: served within the fault's window,
    TCPREMOTEHOST absent or the right name in djb's rendering (never a
    forged one), the same name filtered in the log line; the next
    client, answered honestly, gets its name at once."""
    run = dns_faults.result(mode, fault)
    case = DNS_FAULTS[fault]
    client = dns_faults.clients[mode, fault]
    server = dns_faults.servers[mode]
    expected = case.host(client)
    lo, hi = case.window
    if mode == "hp" and case.forward is not None:
        expected = case.paranoid_host(client)
        lo, hi = case.paranoid_window
    assert lo <= run.elapsed < hi, run.elapsed
    host = run.env.get("TCPREMOTEHOST")
    if expected is None:
        assert host is None, host
    else:
        assert host == djb_name(expected)
    pattern = (rf"^tcpserver: ok \d+ Local:127\.0\.0\.1:{server.port} "
               rf"(.*):{re.escape(client.ip)}::{run.port}$")
    line = server.wait_log(pattern)[0]
    field = re.match(pattern, line).group(1)  # type: ignore[union-attr]
    assert field == ("" if expected is None else safecats(djb_name(expected).encode()))
    assert run.next_env.get("TCPREMOTEHOST") == djb_name(
        wire(b"next-%d-%d" % (DNS_MODES[mode], list(DNS_FAULTS).index(fault)), b"example"))
    assert run.next_elapsed < FAST[1]
    clean_log(server)
    mine = wire(*(o.encode() for o in reversed(client.ip.split("."))), b"in-addr", b"arpa")
    assert not [e for e in dns_faults.lab.errors if e[0].lower() == mine], dns_faults.lab.errors


@pytest.mark.slow
def test_dns_faults_leave_clean_servers(dns_faults: DnsFaults) -> None:
    """After all the faults: nothing but normal lines in either log, no
    program left, status back to ``0/200``."""
    for key in dns_faults.runs:
        dns_faults.runs[key].result(timeout=150)
    for server in dns_faults.servers.values():
        clean_log(server)
        assert [line for line in server.lines() if not _NORMAL.match(line)] == []
        quiet(server, 200)
        assert server.running()
    assert not dns_faults.lab.errors, dns_faults.lab.errors
