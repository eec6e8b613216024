"""The parent's own work per connection, without the spawn: a microbenchmark.

Builds the real server (:class:`ucspi.server.loop.Server`, from the tree
in ``--root``) on a loopback listener, with a launcher that returns a
made-up pid instead of starting a program.  Each batch connects
``--batch`` clients (untimed), then times (in thread CPU time, immune to preemption) the server's accept handler
(accept, the connection steps, the environment, the table) and the
bookkeeping of the programs' ends (the table and the ``end`` path,
without ``waitpid``).  Prints the median µs per connection over the
batches, so a change to the per-connection path can be weighed in
isolation from the kernel's spawn.

With lookups (``-hr``, ``-p``, DNSBL), the batch's accept is followed by
turns of the server's reactor until every connection of the batch is
launched; "accept..launch" then counts the thread CPU of all those
turns (waiting in ``epoll`` costs no CPU), so it holds the lookups'
whole cost in the parent.  The peers are real and answer at once:
``DNSCACHEIP`` names the DNS server (say a dnsmasq with a PTR for
127.0.0.1), and ident goes to 127.0.0.1:113 (oidentd).  Batches that
needed more than ``--lookup-wait`` seconds (a lost answer, a retry)
are reported and left out of the median.

    python3 bench/micro_parent.py [--root DIR] [--count 20000] [--batch 32] \\
        [--env-vars N] -- -HRl0 /bin/true
    DNSCACHEIP=127.201.7.7 python3 bench/micro_parent.py --count 3000 -- -hr -t5 /bin/true
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from typing import Any, Dict, List


class FakeLaunch:
    """Stands in for :class:`ucspi.proc.launch.Spawn`."""

    name = "fake"

    def __init__(self, envs: bool) -> None:
        self.next_pid = 10_000_000
        self.started: List[int] = []
        self.env_sizes: List[int] = []
        self.envs = envs

    def attach(self, reloads: Any, counts: Any) -> None:
        """Nothing to reload."""

    def ready(self) -> None:
        """Nothing to load."""

    def start(self, fd: int, env: Dict[bytes, bytes]) -> int:
        self.next_pid += 1
        self.started.append(self.next_pid)
        if self.envs:
            # what os.posix_spawn does with the mapping before the clone
            self.env_sizes.append(len([k + b"=" + v for k, v in env.items()]))
        return self.next_pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--env-vars", type=int, default=-1,
                        help="run with exactly N environment variables (default: as inherited)")
    parser.add_argument("--envp", action="store_true",
                        help="also build the k=v strings, as os.posix_spawn does")
    parser.add_argument("--lookup-wait", type=float, default=1.0,
                        help="seconds a batch's lookups may take before it is left out")
    parser.add_argument("args", nargs="+")
    ns = parser.parse_args()
    if ns.env_vars >= 0:
        keep = dict(list(os.environ.items())[:ns.env_vars])
        os.environ.clear()
        os.environ.update(keep)
        for n in range(len(keep), ns.env_vars):
            os.environ[f"BENCH_FILLER_{n}"] = "x" * 20
    sys.path.insert(0, os.path.abspath(ns.root))
    from ucspi.log import Log
    from ucspi.options import parse
    from ucspi.server import limits, listen, loop
    try:
        from ucspi.proc import signals
        from ucspi.server import service
    except ImportError:                # a tree from before the process layer
        from ucspi.server import signals  # type: ignore[no-redef]
        service = None

    end = next((i for i, a in enumerate(ns.args) if not a.startswith("-")), len(ns.args))
    opts = parse([*ns.args[:end], "-C", "0", "127.0.0.1", "0", *ns.args[end:]])
    listener = listen.open_listener(True, "127.0.0.1", 0, 0, 1024)
    lsock = listener.sockets[0]
    port = lsock.getsockname()[1]
    wakeup = signals.install()
    launch = FakeLaunch(ns.envp)
    if service is not None:
        served = service.build(opts, Log(0), limits.Limit(10**6), launch, None, False)
        server: Any = loop.Server(served, listener, wakeup)

        def ended(pid: int) -> None:
            ip = server.programs.ended(pid)
            if ip is not None:
                server._program_ended(pid, ip, 0)
    else:
        server = loop.Server(opts, Log(0), listener, limits.Limit(10**6), wakeup, launch)

        def ended(pid: int) -> None:
            if server.table.ended(pid):
                server._program_ended(pid, 0)
    server.accepting = True
    accept_us: List[float] = []
    end_us: List[float] = []
    done = 0
    slow = 0
    run_once = server.reactor.run_once
    while done < ns.count:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(ns.batch)]
        t0 = time.thread_time()
        server._accept(lsock)
        give_up = time.monotonic() + ns.lookup_wait
        while len(launch.started) < ns.batch and time.monotonic() < give_up:
            run_once(0.05)
        t1 = time.thread_time()
        if len(launch.started) < ns.batch:
            # a lost answer waits for a retry: let it finish, untimed
            slow += 1
            while len(launch.started) < ns.batch and time.monotonic() < give_up + 60:
                run_once(0.05)
            t1 = -1.0
        pids, launch.started = launch.started, []
        t2 = time.thread_time()
        for pid in pids:
            ended(pid)
        t3 = time.thread_time()
        if len(pids) != ns.batch:
            sys.exit(f"launched {len(pids)} of {ns.batch}: are the lookup peers up?")
        if t1 >= 0:
            accept_us.append((t1 - t0) / ns.batch * 1e6)
            end_us.append((t3 - t2) / ns.batch * 1e6)
        done += ns.batch
        for sock in clients:
            sock.close()
    a, e = statistics.median(accept_us), statistics.median(end_us)
    print(f"{ns.root}: {' '.join(ns.args)}  env {len(os.environ)} vars  "
          f"µs per connection: accept..launch {a:.2f}, end {e:.2f}, total {a + e:.2f} "
          f"(p10 {sorted(accept_us)[len(accept_us) // 10]:.2f})"
          + (f"; {slow} slow batches left out" if slow else ""))


if __name__ == "__main__":
    main()
