"""What ``-m db.conf`` (MySQL access rules) costs per connection.

Starts a throw-away MariaDB (``tests/fix_mariadb.py``), fills a table
with 1,000 rules for each listener's port, and drives, side by side and
interleaved round after round (the order rotates each round, so drift in
the machine's load hits all alike), our server in these variants:

* ``none``: no rules (the reference);
* ``-m builtin``: ``-m db.conf`` with the built-in client (in the loop,
  identical queries batched);
* ``-m MYSQL_LIB``: ``-m db.conf`` with
  ``MYSQL_LIB=/usr/lib/x86_64-linux-gnu/libmariadb.so.3`` (each query in
  a helper child);
* ``-m builtin @NAME`` (and ``-m MYSQL_LIB @NAME``) for every ``--also
  NAME=DIR``: the same with another checkout's tcpserver.py (e.g. a
  scratch worktree with a prototype fix).

    python3 bench/bench_mysql.py [--rounds 3] [--count 3000] [--concurrency 32]
                                 [--seconds 20] [--quick] [--also NAME=DIR ...]
                                 [--no-lib] [--programs true,echo]

The table for each ``-m`` listener's port: 999 ``D`` (deny) rows for
random ``10.x.y.z`` addresses, which no loopback client matches, then
(inserted last, so the walk reaches it after the other 999) one
``A 127.0.0.*`` row with ``MYSQLBENCH=row1000`` in its env column.
Before measuring, a check server per variant (program ``printenv
MYSQLBENCH``) proves that clients are matched by that last row and
allowed.  The table has an index on ``port`` and no primary key (the
table IndiMail creates has ``primary key (port)``, one row per port).
db.conf is ``127.0.0.1:USER:PASSWORD:DATABASE:tcprules`` with
``$MYSQL_TCP_PORT`` set and ``$MYSQL_TIMEOUT=5``.

Per variant: median conn/s over rounds, p50/p99 latency, the ratio to
``none`` (the target for ``-m builtin`` is >= 0.85), and CPU per
connection from ``/proc/PID/stat`` deltas over every round: our parent
(utime+stime), its reaped children (cutime+cstime: the programs, and for
MYSQL_LIB the helper children too), and mariadbd; plus SELECTs per
connection (MariaDB's ``Com_select``: below 1 when queries are batched).

Then standalone timings of the pure parts on the same 1,000 rows, so the
parent's extra CPU can be accounted for: ``rules.evaluate()`` and
``rules.names_to_resolve()`` per client, and the wire-protocol parse of
the 1,000-row result per query (``Framer`` + ``ResultParser``, and the
whole ``Session.receive`` path the driver uses); for a tree with the
rows read once per answer (``rules.Plan``), its compile and evaluation
too.  (A repeated answer is not even parsed: ``Session`` recognises the
bytes of the last answer to the same query.)

Loopback only; every process started here is stopped by its own pid.
Nothing here is a test: the numbers go in notes, not assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from procs import stop  # noqa: E402

import loadgen  # noqa: E402

TICK = float(os.sysconf("SC_CLK_TCK"))
LIBMARIADB = "/usr/lib/x86_64-linux-gnu/libmariadb.so.3"
TABLE = "tcprules"
ROWS = 1000
ENV_NAME = "MYSQLBENCH"
ENV_VALUE = "row1000"
PROGRAMS: Dict[str, List[str]] = {"true": ["/bin/true"], "echo": ["echo", "hello"]}


class Variant:
    """One server configuration: its tree, its options and environment."""

    def __init__(self, name: str, tree: str, mysql: bool, lib: bool) -> None:
        self.name = name
        self.tree = tree
        self.mysql = mysql
        self.lib = lib

    def argv(self, conf: str, prog: Sequence[str]) -> List[str]:
        opts = ["-1", "-c", "100", "-b", "256", "-C", "0", "-HRl0", "-q"]
        if self.mysql:
            opts += ["-m", conf]
        return [sys.executable, os.path.join(self.tree, "tcpserver.py"), *opts,
                "127.0.0.1", "0", *prog]

    def env(self, db_port: int) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
        env["MYSQL_TCP_PORT"] = str(db_port)
        env["MYSQL_TIMEOUT"] = "5"
        if self.lib:
            env["MYSQL_LIB"] = LIBMARIADB
        return env


# -- processes -----------------------------------------------------------------
def start(argv: List[str], env: Dict[str, str]) -> Tuple[Any, int]:
    """Start a server with ``-1`` and port 0; return it and its port."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop(proc)
        err = proc.stderr.read().decode(errors="replace")
        raise RuntimeError(f"server did not start: {' '.join(argv)}\n{err}")
    proc.stderr.close()          # -q: nothing is expected there; do not let a pipe fill up
    return proc, int(line)


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def fetch_env(port: int, timeout: float = 10.0) -> bytes:
    """Connect, read to end of file."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        parts: List[bytes] = []
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


# -- the database ------------------------------------------------------------------
def rule_rows(port: int, seed: int) -> List[Tuple[str, str, Optional[str]]]:
    """(decision, iprule, env): 999 deny rows for 10.x.y.z, then the
    allow row every loopback client matches."""
    rng = random.Random(seed)
    rows: List[Tuple[str, str, Optional[str]]] = []
    seen = set()
    while len(rows) < ROWS - 1:
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if ip not in seen:
            seen.add(ip)
            rows.append(("D", ip, None))
    rows.append(("A", "127.0.0.*", f"{ENV_NAME}={ENV_VALUE}"))
    return rows


def insert_rows(db: Any, port: int) -> None:
    values = ",".join(
        f"({port}, '{d}', '{ip}', {'NULL' if env is None else repr(env)})"
        for d, ip, env in rule_rows(port, port))
    db.sql(f"insert into {TABLE} (port, decision, iprule, env) values {values}")


def com_select(db: Any) -> int:
    out = db.sql("show global status like 'Com_select'")
    return int(out.split()[1])


# -- standalone timings ------------------------------------------------------------------
def timeit(fn: Callable[[], Any], min_seconds: float = 0.3) -> float:
    """Median of 5 runs of ``fn`` (each repeated to last ``min_seconds``),
    in microseconds per call."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - t0
        if took >= min_seconds / 5 or n >= 1 << 20:
            break
        n *= 2
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs) * 1e6


def standalone(tree: str) -> Dict[str, float]:
    """Time the pure parts of ``tree``'s ucspi on the 1,000 rows, in a
    child Python (so that another tree's ucspi can be timed too)."""
    code = f"""
import json, sys
sys.path.insert(0, {tree!r}); sys.path.insert(1, {HERE!r})
from bench_mysql import timeit, rule_rows
from ucspi.mysql import rules, packets
rows = [[d.encode(), ip.encode(), None if e is None else e.encode()]
        for d, ip, e in rule_rows(5000, 5000)]
out = {{}}
out["evaluate"] = timeit(lambda: rules.evaluate(rows, "127.0.0.1", {{}}, 5000))
out["names_to_resolve"] = timeit(lambda: rules.names_to_resolve(rows, "127.0.0.1"))
enc = packets.encode_lenenc_str
payloads = [b"\\x03"] + [b"\\x03def" + b"x" * 40] * 3 + [b"\\xfe\\x00\\x00\\x02\\x00"]
payloads += [b"".join(b"\\xfb" if v is None else enc(v) for v in r) for r in rows]
payloads += [b"\\xfe\\x00\\x00\\x02\\x00"]
stream = b"".join(packets.frame(p, i & 0xFF) for i, p in enumerate(payloads, 1))
def parse():
    parser = packets.ResultParser()
    for packet in packets.Framer().feed(stream):
        parser.feed(packet.payload)
    assert len(parser.result.rows) == {ROWS}
out["parse_result"] = timeit(parse)
out["result_bytes"] = len(stream)
from ucspi.mysql import protocol
def session():
    # as the driver feeds it: a Session put straight into the ready state
    # (private, bench only), the query, then the answer in recv() pieces
    s = protocol.Session("u", "p", "d", True)
    s._state = protocol._READY
    s.query("select")
    s.outgoing()
    for i in range(0, len(stream), 65536):
        s.receive(stream[i:i + 65536])
    result = s.take_result()
    assert result is not None and len(result.rows) == {ROWS}
out["session_parse"] = timeit(session)
if hasattr(rules, "Plan"):         # the rows read once per answer
    out["plan_compile"] = timeit(lambda: rules.Plan(rows))
    plan = rules.Plan(rows)
    out["plan_evaluate"] = timeit(lambda: plan.evaluate("127.0.0.1", {{}}))
    out["plan_names"] = timeit(lambda: plan.names_to_resolve("127.0.0.1"))
print(json.dumps(out))
"""
    import json
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True,
                          timeout=300, cwd=tree)
    result: Dict[str, float] = json.loads(done.stdout)
    return result


# -- the measurement ------------------------------------------------------------------
def scenario(db: Any, variants: List[Variant], conf: str, prog: List[str], conc: int,
             count: int, seconds: float, rounds: int) -> Dict[str, Dict[str, float]]:
    running: Dict[str, Tuple[Any, int]] = {}
    try:
        for v in variants:
            running[v.name] = start(v.argv(conf, prog), v.env(db.port))
            if v.mysql:
                insert_rows(db, running[v.name][1])
        runs: Dict[str, List[Dict[str, float]]] = {v.name: [] for v in variants}
        tot = {v.name: {"own": 0.0, "kids": 0.0, "db": 0.0, "conns": 0.0, "selects": 0.0}
               for v in variants}
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                proc, port = running[v.name]
                sel0 = com_select(db)
                own0, kids0 = cpu_seconds(proc.pid)
                db0, _ = cpu_seconds(db.proc.pid)
                res = loadgen.run("127.0.0.1", port, count, conc, seconds)
                time.sleep(0.3)                  # the last programs end and are reaped
                own1, kids1 = cpu_seconds(proc.pid)
                db1, _ = cpu_seconds(db.proc.pid)
                sel1 = com_select(db)
                t = tot[v.name]
                t["own"] += own1 - own0
                t["kids"] += kids1 - kids0
                t["db"] += db1 - db0
                t["conns"] += res["conns"]
                t["selects"] += sel1 - sel0
                runs[v.name].append(res)
                if proc.poll() is not None:
                    raise RuntimeError(f"{v.name}: the server exited ({proc.returncode})")
    finally:
        for proc, _ in running.values():
            stop(proc)
    summary: Dict[str, Dict[str, float]] = {}
    for v in variants:
        rs = runs[v.name]
        t = tot[v.name]
        done = max(1.0, t["conns"])
        summary[v.name] = {
            "rate": statistics.median(r["rate"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "conns": t["conns"],
            "cpu_us": t["own"] / done * 1e6,
            "kids_us": t["kids"] / done * 1e6,
            "db_us": t["db"] / done * 1e6,
            "selects": t["selects"] / done,
        }
    return summary


def check(db: Any, variants: List[Variant], conf: str) -> None:
    """Every -m variant: clients are matched by the last row and allowed."""
    for v in variants:
        if not v.mysql:
            continue
        proc, port = start(v.argv(conf, ["/usr/bin/printenv", ENV_NAME]), v.env(db.port))
        try:
            insert_rows(db, port)
            for _ in range(3):
                got = fetch_env(port)
                if got != f"{ENV_VALUE}\n".encode():
                    raise RuntimeError(f"{v.name}: the client was not matched and allowed "
                                       f"by the last row (program printed {got!r})")
        finally:
            stop(proc)
    print("check: every -m variant matches 127.0.0.1 by row 1000 and allows it", flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000, help="connections per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="a run stops after this long even if --count is not reached")
    parser.add_argument("--programs", default="true,echo",
                        help="comma-separated: true (/bin/true), echo (echo hello)")
    parser.add_argument("--no-lib", action="store_true", help="leave out the MYSQL_LIB variants")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                        help="another checkout whose -m variants are measured too")
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 1000 connections, 4 s per run, /bin/true only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.count, args.seconds, args.programs = 1, 1000, 4.0, "true"
    t_begin = time.monotonic()

    variants = [Variant("none", ROOT, False, False), Variant("-m builtin", ROOT, True, False)]
    if not args.no_lib:
        if not os.access(LIBMARIADB, os.R_OK):
            sys.exit(f"{LIBMARIADB} missing (apt-get install libmariadb3), or use --no-lib")
        variants.append(Variant("-m MYSQL_LIB", ROOT, True, True))
    for spec in args.also:
        name, eq, tree = spec.partition("=")
        if not eq or not os.path.isfile(os.path.join(tree, "tcpserver.py")):
            sys.exit(f"--also {spec}: want NAME=DIR, DIR a checkout with tcpserver.py")
        variants.append(Variant(f"-m builtin @{name}", os.path.abspath(tree), True, False))
        if not args.no_lib:
            variants.append(Variant(f"-m MYSQL_LIB @{name}", os.path.abspath(tree), True, True))

    sys.path.insert(0, ROOT)
    from tests.fix_mariadb import mariadb_server  # noqa: E402

    print(f"load average at start: {loadavg()}", flush=True)
    # no TLS: the numbers stay those of the plain protocol
    with mariadb_server(tls=False) as db, \
            tempfile.TemporaryDirectory(prefix="bench-mysql-") as tmp:
        db.sql(f"create table {TABLE} (port int not null, timestamp timestamp not null "
               f"default current_timestamp, iprule char(16) not null, decision char(1) not null, "
               f"env varchar(255), key (port))")
        conf = os.path.join(tmp, "db.conf")
        with open(conf, "w") as handle:
            handle.write(f"127.0.0.1:{db.user}:{db.password}:{db.database}:{TABLE}\n")
        os.chmod(conf, 0o600)
        check(db, variants, conf)
        print(f"{args.rounds} round(s), {args.count} connections (at most {args.seconds:g} s) "
              f"per run, c={args.concurrency}; medians; CPU µs per connection", flush=True)
        head = (f"{'program':12} {'variant':22} {'conn/s':>7} {'ratio':>6} {'p50 ms':>7} "
                f"{'p99 ms':>7} {'parent':>7} {'+parent':>8} {'children':>8} {'mariadbd':>8} "
                f"{'SELECT/conn':>11} {'errors':>6}")
        print(head)
        for key in args.programs.split(","):
            prog = PROGRAMS[key]
            res = scenario(db, variants, conf, prog, args.concurrency, args.count,
                           args.seconds, args.rounds)
            base = res["none"]
            for v in variants:
                r = res[v.name]
                print(f"{' '.join(prog):12} {v.name:22} {r['rate']:7.0f} "
                      f"{r['rate'] / base['rate']:6.2f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                      f"{r['cpu_us']:7.0f} {r['cpu_us'] - base['cpu_us']:8.0f} "
                      f"{r['kids_us']:8.0f} {r['db_us']:8.0f} {r['selects']:11.3f} "
                      f"{r['errors']:6.0f}", flush=True)

    trees = {ROOT: "this tree"}
    for v in variants:
        trees.setdefault(v.tree, v.name.split("@")[-1])
    print("standalone, on the same 1,000 rows (µs, median of 5):")
    for tree, label in trees.items():
        t = standalone(tree)
        print(f"  {label:12} evaluate() per client {t['evaluate']:8.1f}   "
              f"names_to_resolve() per client {t['names_to_resolve']:8.1f}   "
              f"result parse per query ({t['result_bytes']:.0f} bytes): Framer+ResultParser "
              f"{t['parse_result']:8.1f}, through a Session {t['session_parse']:8.1f}", flush=True)
        if "plan_compile" in t:
            print(f"  {'':12} Plan(rows) per result {t['plan_compile']:8.1f}   "
                  f"Plan.evaluate() per client {t['plan_evaluate']:8.1f}   "
                  f"Plan.names_to_resolve() per client {t['plan_names']:8.1f}", flush=True)
    print(f"load average at end: {loadavg()}; "
          f"took {time.monotonic() - t_begin:.0f} s")


if __name__ == "__main__":
    main()
