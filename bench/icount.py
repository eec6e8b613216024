#!/usr/bin/env python3
"""User-space instructions per connection in the parent, counted by
callgrind: a measure of our own work that the machine's load cannot move.

Runs ``micro_parent.py`` (the real server, a fake launcher, real lookup
peers) under ``valgrind --tool=callgrind`` twice per tree, with
``--small`` and ``--large`` connections, and prints the difference of
the two totals divided by the difference of the counts: start-up and
import cost cancel out, what is left is the work of one connection.
It includes the client side of ``micro_parent.py`` (a
``create_connection`` and a ``close`` per connection), which is the
same for every tree; the kernel's work is not counted at all.  So
compare trees with it, and read rates and CPU from ``ab.py``.

The count is repeatable to about 0.6 % from run to run, whatever else
the machine does, where CPU µs move by 10 % or more (``PROFILE.md``
§1): a change worth one microsecond shows.

    DNSCACHEIP=127.201.7.7 python3 bench/icount.py [--root DIR ...] \\
        [--small 320] [--large 960] -- -hr -t5 /bin/true

Needs ``valgrind``; the lookup rows need the peers ``micro_parent.py``
needs (a DNS server at ``$DNSCACHEIP``, ident on 127.0.0.1:113).
Option values must be attached (``-t5``), as for ``micro_parent.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))


def total(root: str, count: int, args: List[str]) -> int:
    """callgrind's total of one ``micro_parent.py`` run."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, os.path.join(HERE, "micro_parent.py"), "--root", root,
               "--count", str(count), "--lookup-wait", "30", "--", *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        sys.exit(f"icount: {root}: micro_parent failed:\n{run.stdout}{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", action="append",
                        help="a tree holding ucspi/ (repeat to compare; default: this one)")
    parser.add_argument("--small", type=int, default=320)
    parser.add_argument("--large", type=int, default=960)
    parser.add_argument("args", nargs="+")
    ns = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("icount: needs valgrind")
    if ns.large <= ns.small:
        sys.exit("icount: --large must be above --small")
    roots = ns.root or [os.path.dirname(HERE)]
    for root in roots:
        small = total(root, ns.small, ns.args)
        large = total(root, ns.large, ns.args)
        per = (large - small) / (ns.large - ns.small)
        print(f"{root}: {' '.join(ns.args)}: {per:,.0f} instructions per connection")


if __name__ == "__main__":
    main()
