"""The parent's descriptors under load (issue 7, item 1).

With a small file limit, many concurrent clients and slow DNS and ident
servers, every connection must still get its lookups' answers: the
server accepts only as many connections as it has descriptors for
(:class:`ucspi.server.limits.Descriptors`), and never starts the
program as if a lookup had no answer."""

from __future__ import annotations

import socket
from typing import Dict, List

import pytest

from tests.fix_dns import Query, fake_dns_on_53, response, rr
from tests.fix_ident import FakeIdentd
from tests.fix_load import client_pool
from tests.fix_server import OURS, PRINT_ENV, clean_env, parse_env, read_all
from tests.util import need, need_root
from ucspi.dns import msg as dnsmsg
from ucspi.server.conn import descriptors_needed
from ucspi.server.limits import Descriptors
from ucspi.options import parse

SLOW = 0.3
CLIENTS = 200
EACH = 2


def slow_ptr(query: Query):
    name = dnsmsg.encode_name("client.example")
    return [(SLOW, response(query, [rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, name)]))]


@pytest.fixture
def slow_dns():
    need_root()
    with fake_dns_on_53(slow_ptr) as fake:
        yield fake


@pytest.mark.slow
def test_every_lookup_answered_with_a_small_file_limit(servers, slow_dns) -> None:
    need("prlimit")
    with FakeIdentd([SLOW, b"1, 2 : USERID : UNIX : slowpoke\r\n"]) as identd:
        if identd.port != 113:
            pytest.skip("port 113 is needed for the fake ident server")
        server = servers(["-v", "-c", "200", "-C", "0", "-l0", "-t", "5", "-b", "256"],
                         prog=PRINT_ENV, impl=OURS,
                         env=clean_env(DNSCACHEIP=slow_dns.ip),
                         prefix=["prlimit", "--nofile=64:64"])

        def client(_: int) -> List[Dict[str, str]]:
            got = []
            for _ in range(EACH):
                with socket.socket() as sock:
                    sock.settimeout(30)
                    sock.bind((identd.ip, 0))
                    sock.connect(("127.0.0.1", server.port))
                    got.append(parse_env(read_all(sock, 30)))
            return got

        envs = [env for batch in client_pool(client, CLIENTS, CLIENTS) for env in batch]
        assert len(envs) == CLIENTS * EACH
        infos = sorted({env.get("TCPREMOTEINFO", "<unset>") for env in envs})
        hosts = sorted({env.get("TCPREMOTEHOST", "<unset>") for env in envs})
        assert infos == ["slowpoke"] and hosts == ["client.example"]
        assert not [line for line in server.lines() if "warning" in line]


def test_descriptors_needed_follows_the_options() -> None:
    def need_for(*args: str) -> int:
        return descriptors_needed(parse([*args, "0", "0", "prog"], {}))
    assert need_for("-HRl0") == 1
    assert need_for("-HR") == 2
    assert need_for("-l0") == 3          # -h -r are the defaults
    assert need_for("-p", "-l0") == 4    # AAAA and A after the PTR
    assert need_for("-p") == 5


def test_budget_stops_and_resumes() -> None:
    budget = Descriptors(3, available=7)
    assert budget.room()
    budget.take()
    budget.take()
    assert not budget.room()      # 6 used, a third would need 9
    budget.give()
    assert budget.room()
    assert Descriptors(5, available=2).room()   # one connection always fits
