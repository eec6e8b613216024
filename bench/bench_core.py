"""Side-by-side benchmark: our tcpserver against Debian's C tcpserver.

Runs both servers on loopback with the same options and programs, and
drives them alternately (so machine noise hits both alike) with the
closed-loop generator of ``bench/loadgen.py``.  Reports, per scenario,
the median over rounds of conn/s, p50 and p99 latency, and the ratio
ours/C.  Also reports start-up time to listening and idle RSS.

    python3 bench/bench_core.py [--rounds 5] [--count 3000] [--quick]

Both servers get ``-c 100 -b 256`` (a backlog large enough that no SYN is
dropped, which would add 1 s retransmits to both).  Scenarios: ``-HRl0`` with ``/bin/true`` and ``echo hello`` at
concurrency 1 and 32, and (when ``--dns IP`` names a DNS server that
answers PTR for 127.0.0.1, and an ident server runs on 127.0.0.1:113)
``-hr`` at concurrency 32.  Nothing here is a test: the numbers go in
issue notes, not assertions.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402

C_TCPSERVER = "/usr/bin/tcpserver"
OURS = [sys.executable, os.path.join(ROOT, "tcpserver.py")]


def start(argv: List[str], env: Optional[Dict[str, str]] = None) -> Tuple[subprocess.Popen, int, float]:  # type: ignore[type-arg]
    """Start a server with ``-1`` and port 0; return it, its port, and
    the seconds it took to print the port (start-up to listening)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - t0
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"server did not start: {argv}")
    return proc, int(line), elapsed


def stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(5)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(0.5)
    try:
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def scenario(opts: List[str], prog: List[str], conc: int, count: int, rounds: int,
             env: Optional[Dict[str, str]]) -> Dict[str, Dict[str, float]]:
    common = ["-1", "-c", "100", "-b", "256", *opts, "127.0.0.1", "0", *prog]
    ours, ours_port, _ = start([*OURS, "-C", "0", *common], env)
    theirs, c_port, _ = start([C_TCPSERVER, *common], env)
    results: Dict[str, List[Dict[str, float]]] = {"ours": [], "C": []}
    try:
        for _ in range(rounds):
            for name, port in (("ours", ours_port), ("C", c_port)):
                results[name].append(loadgen.run("127.0.0.1", port, count, conc, 60.0))
                time.sleep(0.3)
    finally:
        stop(ours)
        stop(theirs)
    return {name: {key: statistics.median(r[key] for r in runs)
                   for key in ("rate", "p50_ms", "p99_ms", "errors")}
            for name, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--dns", help="DNS server IP for the -hr scenario (DNSCACHEIP)")
    parser.add_argument("--quick", action="store_true", help="1 round, 1000 connections")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.count = 1, 1000
    if not os.access(C_TCPSERVER, os.X_OK):
        sys.exit(f"{C_TCPSERVER} missing: apt-get install ucspi-tcp")

    starts = []
    for _ in range(5):
        proc, _, elapsed = start([*OURS, "-1", "-HRl0", "127.0.0.1", "0", "/bin/true"])
        starts.append(elapsed)
        time.sleep(0.3)
        idle = rss_kib(proc.pid)
        stop(proc)
    bare = bare_python_rss()
    print(f"start-up to listening: median {statistics.median(starts) * 1000:.1f} ms")
    print(f"idle RSS: ours {idle} KiB, bare python3 {bare} KiB, ratio {idle / bare:.2f}")

    plans = [
        (["-HRl0"], ["/bin/true"], 1), (["-HRl0"], ["/bin/true"], 32),
        (["-HRl0"], ["echo", "hello"], 1), (["-HRl0"], ["echo", "hello"], 32),
    ]
    env = None
    if args.dns:
        env = dict(os.environ, DNSCACHEIP=args.dns)
        # first: an ident server reads /proc/net/tcp for every query, and
        # gets slower as the TIME_WAIT sockets of earlier scenarios pile up
        plans.insert(0, (["-hr", "-t", "5"], ["/bin/true"], 32))
    print(f"{'scenario':36} {'ours c/s':>9} {'C c/s':>9} {'ratio':>6} "
          f"{'p50 ours/C ms':>15} {'p99 ours/C ms':>15}")
    for opts, prog, conc in plans:
        count = args.count if conc > 1 else max(200, args.count // 5)
        res = scenario(opts, prog, conc, count, args.rounds, env)
        o, c = res["ours"], res["C"]
        label = f"{' '.join(opts)} {' '.join(prog)} c={conc}"
        print(f"{label:36} {o['rate']:9.0f} {c['rate']:9.0f} {o['rate'] / c['rate']:6.2f} "
              f"{o['p50_ms']:7.2f}/{c['p50_ms']:<7.2f} {o['p99_ms']:7.2f}/{c['p99_ms']:<7.2f}", flush=True)


if __name__ == "__main__":
    main()
