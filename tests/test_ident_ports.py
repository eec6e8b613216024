"""The ident query's local port, where the port range is used up.

The query must come from the connection's local address, so its socket
is bound to that address; the port is left to the ``connect``
(``IP_BIND_ADDRESS_NO_PORT``), where it only has to differ from the
other connections to the same peer.  A ``bind`` to port 0 instead needs
a port that no socket of the address holds: on a busy server every
query then has the kernel search the range (in the server's one
process), and once the range is held the query cannot be made at all.

The test shows the second case, which is the one that can be made
exactly: in a network namespace of its own with an eight-port range, a
script holds every port with connections to one peer, checks that a
``bind`` to port 0 now fails, and asks a scripted ident server on
127.0.0.1:113 through :func:`ucspi.ident.lookup.query`.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterator

import pytest

from tests.util import PYTHON, ROOT, missing, need, need_root

SCRIPT = r"""
import socket, sys, threading
sys.path.insert(0, sys.argv[1])
from ucspi.ident import lookup as ident
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40007")
server = socket.socket()
server.bind(("127.0.0.1", 113))
server.listen(8)
def answer():
    conn, _ = server.accept()
    line = conn.recv(100).strip()
    conn.sendall(line + b" : USERID : UNIX : portless\r\n")
    conn.close()
threading.Thread(target=answer, daemon=True).start()
peer = socket.socket()
peer.bind(("127.0.0.1", 9))
peer.listen(64)
held = []
while len(held) < 100:
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", 9))
    except OSError:
        sock.close()
        break
    held.append(sock)
probe = socket.socket()
try:
    probe.bind(("127.0.0.1", 0))
    print("bind-port-0: ok")
except OSError:
    print("bind-port-0: in use")
print("held:", len(held))
print("answer:", ident.query("127.0.0.1", "127.0.0.1", 40000, 25, 5))
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    need("ip")
    need_root()
    name = f"ucspi-ports-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
    if made.returncode:
        missing(f"network namespaces ({made.stderr.decode().strip()})")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_query_when_every_local_port_is_held(netns: str) -> None:
    out = subprocess.run(["ip", "netns", "exec", netns, PYTHON, "-c", SCRIPT, ROOT],
                         capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # the range really is held: a query bound to port 0 could not be made
    assert lines[:2] == ["bind-port-0: in use", "held: 8"], out.stdout
    assert lines[2] == "answer: b'portless'", out.stdout
