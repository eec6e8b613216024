"""The ident client against the real oidentd and against loopback fakes
(design: ident)."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

from tests.fix_ident import DRIBBLE, HANG, RESET, FakeIdentd, FullBacklog, Identd, Step
from tests.util import FakeClock, free_port
from ucspi.ident import lookup as ident
from ucspi.reactor import Reactor

JOE = b"40123 , 25 : USERID : UNIX : joe\r\n"


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor()
    yield r
    r.close()


def run(reactor: Reactor, results: List[Optional[bytes]], count: int = 1,
        limit: float = 10.0) -> float:
    """Run the reactor until ``count`` results; return the time taken
    (the ``limit`` only bounds a failing test)."""
    start = time.monotonic()
    while len(results) < count:
        assert time.monotonic() - start < limit, "lookup never finished"
        reactor.run_once(0.1)
    return time.monotonic() - start


def run_until(reactor: Reactor, until: Callable[[], object], limit: float = 10.0) -> None:
    """Run the reactor until ``until()`` holds (``limit``: a failing test)."""
    start = time.monotonic()
    while not until():
        assert time.monotonic() - start < limit, "never happened"
        reactor.run_once(0.01)


def spin(reactor: Reactor, turns: int = 5) -> None:
    """A few turns of the reactor: with the clock stopped, only what the
    descriptors bring (and what is already due) is dispatched."""
    for _ in range(turns):
        reactor.run_once(0.01)


def ends_at_deadline(reactor: Reactor, clock: FakeClock, results: List[Optional[bytes]],
                     start: float, timeout: float) -> None:
    """The lookup started at ``start`` (fake clock) with ``timeout``:
    nothing just before its deadline, the failure (None) exactly at it."""
    clock.now = start + timeout - 0.001
    spin(reactor)
    assert results == []
    clock.now = start + timeout
    run(reactor, results)
    assert results == [None]


def fake_lookup(reactor: Reactor, fake: FakeIdentd, results: List[Optional[bytes]],
                timeout: float = 5.0, local_ip: str = "127.0.0.1") -> ident.IdentLookup:
    return ident.lookup(reactor, local_ip, fake.ip, 40123, 25, timeout,
                        results.append, port=fake.port)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the real oidentd ---------------------------------------------------

@pytest.fixture
def tcp_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a real connection over 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def test_oidentd_blocking(identd: Identd, tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    server, _ = tcp_pair
    local_ip, local_port = server.getsockname()
    remote_ip, remote_port = server.getpeername()
    value = ident.query(local_ip, remote_ip, remote_port, local_port, 5, port=identd.port)
    assert value == identd.user_bytes


def test_oidentd_on_reactor(identd: Identd, reactor: Reactor,
                            tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    server, _ = tcp_pair
    local_ip, local_port = server.getsockname()
    remote_ip, remote_port = server.getpeername()
    results: List[Optional[bytes]] = []
    ident.lookup(reactor, local_ip, remote_ip, remote_port, local_port, 5,
                 results.append, port=identd.port)
    run(reactor, results)
    assert results == [identd.user_bytes]


def test_oidentd_ipv4_mapped(identd: Identd, tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    server, _ = tcp_pair
    local_port = server.getsockname()[1]
    remote_port = server.getpeername()[1]
    value = ident.query("::ffff:127.0.0.1", "::ffff:127.0.0.1", remote_port, local_port, 5,
                        port=identd.port)
    assert value == identd.user_bytes


def test_oidentd_no_such_connection(identd: Identd) -> None:
    """oidentd says ERROR : NO-USER: set but empty."""
    port = free_port()
    assert ident.query("127.0.0.1", "127.0.0.1", port, port, 5, port=identd.port) == b""


# -- fakes: replies -----------------------------------------------------

def test_request_line_and_source_address(reactor: Reactor) -> None:
    with FakeIdentd([JOE]) as fake:
        results: List[Optional[bytes]] = []
        fake_lookup(reactor, fake, results, local_ip="127.0.0.7")
        run(reactor, results)
        assert results == [b"joe"]
        assert fake.requests == [b"40123 , 25\r\n"]
        assert fake.peers[0][0] == "127.0.0.7"


@pytest.mark.parametrize("steps, value", [
    ([b"40123 , 25 : ERROR : NO-USER\r\n"], b""),
    ([b"40123 , 25 : ERROR : HIDDEN-USER\r\n", HANG], b""),
    ([b"garbage\r\n"], b""),
    ([b"\x00\xff:::\x01\x02 \x03\n"], b"\x01\x02\x03"),
    ([b"1,2:USERID:OTHER:a:b\r\n"], b"a:b"),
    ([b"1,2:USERID:UNIX:" + b"a" * 300, HANG], b"a" * 257),
    ([b"1,2:USERID:UNIX:", 0.05, b"jo", 0.05, b"e\r", 0.05, b"\n"], b"joe"),
    ([b"1,2:USERID:UNIX:joe"], None),                # closed before LF
    ([b"1,2:USERID:UNIX:joe", RESET], None),
    ([], None),                                      # closed at once
    ([RESET], None),
])
def test_fake_replies(reactor: Reactor, fake_clock: FakeClock, steps: List[Step],
                      value: Optional[bytes]) -> None:
    """The reply (or the close) decides: the clock stands still, so no
    deadline can have ended the lookup."""
    with FakeIdentd(steps) as fake:
        results: List[Optional[bytes]] = []
        fake_lookup(reactor, fake, results, timeout=3)
        run(reactor, results)
    assert results == [value]


def test_blocking_query_with_fake() -> None:
    with FakeIdentd([JOE]) as fake:
        assert ident.query("127.0.0.1", fake.ip, 1, 2, 5, port=fake.port) == b"joe"
        assert fake.requests == [b"1 , 2\r\n"]


def test_port_module_attribute(reactor: Reactor, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeIdentd([JOE]) as fake:
        monkeypatch.setattr(ident, "PORT", fake.port)
        assert ident.query("127.0.0.1", fake.ip, 1, 2, 5) == b"joe"


def test_ipv6_loopback(reactor: Reactor) -> None:
    with FakeIdentd([b"1 , 2 : USERID : UNIX : six\r\n"], ip="::1") as fake:
        results: List[Optional[bytes]] = []
        ident.lookup(reactor, "::1", "::1", 1, 2, 5, results.append, 0, port=fake.port)
        run(reactor, results)
        assert results == [b"six"]
        assert fake.peers[0][0] == "::1"


# -- fakes: deadlines ---------------------------------------------------

def test_slow_reply_within_deadline(reactor: Reactor) -> None:
    with FakeIdentd([DRIBBLE(JOE, 0.01)]) as fake:
        results: List[Optional[bytes]] = []
        fake_lookup(reactor, fake, results, timeout=3)
        elapsed = run(reactor, results)
    assert results == [b"joe"]
    assert elapsed >= 0.3


def test_slow_reply_past_overall_deadline(reactor: Reactor) -> None:
    """Bytes keep coming, but the deadline is for the whole reply: the
    reply, complete after 35 pauses of 0.05 s, is never taken."""
    with FakeIdentd([DRIBBLE(JOE, 0.05)]) as fake:
        results: List[Optional[bytes]] = []
        start = time.monotonic()
        fake_lookup(reactor, fake, results, timeout=0.5)
        run(reactor, results)
        elapsed = time.monotonic() - start
    assert results == [None]
    assert elapsed >= 0.45              # its deadline (0.5 s), not before


@pytest.mark.parametrize("blank", [b" ", b"\r", b"\t"])
def test_endless_blanks_without_newline(reactor: Reactor, fake_clock: FakeClock,
                                        blank: bytes) -> None:
    """Blanks never complete the value, and blanks that keep coming do
    not move the deadline: it ends the lookup, exactly when it is due."""
    with FakeIdentd([b"1,2:USERID:UNIX:", DRIBBLE(blank * 100000, 0.001)]) as fake:
        results: List[Optional[bytes]] = []
        start = fake_clock.now
        fake_lookup(reactor, fake, results, timeout=0.5)
        run_until(reactor, lambda: fake.requests)
        for _ in range(4):                  # 0.4 s, the blanks arriving all the while
            fake_clock.advance(0.1)
            spin(reactor)
        ends_at_deadline(reactor, fake_clock, results, start, 0.5)


@pytest.mark.parametrize("head, endless, value", [
    (b"1,2:USERID:UNIX:", b":", b":" * 257),
    (b"1,2", b"x:", b"x:" * 128 + b"x"),
    (b"", b"a", None),                 # no third colon: never completes
])
def test_endless_reply_without_newline(reactor: Reactor, head: bytes, endless: bytes,
                                       value: Optional[bytes]) -> None:
    with FakeIdentd([head, endless * 5000, HANG]) as fake:
        results: List[Optional[bytes]] = []
        fake_lookup(reactor, fake, results, timeout=0.5)
        run(reactor, results)
    assert results == [value]


def test_accept_and_never_answer(reactor: Reactor, fake_clock: FakeClock) -> None:
    with FakeIdentd([HANG]) as fake:
        results: List[Optional[bytes]] = []
        start = fake_clock.now
        fake_lookup(reactor, fake, results, timeout=0.5)
        run_until(reactor, lambda: fake.requests)
        assert fake.requests == [b"40123 , 25\r\n"]
        ends_at_deadline(reactor, fake_clock, results, start, 0.5)


def test_never_reads_the_query(reactor: Reactor, fake_clock: FakeClock) -> None:
    with FakeIdentd([HANG], read_request=False) as fake:
        results: List[Optional[bytes]] = []
        start = fake_clock.now
        fake_lookup(reactor, fake, results, timeout=0.4)
        run_until(reactor, lambda: fake.connections == 1)
        ends_at_deadline(reactor, fake_clock, results, start, 0.4)


def test_connect_timeout(reactor: Reactor, fake_clock: FakeClock) -> None:
    with FullBacklog() as full:
        results: List[Optional[bytes]] = []
        start = fake_clock.now
        ident.lookup(reactor, "127.0.0.1", full.ip, 1, 2, 0.5, results.append, port=full.port)
        spin(reactor)                       # connecting, for ever
        ends_at_deadline(reactor, fake_clock, results, start, 0.5)


def test_refused(reactor: Reactor, fake_clock: FakeClock) -> None:
    """Refused: the failure comes at once (with the clock stopped)."""
    results: List[Optional[bytes]] = []
    ident.lookup(reactor, "127.0.0.1", "127.0.0.1", 1, 2, 5, results.append,
                 port=free_port())
    run(reactor, results)
    assert results == [None]
    assert ident.query("127.0.0.1", "127.0.0.1", 1, 2, 5, port=free_port()) is None


@pytest.mark.parametrize("timeout", [0, 0.0, -1])
def test_zero_timeout_fails_at_once(reactor: Reactor, fake_clock: FakeClock,
                                    timeout: float) -> None:
    with FakeIdentd([JOE]) as fake:
        results: List[Optional[bytes]] = []
        fake_lookup(reactor, fake, results, timeout=timeout)
        assert results == []               # never from inside lookup()
        run(reactor, results)              # the clock stopped: at once
        # a connection made after the lookup ended is the first one the
        # fake accepts: the lookup never connected
        assert fake.peers.index(fake.first_after()) == 0
        assert fake.connections == 1
    assert results == [None]
    assert ident.query("127.0.0.1", fake.ip, 1, 2, timeout, port=fake.port) is None


@pytest.mark.parametrize("local_ip, remote_ip", [
    ("127.0.0.1", "not-an-ip"),
    ("bogus", "127.0.0.1"),
    ("127.0.0.1", "::1"),                  # families differ
    ("::1", "127.0.0.1"),
    ("192.0.2.1", "127.0.0.1"),            # not ours: bind fails
    ("::1%no-such-if", "::1"),
    ("", ""),
])
def test_bad_addresses_fail(reactor: Reactor, fake_clock: FakeClock, local_ip: str,
                            remote_ip: str) -> None:
    results: List[Optional[bytes]] = []
    ident.lookup(reactor, local_ip, remote_ip, 1, 2, 5, results.append, port=free_port())
    assert results == []
    run(reactor, results)                  # the clock stopped: at once
    assert results == [None]


def test_bad_port_raises(reactor: Reactor) -> None:
    with pytest.raises(ValueError):
        ident.lookup(reactor, "127.0.0.1", "127.0.0.1", 70000, 2, 5, lambda v: None)


# -- many at once, cancel, no leaks -------------------------------------

def test_concurrent_lookups_do_not_block_the_reactor(reactor: Reactor) -> None:
    """20 lookups at once: every query reaches its server while none has
    an answer (no lookup waits for another), and the reactor keeps
    running its timers meanwhile; then every answer is taken."""
    gate = threading.Event()               # the servers answer once it is set
    fakes = [FakeIdentd([gate, b"1 , 2 : USERID : UNIX : user%d\r\n" % i]) for i in range(20)]
    try:
        results: List[Tuple[int, Optional[bytes]]] = []
        ticks = [0]

        def collect(i: int, value: Optional[bytes]) -> None:
            results.append((i, value))

        def tick() -> None:
            ticks[0] += 1
            if len(results) < len(fakes):
                reactor.call_later(0.02, tick)

        tick()
        for i, fake in enumerate(fakes):
            ident.lookup(reactor, "127.0.0.1", fake.ip, 1, 2, 30,
                         functools.partial(collect, i), port=fake.port)
        run_until(reactor, lambda: all(fake.requests for fake in fakes))
        now = ticks[0]
        run_until(reactor, lambda: ticks[0] >= now + 3)     # the timers run on
        assert results == []
        gate.set()
        run_until(reactor, lambda: len(results) == len(fakes))
    finally:
        gate.set()
        for fake in fakes:
            fake.stop()
    assert sorted(results) == [(i, b"user%d" % i) for i in range(20)]


def test_cancel(reactor: Reactor, fake_clock: FakeClock) -> None:
    before = open_fds()
    with FakeIdentd([HANG]) as fake:
        results: List[Optional[bytes]] = []
        job = fake_lookup(reactor, fake, results, timeout=0.3)
        run_until(reactor, lambda: fake.requests)
        job.cancel()
        assert not reactor.pending()       # socket and timers gone
        fake_clock.advance(1.0)            # well past the deadline
        spin(reactor)
        job.cancel()                       # twice: harmless
    assert results == []
    assert open_fds() == before            # the fake is gone too now


def test_cancel_before_first_turn(reactor: Reactor) -> None:
    results: List[Optional[bytes]] = []
    job = ident.lookup(reactor, "127.0.0.1", "127.0.0.1", 1, 2, 0, results.append)
    job.cancel()
    reactor.run_once(0.05)
    assert results == []
    assert not reactor.pending()


def test_cancel_after_done_is_harmless(reactor: Reactor) -> None:
    with FakeIdentd([JOE]) as fake:
        results: List[Optional[bytes]] = []
        job = fake_lookup(reactor, fake, results)
        run(reactor, results)
        job.cancel()
    assert results == [b"joe"]


def test_no_descriptor_leaks(reactor: Reactor) -> None:
    results: List[Optional[bytes]] = []
    with FakeIdentd([JOE]) as warm:         # lazy imports, caches
        fake_lookup(reactor, warm, results)
        run(reactor, results)
    before = open_fds()
    results.clear()
    with FakeIdentd([JOE]) as good, FakeIdentd([b"x"]) as bad, \
            FakeIdentd([HANG]) as slow:
        refused = free_port()
        for _ in range(20):
            fake_lookup(reactor, good, results)
            fake_lookup(reactor, bad, results)
            fake_lookup(reactor, slow, results, timeout=0.2)
            ident.lookup(reactor, "127.0.0.1", "127.0.0.1", 1, 2, 5, results.append,
                         port=refused)
        run(reactor, results, 80)
        assert not reactor.pending()
    assert results.count(b"joe") == 20
    assert results.count(None) == 60
    assert open_fds() == before            # fakes stopped: only ours could be left
