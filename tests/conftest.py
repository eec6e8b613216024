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
* ``fake_clock`` (function): the reactor's clock stopped, moved by the
  test (:class:`tests.util.FakeClock`).

The helper modules are imported inside the fixtures, so that a module
of ``ucspi`` that does not import (mid-change) only breaks the tests
that need it, not the collection of the whole suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

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
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> "FakeClock":
    """ucspi.reactor's ``time.monotonic`` replaced for this test by a
    clock that stands still until ``fake_clock.advance(seconds)`` (or
    ``fake_clock.now = t``): deadlines pass when the test says so."""
    from tests.util import FakeClock

    return FakeClock().install(monkeypatch)
