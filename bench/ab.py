"""A/B: the same scenario against several copies of our server (and the
C one), interleaved, with the parent's CPU per connection.

Each ``--variant NAME=DIR`` names a directory holding a ``tcpserver.py``
and its ``ucspi/`` (a copy of the tree with one change tried in it);
``--c`` adds the C tcpserver.  All servers run at once; each round
drives every one of them in turn with ``--count`` connections at
concurrency ``-c``, so machine noise hits them alike, and the order
rotates from round to round, so each server is first, second... as
often as the others (use a multiple of the servers' number of rounds).  Per variant the
medians over ``--rounds`` of conn/s, p99, and the parent's CPU µs per
connection (``/proc/PID/task/*/schedstat``, every thread of the parent;
for the C server also with its reaped children, ``/proc/PID/stat``).

    python3 bench/ab.py --variant base=. --variant try=/tmp/try \\
        [-c 32] [--count 2000] [--rounds 7] [--dns IP] [--c] -- -HRl0 /bin/true

Option values must be attached (``-t5``): the options end at the first
argument that does not start with ``-``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from profile_parent import C_TCPSERVER, cpu, start, stop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--c", dest="c_server", action="store_true", help="add the C tcpserver")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dns", help="DNSCACHEIP for the servers")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("args", nargs="+", help="server options and program")
    ns = parser.parse_args()
    end = next((i for i, a in enumerate(ns.args) if not a.startswith("-")), len(ns.args))
    common = ["-1", "-c", "100", "-b", "256", *ns.args[:end], "127.0.0.1", "0", *ns.args[end:]]
    env = dict(os.environ)
    if ns.dns:
        env["DNSCACHEIP"] = ns.dns
    servers: List[Tuple[str, List[str]]] = []
    for spec in ns.variant:
        name, _, root = spec.partition("=")
        servers.append((name, [ns.python, os.path.join(os.path.abspath(root), "tcpserver.py"),
                               "-C", "0"]))
    if ns.c_server:
        servers.append(("C", [C_TCPSERVER]))
    if not servers:
        parser.error("nothing to run: give --variant or --c")
    running = []
    try:
        for name, argv in servers:
            proc, port = start([*argv, *common], env)
            running.append((name, proc, port))
        for _, _, port in running:   # warm-up
            loadgen.run("127.0.0.1", port, min(500, ns.count), ns.concurrency, 60.0)
        rows: Dict[str, List[Dict[str, float]]] = {name: [] for name, _, _ in running}
        for number in range(ns.rounds):
            # each server takes each place in turn: with three or more, a
            # plain back-and-forth would leave the middle one always in the
            # middle, after the others' TIME_WAIT sockets
            shift = number % len(running)
            order = running[shift:] + running[:shift]
            for name, proc, port in order:
                a = cpu(proc.pid)
                res = loadgen.run("127.0.0.1", port, ns.count, ns.concurrency, 120.0)
                time.sleep(0.3)
                b = cpu(proc.pid)
                done = max(1, int(res["conns"]))
                rows[name].append({
                    "rate": res["rate"], "p99": res["p99_ms"], "errors": res["errors"],
                    "parent": (b[2] - a[2]) / done * 1e6,
                    "children": (b[1] - a[1]) / done * 1e6,
                })
    finally:
        for _, proc, _ in running:
            stop(proc)
    print(f"{' '.join(common)}  c={ns.concurrency} count={ns.count} rounds={ns.rounds}")
    print(f"  {'variant':14} {'conn/s':>7} {'p99 ms':>7} {'parent µs/conn':>15} "
          f"{'children µs':>12} {'errors':>6}  parent µs per round")
    for name, runs in rows.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"  {name:14} {med['rate']:7.0f} {med['p99']:7.1f} {med['parent']:15.1f} "
              f"{med['children']:12.0f} {med['errors']:6.0f}  "
              + " ".join(f"{r['parent']:.0f}" for r in runs), flush=True)


if __name__ == "__main__":
    main()
