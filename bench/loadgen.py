"""A small closed-loop load generator for tcpserver benchmarks.

Keeps ``concurrency`` connections open at once; each connects, reads to
EOF, and closes; a new one starts as soon as one finishes, until
``count`` connections are done or ``seconds`` have passed.  Prints (or
returns) connections per second and latency percentiles.

Usage: python3 bench/loadgen.py HOST PORT [-n COUNT] [-c CONC] [-t SECONDS]
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import time
from typing import Dict, List


def run(host: str, port: int, count: int, concurrency: int, seconds: float,
        sources: int = 0) -> Dict[str, float]:
    """Drive the load and return conn/s, p50, p99 (milliseconds), errors.

    ``sources``: if not 0, connect from that many different source
    addresses (127.77.x.y, IPv4 only), in turn.
    """
    sel = selectors.DefaultSelector()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    started = 0
    done = 0
    errors = 0
    latencies: List[float] = []
    begin = time.monotonic()
    deadline = begin + seconds

    def launch() -> None:
        nonlocal started, errors
        sock = socket.socket(family, socket.SOCK_STREAM)
        if sources:
            n = started % sources
            sock.bind((f"127.77.{n // 250}.{n % 250 + 1}", 0))
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            errors += 1
            return
        started += 1
        sel.register(sock, selectors.EVENT_READ, (time.monotonic(), 0))

    while started < min(concurrency, count):
        launch()
    while done < started:
        for key, _ in sel.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            t0, got = key.data
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data, errors = b"", errors + 1
            except BlockingIOError:
                continue
            if data:
                sel.modify(sock, selectors.EVENT_READ, (t0, got + len(data)))
                continue
            sel.unregister(sock)
            sock.close()
            latencies.append(time.monotonic() - t0)
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
    args = parser.parse_args()
    result = run(args.host, args.port, args.count, args.concurrency, args.seconds, args.sources)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
