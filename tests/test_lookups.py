"""tcpserver's DNS and ident lookups, end to end, against real servers.

The DNS tests use the dnsmasq of ``tests/fix_dns.py`` (127.53.0.1:53,
``DNSCACHEIP``); clients bind their source address to the 127.53.0.x
address whose PTR record the test wants.  The ident tests use oidentd
(``tests/fix_ident.py``) and scripted fakes on 127.113.x.y:113.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Dict, Optional

import pytest

from tests.fix_dns import RECORDS, dns_server  # noqa: F401  (fixture)
from tests.fix_ident import HANG, FakeIdentd, identd  # noqa: F401  (fixture)
from tests.util import ours
from tests.fix_running import serve  # noqa: F401  (fixture)

DNSENV = {"DNSCACHEIP": "127.53.0.1"}


def test_remote_and_local_host_names(serve, dns_server) -> None:
    server = serve(["-R"], **DNSENV)
    env = server.ask()
    assert env["TCPREMOTEHOST"] == "localhost.example"
    assert env["TCPLOCALHOST"] == "localhost.example"
    assert "TCPPARANOID" not in env
    assert "ok " in server.log() and " localhost.example:127.0.0.1::" in server.log()


def test_local_name_is_reused_for_a_minute(serve, dns_server) -> None:
    server = serve(["-R", "-H"], **DNSENV)
    names = [server.ask()["TCPLOCALHOST"] for _ in range(3)]
    assert names == ["localhost.example"] * 3


def test_odd_characters_are_escaped(serve, dns_server) -> None:
    server = serve(["-R", "-l", "0"], **DNSENV)
    env = server.ask("127.53.0.2")
    assert env["TCPREMOTEHOST"] == RECORDS["rendered"]["127.53.0.2"]
    env = server.ask("127.53.0.5")
    assert env["TCPREMOTEHOST"] == "we\\045ird\\072na\\134001me.example"
    # the log shows the filtered form: no '%' and no ':' outside IPs
    assert " we\\045ird.example:127.53.0.2::" in server.log()


def test_paranoid(serve, dns_server) -> None:
    server = serve(["-R", "-l", "0", "-p"], **DNSENV)
    env = server.ask("127.53.0.3")
    assert "TCPREMOTEHOST" not in env
    assert env["TCPPARANOID"] == "mismatch.example"
    env = server.ask("127.53.0.4")
    assert env["TCPREMOTEHOST"] == "mixed.example"
    assert "TCPPARANOID" not in env


def test_not_paranoid_keeps_the_name(serve, dns_server) -> None:
    server = serve(["-R", "-l", "0", "-P"], **DNSENV)
    env = server.ask("127.53.0.3")
    assert env["TCPREMOTEHOST"] == "mismatch.example"
    assert "TCPPARANOID" not in env


def test_no_ptr_record(serve, dns_server) -> None:
    server = serve(["-R", "-l", "0"], **DNSENV, TCPREMOTEHOST="inherited")
    env = server.ask("127.53.0.200")
    assert "TCPREMOTEHOST" not in env   # removed, not left inherited


def test_H_removes_remote_host(serve, dns_server) -> None:
    server = serve(["-R", "-H"], **DNSENV, TCPREMOTEHOST="inherited")
    env = server.ask()
    assert "TCPREMOTEHOST" not in env
    assert env["TCPLOCALHOST"] == "localhost.example"   # -H does not stop this one


@pytest.mark.parametrize("cacheip", [
    "127.53.0.1",
    "127.53.0.250.127.53.0.1",        # djbdns style: dot-joined quads
    "127.53.0.250 127.53.0.1",        # documented style: blank-separated
])
def test_dnscacheip_forms(serve, dns_server, cacheip: str) -> None:
    # 127.53.0.250 has no server: the refusal moves on to the next one
    server = serve(["-R", "-l", "0"], DNSCACHEIP=cacheip)
    assert server.ask("127.53.0.4")["TCPREMOTEHOST"] == "mixed.example"


def test_host_argument_qualified_with_localdomain(serve, dns_server) -> None:
    server = serve(["-R", "-H", "-l", "0"], host="www", LOCALDOMAIN="example", **DNSENV)
    server.host = "127.53.0.10"
    env = server.ask()
    assert env["TCPLOCALIP"] == "127.53.0.10"


def test_unknown_host_argument(tmp_path, dns_server) -> None:
    env = dict(os.environ, DNSCACHEIP="127.53.0.1", DNSREWRITEFILE=str(tmp_path / "none"))
    proc = subprocess.run(ours("nx.example", "0", "true"), env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 111
    assert proc.stderr == b"tcpserver: fatal: no IP address for nx.example\n"


def test_remote_info_from_oidentd(serve, identd) -> None:
    server = serve(["-H", "-l", "0", "-r"])
    env = server.ask()
    assert env["TCPREMOTEINFO"] == identd.user
    assert env["TCP6REMOTEINFO"] == identd.user
    assert f":127.0.0.1:{identd.user}:" in server.log()


def test_ident_error_gives_empty_info(serve) -> None:
    with FakeIdentd([b"1 , 2 : ERROR : NO-USER\r\n"]) as fake:
        server = serve(["-H", "-l", "0", "-r", "-t", "5"])
        env = server.ask(fake.ip)
    assert env["TCPREMOTEINFO"] == ""


def test_slow_ident_does_not_block_others(serve, identd) -> None:
    with FakeIdentd([HANG]) as fake:
        server = serve(["-H", "-l", "0", "-r", "-t", "6"])
        slow: Dict[str, Optional[Dict[str, str]]] = {"env": None}
        started = time.monotonic()

        def ask_slow() -> None:
            slow["env"] = server.ask(fake.ip)

        thread = threading.Thread(target=ask_slow)
        thread.start()
        time.sleep(0.3)
        quick = [server.ask()["TCPREMOTEINFO"] for _ in range(5)]
        # all five were served while the slow one was still waiting
        assert thread.is_alive()
        thread.join(20)
        elapsed = time.monotonic() - started
    assert quick == [identd.user] * 5
    assert slow["env"] is not None and "TCPREMOTEINFO" not in slow["env"]
    assert 5.5 < elapsed < 15, elapsed   # -t 6 honoured
