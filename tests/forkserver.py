"""tcpserver on the fork path, with a test child body (tests/test_launch.py).

``python3 tests/forkserver.py BODY [tcpserver options and arguments]``
runs :func:`ucspi.server.bootstrap.main` with a :class:`Fork` launcher
whose child body is one of :data:`BODIES`: the fork hygiene of
:mod:`ucspi.proc.child`, seen from inside a child.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucspi.options import Options  # noqa: E402
from ucspi.server.bootstrap import main  # noqa: E402
from ucspi.proc import child  # noqa: E402
from ucspi.proc.launch import Counts, Launch  # noqa: E402
from ucspi.proc.reload import Reloads  # noqa: E402

Env = Dict[bytes, bytes]
#: ``body(fd, argv, env)`` -> exit status, run in a forked child
ChildBody = Callable[[int, List[str], Env], int]
CHECKED = ("SIGTERM", "SIGCHLD", "SIGHUP", "SIGUSR1", "SIGPIPE", "SIGXFSZ")


def _send(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _open_fds() -> List[int]:
    listed = [int(n) for n in os.listdir("/proc/self/fd")]
    found = []
    for fd in listed:          # the listing's own descriptor is closed by now
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return sorted(found)


def inspect(fd: int, argv: List[str], env: Env) -> int:
    """Report, as JSON, what the child inherited."""
    report = {
        "fd": fd,
        "open": _open_fds(),
        "dispositions": {name: signal.getsignal(getattr(signal, name)) == signal.SIG_DFL
                         for name in CHECKED},
        "wakeup": signal.set_wakeup_fd(-1),
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "argv": argv,
        "pid": os.getpid(),
        "remote": env.get(b"TCPREMOTEIP", b"").decode(),
        "host": env.get(b"TCPREMOTEHOST", b"").decode(),
    }
    _send(fd, json.dumps(report).encode() + b"\n")
    return 0


def status(fd: int, argv: List[str], env: Env) -> int:
    """Exit with the number the client sends."""
    data = os.read(fd, 64)
    _send(fd, b"bye\n")
    return int(data.strip() or b"0")


def boom(fd: int, argv: List[str], env: Env) -> int:
    raise RuntimeError("test body failed")


BODIES: Dict[str, ChildBody] = {
    "inspect": inspect, "status": status, "boom": boom,
}


class Fork:
    """A launcher that runs ``body(fd, argv, env)`` in a forked child
    (:func:`ucspi.proc.child.fork`)."""

    def __init__(self, argv: List[str], body: ChildBody) -> None:
        self.argv = argv
        self.name = argv[0]
        self.body = body

    def attach(self, reloads: Reloads, counts: Counts) -> None:
        """Nothing to reload."""

    def ready(self) -> None:
        """Nothing to load."""

    def start(self, fd: int, env: Env) -> int:
        argv, body = self.argv, self.body
        return child.fork(lambda: body(fd, argv, env), keep=(fd,))


def _fork(body: ChildBody) -> Callable[[Options], Launch]:
    return lambda opts: Fork(opts.argv, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], launch=_fork(BODIES[sys.argv[1]])))
