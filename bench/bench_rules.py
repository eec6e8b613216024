"""What ``-x`` costs per connection: ours and Debian's C tcpserver, with
and without a 10,000-rule cdb, measured side by side.

    python3 bench/bench_rules.py [--rounds 3] [--count 3000]

The cdb is built by our ``tcprules`` from 10,000 random ``10.x.y.z``
rules plus ``:allow``, so a loopback client walks the whole lookup order
(address, prefixes, CIDR keys, empty key).  Two client patterns: all
connections from 127.0.0.1, and from 2,000 different source addresses
(127.77.x.y), which defeats our per-client answer cache.  Reports
conn/s, the ratio with/without rules, and ours/C.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from bench_core import C_TCPSERVER, OURS, start, stop  # noqa: E402


def build_cdb(path: str, n: int = 10000) -> None:
    rng = random.Random(1)
    lines = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}:allow,X=\"{i}\""
             for i in range(n)]
    lines.append(":allow")
    subprocess.run([sys.executable, os.path.join(ROOT, "tcprules.py"), path, path + ".tmp"],
                   input="\n".join(lines).encode() + b"\n", check=True)


def measure(argvs: Dict[str, List[str]], count: int, rounds: int, sources: int) -> Dict[str, float]:
    """Start every server at once and drive them in turn, round after
    round, so that drift in the machine's load hits all of them alike.
    Returns the median conn/s of each."""
    running = {name: start(argv) for name, argv in argvs.items()}
    rates: Dict[str, List[float]] = {name: [] for name in argvs}
    try:
        for _ in range(rounds):
            for name, (_, port, _) in running.items():
                rates[name].append(loadgen.run("127.0.0.1", port, count, 32, 60.0, sources)["rate"])
                time.sleep(0.3)
    finally:
        for proc, _, _ in running.values():
            stop(proc)
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cdb = os.path.join(tmp, "rules.cdb")
        build_cdb(cdb)
        # A cdb younger than 2 s is read per lookup (ucspi.rules.cache.RulesCache
        # waits for it to settle); measure the steady state.
        time.sleep(2.5)
        base = ["-1", "-c", "100", "-b", "256", "-HRl0"]
        tail = ["127.0.0.1", "0", "/bin/true"]
        print(f"{'clients':18} {'server':6} {'no rules':>9} {'-x cdb':>9} {'cost':>7}")
        with_rules: Dict[str, Dict[int, float]] = {"ours": {}, "C": {}}
        for sources in (0, 2000):
            label = "127.0.0.1" if not sources else f"{sources} addresses"
            argvs = {}
            for name, cmd in (("ours", [*OURS, "-C", "0"]), ("C", [C_TCPSERVER])):
                argvs[name] = [*cmd, *base, *tail]
                argvs[name + " -x"] = [*cmd, *base, "-x", cdb, *tail]
            rates = measure(argvs, args.count, args.rounds, sources)
            for name in ("ours", "C"):
                without, with_x = rates[name], rates[name + " -x"]
                with_rules[name][sources] = with_x
                print(f"{label:18} {name:6} {without:9.0f} {with_x:9.0f} "
                      f"{(1 - with_x / without) * 100:6.1f}%", flush=True)
        for sources in (0, 2000):
            print(f"ours/C with -x, {sources or 1} source(s): "
                  f"{with_rules['ours'][sources] / with_rules['C'][sources]:.2f}")


if __name__ == "__main__":
    main()
