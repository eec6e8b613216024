"""Side-by-side benchmark of ``prog.so`` programs against exec'd programs.

The same C code (a function ``hello`` that writes ``hello\\n`` to fd 1
with write(2) and returns 0) is compiled with ``cc -O2`` into a
temporary directory twice: as a shared object ``hello.so`` and as an
executable ``hello`` whose ``main`` calls the same function.  Three
servers run at once on loopback, all with ``-1 -c 100 -b 256 -HRl0 -q``
(a backlog large enough that no SYN is dropped):

* ``so``: our tcpserver running ``DIR/hello.so`` (loaded with ctypes in
  the parent, the function called in a forked copy of the parent);
* ``exec``: our tcpserver running ``DIR/hello`` (``os.posix_spawn``);
* ``C``: Debian's ``/usr/bin/tcpserver`` running ``DIR/hello``, for
  reference;
* with ``--also-root DIR``, a fourth, ``so@alt``: the ``tcpserver.py``
  of another tree (a prototype in a git worktree) running ``hello.so``.

They are driven in turn, round after round (so machine noise hits them
alike), by the closed-loop generator of ``bench/loadgen.py``, at
concurrency 32 and 1 (``--concurrency``).  Reported per scenario: the
median over rounds of conn/s, p50 and p99 latency, the CPU per
connection of the server (utime+stime) and of its reaped children
(cutime+cstime, from ``/proc/PID/stat``), and the ratio so/exec (the
issue's target: at least 1.2).

Then the bound: forking the interpreter costs more than posix_spawn, and
more the bigger the parent.  The ``so`` server's RSS (``VmRSS``) is read
after the load, and a probe (this script with a hidden option, in a
Python process of its own that imports the server's ``ucspi`` but not
``statistics``, ``subprocess`` or ``tempfile``, which bring in random's
and threading's fork hooks) is grown with heap ballast to that RSS, then
to four times it, and times, serially (start, reap, next), each way of
running the program once:

* ``spawn``: ``os.posix_spawn`` of ``hello`` (the exec path's syscall);
* ``fork+_exit``: ``os.fork`` and an immediate ``os._exit`` in the child;
* ``fork+call``: fork, then the child calls ``hello`` through ctypes
  (arrays for argv and envp, ``fflush(NULL)``) and ``_exit``;
* ``SharedObject``: ``ucspi.plugin.loader.SharedObject.start_on``, the
  server's own path (signal mask, defaults, ``gc.freeze``, closing the
  inherited descriptors, the call);
* ``C fork+_exit``: a C loop of fork + ``_exit`` + waitpid with a heap
  of the same RSS (the kernel's part alone).

For each: the µs of one round trip; the µs the *parent* is held in the
``fork``/``posix_spawn`` call (``max/s`` = 1e6 / that, the most a
single-threaded server could start); the children's CPU and minor
faults per run (``getrusage(RUSAGE_CHILDREN)``: after a fork, every page
the child *or* the parent writes first is a copy-on-write fault); and
the parent's minor faults per run.  ``--no-probe`` skips it.
``--no-site`` runs our servers and the probe with ``python3 -S``: a
``.pth`` file or ``sitecustomize`` that imports threading or random
adds their fork hooks to every forked child.

    python3 bench/bench_plugin.py [--rounds 5] [--count 3000]
                                  [--concurrency 32,1] [--quick]
                                  [--also-root DIR] [--no-probe] [--no-site]

``--quick`` (one round, 600 connections, a short probe) finishes in
under a minute.  Only loopback; only the processes this script started
are stopped, by pid.  Nothing here is a test: the numbers go in issue
notes, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:   # the probe must not import threading or random (fork hooks)
    import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import start, stop, rss_kib, cpu_seconds  # noqa: E402

C_TCPSERVER = "/usr/bin/tcpserver"
TICK = float(os.sysconf("SC_CLK_TCK"))

C_SOURCE = r"""
#include <unistd.h>

int hello(int argc, char **argv, char **envp)
{
    (void)argc; (void)argv; (void)envp;
    return write(1, "hello\n", 6) == 6 ? 0 : 1;
}

#ifdef BENCH_MAIN
int main(int argc, char **argv, char **envp)
{
    return hello(argc, argv, envp);
}
#endif
"""

FORK_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* forkloop KIB COUNT: touch KIB of heap, then COUNT x (fork, _exit, wait);
   prints the mean microseconds of one round trip and of the fork call */
int main(int argc, char **argv)
{
    long kib = atol(argv[1]), count = atol(argv[2]), i;
    char *heap = malloc(kib * 1024 + 1);
    struct timespec t0, t1, c0, c1;
    double held = 0;
    memset(heap, 1, kib * 1024);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < count; i++) {
        pid_t pid;
        clock_gettime(CLOCK_MONOTONIC, &c0);
        pid = fork();
        if (pid == 0) _exit(0);
        clock_gettime(CLOCK_MONOTONIC, &c1);
        held += (c1.tv_sec - c0.tv_sec) * 1e6 + (c1.tv_nsec - c0.tv_nsec) / 1e3;
        waitpid(pid, 0, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f %.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3) / count,
           held / count);
    return heap[kib] & 0;
}
"""


# --- building ---------------------------------------------------------------

def median(values: Any) -> float:
    """The median (here, not from statistics: that imports random)."""
    items = sorted(values)
    mid = len(items) // 2
    return float(items[mid]) if len(items) % 2 else (items[mid - 1] + items[mid]) / 2


def build(folder: str) -> Tuple[str, str, str]:
    """Compile the sources into ``folder``; return (hello.so, hello, forkloop)."""
    import shutil
    import subprocess
    cc = shutil.which("cc")
    if cc is None:
        sys.exit("cc missing: apt-get install gcc")
    source = os.path.join(folder, "hello.c")
    with open(source, "w") as handle:
        handle.write(C_SOURCE)
    shared = os.path.join(folder, "hello.so")
    exe = os.path.join(folder, "hello")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", shared, source], check=True)
    subprocess.run([cc, "-O2", "-DBENCH_MAIN", "-o", exe, source], check=True)
    loop = os.path.join(folder, "forkloop")
    with open(loop + ".c", "w") as handle:
        handle.write(FORK_SOURCE)
    subprocess.run([cc, "-O2", "-o", loop, loop + ".c"], check=True)
    return shared, exe, loop


# --- servers ----------------------------------------------------------------

def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def servers(shared: str, exe: str, also_root: Optional[str],
            python: List[str]) -> List[Tuple[str, List[str]]]:
    common = ["-1", "-c", "100", "-b", "256", "-HRl0", "-q", "127.0.0.1", "0"]
    ours = [*python, os.path.join(ROOT, "tcpserver.py"), *common]
    plans = [("so", [*ours, shared]), ("exec", [*ours, exe]),
             ("C", [C_TCPSERVER, *common, exe])]
    if also_root:
        alt = [*python, os.path.join(os.path.abspath(also_root), "tcpserver.py"), *common]
        plans.insert(1, ("so@alt", [*alt, shared]))
    return plans


def scenario(plans: List[Tuple[str, List[str]]], conc: int, count: int,
             rounds: int) -> Tuple[Dict[str, Dict[str, float]], Dict[str, int]]:
    """Run every server ``rounds`` times at ``conc``; per server the
    medians, the CPU per connection, and (in the second dict) the
    highest RSS seen, in KiB."""
    import loadgen
    running: List[Tuple[str, "subprocess.Popen[bytes]", int]] = []
    results: Dict[str, List[Dict[str, float]]] = {}
    cpu: Dict[str, List[float]] = {}
    conns: Dict[str, int] = {}
    rss: Dict[str, int] = {}
    try:
        for name, argv in plans:
            proc, port = start(argv)
            running.append((name, proc, port))
            results[name], cpu[name], conns[name], rss[name] = [], [0.0, 0.0], 0, 0
        # one short untimed warm-up each: first loads, first page faults
        for name, proc, port in running:
            loadgen.run("127.0.0.1", port, min(100, count), conc, 30.0)
        for _ in range(rounds):
            for name, proc, port in running:
                own0, kids0 = cpu_seconds(proc.pid)
                res = loadgen.run("127.0.0.1", port, count, conc, 60.0)
                rss[name] = max(rss[name], rss_kib(proc.pid))
                time.sleep(0.3)   # the last programs end and are reaped
                own1, kids1 = cpu_seconds(proc.pid)
                cpu[name][0] += own1 - own0
                cpu[name][1] += kids1 - kids0
                conns[name] += int(res["conns"])
                results[name].append(res)
    finally:
        for _, proc, _ in running:
            stop(proc)
    summary = {name: {key: median(r[key] for r in runs)
                      for key in ("rate", "p50_ms", "p99_ms", "errors")}
               for name, runs in results.items()}
    for name in summary:
        done = max(1, conns[name])
        summary[name]["cpu_us"] = cpu[name][0] / done * 1e6
        summary[name]["child_cpu_us"] = cpu[name][1] / done * 1e6
    return summary, rss


# --- the fork probe (runs in a process of its own) ---------------------------

def _probe(root: str, shared: str, exe: str, target_kib: int, count: int) -> Dict[str, Any]:
    """Grow this process to ``target_kib`` of RSS, then time each way of
    running ``hello`` once, serially: per run, the µs of the round trip,
    the µs the parent is held in the fork/spawn call, the children's
    CPU µs and minor faults, and the parent's minor faults; medians over
    batches.  Imports neither threading nor random, as the server does
    not: their fork hooks would run in every child."""
    import ctypes
    import gc

    sys.path.insert(0, root)
    from ucspi.plugin.loader import SharedObject, strings   # the server's code
    from ucspi.proc import signals

    signals.install()   # the server's handlers, so defaults() has work to do
    program = SharedObject([shared])
    program.ready()
    libc = ctypes.CDLL(None)
    devnull = os.open(os.devnull, os.O_RDWR)
    env = {k.encode(): v.encode() for k, v in list(os.environ.items())[:20]}
    env.update({b"PROTO": b"TCP", b"TCPLOCALIP": b"127.0.0.1", b"TCPLOCALPORT": b"1",
                b"TCPREMOTEIP": b"127.0.0.1", b"TCPREMOTEPORT": b"2"})
    ballast: List[bytes] = []
    base = rss_kib(os.getpid())
    while rss_kib(os.getpid()) < target_kib:
        ballast.append(os.urandom(1) * 65536)   # heap chunks, written so resident
    gc.collect()
    reached = rss_kib(os.getpid())

    def fork_exit() -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid

    def fork_call() -> int:
        pid = os.fork()
        if pid == 0:
            os.dup2(devnull, 1)
            args = [os.fsencode(shared)]
            envp = [k + b"=" + v for k, v in env.items()]
            value = program.function(len(args), strings(args), strings(envp))
            libc.fflush(None)
            os._exit(value & 0xFF)
        return pid

    def spawn() -> int:
        return os.posix_spawn(exe, [exe], env,
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                            (os.POSIX_SPAWN_DUP2, devnull, 1)],
                              setsigdef=signals.SIGDEF, setsigmask=())

    def shared_object() -> int:
        return int(program.start_on(devnull, devnull, env))

    ways: Dict[str, Callable[[], int]] = {
        "spawn": spawn, "fork+_exit": fork_exit, "fork+call": fork_call,
        "SharedObject": shared_object}
    keys = ("trip_us", "call_us", "child_cpu_us", "child_minflt", "parent_minflt")
    stats: Dict[str, Dict[str, List[float]]] = {name: {k: [] for k in keys} for name in ways}
    batch = max(10, count // 10)
    for _ in range(max(1, count // batch)):
        for name, way in ways.items():   # interleaved batches
            held = 0.0
            me0 = resource.getrusage(resource.RUSAGE_SELF)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            for _ in range(batch):
                c0 = time.perf_counter()
                pid = way()
                held += time.perf_counter() - c0
                os.waitpid(pid, 0)
            elapsed = time.perf_counter() - t0
            me1 = resource.getrusage(resource.RUSAGE_SELF)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            got = stats[name]
            got["trip_us"].append(elapsed / batch * 1e6)
            got["call_us"].append(held / batch * 1e6)
            got["child_cpu_us"].append((kids1.ru_utime + kids1.ru_stime - kids0.ru_utime
                                        - kids0.ru_stime) / batch * 1e6)
            got["child_minflt"].append((kids1.ru_minflt - kids0.ru_minflt) / batch)
            got["parent_minflt"].append((me1.ru_minflt - me0.ru_minflt) / batch)
    del ballast
    return {"base_kib": base, "rss_kib": reached,
            "modules": sorted(m for m in ("threading", "random") if m in sys.modules),
            "ways": {name: {k: median(v) for k, v in got.items()}
                     for name, got in stats.items()}}


def probe(root: str, shared: str, exe: str, loop: str, target_kib: int,
          count: int, python: List[str]) -> Dict[str, Any]:
    """Run the probe in a process of its own at ``target_kib``, and the C
    fork loop at the RSS the probe reached; the probe's report with a
    ``C fork+_exit`` way added (time only)."""
    import subprocess
    out = subprocess.run([*python, os.path.abspath(__file__), "--root", root,
                          "--probe-target", str(target_kib), "--count", str(count),
                          shared, exe],
                         stdout=subprocess.PIPE, check=True, timeout=600).stdout
    report: Dict[str, Any] = json.loads(out)
    c_out = subprocess.run([loop, str(report["rss_kib"]), str(count)],
                           stdout=subprocess.PIPE, check=True, timeout=600).stdout.split()
    report["ways"]["C fork+_exit"] = {"trip_us": float(c_out[0]), "call_us": float(c_out[1])}
    return report


# --- the report --------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=3000,
                        help="connections per round at c>1 (a fifth of it, at least 200, at c=1)")
    parser.add_argument("--concurrency", default="32,1",
                        help="comma-separated concurrencies (default 32,1)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 600 connections, a short probe: under a minute")
    parser.add_argument("--also-root", metavar="DIR",
                        help="also run the tcpserver.py of tree DIR with hello.so (so@alt)")
    parser.add_argument("--no-site", action="store_true",
                        help="run our servers and the probe with python3 -S (no site "
                        "imports: a .pth that imports threading or random adds its fork "
                        "hooks to every forked child)")
    parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--probe-count", type=int, default=2000,
                        help="runs of each way in the fork probe (default 2000)")
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                        help="time fork against posix_spawn at the server's RSS (default on)")
    parser.add_argument("--probe-target", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_target:   # internal: the probe process
        shared, exe = args.files
        print(json.dumps(_probe(args.root, shared, exe, args.probe_target, args.count)))
        return
    if args.quick:
        args.rounds, args.count, args.probe_count = 1, 600, 300
    if not os.access(C_TCPSERVER, os.X_OK):
        sys.exit(f"{C_TCPSERVER} missing: apt-get install ucspi-tcp")
    concs = [int(c) for c in args.concurrency.split(",") if c]

    began = time.monotonic()
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_plugin.") as folder:
        shared, exe, loop = build(folder)
        python = [sys.executable, "-S"] if args.no_site else [sys.executable]
        plans = servers(shared, exe, args.also_root, python)
        print(f"{os.cpu_count()} CPUs, load average at start {loadavg()}; "
              f"{args.rounds} rounds, -HRl0, medians; {' '.join(python)}", flush=True)
        print(f"{'scenario':10} {'server':7} {'conn/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'err':>4} {'µs/conn: parent':>15} {'children':>8} {'RSS KiB':>8}")
        so_rss = 0
        ratios: List[str] = []
        for conc in concs:
            count = args.count if conc > 1 else max(200, args.count // 5)
            res, rss = scenario(plans, conc, count, args.rounds)
            for name, r in res.items():
                print(f"{'c=' + str(conc):10} {name:7} {r['rate']:7.0f} {r['p50_ms']:7.2f} "
                      f"{r['p99_ms']:7.2f} {r['errors']:4.0f} {r['cpu_us']:15.0f} "
                      f"{r['child_cpu_us']:8.0f} {rss[name]:8d}", flush=True)
            so_rss = max(so_rss, rss["so"])
            line = (f"c={conc}: so/exec {res['so']['rate'] / res['exec']['rate']:.2f}, "
                    f"so/C {res['so']['rate'] / res['C']['rate']:.2f}, "
                    f"exec/C {res['exec']['rate'] / res['C']['rate']:.2f}")
            if "so@alt" in res:
                line += f", so@alt/exec {res['so@alt']['rate'] / res['exec']['rate']:.2f}"
            ratios.append(line)
        print("ratios of conn/s (target so/exec >= 1.2): " + "; ".join(ratios))
        print(f"load average after the load {loadavg()}", flush=True)

        if args.probe:
            print(f"fork probe: serial runs (start, reap, next), {args.probe_count} of each way; "
                  f"the so server's RSS was {so_rss} KiB", flush=True)
            print(f"{'RSS KiB':>8} {'way':13} {'µs/run':>7} {'held µs':>8} {'max/s':>6} "
                  f"{'child µs':>8} {'child minflt':>12} {'parent minflt':>13}")
            for target in (so_rss, 4 * so_rss):
                rep = probe(args.root, shared, exe, loop, target, args.probe_count, python)
                for name, w in rep["ways"].items():
                    extra = (f"{w['child_cpu_us']:8.0f} {w['child_minflt']:12.0f} "
                             f"{w['parent_minflt']:13.1f}" if "child_cpu_us" in w
                             else f"{'-':>8} {'-':>12} {'-':>13}")
                    print(f"{rep['rss_kib']:8d} {name:13} {w['trip_us']:7.0f} "
                          f"{w['call_us']:8.0f} {1e6 / w['call_us']:6.0f} {extra}", flush=True)
                if rep["modules"]:
                    print(f"  (the probe had {', '.join(rep['modules'])} imported: "
                          f"their fork hooks ran in its children)")
        print(f"load average at the end {loadavg()}; {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
