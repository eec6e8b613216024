"""Side-by-side tcpclient benchmark: ours against Debian's C
``/usr/bin/tcpclient`` (and, for TLS, ``openssl s_client``), loopback
only.

    python3 bench/bench_tcpclient.py [--runs 200] [--rounds 4] [--mib 100]
                                     [--dns IP] [--quick]

1. **Start-up to connected.**  ``--runs`` runs of each command line,
   spread over ``--rounds`` interleaved rounds (C, ours, ..., then the
   other order) so that machine noise hits all alike: connect to a
   server that accepts (Debian's C tcpserver running ``true``, or our
   tcpserver with TLS) and run ``true``.  Median and mean milliseconds
   per run, wall clock, from ``fork`` to the client's exit: interpreter
   start-up, imports, parsing, connect, environment, ``exec`` of the
   program.  Rows: ``python3 -c pass`` (the floor for any Python
   command), C, ours (``-HRl0``: no lookups), ours under ``python3 -S``
   (without this machine's site packages), ours with TLS (``-n ""``,
   handshake included) against ``openssl s_client``, and with ``--dns``
   (a name server with PTR records for 127.0.0.1, on port 53 of IP) the
   default lookups, C and ours.
2. **Throughput.**  ``--mib`` MiB each way at once through a ``cat``
   server (C tcpserver in clear, our tcpserver with TLS): the program on
   descriptors 6 and 7 writes ``/dev/zero`` and counts what comes back
   (C and ours: the same data path, tcpclient having exec'd the
   program); ours in client mode (standard input to standard output,
   our copy loop); ours with TLS and a program (our relay, in front of
   the program); ``openssl s_client`` in the same place.  MiB per
   second each way; every run checks that all the bytes came back.

The package is byte-compiled first, as an installed copy is.  Nothing
here is a test: the numbers go in issue notes.  Only processes this
script started are stopped, by pid.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import start, stop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
OURS = [PY, os.path.join(ROOT, "tcpclient.py")]
C_CLIENT = "/usr/bin/tcpclient"
C_SERVER = "/usr/bin/tcpserver"
HOST = "127.0.0.1"
MIB = 1 << 20

Row = Tuple[str, List[str], Optional[Dict[str, str]]]


def make_cert(folder: str) -> str:
    """A P-256 self-signed certificate and its key in one file."""
    key, cert, both = (os.path.join(folder, n) for n in ("key.pem", "cert.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=bench",
                    "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    with open(both, "wb") as out:
        for name in (cert, key):
            with open(name, "rb") as handle:
                out.write(handle.read())
    return both


def environment(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TCP", "TLS_", "SSL_")) and k not in ("PROTO", "CERTDIR")}
    env.update(CERTDIR="/nonexistent", DNSREWRITEFILE="/nonexistent", **extra)
    return env


# -- 1. start-up --------------------------------------------------------------------
def one_run(argv: List[str], env: Optional[Dict[str, str]]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, timeout=60)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)}: exit {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return took


def startup(rows: List[Row], runs: int, rounds: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {name: [] for name, _, _ in rows}
    per_round = max(1, runs // rounds)
    for number in range(rounds):
        order = rows if number % 2 == 0 else list(reversed(rows))
        for name, argv, env in order:
            for _ in range(per_round):
                times[name].append(one_run(argv, env))
    return times


# -- 2. throughput --------------------------------------------------------------------
def both_ways(size: int) -> List[str]:
    """The program: ``size`` bytes out on 7 while counting what comes in on 6."""
    return ["sh", "-c", f"head -c {size} /dev/zero >&7 & head -c {size} <&6 | wc -c; wait"]


def timed_shell(command: str, size: int, env: Dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(["sh", "-c", command], stdin=subprocess.DEVNULL,
                          capture_output=True, env=env, timeout=600)
    took = time.perf_counter() - started
    count = done.stdout.split()[-1:] if done.stdout else [b""]
    if done.returncode != 0 or count != [str(size).encode()]:
        raise RuntimeError(f"{command}: exit {done.returncode}, got {done.stdout[-80:]!r}: "
                           f"{done.stderr.decode(errors='replace')[-300:]}")
    return took


def throughput(commands: List[Tuple[str, str]], size: int, rounds: int,
               env: Dict[str, str]) -> Dict[str, List[float]]:
    speeds: Dict[str, List[float]] = {name: [] for name, _ in commands}
    for number in range(rounds):
        order = commands if number % 2 == 0 else list(reversed(commands))
        for name, command in order:
            speeds[name].append(size / MIB / timed_shell(command, size, env))
    return speeds


# -- the report ------------------------------------------------------------------------------
def table(title: str, header: List[str], lines: List[List[str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per start-up row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--mib", type=int, default=100, help="MiB each way for throughput")
    parser.add_argument("--dns", help="a name server (port 53) with PTR records for 127.0.0.1")
    parser.add_argument("--quick", action="store_true", help="--runs 20 --rounds 2 --mib 20")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds, args.mib = 20, 2, 20
    # byte code as an installed copy has it (a checkout run under
    # PYTHONDONTWRITEBYTECODE would compile the package on every run)
    compileall.compile_dir(os.path.join(ROOT, "ucspi"), quiet=1)
    env = environment()
    servers = []
    with tempfile.TemporaryDirectory(prefix="bench-tcpclient-") as folder:
        cert = make_cert(folder)
        try:
            plain, plain_port = start([C_SERVER, "-1", "-HRl0", "-c", "400", HOST, "0", "true"])
            servers.append(plain)
            tls, tls_port = start([PY, os.path.join(ROOT, "tcpserver.py"), "-1", "-q", "-HRl0",
                                   "-c", "400", "-n", cert, HOST, "0", "true"])
            servers.append(tls)
            echo, echo_port = start([C_SERVER, "-1", "-HRl0", HOST, "0", "cat"])
            servers.append(echo)
            tls_echo, tls_echo_port = start([PY, os.path.join(ROOT, "tcpserver.py"), "-1",
                                             "-q", "-HRl0", "-n", cert, HOST, "0", "cat"])
            servers.append(tls_echo)
            run_benchmarks(args, env, plain_port, tls_port, echo_port, tls_echo_port)
        finally:
            for proc in servers:
                stop(proc)


def run_benchmarks(args: argparse.Namespace, env: Dict[str, str], plain_port: int,
                   tls_port: int, echo_port: int, tls_echo_port: int) -> None:
    plain = [HOST, str(plain_port), "true"]
    rows: List[Row] = [
        ("python3 -c pass", [PY, "-c", "pass"], env),
        ("C tcpclient -HRl0", [C_CLIENT, "-HRl0", *plain], env),
        ("ours -HRl0", [*OURS, "-HRl0", *plain], env),
        ("ours -HRl0, python3 -S", [PY, "-S", OURS[1], "-HRl0", *plain], env),
        ("ours -n \"\" -HRl0 (TLS)", [*OURS, "-n", "", "-HRl0", HOST, str(tls_port), "true"],
         env),
        ("openssl s_client (TLS)", ["openssl", "s_client", "-quiet", "-connect",
                                    f"{HOST}:{tls_port}"], env),
    ]
    if args.dns:
        dns_env = environment(DNSCACHEIP=args.dns)
        rows += [("C tcpclient (lookups)", [C_CLIENT, *plain], dns_env),
                 ("ours (lookups)", [*OURS, *plain], dns_env)]
    times = startup(rows, args.runs, args.rounds)
    base = statistics.median(times["C tcpclient -HRl0"])
    table(f"Start-up to connected ({args.runs} runs each, {args.rounds} rounds), ms per run",
          ["command", "median", "mean", "runs/s", "vs C"],
          [[name, f"{statistics.median(t) * 1000:.1f}", f"{statistics.mean(t) * 1000:.1f}",
            f"{1 / statistics.mean(t):.0f}", f"{statistics.median(t) / base:.2f}"]
           for name, t in times.items()])

    size = args.mib * MIB
    prog = shlex.join(both_ways(size))
    ours = shlex.join(OURS)
    commands = [
        ("C tcpclient + program", f"{C_CLIENT} -HRl0 {HOST} {echo_port} {prog}"),
        ("ours + program", f"{ours} -HRl0 {HOST} {echo_port} {prog}"),
        ("ours, client mode", f"head -c {size} /dev/zero | {ours} -HRl0 {HOST} {echo_port}"
                              " | wc -c"),
        ("ours TLS + program", f"{ours} -n '' -HRl0 {HOST} {tls_echo_port} {prog}"),
        ("ours TLS, client mode", f"head -c {size} /dev/zero | {ours} -n '' -HRl0 {HOST} "
                                  f"{tls_echo_port} | wc -c"),
        # s_client never half-closes: it is stopped (by its pid) once
        # everything has come back
        ("openssl s_client (TLS)", f"f=$(mktemp -u); mkfifo $f; head -c {size} /dev/zero | "
                                   f"openssl s_client -quiet -connect {HOST}:{tls_echo_port} "
                                   f"2>/dev/null > $f & pid=$!; head -c {size} < $f | wc -c; "
                                   f"kill $pid; rm -f $f"),
    ]
    rounds = max(1, min(args.rounds, 3))
    speeds = throughput(commands, size, rounds, env)
    table(f"Throughput, {args.mib} MiB each way at once through cat "
          f"(median of {rounds}), MiB/s each way",
          ["path", "MiB/s", "runs"],
          [[name, f"{statistics.median(s):.0f}", " ".join(f"{x:.0f}" for x in s)]
           for name, s in speeds.items()])


if __name__ == "__main__":
    main()
