"""How long a server waits for a CPU after it is woken, and who woke it.

Starts our server (and with ``--c`` the C tcpserver, with ``--loop``
``bench/hr_loop.c``) one after the other on loopback, warms each up,
then drives ``--count`` connections at concurrency ``-c`` with
``bench/loadgen.py`` under ``perf sched record``, and reads
``perf sched timehist -w``.  For the server's own tasks it adds up the
scheduling delay (from the wake-up to the moment the task runs) per
connection and splits it by the waker's command and by whether the task
then ran on the waker's CPU ("same") or another one ("other").

The server's own tasks are: our parent; the C server's parent and its
children before they exec the program (the lookups run there); the
loop's one process.  Example (dnsmasq on ``--dns``, oidentd on
127.0.0.1:113)::

    python3 bench/schedlat.py --c --loop --dns 127.201.7.7 -c 1 --count 600 -- -hr -t5 /bin/true

It needs ``perf`` with the ``sched`` tracepoints (root, or a low enough
``perf_event_paranoid``).  The recording slows every task a little, so
compare the servers with one another, not with rates measured without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import compile_c, start, stop  # noqa: E402
from profile_parent import C_TCPSERVER, drive  # noqa: E402

#: a wait longer than this counts as "long" (µs)
LONG_US = 50.0

_TASK = r"(\S+)\[(\d+)(?:/(\d+))?\]"
_WAKE = re.compile(r"^\s*[\d.]+\s+\[(\d+)\]\s+" + _TASK + r"\s+awakened: " + _TASK)
_RUN = re.compile(r"^\s*[\d.]+\s+\[(\d+)\]\s+" + _TASK + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def tally(lines: List[str], own: "Own") -> Dict[Tuple[str, str], List[float]]:
    """Per (waker's command, same/other CPU): the scheduling delays (µs)
    of the server's own tasks, one per run after a wake-up (a C child
    woken before its exec counts for that run)."""
    woken_by: Dict[int, Tuple[str, str]] = {}
    delays: Dict[Tuple[str, str], List[float]] = collections.defaultdict(list)
    for line in lines:
        wake = _WAKE.match(line)
        if wake is not None:
            # the wakee's name at the wake-up: a C child that then execs
            # the program is still "tcpserver" here
            wakee = int(wake.group(6))      # the thread id of comm[tid/pid]
            if own.holds(wake.group(5), wakee):
                woken_by[wakee] = (wake.group(2), wake.group(1))
            continue
        run = _RUN.match(line)
        if run is None:
            continue
        waker = woken_by.pop(int(run.group(3)), None)
        if waker is None:
            continue
        where = "same" if waker[1] == run.group(1) else "other"
        delays[(waker[0], where)].append(float(run.group(6)) * 1000.0)
    return delays


class Own:
    """Which tasks are the server's: its pid, and (for the C server) any
    task with the parent's command name (its children before exec)."""

    def __init__(self, pid: int, children_named: Optional[str] = None) -> None:
        self.pid = pid
        self.children_named = children_named

    def holds(self, comm: str, tid: int) -> bool:
        return tid == self.pid or (self.children_named is not None
                                   and comm == self.children_named)


def record(port: int, count: int, conc: int, data: str) -> None:
    """A warm-up round, then ``count`` connections under ``perf sched record``."""
    drive(port, min(count, 300), conc)
    loadgen = os.path.join(HERE, "loadgen.py")
    subprocess.run(["perf", "sched", "record", "-o", data, "--", sys.executable, loadgen,
                    "-n", str(count), "-c", str(conc), "127.0.0.1", str(port)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timehist(data: str) -> List[str]:
    out = subprocess.run(["perf", "sched", "timehist", "-w", "-i", data],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return out.stdout.decode(errors="replace").splitlines()


def report(name: str, delays: Dict[Tuple[str, str], List[float]], count: int) -> None:
    total = sum(sum(values) for values in delays.values())
    print(f"{name}: {total / count:.0f} µs per connection waiting for a CPU after a wake-up")
    print(f"  {'woken by':<16}{'cpu':<7}{'per conn':>9}{'µs/conn':>9}{'mean µs':>9}"
          f"{'long':>7}")
    rows = sorted(delays.items(), key=lambda item: -sum(item[1]))
    for (waker, where), values in rows:
        long = sum(1 for v in values if v > LONG_US) / len(values)
        print(f"  {waker:<16}{where:<7}{len(values) / count:>9.2f}{sum(values) / count:>9.1f}"
              f"{sum(values) / len(values):>9.1f}{long:>7.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c", dest="c_server", action="store_true", help="add the C tcpserver")
    parser.add_argument("--loop", action="store_true", help="add bench/hr_loop.c (-hr only)")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--dns", help="DNSCACHEIP for the servers")
    parser.add_argument("--root", default=ROOT, help="the tree of our server")
    parser.add_argument("args", nargs="+", help="server options and program")
    ns = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("schedlat: perf is not installed")
    end = next((i for i, a in enumerate(ns.args) if not a.startswith("-")), len(ns.args))
    opts, prog = ns.args[:end], ns.args[end:]
    common = ["-1", "-c", "100", "-b", "256", *opts, "127.0.0.1", "0", *prog]
    env = dict(os.environ)
    if ns.dns:
        env["DNSCACHEIP"] = ns.dns
    work = tempfile.TemporaryDirectory(prefix="schedlat-")
    servers: List[Tuple[str, List[str], Optional[str]]] = [
        ("ours", [sys.executable, os.path.join(ns.root, "tcpserver.py"), *common], None)]
    if ns.c_server:
        servers.append(("C", [C_TCPSERVER, *common], "tcpserver"))
    if ns.loop:
        loop = compile_c(os.path.join(HERE, "hr_loop.c"), os.path.join(work.name, "hr_loop"))
        if loop is None:
            print("--loop: bench/hr_loop.c could not be compiled; left out")
        else:
            servers.append(("loop", [loop, "127.0.0.1", "0", *prog], None))
    for name, argv, children in servers:
        proc, port = start(argv, env)
        data = os.path.join(work.name, f"{name}.data")
        try:
            record(port, ns.count, ns.concurrency, data)
        finally:
            stop(proc)
        report(name, tally(timehist(data), Own(proc.pid, children)), ns.count)
    work.cleanup()


if __name__ == "__main__":
    main()
