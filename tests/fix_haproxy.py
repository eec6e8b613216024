"""HAProxy in front of a server under test (the PROXY protocol, design: proxy-protocol).

:func:`haproxy` starts Debian's ``/usr/sbin/haproxy`` in the foreground
(``-db``) with a configuration written to a temporary folder: two TCP
frontends, one whose backend sends version 1 headers (``send-proxy``)
and one version 2 (``send-proxy-v2``), each listening on 127.0.0.1 and
on ::1.  The listening sockets are made here (port 0) and handed to
HAProxy as ``fd@N``, so no port is guessed and a connection made before
HAProxy is up waits in the queue.  It is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from typing import Dict, Iterator, List, Tuple

from tests.util import need, stop

HAPROXY = "/usr/sbin/haproxy"

_CONFIG = """global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

{frontends}
backend v1
    server s {backend} send-proxy

backend v2
    server s {backend} send-proxy-v2
"""


class HAProxy:
    """A running HAProxy: :meth:`address` of a frontend."""

    def __init__(self, ports: Dict[Tuple[str, str], int], proc: "subprocess.Popen[bytes]",
                 log: str) -> None:
        self.ports = ports
        self.proc = proc
        self.log = log

    def address(self, version: str, family: str) -> Tuple[str, int]:
        """Where to connect: ``version`` "v1"/"v2", ``family`` "4"/"6"."""
        host = "127.0.0.1" if family == "4" else "::1"
        return host, self.ports[(version, family)]

    def connect(self, version: str, family: str, source: str = "",
                timeout: float = 10.0) -> socket.socket:
        host, port = self.address(version, family)
        sock = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6)
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
        return sock


@contextlib.contextmanager
def haproxy(folder: str, backend_port: int, backend_ip: str = "127.0.0.1") -> Iterator[HAProxy]:
    """HAProxy sending to ``backend_ip:backend_port``."""
    binary = need(HAPROXY)
    listeners: List[socket.socket] = []
    ports: Dict[Tuple[str, str], int] = {}
    frontends = []
    for version in ("v1", "v2"):
        binds = []
        for family, host in (("4", "127.0.0.1"), ("6", "::1")):
            sock = socket.create_server((host, 0), family=socket.AF_INET if family == "4"
                                        else socket.AF_INET6, backlog=64)
            listeners.append(sock)
            ports[(version, family)] = sock.getsockname()[1]
            binds.append(f"    bind fd@{sock.fileno()}")
        frontends.append(f"frontend f{version}\n" + "\n".join(binds)
                         + f"\n    default_backend {version}\n")
    backend = f"[{backend_ip}]:{backend_port}" if ":" in backend_ip else \
        f"{backend_ip}:{backend_port}"
    config = os.path.join(folder, "haproxy.cfg")
    with open(config, "w") as handle:
        handle.write(_CONFIG.format(frontends="\n".join(frontends), backend=backend))
    log = os.path.join(folder, "haproxy.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", config], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=[s.fileno() for s in listeners])
    try:
        for sock in listeners:
            sock.close()
        yield HAProxy(ports, proc, log)
    finally:
        stop(proc)
        for sock in listeners:
            sock.close()
