"""A small closed-loop load generator for tcpserver benchmarks.

Keeps ``concurrency`` connections open at once; each connects, reads to
EOF, and closes; a new one starts as soon as one finishes, until
``count`` connections are done or ``seconds`` have passed.  Prints (or
returns) connections per second and latency percentiles.

Usage: python3 bench/loadgen.py HOST PORT [-n COUNT] [-c CONC] [-t SECONDS]
                                  [-s SOURCES] [--pick turn|random]
"""

from __future__ import annotations

import argparse
import errno
import random
import selectors
import socket
import time
from typing import Dict, List, Optional, Tuple

#: what ``record`` gets per connection: start, end (time.monotonic()),
#: the first bytes read (at most HEAD), and whether reading failed
Record = Tuple[float, float, bytes, bool]
HEAD = 64


def run(host: str, port: int, count: int, concurrency: int, seconds: float,
        sources: int = 0, pick: str = "turn",
        record: Optional[List[Record]] = None, seed: int = 1,
        base: str = "127.77") -> Dict[str, float]:
    """Drive the load and return conn/s, p50, p99 (milliseconds), errors.

    ``sources``: if not 0, connect from that many different source
    addresses (``base``.x.y, 127.77.x.y by default, IPv4 only): in turn (``pick="turn"``: with
    ``concurrency`` up to ``2 * sources``, an address seldom has more
    than two connections open at once), or each time one at random
    (``pick="random"``, seeded by ``seed``: some addresses then have
    several open at once, as from clients that do not take turns).
    ``record``: if given, gets one :data:`Record` per connection done.
    """
    sel = selectors.DefaultSelector()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    started = 0
    done = 0
    errors = 0
    latencies: List[float] = []
    begin = time.monotonic()
    deadline = begin + seconds
    rng = random.Random(seed)
    if pick not in ("turn", "random"):
        raise ValueError(f"pick: turn or random, not {pick!r}")

    def launch() -> None:
        nonlocal started, errors
        sock = socket.socket(family, socket.SOCK_STREAM)
        if sources:
            n = started % sources if pick == "turn" else rng.randrange(sources)
            sock.bind((f"{base}.{n // 250}.{n % 250 + 1}", 0))
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            errors += 1
            return
        started += 1
        sel.register(sock, selectors.EVENT_READ, (time.monotonic(), 0, b""))

    while started < min(concurrency, count):
        launch()
    while done < started:
        for key, _ in sel.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            t0, got, head = key.data
            failed = False
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data, errors, failed = b"", errors + 1, True
            except BlockingIOError:
                continue
            if data:
                if record is not None and len(head) < HEAD:
                    head = (head + data)[:HEAD]
                sel.modify(sock, selectors.EVENT_READ, (t0, got + len(data), head))
                continue
            sel.unregister(sock)
            sock.close()
            t1 = time.monotonic()
            latencies.append(t1 - t0)
            if record is not None:
                record.append((t0, t1, head, failed))
            done += 1
            if started < count and time.monotonic() < deadline:
                launch()
    elapsed = time.monotonic() - begin
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"conns": done, "seconds": elapsed, "rate": done / elapsed if elapsed else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-t", "--seconds", type=float, default=30.0)
    parser.add_argument("-s", "--sources", type=int, default=0,
                        help="connect from this many source addresses (127.77.x.y)")
    parser.add_argument("--pick", choices=("turn", "random"), default="turn",
                        help="the sources in turn, or one at random each time")
    args = parser.parse_args()
    result = run(args.host, args.port, args.count, args.concurrency, args.seconds, args.sources,
                 args.pick)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
