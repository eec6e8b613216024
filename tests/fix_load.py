"""Load for the reliability tests: many clients at once, and a look at
the server process from outside.

:func:`flood` opens ``total`` connections to a server, at most
``concurrency`` at a time (asyncio, one thread, stdlib only), each
client from a source address of its own (``sources``, in turn), reads each to EOF and returns one
:class:`Reply` per connection.  Nothing is retried: a connection that
fails is a reply with ``error`` set, so a test sees every loss.

:func:`client_pool` runs any client function (blocking sockets, TLS
clients, several connections in a row) ``total`` times, ``threads`` at
a time, on a pool of threads: the one thread pool of the suite.

:func:`rss_kb`, :func:`zombies` and :func:`status_lines` read the
server's state from ``/proc`` and from its log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from tests.fix_server import children_of


class Reply(NamedTuple):
    """What one client saw."""

    source: str
    port: int               # the client's own port (0: never connected)
    data: bytes
    error: Optional[str]    # None: read to EOF
    elapsed: float


async def _client(target: Tuple[str, int], source: str, timeout: float) -> Reply:
    start = time.monotonic()
    port = 0
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target[0], target[1], local_addr=(source, 0)), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return Reply(source, 0, b"", f"connect: {exc!r}", time.monotonic() - start)
    try:
        port = writer.get_extra_info("sockname")[1]
        data = await asyncio.wait_for(reader.read(), timeout)
        return Reply(source, port, data, None, time.monotonic() - start)
    except (OSError, asyncio.TimeoutError) as exc:
        return Reply(source, port, b"", f"read: {exc!r}", time.monotonic() - start)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _flood(target: Tuple[str, int], total: int, concurrency: int,
                 sources: Sequence[str], timeout: float) -> List[Reply]:
    replies: List[Optional[Reply]] = [None] * total
    turn = iter(range(total))

    async def worker(source: str) -> None:
        for i in turn:
            replies[i] = await _client(target, source, timeout)

    await asyncio.gather(*(worker(sources[k % len(sources)]) for k in range(concurrency)))
    return [reply for reply in replies if reply is not None]


def flood(target: Tuple[str, int], total: int, concurrency: int,
          sources: Sequence[str] = ("127.0.0.1",), timeout: float = 60.0) -> List[Reply]:
    """``total`` connections, ``concurrency`` at a time; one reply each,
    in the order they were started.  Client ``k`` of the ``concurrency``
    always connects from ``sources[k % len(sources)]``, so no source has
    more than ``ceil(concurrency / len(sources))`` connections open."""
    return asyncio.run(_flood(target, total, concurrency, sources, timeout))


T = TypeVar("T")


def client_pool(client: Callable[[int], T], total: int, threads: int,
                timeout: float = 300.0) -> List[T]:
    """``client(i)`` for every ``i`` in ``range(total)``, ``threads`` of
    them running at once; their results in the order of ``i``.  A client
    that raises makes this raise its exception (the first in that order)
    once all have ended.  ``timeout`` bounds the whole run (a failing
    test): the clients not started by then are called off."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(client, i) for i in range(total)]
        _, pending = concurrent.futures.wait(futures, timeout)
        for future in pending:
            future.cancel()
        assert not pending, f"{len(pending)} of {total} clients not done after {timeout} s"
        return [future.result() for future in futures]


def rss_kb(pid: int) -> int:
    """The resident set of ``pid`` in kB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def zombies(pid: int) -> List[int]:
    """The children of ``pid`` that are zombies (state Z)."""
    return [child for child, state in children_of(pid) if state == "Z"]


_STATUS = re.compile(r"^tcpserver: status: (\d+)/(\d+)$")


def status_lines(lines: Sequence[str]) -> List[Tuple[int, int]]:
    """Every ``status: n/m`` of a log, as ``(n, m)``."""
    found = []
    for line in lines:
        match = _STATUS.match(line)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found
