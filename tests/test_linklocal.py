"""IPv6 link-local addresses, in a network namespace of the test's own.

Loopback has no link-local address, so this module makes a namespace
with a veth pair (``va`` fe80::1, ``vb`` fe80::2), runs our tcpserver
and its clients inside it, and removes it afterwards.  It shows the
scope id at work: binding ``fe80::1%va`` or ``-I va``, ``TCP6INTERFACE``
naming the interface, and the log line.  The server is started by the
``servers`` harness behind ``ip netns exec`` (which execs it: the pid
stays the server's).
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Dict, Iterator, List

import pytest

from tests.fix_server import OURS, Servers, parse_env, run_once
from tests.util import PYTHON, missing, need, need_root

CLIENT = """
import socket, sys
port = int(sys.argv[1])
addr = socket.getaddrinfo("fe80::1%vb", port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
with socket.socket(socket.AF_INET6) as s:
    s.settimeout(10)
    s.connect(addr)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
sys.stdout.buffer.write(data)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    need("ip")
    need_root()
    name = f"ucspi-test-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        missing(f"network namespaces ({exc.stderr.decode().strip()})")
    try:
        _ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        for dev in ("lo", "va", "vb"):
            _ip("-n", name, "link", "set", dev, "up")
        _ip("-n", name, "-6", "addr", "add", "fe80::1/64", "dev", "va", "nodad")
        _ip("-n", name, "-6", "addr", "add", "fe80::2/64", "dev", "vb", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _serve_once(servers: Servers, ns: str, options: List[str], host: str) -> Dict[str, str]:
    """Our server in the namespace, one client from ``vb``: the program's
    environment, plus ``_log`` (the connection's ``ok`` line) and ``_port``."""
    server = servers(["-v", *options], host=host, prefix=["ip", "netns", "exec", ns])
    out = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", CLIENT, str(server.port)],
                         capture_output=True, timeout=20, check=True).stdout
    env = parse_env(out)
    env["_log"] = server.wait_log(r"^tcpserver: ok ")[0]
    env["_port"] = str(server.port)
    return env


def test_scoped_host_argument(servers, netns) -> None:  # type: ignore[no-untyped-def]
    env = _serve_once(servers, netns, ["-HRl0"], "fe80::1%va")
    assert env["PROTO"] == "TCP6"
    assert env["TCPLOCALIP"] == "fe80::1" and env["TCPREMOTEIP"] == "fe80::2"
    assert env["TCP6INTERFACE"] == "va"
    assert re.fullmatch(rf"tcpserver: ok \d+ 0:fe80::1:{env['_port']} :fe80::2::\d+",
                        env["_log"]), env["_log"]


def test_interface_option(servers, netns) -> None:  # type: ignore[no-untyped-def]
    env = _serve_once(servers, netns, ["-HRl0", "-I", "va"], "fe80::1")
    assert env["TCP6INTERFACE"] == "va"


def test_link_local_without_scope_fails(netns) -> None:  # type: ignore[no-untyped-def]
    proc = run_once(OURS, ["-HRl0", "fe80::1", "0", "true"], timeout=20,
                    prefix=["ip", "netns", "exec", netns])
    assert proc.returncode == 111
    assert proc.stderr == b"tcpserver: fatal: unable to bind: invalid argument\n"
