"""``bench/hr_loop.c``, the design ceiling of ``bench/bench_core.py``,
does the work our server does on the default path.

The benchmark sets our ``-hr`` rate against this C loop's, so the loop
must make the same lookups and give the program the same answers:
compiled with ``cc``, it runs beside our server against the same
dnsmasq (``dns_server``) and oidentd (``identd``), and for clients from
several addresses both programs must see the same TCPREMOTEHOST and
TCPREMOTEINFO (or neither), in each of the loop's forms (posix_spawn in
line, fork, and a spawn process doing either) and with ``-H``/``-R``.
Nothing here is timed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.fix_server import OURS, PRINT_ENV, Server, Servers, clean_env, parse_env, read_all
from tests.util import ROOT, need, stop

SOURCE = os.path.join(ROOT, "bench", "hr_loop.c")
#: 127.0.0.1 (a name, and a user from oidentd), an address with a name
#: and no ident server (refused), one with no PTR record (NXDOMAIN)
SOURCES = ["127.0.0.1", "127.53.0.10", "127.53.0.200"]
#: what the loop sets (but TCPLOCALPORT: the two listeners' ports
#: differ); ours sets more (TCPLOCALHOST, ...), not compared
COMPARED = ("PROTO", "TCPLOCALIP", "TCPREMOTEIP", "TCPREMOTEHOST", "TCPREMOTEINFO")


@pytest.fixture(scope="module")
def hr_loop(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = need("cc")
    binary = str(tmp_path_factory.mktemp("hr_loop") / "hr_loop")
    proc = subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", binary, SOURCE],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    return binary


@pytest.fixture
def loop_env(dns_server) -> Dict[str, str]:  # type: ignore[no-untyped-def]
    return clean_env(DNSCACHEIP=dns_server.ip)


class Loop:
    """One running hr_loop printing the environment."""

    def __init__(self, binary: str, flags: List[str], env: Dict[str, str]) -> None:
        self.proc = subprocess.Popen([binary, *flags, "127.0.0.1", "0", *PRINT_ENV],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.port = int(line)

    def env(self, source: str) -> Dict[str, str]:
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", self.port))
            return parse_env(read_all(sock, 10))


@pytest.fixture
def loops(hr_loop: str, loop_env: Dict[str, str]) -> Iterator[Callable[[List[str]], Loop]]:
    started: List[Loop] = []

    def make(flags: List[str]) -> Loop:
        started.append(Loop(hr_loop, flags, loop_env))
        return started[-1]

    yield make
    for loop in started:
        stop(loop.proc)


def compared(loop: Loop, ours: Server, source: str
             ) -> Tuple[Dict[str, Optional[str]], Dict[str, Optional[str]]]:
    """What the loop's program and ours saw for a client from ``source``."""
    theirs, mine = loop.env(source), ours.env(source=source)
    return ({name: theirs.get(name) for name in COMPARED},
            {name: mine.get(name) for name in COMPARED})


@pytest.mark.parametrize("form", [[], ["-F"], ["-S"], ["-S", "-F"]],
                         ids=["posix_spawn", "fork", "spawn-process", "spawn-process-fork"])
def test_the_loop_sees_what_ours_sees(servers: Servers, loops, loop_env, identd,  # type: ignore[no-untyped-def]
                                      form: List[str]) -> None:
    ours = servers(["-hr", "-t", "5"], prog=PRINT_ENV, impl=OURS, env=loop_env)
    loop = loops(form)
    for source in SOURCES:
        theirs, mine = compared(loop, ours, source)
        assert theirs == mine, source
    # and the answers are real: a name, a user, and nothing for no PTR
    assert loop.env("127.0.0.1")["TCPREMOTEHOST"] == "localhost.example"
    assert loop.env("127.0.0.1")["TCPREMOTEINFO"] == identd.user
    assert loop.env("127.53.0.10")["TCPREMOTEHOST"] == "www.example"
    assert "TCPREMOTEHOST" not in loop.env("127.53.0.200")


@pytest.mark.parametrize("flags", [["-H"], ["-R"], ["-H", "-R"]])
def test_the_loop_leaves_lookups_out_as_ours_does(servers: Servers, loops, loop_env,  # type: ignore[no-untyped-def]
                                                 identd, flags: List[str]) -> None:
    ours = servers(["-hr", *flags, "-t", "5"], prog=PRINT_ENV, impl=OURS, env=loop_env)
    loop = loops(flags)
    theirs, mine = compared(loop, ours, "127.0.0.1")
    assert theirs == mine
    assert (theirs["TCPREMOTEHOST"] is not None) == ("-H" not in flags)
    assert (theirs["TCPREMOTEINFO"] is not None) == ("-R" not in flags)


@pytest.mark.parametrize("form", [[], ["-F"], ["-S"]], ids=["posix_spawn", "fork", "spawn-process"])
def test_the_loop_frees_a_slot_when_a_program_ends(loops, identd, form: List[str]) -> None:  # type: ignore[no-untyped-def]
    # with room for 2, the 5th client is served only if the ends of the
    # programs before it were seen (reaped, or told by the spawn process)
    loop = loops([*form, "-c", "2"])
    for _ in range(5):
        assert loop.env("127.0.0.1")["TCPREMOTEINFO"] == identd.user
