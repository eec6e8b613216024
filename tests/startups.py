"""Run many tcpserver start-ups cheaply, for the command-line fuzz test
(tests/test_hardening_cli.py).

``python3 tests/startups.py < cases.json > results.json``

Each case is ``{"argv": [...], "env": {...}}``.  The driver imports the
server once, then runs each case in a forked child: the real
:func:`ucspi.server.bootstrap.main` with the case's arguments and
environment, standard error on a pipe.  Two things are changed, so that
no case binds a fixed port or runs for ever:

* the listening socket is bound to port 0 (the port argument is still
  parsed and checked as given: only the number handed to ``bind`` is 0);
* once start-up is over, the server sends itself SIGTERM as its loop
  starts, so a command line that starts a server ends with its SIGTERM
  exit (0), by its own pid.

A child that raises out of ``main`` prints the traceback and exits 1; a
child still running after the deadline is killed and reported as hung.
Results: ``{"code": int or null, "stderr": str, "hung": bool}`` per case.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ucspi.dns.conf  # noqa: E402,F401  (imported once, not in every child)
import ucspi.dns.lookup  # noqa: E402,F401
from ucspi.server import bootstrap, listen  # noqa: E402
from ucspi.server.loop import Server  # noqa: E402

DEADLINE = 20.0
MAX_OUTPUT = 1 << 16

_open_listener = listen.open_listener
_run = Server.run


def _port_zero(ipv4: bool, address: str, scope: int, port: int, backlog: int) -> Any:
    return _open_listener(ipv4, address, scope, 0, backlog)


def _run_then_stop(self: Server) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    _run(self)


listen.open_listener = _port_zero  # type: ignore[assignment]
Server.run = _run_then_stop  # type: ignore[method-assign]


def _child(argv: List[str], env: Dict[str, str], err: int) -> None:
    code = 1
    try:
        os.dup2(err, 2)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["tcpserver", *argv]
        code = bootstrap.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def one(argv: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """Run one start-up in a child; its exit code and standard error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(argv, env, w)
    os.close(w)
    out = b""
    deadline = time.monotonic() + DEADLINE
    hung = False
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([r], [], [], max(0.0, left))
        if not ready:
            hung = True
            break
        chunk = os.read(r, 4096)
        if not chunk:
            break
        if len(out) < MAX_OUTPUT:
            out += chunk
    os.close(r)
    if hung:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {"code": None if hung else code, "stderr": out.decode("utf-8", "replace"),
            "hung": hung}


def main() -> int:
    cases = json.load(sys.stdin)
    results = [one(case["argv"], case["env"]) for case in cases]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
