"""Run our tcpserver for end-to-end tests and talk to it.

``serve`` (function fixture) starts ``python3 tcpserver.py -1 -v ARGS
HOST 0 sh -c 'env; echo END'`` and returns a :class:`Running`;
``Running.ask(source)`` connects from a source address and returns the
environment the program saw.  Servers are stopped (SIGTERM, by pid) at
teardown.  ``$DNSREWRITEFILE`` points at a missing file so the host's
``/etc/dnsrewrite`` never leaks into a test.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Dict, Iterator, List, Optional

import pytest

from tests.util import ours

PRINT_ENV = ["sh", "-c", "env; echo END"]


class Running:
    """Our server on 127.0.0.1 (or ``host``) and a kernel-chosen port."""

    def __init__(self, args: List[str], env: Dict[str, str], tmp: str, host: str = "127.0.0.1",
                 prog: Optional[List[str]] = None) -> None:
        self.log_path = os.path.join(tmp, f"server{id(self)}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ours("-1", "-v", *args, host, "0", *(prog or PRINT_ENV)),
                stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), self.log()
        self.port = int(line)
        self.host = host

    def log(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("latin-1")

    def raw(self, source: str = "127.0.0.1", timeout: float = 30.0) -> bytes:
        """Connect from ``source``; return all the program wrote."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.bind((source, 0))
            sock.connect((self.host, self.port))
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data

    def ask(self, source: str = "127.0.0.1", timeout: float = 30.0) -> Dict[str, str]:
        """Connect from ``source``; return the program's environment."""
        data = self.raw(source, timeout)
        lines = data.decode("latin-1").splitlines()
        assert lines and lines[-1] == "END", data
        return dict(line.split("=", 1) for line in lines[:-1] if "=" in line)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def serve(tmp_path) -> Iterator:
    started: List[Running] = []

    def start(args: List[str], host: str = "127.0.0.1", prog: Optional[List[str]] = None,
              **env: str) -> Running:
        full = dict(os.environ, DNSREWRITEFILE=str(tmp_path / "no-rewrite"), **env)
        server = Running(args, full, str(tmp_path), host, prog)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


