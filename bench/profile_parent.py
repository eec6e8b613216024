"""Where a server's parent spends its time, per connection.

Starts one server (ours, or the C tcpserver with ``--c``) on loopback,
drives ``--count`` connections at concurrency ``-c`` with
``bench/loadgen.py``, and reports per connection what was asked for:

* ``cpu`` (always): the parent's CPU (utime+stime from ``/proc/PID/stat``,
  and the more precise on-CPU nanoseconds of ``/proc/PID/schedstat``),
  and its reaped children's (cutime+cstime), as median µs per connection
  over ``--rounds`` rounds after one warm-up round;
* ``--strace``: syscalls per connection, ``strace -c`` attached to the
  parent alone, then ``strace -c -f`` (the parent and what it starts);
* ``--cprofile`` (ours): the server runs inside ``cProfile`` (SIGTERM
  ends it through ``SystemExit`` so the profile is written); the top
  functions with calls, own and cumulative µs per connection (the
  profiler's overhead included: read the shares, not the sums);
* ``--pyspy`` (ours, needs ``py-spy``): sampled Python stacks, as shares
  of the samples per function (own and cumulative), times the parent's
  µs per connection measured without a profiler;
* ``--perf`` (needs ``perf``): ``perf record -g`` on the parent, the top
  symbols (kernel and user) by share.

Load is bounded (``--count``, a 120 s timeout per round); loopback only.

    python3 bench/profile_parent.py [--c] [-c 32] [--count 3000] [--dns IP]
        [--strace] [--cprofile] [--pyspy] [--perf] -- -HRl0 /bin/true

Option values must be attached (``-t5``, not ``-t 5``): the options end
at the first argument that does not start with ``-``.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import start, stop  # noqa: E402

import loadgen  # noqa: E402

C_TCPSERVER = "/usr/bin/tcpserver"
TICK = float(os.sysconf("SC_CLK_TCK"))
ROUND_TIMEOUT = 120.0

WRAPPER = r"""
import cProfile, sys
sys.path.insert(0, {root!r})
from ucspi.proc import signals
from ucspi.server import bootstrap

def _term(signum, frame):
    raise SystemExit(0)

signals._terminate = _term          # read by signals.install()
profile = cProfile.Profile()
try:
    profile.runcall(bootstrap.main, sys.argv[2:])
except SystemExit:
    pass
finally:
    profile.dump_stats(sys.argv[1])
"""


def cpu(pid: int) -> Tuple[float, float, float]:
    """(own seconds from stat, children's seconds, own seconds from
    schedstat over every thread) of ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                ns += int(handle.read().split()[0])
        except OSError:
            pass
    return (utime + stime) / TICK, (cutime + cstime) / TICK, ns / 1e9


def drive(port: int, count: int, conc: int) -> Dict[str, float]:
    res = loadgen.run("127.0.0.1", port, count, conc, ROUND_TIMEOUT)
    time.sleep(0.3)   # the last programs end and are reaped
    return res


def measure_cpu(pid: int, port: int, count: int, conc: int, rounds: int) -> Dict[str, float]:
    drive(port, min(count, 500), conc)   # warm-up
    own, kids, sched, rates = [], [], [], []
    for _ in range(rounds):
        a = cpu(pid)
        res = drive(port, count, conc)
        b = cpu(pid)
        done = max(1, int(res["conns"]))
        own.append((b[0] - a[0]) / done * 1e6)
        kids.append((b[1] - a[1]) / done * 1e6)
        sched.append((b[2] - a[2]) / done * 1e6)
        rates.append(res["rate"])
    return {"parent_us": statistics.median(own), "parent_sched_us": statistics.median(sched),
            "children_us": statistics.median(kids), "rate": statistics.median(rates)}


def strace_counts(pid: int, port: int, count: int, conc: int, follow: bool
                  ) -> Tuple[Dict[str, float], float]:
    """Syscalls per connection by name, and the total."""
    with tempfile.NamedTemporaryFile(prefix="strace-", suffix=".txt", delete=False) as out:
        path = out.name
    argv = ["strace", "-c", "-o", path, *(["-f"] if follow else []), "-p", str(pid)]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(1.0)   # attached
    res = drive(port, count, conc)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    done = max(1, int(res["conns"]))
    calls: Dict[str, float] = {}
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3]) / done
    os.unlink(path)
    return calls, sum(calls.values())


def print_calls(title: str, calls: Dict[str, float], total: float) -> None:
    print(f"{title}: {total:.1f} syscalls per connection")
    for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        if n >= 0.01:
            print(f"    {n:7.2f}  {name}")


def cprofile(opts: List[str], env: Dict[str, str], count: int, conc: int, top: int,
             root: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cprof-") as work:
        wrapper = os.path.join(work, "wrap.py")
        out = os.path.join(work, "out.prof")
        with open(wrapper, "w") as handle:
            handle.write(WRAPPER.format(root=root))
        proc, port = start([sys.executable, wrapper, out, *opts], env)
        try:
            res = drive(port, count, conc)
        finally:
            stop(proc)
        if not os.path.exists(out):
            print("cProfile: no profile written")
            return
        done = max(1, int(res["conns"]))
        stats = pstats.Stats(out)
        rows: List[Tuple[str, float, float, float]] = []
        for (filename, line, name), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            where = (os.path.relpath(filename, root) if filename.startswith(root)
                     else os.path.basename(filename))
            rows.append((f"{where}:{line}({name})", nc / done, tt / done * 1e6, ct / done * 1e6))
        total = sum(r[2] for r in rows)
        calls = sum(r[1] for r in rows)
        print(f"cProfile: {done} connections at {res['rate']:.0f}/s under the profiler, "
              f"{total:.0f} µs of profiled own time and {calls:.0f} calls per connection")
        for column, title in ((2, "by own time"), (3, "by cumulative time")):
            print(f"  top {top} {title}:  calls/conn  own µs/conn  cum µs/conn")
            ranked = sorted(rows, key=lambda r: r[2] if column == 2 else r[3], reverse=True)
            for func, calls, own, cum in ranked[:top]:
                print(f"    {calls:8.2f} {own:9.1f} {cum:9.1f}  {func}")


def pyspy(pid: int, port: int, count: int, conc: int, per_conn_us: float, top: int) -> None:
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(spy, os.X_OK):
        print("py-spy: not installed")
        return
    with tempfile.NamedTemporaryFile(prefix="pyspy-", suffix=".txt", delete=False) as out:
        path = out.name
    sampler = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "1000",
                                "--nonblocking", "--format", "raw", "--output", path],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    drive(port, count, conc)
    sampler.send_signal(signal.SIGINT)
    sampler.wait(60)
    own: Dict[str, int] = collections.Counter()
    cum: Dict[str, int] = collections.Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = [re.sub(r" \((?:/[^)]*/)?([^/)]*)\)", r" (\1)", f) for f in stack.split(";")]
            # an idle parent waits in select: not CPU time
            if frames[-1].startswith("select (selectors.py"):
                continue
            total += int(n)
            own[frames[-1]] += int(n)
            for f in set(frames):
                cum[f] += int(n)
    os.unlink(path)
    if not total:
        print("py-spy: no samples")
        return
    print(f"py-spy: {total} busy samples; µs = share x {per_conn_us:.0f} µs per connection")
    for table, title in ((own, "own"), (cum, "cumulative")):
        print(f"  top {top} by {title}:  share   µs/conn")
        for frame, hits in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {hits / total:6.1%} {hits / total * per_conn_us:8.1f}  {frame}")


def perf(pid: int, port: int, count: int, conc: int, top: int) -> None:
    if shutil.which("perf") is None:
        print("perf: not installed")
        return
    with tempfile.TemporaryDirectory(prefix="perf-") as work:
        data = os.path.join(work, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-q", "--no-inherit", "-F", "2000", "-g", "-o", data,
                                "-p", str(pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        drive(port, count, conc)
        rec.send_signal(signal.SIGINT)
        rec.wait(60)
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                              "-g", "none", "--sort", "dso,sym", "--percent-limit", "0.7"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300)
        lines = [ln for ln in rep.stdout.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("#")]
        print("perf: top symbols of the parent (own samples, share):")
        for ln in lines[:top]:
            print("    " + ln.strip())
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                              "-g", "none", "--sort", "dso"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300)
        lines = [ln for ln in rep.stdout.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("#")]
        print("perf: by object:")
        for ln in lines[:8]:
            print("    " + ln.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c", dest="c_server", action="store_true", help="the C tcpserver")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dns", help="DNSCACHEIP for the server")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--pyspy", action="store_true")
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--python", default=sys.executable, help="interpreter for ours")
    parser.add_argument("--root", default=ROOT, help="checkout of ours to run")
    parser.add_argument("args", nargs="+", help="server options and program, e.g. -HRl0 /bin/true")
    ns = parser.parse_args()
    opts_end = next((i for i, a in enumerate(ns.args) if not a.startswith("-")), len(ns.args))
    opts = ["-1", "-c", "100", "-b", "256", *ns.args[:opts_end], "127.0.0.1", "0",
            *ns.args[opts_end:]]
    env = dict(os.environ)
    if ns.dns:
        env["DNSCACHEIP"] = ns.dns
    server = [C_TCPSERVER] if ns.c_server else [ns.python, os.path.join(ns.root, "tcpserver.py"),
                                                "-C", "0"]
    name = "C" if ns.c_server else "ours"
    print(f"{name}: {' '.join(opts)}  c={ns.concurrency} count={ns.count}", flush=True)

    proc, port = start([*server, *opts], env)
    try:
        res = measure_cpu(proc.pid, port, ns.count, ns.concurrency, ns.rounds)
        print(f"  rate {res['rate']:.0f}/s; CPU µs per connection: parent {res['parent_us']:.0f} "
              f"(schedstat {res['parent_sched_us']:.0f}), reaped children {res['children_us']:.0f}",
              flush=True)
        if ns.strace:
            calls, total = strace_counts(proc.pid, port, ns.count, ns.concurrency, False)
            print_calls("  strace -c, parent only", calls, total)
            calls, total = strace_counts(proc.pid, port, ns.count, ns.concurrency, True)
            print_calls("  strace -c -f, parent and children", calls, total)
        if ns.pyspy and not ns.c_server:
            pyspy(proc.pid, port, ns.count, ns.concurrency, res["parent_sched_us"], ns.top)
        if ns.perf:
            perf(proc.pid, port, ns.count, ns.concurrency, ns.top)
    finally:
        stop(proc)
    if ns.cprofile and not ns.c_server:
        cprofile(["-C", "0", *opts], env, ns.count, ns.concurrency, ns.top, ns.root)


if __name__ == "__main__":
    main()
