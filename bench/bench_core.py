"""Side-by-side benchmark: our tcpserver against Debian's C tcpserver.

Runs both servers on loopback with the same options and programs, and
drives them alternately (so machine noise hits both alike) with the
closed-loop generator of ``bench/loadgen.py``.  Reports, per scenario,
the median over rounds of conn/s, p50 and p99 latency, and the ratio
ours/C.  Also reports start-up time to listening and idle RSS.

    python3 bench/bench_core.py [--rounds 5] [--count 3000] [--quick]
                                [--dns IP] [--slow-ident SECONDS]
                                [--only plain|lookups] [--no-ceiling] [--loop]

CPU per connection, per scenario (from ``/proc/PID/stat``, the delta over
every round of that server, divided by its connections): our parent
(utime+stime), the programs it started (cutime+cstime: children are
counted once reaped), and the same two for the C server, whose children
are its forked copies (lookups included) *and* the programs they exec.
The programs cost the same on both sides, so ``C work`` = C parent + C
children - our children is what the C server spends per connection
beyond the program itself, the figure to set against our parent's.

The spawn ceiling (``bench/ceiling.py``, run once per run unless
``--no-ceiling``): each scenario's conn/s is also shown as a fraction of
the C ``posix_spawn`` loop's rate on this machine, this run.

The design ceiling (``--loop``; ``bench/hr_loop.c``, compiled with
``cc``): in every round of every scenario (but ``-p``, which it does not
do) three more servers are driven beside ours and C's.  It is off
unless asked for: three more servers leave three times the TIME_WAIT
sockets, and the rows that follow change with them (oidentd reads the
kernel's socket table for every query).  ``loop`` is our design written
in C with nothing else: one epoll loop that sends the ident and PTR
queries at once and starts the program with ``posix_spawn`` in line, so
it shows what one process of this design can do here.  ``loopF`` is the same loop starting the program with
fork+exec (it does not wait for the exec), to show what the vfork wait
costs; ``loopS`` hands each descriptor and environment to a spawn
process that calls ``posix_spawn`` and reports the ends, to show what
taking the spawn out of the loop would bring.  ``ours/loop`` is how
close our Python comes to the design's ceiling.

Both servers get ``-c 100 -b 256`` (a backlog large enough that no SYN is
dropped, which would add 1 s retransmits to both).  Scenarios: ``-HRl0`` with ``/bin/true`` and ``echo hello`` at
concurrency 1 and 32, and (when ``--dns IP`` names a DNS server that
answers PTR for 127.0.0.1, and an ident server runs on 127.0.0.1:113)
the lookups: ``-hr -t 5`` at concurrency 32 and 1 and ``-hrp -t 5`` at
32 with that fast ident peer, and ``-hr -t 5`` at 32 with a slow one:
the clients then connect from a random 127.x.0.1, where
``bench/slow_ident.py`` answers every query after ``--slow-ident``
seconds (0.05 unless told; 0 leaves the row out).  Its PTR comes from
the same DNS server (an NXDOMAIN is as good as a name: both servers ask
the same).  Nothing here is a test: the numbers go in issue notes, not
assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import compile_c, cpu_seconds, rss_kib, stop  # noqa: E402

import loadgen  # noqa: E402

C_TCPSERVER = "/usr/bin/tcpserver"
OURS = [sys.executable, os.path.join(ROOT, "tcpserver.py")]
CEILING = os.path.join(HERE, "ceiling.py")
SLOW_IDENT = os.path.join(HERE, "slow_ident.py")
HR_LOOP = os.path.join(HERE, "hr_loop.c")
TICK = float(os.sysconf("SC_CLK_TCK"))


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


def ceiling(rounds: int, count: int) -> Dict[str, Any]:
    """Run ``bench/ceiling.py --json`` once; its report."""
    out = subprocess.run([sys.executable, CEILING, "--json", "--rounds", str(rounds),
                          "--count", str(count)],
                         stdout=subprocess.PIPE, check=True, timeout=1200).stdout
    report: Dict[str, Any] = json.loads(out)
    return report


def loop_flags(opts: List[str]) -> Optional[List[str]]:
    """hr_loop's flags for a scenario's options, or None if it cannot
    do the same work (``-p``)."""
    letters = "".join(o[1:] for o in opts if o.startswith("-") and not o[1:].isdigit())
    if "p" in letters:
        return None
    return [f"-{x}" for x in "HR" if x in letters]


def bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(0.5)
    try:
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def slow_ident(address: str, delay: float) -> "subprocess.Popen[bytes]":
    """Start ``bench/slow_ident.py`` on ``address`` port 113."""
    proc = subprocess.Popen([sys.executable, SLOW_IDENT, address, "--delay", str(delay)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"slow_ident.py did not start on {address}:113")
    return proc


def scenario(opts: List[str], prog: List[str], conc: int, count: int, rounds: int,
             env: Optional[Dict[str, str]], base: str = "",
             loop: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Both servers (and, given ``loop``, the design ceiling's three
    forms), ``rounds`` interleaved rounds; clients from ``base``.0.1 if
    given (else 127.0.0.1)."""
    common = ["-1", "-c", "100", "-b", "256", *opts, "127.0.0.1", "0", *prog]
    servers = [("ours", [*OURS, "-C", "0", *common]), ("C", [C_TCPSERVER, *common])]
    flags = loop_flags(opts)
    if loop is not None and flags is not None:
        servers += [(name, [loop, *form, *flags, "127.0.0.1", "0", *prog])
                    for name, form in (("loop", []), ("loopF", ["-F"]), ("loopS", ["-S"]))]
    running: List[Tuple[str, Any, int]] = []
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name, _ in servers}
    cpu = {name: [0.0, 0.0] for name, _ in servers}   # own, children: seconds
    conns = {name: 0 for name, _ in servers}
    try:
        for name, argv in servers:
            proc, port, _ = start(argv, env)
            running.append((name, proc, port))
        for _ in range(rounds):
            for name, proc, port in running:
                own0, kids0 = cpu_seconds(proc.pid)
                res = (loadgen.run("127.0.0.1", port, count, conc, 60.0, sources=1, base=base)
                       if base else loadgen.run("127.0.0.1", port, count, conc, 60.0))
                time.sleep(0.3)   # the last programs end and are reaped
                own1, kids1 = cpu_seconds(proc.pid)
                cpu[name][0] += own1 - own0
                cpu[name][1] += kids1 - kids0
                conns[name] += int(res["conns"])
                results[name].append(res)
    finally:
        for _, proc, _ in running:
            stop(proc)
    summary = {name: {key: statistics.median(r[key] for r in runs)
                      for key in ("rate", "p50_ms", "p99_ms", "errors")}
               for name, runs in results.items()}
    for name in summary:
        done = max(1, conns[name])
        summary[name]["cpu_us"] = cpu[name][0] / done * 1e6
        summary[name]["child_cpu_us"] = cpu[name][1] / done * 1e6
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--dns", help="DNS server IP for the -hr scenario (DNSCACHEIP)")
    parser.add_argument("--quick", action="store_true", help="1 round, 1000 connections")
    parser.add_argument("--slow-ident", type=float, default=0.05, metavar="SECONDS",
                        help="the slow ident peer's delay (0: no slow-ident row)")
    parser.add_argument("--only", choices=("plain", "lookups"),
                        help="only the -HRl0 rows, or only the lookup rows (needs --dns)")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the spawn ceiling once (bench/ceiling.py; default on)")
    parser.add_argument("--loop", action="store_true",
                        help="drive the design ceiling (bench/hr_loop.c, three forms) beside "
                             "the servers (needs cc)")
    parser.add_argument("--ceiling-rounds", type=int, default=3)
    parser.add_argument("--ceiling-count", type=int, default=6000)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.count = 1, 1000
        args.ceiling_rounds, args.ceiling_count = 1, 2000
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

    roof = 0.0
    if args.ceiling:
        report = ceiling(args.ceiling_rounds, args.ceiling_count)
        print(f"spawn ceiling ({report['program']}, {report['inflight']} in flight, "
              f"{report['count']} spawns, median of {report['rounds']}):")
        for name, why in report["skipped"].items():
            print(f"  {name:11} skipped: {why}")
        for name, entry in report["methods"].items():
            print(f"  {name:11} {entry['rate']:6.0f}/s  {entry['label']}")
        methods = report["methods"]
        base = "c_spawn" if "c_spawn" in methods else "py_spawn"
        roof = float(methods[base]["rate"])
        print(f"ceiling for the fractions below: {base} {roof:.0f}/s", flush=True)

    # (options, program, concurrency, slow ident delay or 0)
    plans: List[Tuple[List[str], List[str], int, float]] = []
    env = None
    if args.dns and args.only != "plain":
        env = dict(os.environ, DNSCACHEIP=args.dns)
        # first: oidentd reads /proc/net/tcp for every query, and gets
        # slower as the TIME_WAIT sockets of earlier scenarios pile up
        plans += [(["-hr", "-t", "5"], ["/bin/true"], 32, 0.0),
                  (["-hr", "-t", "5"], ["/bin/true"], 1, 0.0),
                  (["-hrp", "-t", "5"], ["/bin/true"], 32, 0.0)]
        if args.slow_ident > 0:
            plans.append((["-hr", "-t", "5"], ["/bin/true"], 32, args.slow_ident))
    elif args.only == "lookups":
        sys.exit("--only lookups needs --dns IP")
    if args.only != "lookups":
        plans += [
            (["-HRl0"], ["/bin/true"], 1, 0.0), (["-HRl0"], ["/bin/true"], 32, 0.0),
            (["-HRl0"], ["echo", "hello"], 1, 0.0), (["-HRl0"], ["echo", "hello"], 32, 0.0),
        ]
    loop: Optional[str] = None
    workdir = tempfile.TemporaryDirectory(prefix="bench_core.")
    if args.loop:
        loop = compile_c(HR_LOOP, os.path.join(workdir.name, "hr_loop"))
        if loop is None:
            print("--loop: bench/hr_loop.c could not be compiled (no cc?); left out")
    print(f"{'scenario':44} {'ours c/s':>9} {'C c/s':>9} {'ratio':>6} "
          f"{'p50 ours/C ms':>15} {'p99 ours/C ms':>15} {'ceil ours/C':>11} "
          f"{'µs/conn: ours parent':>20} {'C parent':>8} {'C child':>8} {'ours child':>10} "
          f"{'C work':>7}" + (f" | {'loop c/s':>8} {'loopF c/s':>9} {'loopS c/s':>9} "
                              f"{'ours/loop':>9} {'C/loop':>6} {'loop µs':>7}" if loop else ""))
    for opts, prog, conc, delay in plans:
        count = args.count if conc > 1 else max(200, args.count // 5)
        label = f"{' '.join(opts)} {' '.join(prog)} c={conc}"
        if delay:
            base = f"127.{random.randrange(100, 250)}"
            ident = slow_ident(base + ".0.1", delay)
            label += f" ident {delay * 1000:.0f}ms"
            count = min(count, int(conc / delay * 10))   # about 10 s a round
            try:
                res = scenario(opts, prog, conc, count, args.rounds, env, base, loop)
            finally:
                stop(ident)
        else:
            res = scenario(opts, prog, conc, count, args.rounds, env, loop=loop)
        o, c = res["ours"], res["C"]
        frac = (f"{o['rate'] / roof:5.2f}/{c['rate'] / roof:<5.2f}" if roof
                else f"{'-':>5}/{'-':<5}")
        c_work = c["cpu_us"] + c["child_cpu_us"] - o["child_cpu_us"]
        print(f"{label:44} {o['rate']:9.0f} {c['rate']:9.0f} {o['rate'] / c['rate']:6.2f} "
              f"{o['p50_ms']:7.2f}/{c['p50_ms']:<7.2f} {o['p99_ms']:7.2f}/{c['p99_ms']:<7.2f} "
              f"{frac:>11} {o['cpu_us']:20.0f} {c['cpu_us']:8.0f} {c['child_cpu_us']:8.0f} "
              f"{o['child_cpu_us']:10.0f} {c_work:7.0f}" + design(res, loop), flush=True)
    workdir.cleanup()


def design(res: Dict[str, Dict[str, float]], loop: Optional[str]) -> str:
    """The design ceiling's columns of a row ('' without hr_loop)."""
    if loop is None:
        return ""
    if "loop" not in res:
        return f" | {'-':>8} {'-':>9} {'-':>9} {'-':>9} {'-':>6} {'-':>7}"
    o, c, y = res["ours"], res["C"], res["loop"]
    return (f" | {y['rate']:8.0f} {res['loopF']['rate']:9.0f} {res['loopS']['rate']:9.0f} "
            f"{o['rate'] / y['rate']:9.2f} {c['rate'] / y['rate']:6.2f} {y['cpu_us']:7.0f}")


if __name__ == "__main__":
    main()
