"""Run one DNS or ident lookup in a process with no descriptor to spare.

``python3 tests/starve.py SCENARIO`` (run by ``tests/test_starved.py`` in
a process of its own, because it lowers the file limit) starts a
loopback fake server, lowers the soft ``RLIMIT_NOFILE`` and opens
``/dev/null`` until ``open`` fails, then starts one lookup with an
``abort`` callback.  SCENARIO is ``dns`` or ``ident``, followed by
``-retry`` (a few descriptors are closed 0.15 s later, so the lookup
must get its socket on a later try and answer, well within its deadline
of :data:`RETRY_DEADLINE`) or ``-abort`` (none is ever closed, so the
lookup must give up through ``abort`` at its deadline of
:data:`DEADLINE`), or ``-plain`` (as ``-abort``, without an ``abort``
callback: the failure comes through ``done``).  Prints one JSON object:
what was reported and when (seconds after the start of the lookup).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import resource
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fix_dns import FakeDns, Query, random_loopback, response, rr  # noqa: E402
from tests.fix_ident import FakeIdentd  # noqa: E402
from ucspi.dns import msg as dnsmsg  # noqa: E402
from ucspi.dns.conf import DnsConfig  # noqa: E402
from ucspi.dns.lookup import lookup_ptr  # noqa: E402
from ucspi.ident.lookup import lookup as ident_lookup  # noqa: E402
from ucspi.reactor import Reactor  # noqa: E402

DEADLINE = 0.6
#: -retry: long, so that a loaded machine still answers within it
RETRY_DEADLINE = 10.0
RELEASE_AFTER = 0.15
#: how long the script waits for a report (a failing test only)
LIMIT = 20.0


def fill() -> List[int]:
    """Use up every descriptor the (lowered) limit allows."""
    used = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 16, hard))
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            return held


def ptr_answer(query: Query) -> Any:
    name = dnsmsg.encode_name("starved.example")
    return [(0, response(query, [rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, name)]))]


def fake_dns() -> FakeDns:
    """A fake on an address of its own (its UDP port may be taken for
    TCP by another run: then another address)."""
    for _ in range(20):
        try:
            return FakeDns(ptr_answer, ip=random_loopback())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no address for the fake DNS server")


def main(scenario: str) -> None:
    kind, _, mode = scenario.partition("-")
    reactor = Reactor()
    out: Dict[str, Any] = {}
    start = 0.0

    def done(*value: Any) -> None:
        out["done"] = [v.decode() if isinstance(v, bytes) else
                       None if v is None else str(getattr(v, "errno", v)) for v in value]
        out["at"] = time.monotonic() - start

    def abort(exc: OSError) -> None:
        out["abort"] = exc.errno
        out["at"] = time.monotonic() - start

    if kind == "dns":
        server: Any = fake_dns()
    else:
        server = FakeIdentd([b"1, 2 : USERID : UNIX : starved\r\n"], ip="127.0.0.1")
    deadline = RETRY_DEADLINE if mode == "retry" else DEADLINE
    with server:
        held = fill()
        start = time.monotonic()
        if mode == "retry":
            reactor.call_later(RELEASE_AFTER, lambda: [os.close(fd) for fd in held[-4:]])
        if kind == "dns":
            conf = DnsConfig(servers=[(server.ip, 0)], port=server.port, rules=[],
                             udp_timeouts=(deadline, 0.5), tcp_timeout=0.5)
            lookup_ptr(reactor, conf, ipaddress.IPv4Address("127.0.0.1"), done,
                       None if mode == "plain" else abort)
        else:
            ident_lookup(reactor, "127.0.0.1", server.ip, 1, 2, deadline, done,
                         port=server.port, abort=None if mode == "plain" else abort)
        limit = time.monotonic() + LIMIT
        while "at" not in out and time.monotonic() < limit:
            reactor.run_once(0.1)
        for fd in held:
            try:
                os.close(fd)
            except OSError:
                pass
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
