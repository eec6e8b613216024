"""The reactor and the accept loop in this process: a callback that
raises never spins the loop or leaks its descriptor (issue 18, item 6).
The server is the real one (:func:`ucspi.server.service.build`,
:class:`ucspi.server.loop.Server`) on a loopback listener, with a
launcher that only counts."""

from __future__ import annotations

import os
import select
import socket
from typing import Any, Dict, Iterator, List

import pytest

from ucspi.log import Log
from ucspi.options import parse
from ucspi import reactor as reactor_module
from ucspi.reactor import Reactor
from ucspi.server import listen, service
from ucspi.server.limits import Limit
from ucspi.server.loop import Server


def test_a_raising_reader_is_dropped_and_its_owner_told() -> None:
    reactor = Reactor()
    r, w = os.pipe()
    calls: List[str] = []
    told: List[BaseException] = []

    def boom() -> None:
        calls.append("read")
        raise ValueError("bug")

    try:
        reactor.add_reader(r, boom, told.append)
        os.write(w, b"x")                       # stays readable: nothing reads it
        with pytest.raises(ValueError):
            reactor.run_once(1.0)
        assert calls == ["read"] and not reactor.watching(r)
        assert [type(e) for e in told] == [ValueError]
        reactor.run_once(0.05)                  # not called again
        assert calls == ["read"]
    finally:
        reactor.close()
        os.close(r)
        os.close(w)


@pytest.fixture(params=["epoll", "selectors"])
def reactor(request: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reactor]:
    """A reactor over epoll itself, and one over the selectors fallback
    that systems without epoll get."""
    if request.param == "selectors":
        monkeypatch.setattr(reactor_module, "_poller", reactor_module._Selector)
    elif not hasattr(select, "epoll"):
        pytest.skip("no epoll here")
    made = Reactor()
    try:
        yield made
    finally:
        made.close()


def test_a_reused_descriptor_number_is_not_called_for_the_old_event(reactor: Reactor) -> None:
    """Both pipes are readable when the wait returns; the first callback
    closes the other pipe and puts a new, empty one on its number.  The
    old pipe's event of the same wait must not reach the new reader."""
    pipes = [os.pipe(), os.pipe()]
    spare = os.pipe()
    calls: List[str] = []

    def first(mine: int, other: int) -> None:
        os.read(mine, 1)
        calls.append("first")
        if len(calls) > 1:
            return
        reactor.forget(other)
        os.dup2(spare[0], other)                # the number now names an empty pipe
        reactor.add_reader(other, lambda: calls.append("new"))

    try:
        for r, w in pipes:
            os.write(w, b"x")
        a, b = pipes[0][0], pipes[1][0]
        reactor.add_reader(a, lambda: first(a, b))
        reactor.add_reader(b, lambda: first(b, a))
        reactor.run_once(1.0)
        assert calls == ["first"]
        reactor.run_once(0.05)                  # the new pipe is still empty
        assert calls == ["first"]
        os.write(spare[1], b"y")
        reactor.run_once(1.0)
        assert calls.count("new") == 1
    finally:
        for r, w in pipes + [spare]:
            os.close(r)
            os.close(w)


def test_a_hang_up_or_error_reaches_the_owner(reactor: Reactor) -> None:
    """A peer that goes away wakes the owner whichever way it waits, as
    with selectors: a reader of an empty pipe whose writer closed (epoll
    says only HUP), a writer of a full pipe whose reader closed (only
    ERR)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    calls: List[str] = []
    try:
        os.set_blocking(w2, False)
        try:
            while True:
                os.write(w2, b"x" * 65536)
        except BlockingIOError:
            pass                                # full: no longer writable
        reactor.add_reader(r1, lambda: calls.append("read"))
        reactor.add_writer(w2, lambda: calls.append("write"))
        reactor.run_once(0.05)
        assert calls == []
        os.close(w1)
        os.close(r2)
        reactor.run_once(1.0)
        assert sorted(calls) == ["read", "write"]
    finally:
        reactor.forget(r1)
        reactor.forget(w2)
        os.close(r1)
        os.close(w2)


def test_forgetting_a_closed_descriptor_is_harmless(reactor: Reactor) -> None:
    r, w = os.pipe()
    reactor.add_reader(r, lambda: None)
    os.close(r)                                 # the kernel drops it from epoll
    os.close(w)
    reactor.forget(r)
    assert not reactor.watching(r)
    reactor.run_once(0.01)


def test_a_timed_wait_returns_when_nothing_happens(reactor: Reactor) -> None:
    r, w = os.pipe()
    fired: List[str] = []
    try:
        reactor.add_reader(r, lambda: fired.append("read"))
        reactor.call_later(0.02, lambda: fired.append("timer"))
        reactor.run_once()                      # no timeout given: wakes for the timer
        assert fired == ["timer"]
    finally:
        reactor.forget(r)
        os.close(r)
        os.close(w)


class CountingLaunch:
    name = "counting"

    def __init__(self) -> None:
        self.started: List[int] = []

    def attach(self, reloads: Any, counts: Any) -> None:
        """Nothing to reload."""

    def ready(self) -> None:
        """Nothing to load."""

    def start(self, fd: int, env: Dict[bytes, bytes]) -> int:
        self.started.append(fd)
        return 10_000_000 + len(self.started)


@pytest.fixture
def loop() -> Iterator[Server]:
    opts = parse(["-q", "-HRl0", "127.0.0.1", "0", "prog"], {})
    listener = listen.open_listener(True, "127.0.0.1", 0, 0, 16)
    r, w = os.pipe()
    served = service.build(opts, Log(0), Limit(10), CountingLaunch(), None, False, {})
    server = Server(served, listener, r)
    server._watch(True)
    try:
        yield server
    finally:
        for sock in listener.sockets:
            sock.close()
        server.reactor.close()
        os.close(r)
        os.close(w)


def turn(server: Server, rounds: int = 5) -> List[BaseException]:
    """Run the loop as :meth:`Server.run` does; the exceptions it logs."""
    seen: List[BaseException] = []
    for _ in range(rounds):
        try:
            server.reactor.run_once(0.2)
        except Exception as exc:
            seen.append(exc)
    return seen


def test_accept_to_admission_is_guarded(loop: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug between accept and admission: the client's socket is
    closed, the error surfaces once (the loop logs it), the listener is
    watched again after a pause, and the next client is served."""
    def broken(*args: Any) -> None:
        raise RuntimeError("injected")

    port = loop.listener.sockets[0].getsockname()[1]
    monkeypatch.setattr(loop.service, "connection", broken)
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    seen = turn(loop)
    assert [str(e) for e in seen] == ["injected"]
    assert first.recv(10) == b""                        # closed, not leaked
    monkeypatch.undo()
    second = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert turn(loop, 10) == []
    assert loop.launcher.started                        # type: ignore[attr-defined]
    assert loop.admission.count == 1 and loop.accepting
    first.close()
    second.close()


@pytest.mark.parametrize("argv, env, trusted, steps", [
    (["-HRl0"], {}, None, ["_socket", "_launch"]),
    (["-hRl0"], {}, None, ["_socket", "_lookups", "_launch"]),
    (["-HRl0", "-x", "/nonexistent.cdb", "-X"], {}, None,
     ["_socket", "_access", "_admit", "_launch"]),
    (["-HRl0"], {}, frozenset({"127.0.0.1"}), ["_header", "_socket", "_admit", "_launch"]),
    (["-HRl0"], {"DNSBL": "bl.example"}, None, ["_socket", "_lookups", "_rbl", "_launch"]),
    (["-hrl0", "-x", "/nonexistent.cdb", "-X"], {"DNSBL": "bl.example"}, frozenset({"::1"}),
     ["_header", "_socket", "_lookups", "_access", "_admit", "_rbl", "_launch"]),
])
def test_a_service_runs_only_the_steps_its_options_can_use(argv, env, trusted,  # type: ignore[no-untyped-def]
                                                            steps) -> None:
    """Steps that can do nothing for any of its clients are left out of
    the service's connection kind (fewer calls per connection); what
    remains is in the original order."""
    from ucspi.rbl.lists import from_environ as dnsbl_from_environ
    opts = parse([*argv, "127.0.0.1", "0", "prog"], env)
    served = service.build(opts, Log(0), Limit(10), CountingLaunch(), trusted, False, env,
                           dnsbl=dnsbl_from_environ(env) if env else None)
    try:
        got = [step.__name__ for step in served.connection.STEPS]
        assert got == steps
        assert issubclass(served.connection, service.Connection)
    finally:
        served.reactor.close()


def test_a_trimmed_connection_still_serves(loop: Server) -> None:
    """The -HRl0 service skips straight from the socket to the launch."""
    assert [s.__name__ for s in loop.service.connection.STEPS] == ["_socket", "_launch"]
    launch = loop.service.launch
    assert isinstance(launch, CountingLaunch)
    client = socket.create_connection(loop.listener.sockets[0].getsockname()[:2])
    try:
        for _ in range(20):
            loop.reactor.run_once(0.1)
            if launch.started:
                break
        assert len(launch.started) == 1
    finally:
        client.close()
