"""A connection's steps, unit-tested with a fake context: no server, no
DNS, no ident; a real loopback TCP connection and a real reactor."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from ucspi.environ import Builder, Endpoints
from ucspi.log import Log
from ucspi.options import Options, parse
from ucspi.reactor import Reactor
from ucspi.server.access import Verdict
from ucspi.server.conn import Connection, Context
from ucspi.proc.reload import Reloads


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLookups:
    """Answers from tables, on the reactor's next turn (or never, when
    ``hold`` is set), and records the questions."""

    def __init__(self, reactor: Reactor, hold: bool = False) -> None:
        self.reactor = reactor
        self.hold = hold
        self.asked: List[Tuple[Any, ...]] = []
        self.handles: List[Handle] = []
        self.names: Dict[str, Optional[str]] = {}
        self.local: Dict[str, Optional[bytes]] = {}
        self.remembered: List[Tuple[str, Optional[bytes]]] = []
        self.starved: set = set()   # kinds of lookup that get no descriptor

    def _ask(self, kind: str, call: Callable[[], None],
             abort: Callable[[OSError], None]) -> Handle:
        if kind in self.starved:
            return self._later(lambda: abort(OSError(errno.EMFILE, "Too many open files")))
        return self._later(call)

    def _later(self, call: Callable[[], None]) -> Handle:
        handle = Handle()
        self.handles.append(handle)
        if not self.hold:
            self.reactor.call_later(0, lambda: None if handle.cancelled else call())
        return handle

    def known_local_name(self, ip6: str) -> Optional[Tuple[Optional[bytes]]]:
        return (self.local[ip6],) if ip6 in self.local else None

    def remember_local_name(self, ip6: str, name: Optional[bytes]) -> None:
        self.remembered.append((ip6, name))

    def name(self, ip6: str, v4: bool, done: Callable[..., None],
             abort: Callable[[OSError], None]) -> Handle:
        self.asked.append(("name", ip6, v4))
        return self._ask("name", lambda: done(self.names.get(ip6), None), abort)

    def host(self, ip6: str, v4: bool, paranoid: bool, done: Callable[..., None],
             abort: Callable[[OSError], None]) -> Handle:
        self.asked.append(("host", ip6, v4, paranoid))
        return self._ask("host", lambda: done(self.names.get(ip6), None), abort)

    def info(self, local: str, remote: str, rport: int, lport: int, scope: int,
             done: Callable[..., None], abort: Callable[[OSError], None]) -> Handle:
        self.asked.append(("info", local, remote, rport, lport))
        return self._ask("info", lambda: done(b"alice\0tail"), abort)


class FakeAccess:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.seen: List[Endpoints] = []

    def check(self, ep: Endpoints, answer: Callable[[Verdict], None]) -> None:
        self.seen.append(ep)
        answer(self.verdict)


class World:
    """A fake context around one accepted loopback connection."""

    def __init__(self, args: List[str], access: Optional[FakeAccess] = None,
                 over: int = 0, hold: bool = False, descriptor: bool = False) -> None:
        self.opts: Options = parse(args + ["0", "0", "prog"], {})
        self.reactor = Reactor()
        rfd, self.logw = os.pipe()
        self.logr = rfd
        os.set_blocking(rfd, False)
        self.log = Log(self.opts.verbosity, fd=self.logw)
        self.lookups = FakeLookups(self.reactor, hold)
        self.launched: List[Dict[bytes, bytes]] = []
        self.ended: List[Connection] = []
        self.limits: List[Tuple[str, int]] = []
        self.over = over
        self.ctx = Context(self.opts, self.reactor, self.log, self.lookups,
                           access, Builder({b"PATH": b"/bin"}), self._admit,
                           self._launch, self.ended.append)
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(listener.getsockname())
        if descriptor:      # as the accept loop does: a bare descriptor, a bound listener
            fd, peer = listener._accept()  # type: ignore[attr-defined]
            local = listener.getsockname()
            listener.close()
            self.conn = Connection(self.ctx, fd, peer, False, local)
        else:
            sock, peer = listener.accept()
            listener.close()
            self.conn = Connection(self.ctx, sock, peer, False)
        self.conn.later = access is not None

    def _admit(self, conn: Connection) -> bool:
        """The driver's second look: refuse (and end) when ``over``."""
        self.limits.append((conn.ep.remote_ip, conn.max_per_host))
        if self.over:
            self.log.per_host(conn.ep.remote_ip, self.over)
            conn.end()
            return False
        return True

    def _launch(self, conn: Connection, env: Dict[bytes, bytes]) -> None:
        self.launched.append(env)
        conn.close()

    def run(self) -> None:
        """Start the connection and turn the loop until it is done."""
        self.conn.start()
        for _ in range(100):
            if self.conn.closed or not self.reactor.pending():
                break
            self.reactor.run_once(1.0)

    def logged(self) -> List[str]:
        try:
            return os.read(self.logr, 65536).decode().splitlines()
        except BlockingIOError:
            return []

    def close(self) -> None:
        self.client.close()
        self.conn.close()
        self.reactor.close()
        os.close(self.logr)
        os.close(self.logw)


@pytest.fixture
def world() -> Iterator[Callable[..., World]]:
    made: List[World] = []

    def make(*args: Any, **kw: Any) -> World:
        made.append(World(*args, **kw))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_no_lookups_goes_straight_to_launch(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-HRl", "here"])
    w.run()
    assert w.lookups.asked == []
    assert len(w.launched) == 1 and w.ended == []
    env = w.launched[0]
    assert env[b"PROTO"] == b"TCP" and env[b"TCPLOCALHOST"] == b"here"
    assert env[b"TCPREMOTEIP"] == b"127.0.0.1" and env[b"PATH"] == b"/bin"
    assert env[b"TCPREMOTEPORT"] == str(w.client.getsockname()[1]).encode()
    assert b"TCPREMOTEHOST" not in env and b"TCPREMOTEINFO" not in env
    assert w.limits == []   # no access source: -C was checked at accept


def test_banner_then_lookups_then_launch(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-p", "-B", "hello\r\n"])
    w.lookups.names = {"::ffff:127.0.0.1": "loop.example"}
    w.run()
    assert w.client.recv(100) == b"hello\r\n"
    port = w.client.getsockname()[1]
    server_port = w.client.getpeername()[1]
    assert sorted(w.lookups.asked) == sorted([
        ("name", "::ffff:127.0.0.1", True),
        ("host", "::ffff:127.0.0.1", True, True),
        ("info", "127.0.0.1", "127.0.0.1", port, server_port),
    ])
    env = w.launched[0]
    assert env[b"TCPLOCALHOST"] == b"loop.example"
    assert env[b"TCPREMOTEHOST"] == b"loop.example"
    assert env[b"TCPREMOTEINFO"] == b"alice"       # cut at the NUL
    assert w.lookups.remembered == [("::ffff:127.0.0.1", b"loop.example")]


def test_fresh_local_name_is_not_asked_again(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-HR"])
    w.lookups.local = {"::ffff:127.0.0.1": b"cached.example"}
    w.run()
    assert w.lookups.asked == []
    assert w.launched[0][b"TCPLOCALHOST"] == b"cached.example"


def test_access_allows_with_changes_and_limit(world) -> None:  # type: ignore[no-untyped-def]
    access = FakeAccess(Verdict(True, [(b"RELAYCLIENT", b""), (b"TCPREMOTEIP", None)], 3))
    w = world(["-HRl0"], access=access)
    w.run()
    assert [ep.remote_ip for ep in access.seen] == ["127.0.0.1"]
    assert w.limits == [("127.0.0.1", 3)]
    env = w.launched[0]
    assert env[b"RELAYCLIENT"] == b"" and b"TCPREMOTEIP" not in env


def test_access_sees_the_lookup_results(world) -> None:  # type: ignore[no-untyped-def]
    access = FakeAccess(Verdict(True, [], 0))
    w = world(["-l0"], access=access)
    w.lookups.names = {"::ffff:127.0.0.1": "loop.example"}
    w.run()
    assert access.seen[0].remote_host == b"loop.example"
    assert access.seen[0].remote_info == b"alice"


def test_access_denies(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-v", "-HRl0"], access=FakeAccess(Verdict(False, [], 0)))
    w.run()
    assert w.launched == [] and w.ended == [w.conn] and w.conn.closed
    port = w.client.getsockname()[1]
    server_port = w.client.getpeername()[1]
    assert w.logged() == [f"tcpserver: deny 0 0:127.0.0.1:{server_port} :127.0.0.1::{port}"]
    assert w.client.recv(10) == b""


def test_access_failure_drops(world) -> None:  # type: ignore[no-untyped-def]
    failure = ("unable to read rules.cdb", FileNotFoundError(2, "gone"))
    w = world(["-HRl0"], access=FakeAccess(Verdict(False, [], 0, failure)))
    w.run()
    assert w.launched == [] and w.ended == [w.conn]
    assert w.logged() == ["tcpserver: warning: dropping connection, "
                          "unable to read rules.cdb: file does not exist"]


def test_per_host_limit_refuses(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-HRl0"], access=FakeAccess(Verdict(True, [], 2)), over=2)
    w.run()
    assert w.limits == [("127.0.0.1", 2)]
    assert w.launched == [] and w.ended == [w.conn]
    assert w.logged() == ["tcpserver: end 127.0.0.1 perIPlimit 2"]


def test_close_during_lookups_cancels_them(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-l0"], hold=True)
    w.conn.start()
    assert len(w.lookups.handles) == 2
    w.conn.end()
    assert [h.cancelled for h in w.lookups.handles] == [True, True]
    assert w.ended == [w.conn] and w.launched == []
    w.conn.end()      # once only
    assert w.ended == [w.conn]


def test_late_verdict_after_close_is_ignored(world) -> None:  # type: ignore[no-untyped-def]
    answers: List[Callable[[Verdict], None]] = []

    class Later:
        def check(self, ep: Endpoints, answer: Callable[[Verdict], None]) -> None:
            answers.append(answer)

    w = world(["-HRl0"], access=Later())
    w.run()
    assert len(answers) == 1 and w.launched == []
    w.conn.end()
    answers[0](Verdict(True, [], 0))
    assert w.launched == [] and w.ended == [w.conn]


def test_banner_write_failure_drops(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-HRl0", "-B", "x" * 100])
    w.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    w.client.close()          # RST at once on loopback: the banner write fails
    w.run()
    lines = w.logged()
    assert w.launched == []
    assert lines[0].startswith("tcpserver: warning: dropping connection, unable to print banner: ")
    assert w.ended == [w.conn]


def test_reloads_run_in_order_and_survive_failures() -> None:
    r, wfd = os.pipe()
    try:
        done: List[str] = []
        reloads = Reloads(Log(1, fd=wfd))
        reloads.add("first", lambda: done.append("first"))

        def broken() -> None:
            raise ValueError("bad")
        reloads.add("second", broken)
        reloads.add("third", lambda: done.append("third"))
        reloads.run()
        assert done == ["first", "third"]
        assert os.read(r, 1000) == b"tcpserver: warning: unable to reload second: ValueError: bad\n"
    finally:
        os.close(r)
        os.close(wfd)


# -- the exception boundary ------------------------------------------------

def _boom(conn: Connection) -> None:
    raise RuntimeError("injected")


@pytest.mark.parametrize("index", range(6))
def test_a_failing_step_ends_only_its_connection(world, monkeypatch, index) -> None:  # type: ignore[no-untyped-def]
    """Whatever step raises, the connection ends (its slot is freed
    through ``end``) with one warning naming the client."""
    steps = list(Connection.STEPS)
    steps[index] = _boom
    monkeypatch.setattr(Connection, "STEPS", tuple(steps))
    w = world(["-HRl0"], access=FakeAccess(Verdict(True, [], 0)))
    w.run()
    assert w.ended == [w.conn] and w.conn.closed and w.launched == []
    assert w.logged() == ["tcpserver: warning: dropping connection from 127.0.0.1, "
                          "internal error: RuntimeError: injected"]


def test_a_failing_lookup_callback_ends_its_connection(world) -> None:  # type: ignore[no-untyped-def]
    w = world(["-R"])
    w.lookups.names = {"::ffff:127.0.0.1": "bad\udcffname"}   # cannot be encoded
    w.run()
    assert w.ended == [w.conn] and w.launched == []
    lines = w.logged()
    assert len(lines) == 1
    assert lines[0].startswith("tcpserver: warning: dropping connection from 127.0.0.1, "
                               "internal error: UnicodeEncodeError: ")


@pytest.mark.parametrize("where", ["access", "limit", "launch"])
def test_a_failing_server_call_ends_its_connection(world, where) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        def check(self, ep: Endpoints, answer: Callable[[Verdict], None]) -> None:
            raise ValueError("no access")

    w = world(["-HRl0"], access=Broken() if where == "access" else FakeAccess(Verdict(True, [], 1)))
    if where == "limit":
        w.ctx.admit = lambda conn: bool(int("x"))
    if where == "launch":
        def launch(conn: Connection, env: Dict[bytes, bytes]) -> None:
            raise KeyError("PATH")
        w.ctx.launch = launch
    w.run()
    assert w.ended == [w.conn] and w.launched == []
    assert len(w.logged()) == 1


@pytest.mark.parametrize("kind", ["name", "host", "info"])
def test_a_lookup_without_descriptors_drops_the_connection(world, kind) -> None:  # type: ignore[no-untyped-def]
    """A lookup that could not get a socket is never taken for "no
    answer": the connection is dropped with one warning naming the
    client, its other lookups are cancelled, and nothing is launched."""
    w = world(["-v", "-p"])
    w.lookups.starved = {kind}
    w.run()
    assert w.launched == [] and w.ended == [w.conn] and w.conn.closed
    assert all(h.cancelled for h in w.lookups.handles)
    warnings = [line for line in w.logged() if "warning" in line]
    assert warnings == ["tcpserver: warning: dropping connection from 127.0.0.1, "
                        "unable to start a lookup: process cannot open more files"]


def test_source_routes_accepted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ucspi.server.conn import source_routes_accepted
    setting = tmp_path / "accept_source_route"
    setting.write_text("0\n")
    assert source_routes_accepted(str(setting)) is False
    setting.write_text("1\n")
    assert source_routes_accepted(str(setting)) is True
    assert source_routes_accepted(str(tmp_path / "missing")) is True


def test_local_address_from_the_listener(world) -> None:  # type: ignore[no-untyped-def]
    """-HRl with no banner, on a listener bound to one address: the
    local address comes from the listener, not from the kernel."""
    w = world(["-HRl0", "-o"])
    w.conn.local = w.client.getpeername()
    w.run()
    assert w.conn.closed
    env = w.launched[0]
    assert env[b"TCPLOCALIP"] == b"127.0.0.1"
    assert env[b"TCPLOCALPORT"] == str(w.client.getpeername()[1]).encode()
    with pytest.raises(OSError):
        os.fstat(w.conn.fd)        # closed with the connection


def test_banner_to_a_client_that_never_reads(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A banner bigger than the socket buffers, to a client that reads
    nothing: the connection is dropped at the banner deadline instead
    of holding its slot for ever."""
    from ucspi import timeouts
    monkeypatch.setattr(timeouts, "BANNER", 0.2)
    w = world(["-HRl0", "-B", "x" * (16 << 20)])
    w.run()
    assert w.launched == [] and w.ended == [w.conn] and w.conn.closed
    assert w.logged() == ["tcpserver: warning: dropping connection, "
                          "unable to print banner: timed out"]


def test_a_descriptor_becomes_a_socket_object_only_when_a_step_needs_one() -> None:
    """From accept to launch with -HRl0 and a bound listener, no socket
    object is made (CPython's costs a getsockname); close() closes the
    bare descriptor.  A banner needs the object, and gets it."""
    world = World(["-HRl0"], descriptor=True)
    fd = world.conn.fd
    world.run()
    assert len(world.launched) == 1
    env = world.launched[0]
    assert env[b"TCPLOCALIP"] == b"127.0.0.1" and env[b"TCPREMOTEIP"] == b"127.0.0.1"
    assert world.conn._sock is None
    with pytest.raises(OSError) as caught:
        os.fstat(fd)
    assert caught.value.errno == errno.EBADF

    world = World(["-HRl0", "-B", "hi"], descriptor=True)
    world.run()
    assert len(world.launched) == 1
    assert world.conn._sock is not None and world.conn._sock.family == socket.AF_INET
    assert world.client.recv(10) == b"hi"
