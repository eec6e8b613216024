"""The cost of the PROXY protocol behind HAProxy (issue 12).

Two of our servers, the same options and program, each behind its own
HAProxy frontend: one plain (HAProxy's backend without ``send-proxy``,
the server without ``PROXY_FROM``), one with ``send-proxy-v2`` and
``PROXY_FROM=127.0.0.1``.  The closed-loop generator of
``bench/loadgen.py`` drives them alternately, so machine noise hits both
alike; the median conn/s over the rounds and the ratio are printed.
Nothing here is a test: the numbers go in issue notes.

    python3 bench/bench_proxy.py [--rounds 5] [--count 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from loadgen import run  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
CONFIG = """global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend plain
    bind fd@{plain_fd}
    default_backend plain
frontend proxied
    bind fd@{proxied_fd}
    default_backend proxied
backend plain
    server s 127.0.0.1:{plain_port}
backend proxied
    server s 127.0.0.1:{proxied_port} send-proxy-v2
"""


def start_server(env: Dict[str, str]) -> Tuple["subprocess.Popen[bytes]", int]:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tcpserver.py"), "-1", "-HRl0",
                             "-c", "100", "-b", "256", "-C", "0", "127.0.0.1", "0",
                             "/bin/echo", "hello"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("PROXY_FROM", "NOTIFY_SOCKET")}
    plain, plain_port = start_server(base)
    proxied, proxied_port = start_server(dict(base, PROXY_FROM="127.0.0.1"))
    fronts = [socket.create_server(("127.0.0.1", 0), backlog=512) for _ in range(2)]
    folder = tempfile.mkdtemp(prefix="bench-proxy-")
    config = os.path.join(folder, "haproxy.cfg")
    with open(config, "w") as handle:
        handle.write(CONFIG.format(plain_fd=fronts[0].fileno(), proxied_fd=fronts[1].fileno(),
                                   plain_port=plain_port, proxied_port=proxied_port))
    haproxy = subprocess.Popen([HAPROXY, "-db", "-f", config], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               pass_fds=[s.fileno() for s in fronts])
    ports = {"plain": fronts[0].getsockname()[1], "proxied": fronts[1].getsockname()[1]}
    for sock in fronts:
        sock.close()
    rates: Dict[str, List[float]] = {"plain": [], "proxied": []}
    try:
        for name in ports:                       # warm-up
            run("127.0.0.1", ports[name], 200, args.concurrency, 60)
        for _ in range(args.rounds):
            for name in ports:
                result = run("127.0.0.1", ports[name], args.count, args.concurrency, 120)
                rates[name].append(result["rate"])
    finally:
        for proc in (haproxy, plain, proxied):
            proc.terminate()
            proc.wait()
    plain_rate = statistics.median(rates["plain"])
    proxied_rate = statistics.median(rates["proxied"])
    print(f"behind HAProxy, -HRl0 /bin/echo hello, concurrency {args.concurrency}, "
          f"{args.rounds} rounds of {args.count}")
    print(f"  plain:   {plain_rate:8.0f} conn/s  {sorted(round(r) for r in rates['plain'])}")
    print(f"  proxied: {proxied_rate:8.0f} conn/s  {sorted(round(r) for r in rates['proxied'])}")
    print(f"  proxied/plain: {proxied_rate / plain_rate:.3f}")


if __name__ == "__main__":
    main()
