"""The environment a program sees: ours against Debian's C tcpserver.

Both servers are bound to 127.0.0.1 with the same options and the same
inherited environment (including stale values of the variables they
set or remove).  The program's environments must hold the same names
with the same values; only the ports differ, and those must be the
server's and the client's.  Under ``-R`` ours adds nothing (no
``TCP6REMOTEINFO``), in IPv4 mode no ``TCP6*`` variable (as IndiMail).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import pytest

from tests.fix_server import C, OURS, PRINT_ENV, clean_env, parse_env, read_all

INHERITED = {"PROTO": "stale", "TCPLOCALIP": "stale", "TCPLOCALPORT": "stale",
             "TCPREMOTEIP": "stale", "TCPREMOTEPORT": "stale", "TCPREMOTEHOST": "stale",
             "TCPREMOTEINFO": "stale", "TCPLOCALHOST": "stale", "KEEP_ME": "x y"}


def _env_and_ports(server, banner: bytes) -> Tuple[Dict[str, str], int]:  # type: ignore[no-untyped-def]
    with server.connect() as sock:
        client_port = sock.getsockname()[1]
        data = read_all(sock)
    assert data.startswith(banner), data
    return parse_env(data[len(banner):]), client_port


@pytest.mark.parametrize("options, banner", [
    (["-HRl0"], b""),
    (["-H", "-R", "-l", "name.example"], b""),
    (["-HR", "-l", "a%b:c d"], b""),
    (["-HR", "-l", ""], b""),
    (["-HRl0", "-B", "hello "], b"hello "),
    (["-HRl0", "-Bx"], b"x"),
    (["-HRl0", "-c", "3"], b""),
    (["-HRl0", "-c3", "-D", "-o", "-b", "5", "-t", "1", "-P"], b""),
    (["-v", "-HRl0"], b""),
    (["-HRl0", "-Q", "-d", "-O"], b""),
])
@pytest.mark.parametrize("inherited", [False, True])
def test_same_environment(servers, options: List[str], banner: bytes, inherited: bool) -> None:
    env = clean_env(**INHERITED) if inherited else clean_env()
    seen = {}
    for impl in (OURS, C):
        server = servers(options, host="127.0.0.1", prog=PRINT_ENV, impl=impl, env=env)
        program_env, client_port = _env_and_ports(server, banner)
        assert program_env.pop("TCPLOCALPORT") == str(server.port)
        assert program_env.pop("TCPREMOTEPORT") == str(client_port)
        # ours adds s6's TCPCONNNUM (the other live connections: none here)
        assert program_env.pop("TCPCONNNUM", None) == ("0" if impl == OURS else None)
        seen[impl] = program_env
    assert seen[OURS] == seen[C]
    assert not [name for name in seen[OURS] if name.startswith("TCP6")]
    assert seen[OURS]["PROTO"] == "TCP"
    assert seen[OURS]["TCPREMOTEIP"] == seen[OURS]["TCPLOCALIP"] == "127.0.0.1"
    assert "TCPREMOTEHOST" not in seen[OURS] and "TCPREMOTEINFO" not in seen[OURS]


def test_same_environment_other_loopback(servers) -> None:
    """Client and server on different 127/8 addresses."""
    seen = {}
    for impl in (OURS, C):
        server = servers(["-HRl0"], host="127.0.0.1", impl=impl)
        env = server.env(source="127.0.0.9")
        env.pop("TCPLOCALPORT")
        env.pop("TCPREMOTEPORT")
        env.pop("TCPCONNNUM", None)        # ours only (s6's name)
        seen[impl] = env
    assert seen[OURS] == seen[C]
    assert seen[OURS]["TCPREMOTEIP"] == "127.0.0.9"


def test_same_environment_ipv4_wildcard(servers) -> None:
    """Our ``-4 0`` against C's ``0`` (C is IPv4 only)."""
    seen = {}
    for impl, options in ((OURS, ["-4", "-HRl0"]), (C, ["-HRl0"])):
        server = servers(options, host="0", impl=impl)
        env = server.env("127.0.0.1", source="127.0.0.3")
        env.pop("TCPLOCALPORT")
        env.pop("TCPREMOTEPORT")
        env.pop("TCPCONNNUM", None)        # ours only (s6's name)
        seen[impl] = env
    assert seen[OURS] == seen[C]
    assert seen[OURS]["TCPREMOTEIP"] == "127.0.0.3"


def test_raw_bytes_in_localname_and_banner(servers) -> None:
    """Arguments that are not UTF-8 reach the program and the client
    byte for byte; the log shows them filtered, as C does."""
    results = {}
    for impl in (OURS, C):
        server = servers(["-v", "-HR", "-l", os.fsdecode(b"\xff\xfeN"),
                          "-B", os.fsdecode(b"\xfe\x01")],
                         prog=["sh", "-c", "printenv TCPLOCALHOST"], impl=impl)
        data = server.talk()
        line = server.wait_log(r"^tcpserver: ok ")[0]
        results[impl] = (data, line.split()[3].split(":")[0])
    assert results[OURS] == results[C] == (b"\xfe\x01\xff\xfeN\n", "??N")
