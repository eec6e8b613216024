"""The ``-v`` log as a transcript, in the style of djb's rts.tests.

A scripted sequence of connections is run against our server and
against Debian's C tcpserver with the same options; pids and ports are
masked and both logs must equal the expected transcript line by line
(design: log-lines: djb's formats, raw wait status in ``end`` lines, the
``safecats`` filter).  The same section moves our ``pid`` line to the moment the
program starts; with connections that do not overlap in their set-up
the order of the lines is the same as djb's, which is what is run here.
"""

from __future__ import annotations

import re
import socket
from typing import Dict, List

import pytest

from tests.fix_server import C, OURS, Server, read_all, read_exactly

# reads one command: exit with it, or kill itself with SIGKILL
PROG = ["sh", "-c", 'read cmd; case "$cmd" in kill) kill -9 $$;; *) exit "$cmd";; esac']
OPTIONS = ["-v", "-c", "2", "-B", "banner", "-o", "-D", "-b", "2", "-H", "-R", "-t5"]
WEIRD = "a%b:c" + "x" * 110


class Script:
    """Drives connections one step at a time, waiting for the log."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client_ports: List[int] = []
        self.oks = 0
        self.statuses = 1                      # the start-up line

    def open(self) -> socket.socket:
        sock = self.server.connect()
        self.client_ports.append(sock.getsockname()[1])
        self.oks += 1
        self.statuses += 1
        assert read_exactly(sock, len(b"banner")) == b"banner"
        self.server.wait_log(r"^tcpserver: ok ", self.oks)
        self.server.wait_log(r"^tcpserver: status: ", self.statuses)
        return sock

    def finish(self, sock: socket.socket, cmd: str) -> None:
        sock.sendall(cmd.encode() + b"\n")
        assert read_all(sock) == b""
        sock.close()
        self.statuses += 1
        self.server.wait_log(r"^tcpserver: status: ", self.statuses)

    def one(self, cmd: str) -> None:
        self.finish(self.open(), cmd)


def mask(lines: List[str], local_port: int, client_ports: List[int]) -> List[str]:
    """Pids become P1, P2... in order of appearance; ports LPORT/RPORT."""
    pids: Dict[str, str] = {}

    def pid(match: "re.Match[str]") -> str:
        label = pids.setdefault(match.group(2), f"P{len(pids) + 1}")
        return match.group(1) + label

    out = []
    for line in lines:
        line = re.sub(r"^(tcpserver: (?:pid|ok|end|deny) )(\d+)", pid, line)
        line = re.sub(rf":{local_port}( |$)", r":LPORT\1", line)
        for port in client_ports:
            line = re.sub(rf":{port}$", ":RPORT", line)
        out.append(line)
    return out


def connection(n: int, status: int, limit: int = 2, local: str = "Local",
               before: str = "0", after: str = "0") -> List[str]:
    return [
        f"tcpserver: status: {int(before) + 1}/{limit}",
        f"tcpserver: pid P{n} from 127.0.0.1",
        f"tcpserver: ok P{n} {local}:127.0.0.1:LPORT :127.0.0.1::RPORT",
        f"tcpserver: end P{n} status {status}",
        f"tcpserver: status: {after}/{limit}",
    ]


EXPECTED = (
    ["tcpserver: status: 0/2"]
    + connection(1, 0) + connection(2, 768) + connection(3, 9) + connection(4, 25600)
    + connection(5, 28416)
    + [
        # two at once: A then B; A ends first
        "tcpserver: status: 1/2",
        "tcpserver: pid P6 from 127.0.0.1",
        "tcpserver: ok P6 Local:127.0.0.1:LPORT :127.0.0.1::RPORT",
        "tcpserver: status: 2/2",
        "tcpserver: pid P7 from 127.0.0.1",
        "tcpserver: ok P7 Local:127.0.0.1:LPORT :127.0.0.1::RPORT",
        "tcpserver: end P6 status 0",
        "tcpserver: status: 1/2",
        "tcpserver: end P7 status 768",
        "tcpserver: status: 0/2",
    ]
)


@pytest.mark.parametrize("impl", [OURS, C])
def test_transcript(servers, impl: str) -> None:
    server = servers([*OPTIONS, "-l", "Local"], prog=PROG, impl=impl)
    script = Script(server)
    server.wait_log(r"^tcpserver: status: 0/2$")
    for cmd in ("0", "3", "kill", "100", "111"):
        script.one(cmd)
    first = script.open()
    second = script.open()
    script.finish(first, "0")
    script.finish(second, "3")
    assert mask(server.lines(), server.port, script.client_ports) == EXPECTED


@pytest.mark.parametrize("impl", [OURS, C])
def test_transcript_log_filter(servers, impl: str) -> None:
    server = servers([*OPTIONS, "-c", "40", "-l", WEIRD], prog=PROG, impl=impl)
    script = Script(server)
    script.one("0")
    local = "a?b?c" + "x" * 95 + "..."
    assert mask(server.lines(), server.port, script.client_ports) == (
        ["tcpserver: status: 0/40"] + connection(1, 0, 40, local))


def test_transcripts_identical(servers) -> None:
    """The same script, ours and C, raw logs equal after masking."""
    logs = []
    for impl in (OURS, C):
        server = servers(["-v", "-HR", "-l", "0"], prog=PROG, impl=impl)
        ports: List[int] = []
        for cmd in ("0", "7", "kill"):
            with server.connect() as sock:
                ports.append(sock.getsockname()[1])
                sock.sendall(cmd.encode() + b"\n")
                read_all(sock)
            server.wait_log(r"^tcpserver: end ", len(ports))
            server.wait_log(r"^tcpserver: status: 0/40$", len(ports) + 1)
        logs.append(mask(server.lines(), server.port, ports))
    assert logs[0] == logs[1]
    assert len(logs[0]) == 1 + 5 * 3
