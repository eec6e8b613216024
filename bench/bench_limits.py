"""What refusing a flood costs our tcpserver, against what serving costs.

A flood of ``--count`` connections (default 20,000) from ``--sources``
loopback addresses (200, ``127.77.0.x``; Linux accepts a bind to any
address of 127/8) at ``--concurrency`` 256, by the closed-loop generator
of ``bench/loadgen.py``, against our server run as

    tcpserver -1 -q -HRl0 -c 100 -b 1024 127.0.0.1 0 sleep 0.05

three ways in every round, in an order that rotates from round to round
(so that drift in the machine's load hits all alike); each server is
started afresh and stopped by its pid:

* **limits**: ``MAXCONNIP=2 MAXCONNRATE=20 DIEMSG=REFUSED`` in its
  environment (``--limit NAME=VALUE`` replaces the two limits).  With
  no rules they are decided at accept, before any lookup or process; a
  refused client reads ``REFUSED`` CRLF, then the end.  Two waves:
  the *first* on the fresh server (each address is admitted until it has
  had its 20, 200 x 20 = 4,000 programs, and refused after that), the
  *second* right after it, the same addresses within the same 60 s
  window: every connection is refused, so its conn/s is the
  **refusals/s** the server sustains, and its parent CPU delta divided
  by its refusals the **CPU per refusal**, with nothing else mixed in.
* **no limits**: the same server and flood, ``DIEMSG`` only: every
  connection runs the program.  Its conn/s is the rate at which this
  server starts programs under the same flood: **programs/s**.
* **acceptor**: a Python loop that accepts, writes ``REFUSED`` CRLF and
  closes: the cheapest refuser there is, so its conn/s is what the
  generator (with this machine, which it shares) can drive at all.  If
  the server's refusals/s comes near it, the generator is the limit and
  the measured refusals/s (and the ratio) are lower bounds; the CPU per
  refusal then says what the server could do: 1 s / (µs per refusal)
  on a CPU of its own.

Why ``sleep 0.05`` and not ``/bin/true`` (``--hold 0`` gives
``/bin/true``): ``MAXCONNIP`` counts live connections, from accept to
the program's exit; ``/bin/true`` lives about a millisecond, so hardly
any address ever has two at once and the limit refuses nothing.  A
program that holds its connection 50 ms is closer to a real service,
and the flood's admitted clients then fill ``-c``, which is what the
probe below has to get past.  ``sleep`` prints nothing: a connection
that ends with no output was served, one that reads ``REFUSED`` was
refused (the ``-v`` run confirms both counts from the server's log).
Sources are picked at random for each connection (``--pick random``):
taken in turn, 256 connections over 200 addresses never put more than
two on one address, and ``MAXCONNIP=2`` would refuse none.  Even so,
most refusals are ``MAXCONNRATE``'s; a rate refusal has asked every
limit before it, so it is the dearest kind.  (Up to 250 sources all lie
in 127.77.0.0/24: a ``MAXCONNC`` given with ``--limit`` counts the
whole flood as one network.)

What is printed (medians over ``--rounds``): per flood, conn/s,
refused and served (as the client saw them), the client's p50/p99, the
parent's CPU µs per connection (the acceptor's own, for the acceptor:
what a bare accept, write and close cost in Python), and the CPU used
over the flood, in
shares of one CPU, by the server's parent, the generator (this process)
and the whole machine (``/proc/stat``, other work included; 200 % is
both CPUs of a 2-CPU machine); then:

* refusals/s (second wave), programs/s, and their **ratio** (the target
  is >= 5: refusing must be much cheaper than serving); the first
  wave's refusals/s over the whole wave and in its refusal-only stretch
  (from the last served client's end until the generator starts to run
  dry; shown when it lasts 0.5 s or more);
* the parent's CPU per refusal (second wave; the first wave's, spawns
  included, is an upper bound), against its CPU per program and the
  program's own;
* the parent's **RSS** before the first wave (after the probe alone has
  warmed it), after each wave (programs ended), and its peak (VmHWM);
* the **probe**: a separate, well-behaved client (another process;
  sequential connections, a ``--probe-gap`` pause between them; its own
  addresses, ``127.88.x.y``) times each connection from connect to end:
  alone, in the first wave (while the admitted flood clients are served,
  and after), in the second, and in the no-limits flood.  It changes
  address every ``MAXCONNRATE - 1`` connections so that the rate limit,
  which has no exemption without rules, never refuses it (a refusal
  would be shown).  Its latency includes the program's 50 ms.  Its
  percentiles are over the samples of every round pooled (a round gives
  from ten to a hundred of each): with so few, p99 is about the maximum.

The kernel's ``ListenOverflows``, ``ListenDrops`` and
``TCPSynRetrans`` (``/proc/net/netstat``, counted for the whole machine)
over every flood: a lost SYN costs its client a 1 s retransmit.

``--log-check`` (default on) runs the limits server once more with
``-v`` instead of ``-q``, its log in a file, and counts the lines:
``deny`` by limit, ``ok``, and anything else (warnings, errors),
against what the client saw; its second wave shows what a ``deny``
line costs.

    python3 bench/bench_limits.py [--rounds 3] [--count 20000]
        [--concurrency 256] [--sources 200] [--hold 0.05]
        [--pick random|turn] [--limit MAXCONNIP=2 --limit MAXCONNRATE=20]
        [--quick] [--json] [--no-log-check]
    python3 bench/bench_limits.py --table REPORT.json

Each flood stops after ``--phase-seconds`` (120) even if unfinished.
Loopback only.  Nothing here is a test: the numbers go in
``bench/PROFILE.md`` and issue notes, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import cpu_seconds, rss_kib, stop  # noqa: E402

import loadgen  # noqa: E402

OURS = [sys.executable, os.path.join(ROOT, "tcpserver.py")]
MARK = b"REFUSED"
#: the variables the benchmark sets itself: taken out of the inherited
#: environment, so that no stray limit applies
OWN = ("MAXPERIP", "MAXCONIP", "MAXCONNIP", "MAXCONNC", "MAXLOAD", "MAXCONNRATE",
       "CONNRATEWINDOW", "DIEMSG", "PROXY_FROM", "NOTIFY_SOCKET", "TCPREMOTEIP")
SAMPLE = 0.05
#: the trivial acceptor: accept, one write, close
ACCEPTOR = """
import socket, sys
s = socket.create_server(("127.0.0.1", 0), backlog=1024)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    try:
        c.send(b"REFUSED\\r\\n", socket.MSG_DONTWAIT)
    except OSError:
        pass
    c.close()
"""

Proc = "subprocess.Popen[bytes]"


# -- processes ------------------------------------------------------------
def start(argv: List[str], env: Optional[Dict[str, str]], log: Any) -> Tuple[Any, int]:
    """Start a server that prints its port (``-1``); its stderr to ``log``."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop(proc)
        raise RuntimeError(f"server did not start: {argv}")
    return proc, int(line)


def hwm_kib(pid: int) -> int:
    """``VmHWM`` (peak RSS) of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def base_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OWN}


# -- the probe: a well-behaved client in its own process -------------------
def probe_address(i: int, per: int) -> str:
    n = i // per
    return f"127.88.{n // 250}.{n % 250 + 1}"


def probe_main(port: int, first: int, per: int, gap: float, seconds: float,
               count: int) -> None:
    """Sequential connections until stdin has something (or ends), or
    ``seconds``/``count`` are reached; prints the records as JSON."""
    out: List[Tuple[float, float, str, bool]] = []
    deadline = time.monotonic() + seconds
    i = first
    while time.monotonic() < deadline and len(out) < count:
        if select.select([sys.stdin], [], [], 0)[0]:
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        head, failed = b"", False
        t0 = time.monotonic()
        try:
            sock.bind((probe_address(i, per), 0))
            sock.settimeout(10.0)
            sock.connect(("127.0.0.1", port))
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                head = (head + data)[:64]
        except OSError:
            failed = True
        finally:
            sock.close()
        out.append((t0, time.monotonic(), head.decode("latin-1"), failed))
        i += 1
        if gap:
            time.sleep(gap)
    json.dump(out, sys.stdout)


class Probe:
    """The probe process, started and stopped by us."""

    def __init__(self, port: int, first: int, per: int, gap: float, seconds: float,
                 count: int = 10 ** 9) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--probe", str(port),
             "--probe-first", str(first), "--probe-per", str(per), "--probe-gap", str(gap),
             "--probe-seconds", str(seconds), "--probe-count", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def finish(self, wait: bool = False) -> List[Tuple[float, float, str, bool]]:
        """Tell it to stop (``wait``: let it reach its own end); its
        records."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            if wait:
                out = self.proc.stdout.read()     # stdin open: it runs on
                self.proc.communicate(timeout=30)
            else:
                out, _ = self.proc.communicate(b"stop\n", timeout=30)
        except subprocess.TimeoutExpired:
            stop(self.proc)
            return []
        result: List[Tuple[float, float, str, bool]] = [tuple(r) for r in json.loads(out)]
        return result


# -- one flood ------------------------------------------------------------
def machine_busy() -> Tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from
    ``/proc/stat``: busy is everything but idle, iowait and steal."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:9]]
    tick = float(os.sysconf("SC_CLK_TCK"))
    idle = fields[3] + fields[4] + fields[7]
    return (sum(fields) - idle) / tick, sum(fields) / tick


class Sampler(threading.Thread):
    """Every 50 ms: the time, the server's utime+stime, this process's
    CPU (the generator's), and the whole machine's busy CPU seconds."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: List[Tuple[float, float, float, float]] = []
        self.done = threading.Event()

    def take(self) -> None:
        try:
            own = cpu_seconds(self.pid)[0]
        except OSError:
            return
        self.samples.append((time.monotonic(), own, time.process_time(), machine_busy()[0]))

    def run(self) -> None:
        while not self.done.wait(SAMPLE):
            self.take()

    def finish(self) -> None:
        self.done.set()
        self.join()
        self.take()


def shares(a: Tuple[float, float, float, float], b: Tuple[float, float, float, float],
           ) -> Dict[str, float]:
    """CPU shares (of one CPU) between two samples."""
    length = b[0] - a[0]
    return {"server_cpu_share": (b[1] - a[1]) / length,
            "generator_cpu_share": (b[2] - a[2]) / length,
            "machine_busy_share": (b[3] - a[3]) / length}


#: the kernel's TCP counters worth watching in a flood (/proc/net/netstat)
COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_counters() -> Dict[str, int]:
    """:data:`COUNTERS`, for the whole network namespace (other work on
    the machine counts too)."""
    found: Dict[str, int] = {}
    with open("/proc/net/netstat") as handle:
        lines = handle.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        for name, value in zip(names.split()[1:], values.split()[1:]):
            if name in COUNTERS:
                found[name] = int(value)
    return found


def classify(head: bytes, failed: bool) -> str:
    if failed:
        return "error"
    if head.startswith(MARK):
        return "refused"
    if not head:
        return "served"
    return "other"


def flood(pid: int, port: int, args: argparse.Namespace, seed: int) -> Dict[str, Any]:
    """One flood against ``pid`` listening on ``port``: counts by
    outcome, rates, the refusal-only stretch, the server's CPU."""
    records: List[loadgen.Record] = []
    sampler = Sampler(pid)
    sampler.take()
    sampler.start()
    counters = tcp_counters()
    begin = time.monotonic()
    try:
        res = loadgen.run("127.0.0.1", port, args.count, args.concurrency, args.phase_seconds,
                          args.sources, args.pick, records, seed)
    finally:
        sampler.finish()
    after = tcp_counters()
    kinds = [classify(head, failed) for _, _, head, failed in records]
    out: Dict[str, Any] = {k: kinds.count(k) for k in ("refused", "served", "error", "other")}
    end = max((r[1] for r in records), default=begin)
    seconds = end - begin
    out.update(conns=len(records), seconds=seconds, t_begin=begin, t_end=end,
               rate=len(records) / seconds if seconds else 0.0,
               connect_errors=int(res["errors"]) - out["error"],
               p50_ms=res["p50_ms"], p99_ms=res["p99_ms"])
    samples = sampler.samples
    out["cpu_s"] = samples[-1][1] - samples[0][1]
    out["cpu_per_conn_us"] = out["cpu_s"] / max(1, len(records)) * 1e6
    out["cpu_per_refusal_us"] = (out["cpu_s"] / out["refused"] * 1e6 if out["refused"]
                                 else None)
    out["refusals_per_s"] = out["refused"] / seconds if seconds else 0.0
    # the refusal-only stretch: after the last served client (and its
    # reaping), until the generator starts to run dry
    served_end = max((r[1] for r, k in zip(records, kinds) if k != "refused"), default=begin)
    out["t_mixed_end"] = served_end
    dry = (records[-args.concurrency][1] if len(records) > args.concurrency else end)
    inside = [s for s in samples if served_end + SAMPLE <= s[0] <= dry]
    out["stretch"] = None
    if len(inside) >= 2 and inside[-1][0] - inside[0][0] >= 0.5:
        a, b = inside[0], inside[-1]
        n = sum(1 for r, k in zip(records, kinds) if k == "refused" and a[0] < r[1] <= b[0])
        out["stretch"] = {"seconds": b[0] - a[0], "refused": n, "rate": n / (b[0] - a[0]),
                          "cpu_per_refusal_us": (b[1] - a[1]) / n * 1e6 if n else None,
                          **shares(a, b)}
    out.update(shares(samples[0], samples[-1]))
    out["tcp"] = {name: after.get(name, 0) - counters.get(name, 0) for name in COUNTERS}
    return out


def percentiles(latencies: List[float]) -> Dict[str, Any]:
    lat = sorted(latencies)
    if not lat:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return {"n": len(lat), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000}


# -- the three servers of a round ------------------------------------------
def server_argv(prog: List[str], verbose: bool) -> List[str]:
    return [*OURS, "-1", "-v" if verbose else "-q", "-HRl0", "-c", "100", "-b", "1024",
            "127.0.0.1", "0", *prog]


def run_limits(args: argparse.Namespace, prog: List[str], seed: int, logdir: str,
               verbose: bool = False) -> Dict[str, Any]:
    """On a fresh server with the limits: the probe alone, then the
    first wave and the second, the probe running through both."""
    env = dict(base_env(), DIEMSG=MARK.decode(), **args.limits)
    logname = os.path.join(logdir, f"limits-{seed}{'-v' if verbose else ''}.log")
    per = args.probe_per
    out: Dict[str, Any] = {"log": logname}
    with open(logname, "wb") as log:
        proc, port = start(server_argv(prog, verbose), env, log)
        try:
            time.sleep(0.3)
            alone = Probe(port, 0, per, args.probe_gap, args.probe_alone).finish(wait=True)
            time.sleep(0.3)          # the probe's programs end
            out["rss_before"] = rss_kib(proc.pid)
            probe = Probe(port, len(alone) + per, per, args.probe_gap, 2 * args.phase_seconds)
            try:
                out["wave1"] = flood(proc.pid, port, args, seed)
                time.sleep(max(0.3, 2 * args.hold))     # its programs end, are reaped
                out["rss_between"] = rss_kib(proc.pid)
                out["wave2"] = flood(proc.pid, port, args, seed + 1000)
            finally:
                during = probe.finish()
            time.sleep(max(0.3, 2 * args.hold))
            out.update(rss_after=rss_kib(proc.pid), hwm=hwm_kib(proc.pid),
                       alive=proc.poll() is None)
        finally:
            stop(proc)
    out["probe_alone"] = alone
    for wave in ("wave1", "wave2"):
        res = out[wave]
        res["probe_during"] = [r for r in during if res["t_begin"] <= r[0] <= res["t_end"]]
    return out


def run_plain(args: argparse.Namespace, prog: List[str], seed: int,
              logdir: str) -> Dict[str, Any]:
    """The same flood with the probe, on a fresh server without limits."""
    env = dict(base_env(), DIEMSG=MARK.decode())
    logname = os.path.join(logdir, f"plain-{seed}.log")
    with open(logname, "wb") as log:
        proc, port = start(server_argv(prog, False), env, log)
        try:
            time.sleep(0.3)
            kids0 = cpu_seconds(proc.pid)[1]
            probe = Probe(port, 0, 10 ** 6, args.probe_gap, args.phase_seconds)
            try:
                result = flood(proc.pid, port, args, seed)
            finally:
                during = probe.finish()
            time.sleep(max(0.5, 2 * args.hold))
            result.update(alive=proc.poll() is None,
                          child_cpu_s=cpu_seconds(proc.pid)[1] - kids0)
        finally:
            stop(proc)
    result["probe_during"] = [r for r in during if result["t_begin"] <= r[0] <= result["t_end"]]
    result["log"] = logname
    return result


def run_acceptor(args: argparse.Namespace, seed: int) -> Dict[str, Any]:
    proc, port = start([sys.executable, "-c", ACCEPTOR], None, subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        return flood(proc.pid, port, args, seed)
    finally:
        stop(proc)


# -- the report -----------------------------------------------------------
Sample = Tuple[float, float, str, bool]


def served_latencies(records: List[Sample], before: Optional[float] = None,
                     after: Optional[float] = None) -> List[float]:
    """The probe's latencies (s), of connections started in the given
    span; refused or failed ones are counted apart."""
    return [t1 - t0 for t0, t1, head, failed in records
            if not (failed or head) and (before is None or t0 < before)
            and (after is None or t0 >= after)]


def probe_trouble(records: List[Sample]) -> int:
    return sum(1 for _, _, head, failed in records if failed or head)


def log_lines(path: str) -> Dict[str, int]:
    """The server's log, by kind of line: ``deny LIMIT``, ``ok``,
    ``end``, ``pid``, ``status``, anything else as it is (numbers
    blanked)."""
    counts: Dict[str, int] = {}
    with open(path, "rb") as handle:
        for raw in handle:
            words = raw.decode("utf-8", "replace").split()
            if len(words) < 2:
                key = raw.decode("utf-8", "replace").strip()
            elif words[1] == "deny":
                key = "deny " + words[-1]
            elif words[1] in ("ok", "end", "pid", "status:"):
                key = words[1].rstrip(":")
            else:
                key = " ".join("N" if w.strip(":/.").isdigit() else w for w in words)
            counts[key] = counts.get(key, 0) + 1
    return counts


def med(values: List[Any]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: Optional[float], spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def summarize(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    lim = [r["limits"] for r in rounds]
    w1 = [x["wave1"] for x in lim]
    w2 = [x["wave2"] for x in lim]
    plain = [r["plain"] for r in rounds]
    acc = [r["acceptor"] for r in rounds]

    def row(results: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {key: med([r[key] for r in results])
                for key in ("rate", "refused", "served", "p50_ms", "p99_ms", "cpu_per_conn_us",
                            "cpu_per_refusal_us", "refusals_per_s", "server_cpu_share",
                            "generator_cpu_share", "machine_busy_share")}

    def stretch(key: str) -> Optional[float]:
        return med([x["stretch"][key] if x["stretch"] else None for x in w1])

    programs = med([p["rate"] for p in plain])
    sustained = med([x["refusals_per_s"] for x in w2])
    alone: List[float] = []
    mixed: List[float] = []
    refusing: List[float] = []
    second: List[float] = []
    plain_during: List[float] = []
    for x in lim:
        alone += served_latencies(x["probe_alone"])
        mixed += served_latencies(x["wave1"]["probe_during"], before=x["wave1"]["t_mixed_end"])
        refusing += served_latencies(x["wave1"]["probe_during"], after=x["wave1"]["t_mixed_end"])
        second += served_latencies(x["wave2"]["probe_during"])
    for p in plain:
        plain_during += served_latencies(p["probe_during"])
    return {
        "acceptor": row(acc), "no_limits": row(plain), "wave1": row(w1), "wave2": row(w2),
        "programs_per_s": programs,
        "program_child_cpu_us": med([p["child_cpu_s"] / max(1, p["conns"]) * 1e6
                                     for p in plain]),
        "refusals_per_s": sustained,
        "ratio": sustained / programs if sustained and programs else None,
        "cpu_per_refusal_us": med([x["cpu_per_refusal_us"] for x in w2]),
        "wave1_stretch": {"seconds": stretch("seconds"), "rate": stretch("rate"),
                          "cpu_per_refusal_us": stretch("cpu_per_refusal_us")},
        "rss_before_kib": med([x["rss_before"] for x in lim]),
        "rss_between_kib": med([x["rss_between"] for x in lim]),
        "rss_after_kib": med([x["rss_after"] for x in lim]),
        "hwm_kib": med([x["hwm"] for x in lim]),
        "probe_alone": percentiles(alone),
        "probe_wave1": percentiles(mixed + refusing),
        "probe_wave1_mixed": percentiles(mixed),
        "probe_wave1_refusing": percentiles(refusing),
        "probe_wave2": percentiles(second),
        "probe_no_limits": percentiles(plain_during),
        "probe_refused_or_failed": sum(probe_trouble(x["probe_alone"])
                                       + probe_trouble(x["wave1"]["probe_during"])
                                       + probe_trouble(x["wave2"]["probe_during"])
                                       for x in lim),
        "client_errors": sum(f["error"] + f["other"] + f["connect_errors"]
                             for f in w1 + w2 + plain + acc),
        "tcp": {name: sum(f["tcp"][name] for f in w1 + w2 + plain + acc) for name in COUNTERS},
        "servers_died": sum(1 for x in lim + plain if not x["alive"]),
        "server_stderr_bytes": sum(os.path.getsize(x["log"]) for x in lim + plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 8000 connections, 1 s of probe alone")
    parser.add_argument("--hold", type=float, default=0.05,
                        help="the program: sleep HOLD (0: /bin/true)")
    parser.add_argument("--pick", choices=("random", "turn"), default="random",
                        help="the flood's source for each connection (loadgen.run)")
    parser.add_argument("--limit", action="append", metavar="NAME=VALUE",
                        help="the limits (default MAXCONNIP=2 and MAXCONNRATE=20)")
    parser.add_argument("--phase-seconds", type=float, default=120.0,
                        help="time limit of one flood (and of the probe)")
    parser.add_argument("--probe-alone", type=float, default=3.0,
                        help="seconds of probe alone, before the flood")
    parser.add_argument("--probe-gap", type=float, default=0.01)
    parser.add_argument("--log-check", action=argparse.BooleanOptionalAction, default=True,
                        help="one more limits run at -v, its log counted")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--table", metavar="FILE",
                        help="print the table of a report saved from --json, and stop")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-per", type=int, default=19, help=argparse.SUPPRESS)
    parser.add_argument("--probe-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-count", type=int, default=10 ** 9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        probe_main(args.probe, args.probe_first, args.probe_per, args.probe_gap,
                   args.probe_seconds, args.probe_count)
        return
    if args.table:
        with open(args.table) as handle:
            saved = json.load(handle)
        report(saved["summary"], saved["config"], saved["log_check"])
        return
    if args.quick:
        args.rounds, args.count, args.probe_alone = 1, 8000, 1.0
    args.limits = {}
    for item in args.limit or ["MAXCONNIP=2", "MAXCONNRATE=20"]:
        name, _, value = item.partition("=")
        args.limits[name] = value
    rate = int(args.limits.get("MAXCONNRATE") or 0)
    args.probe_per = rate - 1 if rate > 1 else 10 ** 6
    prog = ["/usr/bin/sleep", f"{args.hold:g}"] if args.hold > 0 else ["/bin/true"]

    logdir = tempfile.mkdtemp(prefix="bench-limits-")
    phases = ["acceptor", "plain", "limits"]
    rounds: List[Dict[str, Any]] = []
    load0 = os.getloadavg()
    for n in range(args.rounds):
        done: Dict[str, Any] = {}
        for phase in phases[n % 3:] + phases[:n % 3]:
            if phase == "acceptor":
                done[phase] = run_acceptor(args, n + 1)
            elif phase == "plain":
                done[phase] = run_plain(args, prog, n + 1, logdir)
            else:
                done[phase] = run_limits(args, prog, n + 1, logdir)
            time.sleep(0.5)
        rounds.append(done)
        lim = done["limits"]
        print(f"round {n + 1}: acceptor {done['acceptor']['rate']:.0f}/s; no limits "
              f"{done['plain']['rate']:.0f}/s; first wave {lim['wave1']['rate']:.0f}/s "
              f"({lim['wave1']['refused']} refused, {lim['wave1']['served']} served); "
              f"second wave {lim['wave2']['rate']:.0f}/s ({lim['wave2']['refused']} refused, "
              f"{lim['wave2']['served']} served)", file=sys.stderr, flush=True)
    check: Optional[Dict[str, Any]] = None
    if args.log_check:
        check = run_limits(args, prog, 0, logdir, verbose=True)
        check["lines"] = log_lines(check["log"])
    load1 = os.getloadavg()
    summary = summarize(rounds)
    config = {"count": args.count, "concurrency": args.concurrency, "sources": args.sources,
              "pick": args.pick, "rounds": args.rounds, "program": prog,
              "limits": args.limits, "load_before": load0, "load_after": load1,
              "python": sys.version.split()[0], "cpus": os.cpu_count(), "logs": logdir}
    if args.json:
        drop = ("probe_alone", "probe_during", "t_begin", "t_end", "t_mixed_end")

        def strip(d: Any) -> Any:
            if isinstance(d, dict):
                return {k: strip(v) for k, v in d.items() if k not in drop}
            return d
        doc = {"config": config, "summary": summary, "rounds": strip(rounds),
                  "log_check": strip(check)}
        json.dump(doc, sys.stdout, indent=1)
        print()
        return
    report(summary, config, check)


def report(s: Dict[str, Any], config: Dict[str, Any], check: Optional[Dict[str, Any]]) -> None:
    load0, load1 = config["load_before"], config["load_after"]
    print(f"flood: {config['count']} connections from {config['sources']} addresses "
          f"({config['pick']}), concurrency {config['concurrency']}; program "
          f"{' '.join(config['program'])}; "
          f"{' '.join(f'{k}={v}' for k, v in config['limits'].items())}; "
          f"medians of {config['rounds']} rounds; load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'flood against':34} {'conn/s':>7} {'refused':>7} {'served':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'parent µs/conn':>14} {'CPU: server':>11} {'generator':>9} "
          f"{'machine':>7}")
    for label, key in (("trivial acceptor", "acceptor"), ("no limits", "no_limits"),
                       ("limits, first wave (fresh)", "wave1"),
                       ("limits, second wave (refused)", "wave2")):
        r = s[key]
        parent = fmt(r["cpu_per_conn_us"])
        print(f"{label:34} {r['rate']:7.0f} {r['refused']:7.0f} {r['served']:6.0f} "
              f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {parent:>14} "
              f"{r['server_cpu_share']:11.0%} {r['generator_cpu_share']:9.0%} "
              f"{r['machine_busy_share']:7.0%}")
    st = s["wave1_stretch"]
    print(f"refusals/s: {fmt(s['refusals_per_s'])} (second wave); first wave: "
          f"{fmt(s['wave1']['refusals_per_s'])} over the whole wave, {fmt(st['rate'])} in its "
          f"refusal-only stretch ({fmt(st['seconds'], '.2f')} s)")
    print(f"programs/s: {fmt(s['programs_per_s'])} (no limits)")
    print(f"ratio refusals/s / programs/s: {fmt(s['ratio'], '.2f')} (target >= 5)")
    print(f"parent CPU per refusal: {fmt(s['cpu_per_refusal_us'])} µs (second wave; "
          f"{fmt(st['cpu_per_refusal_us'])} in the first wave's stretch; "
          f"{fmt(s['wave1']['cpu_per_refusal_us'])} over the first wave, its spawns included); "
          f"per program: {fmt(s['no_limits']['cpu_per_conn_us'])} µs, and the program's own "
          f"{fmt(s['program_child_cpu_us'])}")
    print(f"parent RSS KiB: {s['rss_before_kib']:.0f} before, {s['rss_between_kib']:.0f} "
          f"after the first wave, {s['rss_after_kib']:.0f} after the second, peak "
          f"{s['hwm_kib']:.0f}")
    print("probe (one client, sequential, own addresses), latency ms, pooled over rounds:")
    for label, key in (("alone", "probe_alone"), ("first wave", "probe_wave1"),
                       ("  while serving the admitted", "probe_wave1_mixed"),
                       ("  while refusing only", "probe_wave1_refusing"),
                       ("second wave (refusing only)", "probe_wave2"),
                       ("no-limits flood", "probe_no_limits")):
        p = s[key]
        print(f"  {label:30} n={p['n']:4}  p50 {fmt(p['p50_ms'], '.1f'):>6}  "
              f"p99 {fmt(p['p99_ms'], '.1f'):>6}  max {fmt(p['max_ms'], '.1f'):>6}")
    print(f"probe refused or failed: {s['probe_refused_or_failed']}; client errors: "
          f"{s['client_errors']}; servers died: {s['servers_died']}; "
          f"server stderr at -q: {s['server_stderr_bytes']} bytes")
    if "tcp" in s:
        print("kernel, over every flood (the whole machine): "
              + ", ".join(f"{k} {v}" for k, v in s["tcp"].items()))
    if check:
        w1, w2 = check["wave1"], check["wave2"]
        print(f"-v run: first wave {w1['refused']} refused, {w1['served']} served; second "
              f"wave {w2['refused']} refused, {w2['served']} served (as the client saw them); "
              f"second wave {w2['rate']:.0f} refusals/s, {fmt(w2['cpu_per_refusal_us'])} µs "
              f"per refusal; the log:")
        for key, value in sorted(check["lines"].items(), key=lambda kv: -kv[1]):
            print(f"  {value:7}  {key}")
    print(f"logs: {config['logs']}")


if __name__ == "__main__":
    main()
