"""Shared pytest set-up: make the checkout importable, and every shared
fixture.  Tests never import a fixture: pytest finds these by name.

* ``servers`` (function): the server harness, a
  :class:`tests.fix_server.Servers` factory; servers are stopped (by
  pid) at teardown.
* ``dns_server`` (session): dnsmasq on port 53 of an address chosen for
  this run, or ``$UCSPI_TEST_DNS_IP`` (:func:`tests.fix_dns.dnsmasq`).
* ``identd`` (session): oidentd on 127.0.0.1:113
  (:func:`tests.fix_ident.oidentd`).
* ``mariadb`` (session): a throw-away MariaDB server
  (:func:`tests.fix_mariadb.mariadb_server`).
* ``certs`` (session): certificates for TLS tests
  (:func:`tests.fix_tls.session_certs`).
* ``tinycdb``: the path of tinycdb's ``cdb`` (for the comparisons with
  it; the helpers are :func:`tests.fix_rules.tinycdb_make` and
  :func:`tests.fix_rules.tinycdb_dump`).
* ``fake_clock`` (function): the reactor's clock stopped, moved by the
  test (:class:`tests.util.FakeClock`).

The helper modules are imported inside the fixtures, so that a module
of ``ucspi`` that does not import (mid-change) only breaks the tests
that need it, not the collection of the whole suite.

Markers (registered in ``tox.ini``; none deselects anything unless asked
for with ``-m``):

* ``unit``, given here: the tests of :data:`UNIT_MODULES` that use none
  of the fixtures of :data:`OUTSIDE`.  They run in this process (or a
  child of this interpreter), against loopback fakes at most: no outside
  program (dnsmasq, oidentd, MariaDB, openssl, HAProxy, Debian's C
  tools), no server started.  ``python3 -m pytest -m unit``: well under
  a minute.
* ``slow``, given in the test files to the tests that take seconds by
  design (a flood, a resolver's whole retry schedule, a deadline of
  several seconds): ``-m "not slow"`` leaves them out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

if TYPE_CHECKING:
    from tests.fix_dns import DnsServer
    from tests.fix_ident import Identd
    from tests.fix_mariadb import MariaDB
    from tests.fix_server import Servers
    from tests.fix_tls import Certs
    from tests.util import FakeClock


#: the modules of the quick subset (``-m unit``): pure modules, and the
#: drivers run in this process against loopback fakes
UNIT_MODULES = frozenset({
    "test_address", "test_argscan", "test_bench_schedlat", "test_cdb", "test_descriptors", "test_dns", "test_dnsconf",
    "test_dnsmsg", "test_hostile_cdb", "test_ident", "test_ident_msg", "test_imports",
    "test_limits_unit", "test_loop", "test_mysql_protocol", "test_rbl_unit", "test_mysql_rules", "test_proxy", "test_rules",
    "test_starved", "test_steps", "test_tls_channel", "test_tls_relayserver", "test_tls_settings",
    "test_unit_core",
})
#: fixtures that start a server or need an outside program: a test that
#: uses one is never ``unit``, whatever its module
OUTSIDE = frozenset({"servers", "dns_server", "identd", "mariadb", "certs", "tls_pair",
                     "slow_dns", "tinycdb"})


#: what a unit test may start besides this interpreter: ctypes.util's
#: find_library() asks ldconfig (part of the C library's package)
UNIT_MAY_RUN = frozenset({"ldconfig"})


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Mark the quick subset ``unit`` (see the module docstring)."""
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1][:-3]
        if module in UNIT_MODULES and not OUTSIDE & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_runs_no_outside_program(request: pytest.FixtureRequest,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test that starts a program other than this interpreter
    fails at once: what ``-m unit`` promises (no outside tool) holds."""
    if request.node.get_closest_marker("unit") is None:
        return
    start = subprocess.Popen.__init__

    def checked(self: "subprocess.Popen[Any]", args: Any, *more: Any, **kw: Any) -> None:
        program = args if isinstance(args, (str, bytes, os.PathLike)) or kw.get("shell") \
            else args[0]
        path = os.fsdecode(program)
        if path != sys.executable and os.path.basename(path) not in UNIT_MAY_RUN:
            raise AssertionError(f"a unit test runs {path!r}: give the test a fixture of "
                                 "OUTSIDE, or take its module out of UNIT_MODULES "
                                 "(tests/conftest.py)")
        start(self, args, *more, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator["Servers"]:
    """Start servers: ``servers(options, host="127.0.0.1", prog=PRINT_ENV,
    impl=OURS, env=None, prefix=(), port="0")`` (see tests/fix_server.py)."""
    from tests.fix_server import Servers

    pool = Servers(str(tmp_path))
    try:
        yield pool
    finally:
        pool.cleanup()


@pytest.fixture(scope="session")
def dns_server() -> Iterator["DnsServer"]:
    """A real dnsmasq serving ``tests.fix_dns.RECORDS``; point a resolver
    at it with ``DNSCACHEIP=dns_server.ip`` (port 53)."""
    from tests.fix_dns import dnsmasq

    with dnsmasq() as server:
        yield server


@pytest.fixture(scope="session")
def identd() -> Iterator["Identd"]:
    """The real oidentd on 127.0.0.1:113."""
    from tests.fix_ident import oidentd

    with oidentd() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator["MariaDB"]:
    """A MariaDB server of this run: ``.socket``, ``.host``/``.port``,
    ``.user``, ``.password``, ``.database``, ``.sql(statement)``,
    ``.stop()``/``.start()`` (see tests/fix_mariadb.py)."""
    from tests.fix_mariadb import mariadb_server

    with mariadb_server() as server:
        yield server


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> "Certs":
    """A CA, server certificates (default and SNI names) and keys, made
    once per run with openssl (see tests/fix_tls.py)."""
    from tests.fix_tls import session_certs
    from tests.util import need

    need("openssl")
    return session_certs(str(tmp_path_factory.getbasetemp()))


@pytest.fixture
def tinycdb() -> str:
    """tinycdb's ``cdb`` program (skips, or fails under
    ``UCSPI_REQUIRE_ALL=1``, without it)."""
    from tests.fix_rules import TINYCDB
    from tests.util import need

    return need(TINYCDB)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> "FakeClock":
    """ucspi.reactor's ``time.monotonic`` replaced for this test by a
    clock that stands still until ``fake_clock.advance(seconds)`` (or
    ``fake_clock.now = t``): deadlines pass when the test says so."""
    from tests.util import FakeClock

    return FakeClock().install(monkeypatch)
