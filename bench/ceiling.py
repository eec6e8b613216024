"""The machine's process-creation ceiling, with no network at all.

Each method starts ``/bin/true`` and reaps it, with up to ``--inflight``
(32) programs alive at once, ``--count`` (6000) times, and the rate is
spawns per second:

* ``c_fork``: a C loop of ``fork`` + ``execve`` + ``waitpid``;
* ``c_spawn``: a C loop of ``posix_spawn`` + ``waitpid``;
* ``py_spawn``: a Python loop of ``os.posix_spawn`` + ``os.waitpid``;
* ``py_threads``: a Python loop that reaps, and hands each spawn to one
  of two threads calling libc's ``posix_spawn`` through ctypes (ctypes
  lets go of the GIL while the kernel holds the caller until the exec).

The C sources are embedded here and compiled with ``cc`` into a
temporary directory; without ``cc`` the C methods are skipped with a
message.  The methods run in turn, ``--rounds`` times (so machine noise
hits them alike), and the median of each is printed, with the CPU one
spawn costs in the looping process and in its children (from
``getrusage``; the children's part is the price of a ``/bin/true`` exec,
which a server's programs pay too).

    python3 bench/ceiling.py [--count 6000] [--rounds 3] [--inflight 32] [--json]

``--json`` prints one JSON object instead of the table; :func:`measure`
returns the same thing to a script that imports this one
(``bench/bench_core.py`` runs it with ``--json``).  Nothing here is a
test: the numbers go in issue notes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from procs import compile_c

PROGRAM = "/bin/true"

C_SOURCE = r"""
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: loop fork|spawn COUNT INFLIGHT PROGRAM\n");
        return 100;
    }
    int use_fork = strcmp(argv[1], "fork") == 0;
    long count = atol(argv[2]);
    long inflight = atol(argv[3]);
    char *prog = argv[4];
    char *args[] = { prog, NULL };
    long started = 0, reaped = 0, failed = 0;
    struct rusage s0, s1, c0, c1;
    getrusage(RUSAGE_SELF, &s0);
    getrusage(RUSAGE_CHILDREN, &c0);
    double t0 = now();
    while (reaped < count) {
        while (started < count && started - reaped < inflight) {
            pid_t pid;
            if (use_fork) {
                pid = fork();
                if (pid == 0) {
                    execve(prog, args, environ);
                    _exit(127);
                }
                if (pid < 0) { failed++; count--; continue; }
            } else {
                if (posix_spawn(&pid, prog, NULL, NULL, args, environ) != 0) {
                    failed++; count--; continue;
                }
            }
            started++;
        }
        if (started == reaped) break;
        int status;
        if (waitpid(-1, &status, 0) > 0) reaped++;
    }
    double t1 = now();
    getrusage(RUSAGE_SELF, &s1);
    getrusage(RUSAGE_CHILDREN, &c1);
    printf("%ld %.6f %.6f %.6f %ld\n", reaped, t1 - t0,
           tv(s1.ru_utime) + tv(s1.ru_stime) - tv(s0.ru_utime) - tv(s0.ru_stime),
           tv(c1.ru_utime) + tv(c1.ru_stime) - tv(c0.ru_utime) - tv(c0.ru_stime),
           failed);
    return failed ? 111 : 0;
}
"""

Result = Dict[str, float]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _result(done: int, seconds: float, cpu_self: float, cpu_children: float) -> Result:
    return {
        "spawns": done, "seconds": seconds,
        "rate": done / seconds if seconds > 0 else 0.0,
        "cpu_us_per_spawn": cpu_self / done * 1e6 if done else 0.0,
        "child_cpu_us_per_spawn": cpu_children / done * 1e6 if done else 0.0,
    }


def compile_loop(workdir: str) -> Optional[str]:
    """Compile the C loop; its path, or None without a C compiler."""
    source = os.path.join(workdir, "loop.c")
    with open(source, "w") as handle:
        handle.write(C_SOURCE)
    return compile_c(source, os.path.join(workdir, "loop"))


def c_loop(binary: str, mode: str, count: int, inflight: int) -> Result:
    out = subprocess.run([binary, mode, str(count), str(inflight), PROGRAM],
                         stdout=subprocess.PIPE, check=True, timeout=600).stdout
    done, seconds, cpu_self, cpu_children, _ = out.split()
    return _result(int(done), float(seconds), float(cpu_self), float(cpu_children))


def py_spawn(count: int, inflight: int) -> Result:
    """A plain Python loop of ``os.posix_spawn``."""
    argv = [PROGRAM]
    env = os.environ
    spawn, waitpid = os.posix_spawn, os.waitpid
    started = reaped = 0
    s0, c0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    while reaped < count:
        while started < count and started - reaped < inflight:
            spawn(PROGRAM, argv, env)
            started += 1
        waitpid(-1, 0)
        reaped += 1
    seconds = time.monotonic() - t0
    return _result(reaped, seconds, _cpu(resource.RUSAGE_SELF) - s0,
                   _cpu(resource.RUSAGE_CHILDREN) - c0)


def _libc_spawner() -> Callable[[], int]:
    """A function that starts :data:`PROGRAM` through libc's
    ``posix_spawn`` (ctypes: the GIL is let go during the call)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    posix_spawn = libc.posix_spawn
    posix_spawn.restype = ctypes.c_int
    posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                            ctypes.POINTER(ctypes.c_char_p)]
    path = PROGRAM.encode()
    argv = (ctypes.c_char_p * 2)(path, None)
    pairs = [k + b"=" + v for k, v in os.environb.items()]
    envp = (ctypes.c_char_p * (len(pairs) + 1))(*pairs, None)

    def spawn() -> int:
        pid = ctypes.c_int(0)
        err = posix_spawn(ctypes.byref(pid), path, None, None, argv, envp)
        if err:
            raise OSError(err, os.strerror(err))
        return pid.value

    return spawn


def py_threads(count: int, inflight: int, threads: int = 2) -> Result:
    """The loop reaps; ``threads`` threads spawn through ctypes."""
    spawn = _libc_spawner()
    jobs: "queue.SimpleQueue[Optional[int]]" = queue.SimpleQueue()
    alive = threading.Semaphore(0)   # one release per program started
    errors: List[BaseException] = []

    def worker() -> None:
        while jobs.get() is not None:
            try:
                spawn()
            except BaseException as exc:  # reported after the loop
                errors.append(exc)
            alive.release()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    started = reaped = 0
    s0, c0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        while reaped < count:
            while started < count and started - reaped < inflight:
                jobs.put(1)
                started += 1
            if not alive.acquire(timeout=30):
                raise RuntimeError("no spawn reported within 30 s")
            if errors:
                raise errors[0]
            os.waitpid(-1, 0)
            reaped += 1
        seconds = time.monotonic() - t0
        cpu_self = _cpu(resource.RUSAGE_SELF) - s0
        cpu_children = _cpu(resource.RUSAGE_CHILDREN) - c0
    finally:
        for _ in workers:
            jobs.put(None)
        for thread in workers:
            thread.join(5)
    return _result(reaped, seconds, cpu_self, cpu_children)


METHODS = ("c_fork", "c_spawn", "py_spawn", "py_threads")
LABELS = {
    "c_fork": "C loop, fork+exec",
    "c_spawn": "C loop, posix_spawn",
    "py_spawn": "Python loop, os.posix_spawn",
    "py_threads": "Python loop, 2 threads ctypes posix_spawn",
}


def measure(count: int = 6000, rounds: int = 3, inflight: int = 32,
            log: Callable[[str], None] = lambda text: None) -> Dict[str, Any]:
    """Run every method ``rounds`` times in turn; per method the median
    of each figure and the rates of every round.  The C methods are
    missing (and ``skipped`` says why) without a C compiler."""
    runs: Dict[str, List[Result]] = {name: [] for name in METHODS}
    skipped: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ceiling-") as workdir:
        binary = compile_loop(workdir)
        if binary is None:
            for name in ("c_fork", "c_spawn"):
                skipped[name] = "no working C compiler (cc)"
                del runs[name]
        for number in range(rounds):
            for name in runs:
                if name == "c_fork":
                    res = c_loop(binary or "", "fork", count, inflight)
                elif name == "c_spawn":
                    res = c_loop(binary or "", "spawn", count, inflight)
                elif name == "py_spawn":
                    res = py_spawn(count, inflight)
                else:
                    res = py_threads(count, inflight)
                runs[name].append(res)
                log(f"round {number + 1} {name}: {res['rate']:.0f}/s")
                time.sleep(0.2)
    report: Dict[str, Any] = {"count": count, "rounds": rounds, "inflight": inflight,
                              "program": PROGRAM, "cpus": os.cpu_count(),
                              "skipped": skipped, "methods": {}}
    for name, results in runs.items():
        entry: Dict[str, Any] = {key: statistics.median(r[key] for r in results)
                                 for key in ("rate", "cpu_us_per_spawn",
                                             "child_cpu_us_per_spawn")}
        entry["rates"] = [round(r["rate"], 1) for r in results]
        entry["label"] = LABELS[name]
        report["methods"][name] = entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--verbose", action="store_true", help="every round on stderr")
    args = parser.parse_args()
    if args.count < 1 or args.rounds < 1 or args.inflight < 1:
        parser.error("--count, --rounds and --inflight must be at least 1")

    def log(text: str) -> None:
        if args.verbose:
            print(text, file=sys.stderr, flush=True)

    report = measure(args.count, args.rounds, args.inflight, log)
    if args.json:
        print(json.dumps(report))
        return
    print(f"spawn ceiling: {PROGRAM}, {args.inflight} in flight, {args.count} spawns, "
          f"median of {args.rounds} rounds, {report['cpus']} CPUs")
    for name, why in report["skipped"].items():
        print(f"  {LABELS[name]:42} skipped: {why}")
    print(f"  {'method':42} {'spawns/s':>9} {'cpu µs/spawn':>13} {'child µs':>9}  rounds")
    for name, entry in report["methods"].items():
        print(f"  {entry['label']:42} {entry['rate']:9.0f} {entry['cpu_us_per_spawn']:13.1f} "
              f"{entry['child_cpu_us_per_spawn']:9.1f}  "
              + " ".join(f"{r:.0f}" for r in entry["rates"]))


if __name__ == "__main__":
    main()
