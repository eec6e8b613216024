"""IPv6 link-local addresses, in a network namespace of the test's own.

Loopback has no link-local address, so this module makes a namespace
with a veth pair (``va`` fe80::1, ``vb`` fe80::2), runs our tcpserver
and its clients inside it, and removes it afterwards.  It shows the
scope id at work: binding ``fe80::1%va`` or ``-I va``, ``TCP6INTERFACE``
naming the interface, and the log line.
"""

from __future__ import annotations

import os
import subprocess
from typing import Dict, Iterator, List

import pytest

from tests.util import PYTHON, missing, need, need_root, ours, stop

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


def _serve_once(ns: str, args: List[str], tmp_path) -> Dict[str, str]:  # type: ignore[no-untyped-def]
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *ours("-1", "-v", *args,
                                 "sh", "-c", "env; echo END")],
                                stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), log_path.read_text()
        out = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", CLIENT, port],
                             capture_output=True, timeout=20, check=True).stdout.decode()
    finally:
        stop(proc)
    lines = out.splitlines()
    assert lines[-1] == "END", out
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    env["_log"] = log_path.read_text()
    env["_port"] = port.decode()
    return env


def test_scoped_host_argument(netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _serve_once(netns, ["-HRl0", "fe80::1%va", "0"], tmp_path)
    assert env["PROTO"] == "TCP6"
    assert env["TCPLOCALIP"] == "fe80::1" and env["TCPREMOTEIP"] == "fe80::2"
    assert env["TCP6INTERFACE"] == "va"
    assert "ok " in env["_log"] and f" 0:fe80::1:{env['_port']} :fe80::2::" in env["_log"]


def test_interface_option(netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _serve_once(netns, ["-HRl0", "-I", "va", "fe80::1", "0"], tmp_path)
    assert env["TCP6INTERFACE"] == "va"


def test_link_local_without_scope_fails(netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(["ip", "netns", "exec", netns, *ours("-HRl0", "fe80::1", "0", "true")],
                          capture_output=True, timeout=20)
    assert proc.returncode == 111
    assert proc.stderr == b"tcpserver: fatal: unable to bind: invalid argument\n"
