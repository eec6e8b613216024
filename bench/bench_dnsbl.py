"""DNSBL in the loop against the chain ``tcpserver ... rblsmtpd -r LIST
PROG`` of Debian's C tools, side by side, same DNS server, same lists.

    python3 bench/bench_dnsbl.py [--count 20000] [--concurrency 64]
                                 [--rounds 3] [--sources 100] [--quick]

Needs root (a dnsmasq on port 53 of a loopback address of its own),
Debian's ``ucspi-tcp`` (``/usr/bin/tcpserver``, ``/usr/bin/rblsmtpd``)
and ``dnsmasq``.  The list ``bl.test`` lists (TXT) every address of
``127.77.0.0/24`` the generator uses and none of ``127.78.0.0/24``.

Servers, each started afresh per flood and stopped by its pid:

* **ours**: ``DNSBL=bl.test DNSBL_DIALOGUE_TIMEOUT=0 tcpserver -1 -q
  -HRl0 -c 100 -b 1024 127.0.0.1 0 /bin/true``: the lists asked in the
  loop, a listed client refused there with the 451 line (no process);
* **C**: ``tcpserver -1 -q -HRl0 -c 100 -b 1024 127.0.0.1 0
  rblsmtpd -t 0 -r bl.test /bin/true``: a fork and an exec of rblsmtpd
  for every client, and an exec of ``/bin/true`` for the unlisted ones.

``-t 0`` / ``DNSBL_DIALOGUE_TIMEOUT=0`` make the refusal line the
greeting: a flood that does not talk.  Half of the ``--count``
connections (``--concurrency`` at a time, the closed-loop generator of
``bench/loadgen.py``) come from listed addresses, half from unlisted
ones, as two floods.  Per flood and server: conn/s, the client's p99,
and the CPU per connection of everything the server ran (its own time
plus its reaped children's: ours is the parent and the programs; C's
is the parent, its forked children, rblsmtpd and the programs), and
for ours the parent's own CPU per connection (for a listed client:
accept, the list lookup, the refusal).  Targets: ours >= 2x C's rate
for the listed half, and no slower for the other half.  Nothing here is
a test; the numbers go in issue notes.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import loadgen  # noqa: E402
from procs import cpu_seconds, start, stop  # noqa: E402

DNSMASQ = "/usr/sbin/dnsmasq"
C_TCPSERVER = "/usr/bin/tcpserver"
C_RBLSMTPD = "/usr/bin/rblsmtpd"
LISTED, CLEAN = "127.77", "127.78"


def dnsmasq(sources: int) -> Tuple[Any, str]:
    """A dnsmasq on a random loopback address: ``bl.test`` lists the
    ``127.77.0.x`` sources."""
    for _ in range(20):
        ip = "127.%d.%d.%d" % (random.randint(128, 254), random.randint(0, 255),
                               random.randint(1, 254))
        args = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                "--listen-address=" + ip, "--port=53", "--conf-file=/dev/null", "--pid-file=",
                "--user=root", "--group=root", "--log-facility=-", "--cache-size=0",
                "--local=/test/"]
        for n in range(sources):
            args.append("--txt-record=%d.0.77.127.bl.test,listed by bl.test" % (n % 250 + 1))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if proc.poll() is None:
            return proc, ip
    raise SystemExit("bench_dnsbl: dnsmasq would not start")


def servers(dns: str) -> Dict[str, Tuple[List[str], Dict[str, str]]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DNSCACHEIP": dns,
           "DNSREWRITEFILE": "/nonexistent/bench-dnsrewrite"}
    common = ["-1", "-q", "-HRl0", "-c", "100", "-b", "1024", "127.0.0.1", "0"]
    return {
        "ours": ([sys.executable, os.path.join(ROOT, "tcpserver.py"), *common, "/bin/true"],
                 dict(env, DNSBL="bl.test", DNSBL_DIALOGUE_TIMEOUT="0")),
        "C": ([C_TCPSERVER, *common, C_RBLSMTPD, "-t", "0", "-r", "bl.test", "/bin/true"],
              env),
    }


def flood(argv: List[str], env: Dict[str, str], base: str, args: argparse.Namespace
          ) -> Dict[str, float]:
    proc, port = start(argv, env)
    try:
        time.sleep(0.2)
        own0, kids0 = cpu_seconds(proc.pid)
        records: List[loadgen.Record] = []
        result = loadgen.run("127.0.0.1", port, args.count // 2, args.concurrency, 120,
                             sources=args.sources, record=records, base=base)
        time.sleep(0.5)                     # the last children reaped
        own1, kids1 = cpu_seconds(proc.pid)
    finally:
        stop(proc)
    done = max(len(records), 1)
    refused = sum(1 for r in records if r[2].startswith(b"451 "))
    return {"conn/s": result["rate"], "p99": result["p99_ms"],
            "cpu_us": (own1 - own0 + kids1 - kids0) / done * 1e6,
            "parent_us": (own1 - own0) / done * 1e6, "refused": refused,
            "errors": result["errors"], "done": len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4000 connections, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 4000, 1
    for tool in (DNSMASQ, C_TCPSERVER, C_RBLSMTPD):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"bench_dnsbl: {tool} is needed")
    dns_proc, dns = dnsmasq(args.sources)
    rows: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
    try:
        chain = servers(dns)
        for rnd in range(args.rounds):
            order = ["ours", "C"] if rnd % 2 == 0 else ["C", "ours"]
            for half, base in (("listed", LISTED), ("clean", CLEAN)):
                for name in order:
                    argv, env = chain[name]
                    got = flood(argv, env, base, args)
                    rows.setdefault((half, name), []).append(got)
                    print(f"  round {rnd + 1} {half:6s} {name:4s} {got['conn/s']:7.0f} conn/s "
                          f"p99 {got['p99']:6.1f} ms  cpu {got['cpu_us']:6.0f} us/conn  "
                          f"refused {got['refused']}/{got['done']} errors {got['errors']}",
                          flush=True)
    finally:
        stop(dns_proc)
    print(f"\nmedians of {args.rounds} round(s), {args.count // 2} connections per half "
          f"at c={args.concurrency}, load {os.getloadavg()[0]:.2f}")
    print(f"{'':28s}{'ours':>10s}{'C chain':>10s}{'ratio':>8s}")
    for half in ("listed", "clean"):
        for key, label in (("conn/s", "conn/s"), ("p99", "p99 ms"),
                           ("cpu_us", "CPU µs/conn, everything")):
            ours = statistics.median(r[key] for r in rows[(half, "ours")])
            c = statistics.median(r[key] for r in rows[(half, "C")])
            print(f"  {half + ' ' + label:26s}{ours:10.0f}{c:10.0f}{ours / c if c else 0:8.2f}")
        parent = statistics.median(r["parent_us"] for r in rows[(half, "ours")])
        print(f"  {half + ' our parent µs/conn':26s}{parent:10.0f}")
    print("targets: listed conn/s ours/C >= 2.0; clean conn/s ours/C >= 1.0")


if __name__ == "__main__":
    main()
