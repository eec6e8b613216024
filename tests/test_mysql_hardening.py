"""``-m`` hardening (issue 18): the helper children of ``$MYSQL_LIB``
(their deadline, their errors), the table name and db.conf's
permissions, host-name rules whose lookup fails, and the password on
the way to the database (TLS verified against ``$MYSQL_SSL_CA``, no
``mysql_clear_password`` without it), through both clients."""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest

from tests.fix_server import clean_env
from tests.test_mysql_server import CLIENTS, PRINT, _env
from ucspi.mysql.library import LibraryError
from ucspi.reactor import Reactor
from ucspi.server.mysql_access import HELPER_ROUNDS, LibraryRows, helper_deadline
from ucspi.proc.offload import Offload


# -- the helpers of $MYSQL_LIB ---------------------------------------------------
def _collect(reactor: Reactor, offload: Offload, work: Callable[[], bytes],
             **kw: Any) -> Tuple[bytes, Optional[OSError], float]:
    """Run ``work`` in a helper child; its answer and how long it took."""
    got: List[Tuple[bytes, Optional[OSError]]] = []
    start = time.monotonic()
    offload.run(work, lambda data, error: got.append((data, error)), **kw)
    while not got and time.monotonic() - start < 10:
        reactor.run_once(0.1)
    for _ in range(50):                        # reap what the loop would reap
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)
        except ChildProcessError:
            break
    assert got, "no answer from the helper"
    return got[0][0], got[0][1], time.monotonic() - start


def _slow(seconds: float) -> Callable[[], bytes]:
    def work() -> bytes:
        time.sleep(seconds)
        return b"done"
    return work


# faulthandler's watchdog thread (tox.ini's faulthandler_timeout) makes
# 3.12+ warn about the offload's fork of this pytest process; the
# server's parent has no threads (test_launch: test_fork_without_threads_warning).
_PYTEST_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


@pytest.mark.slow
@_PYTEST_THREADS
def test_offload_deadline_is_per_call() -> None:
    """The offload's own deadline kills a slow helper, a longer one
    given to run() lets it finish, and None means no deadline."""
    reactor = Reactor()
    offload = Offload(reactor, deadline=0.3)
    data, error, took = _collect(reactor, offload, _slow(5))
    assert error is not None and error.errno == errno.ETIMEDOUT and took < 3
    assert _collect(reactor, offload, _slow(0.8), deadline=None)[:2] == (b"done", None)
    assert _collect(reactor, offload, _slow(0.8), deadline=5.0)[:2] == (b"done", None)
    data, error, took = _collect(reactor, offload, _slow(5), deadline=0.2)
    assert error is not None and error.errno == errno.ETIMEDOUT and took < 3


class _Recorder:
    """An offload that runs the work here and records the deadline."""

    def __init__(self) -> None:
        self.deadlines: List[Optional[float]] = []

    def run(self, work: Callable[[], bytes], done: Callable[[bytes, Optional[OSError]], None],
            deadline: Optional[float] = -1.0) -> None:
        self.deadlines.append(deadline)
        done(work(), None)


@pytest.mark.parametrize("timeout, deadline", [(0.0, None), (5.0, 5.0 * HELPER_ROUNDS),
                                               (30.0, 30.0 * HELPER_ROUNDS),
                                               (100.0, 100.0 * HELPER_ROUNDS)])
def test_library_helper_deadline_follows_mysql_timeout(timeout: float,
                                                       deadline: Optional[float]) -> None:
    """$MYSQL_TIMEOUT=0 is no limit, and a long one is not cut at the
    offload's 30 s."""
    assert helper_deadline(timeout) == deadline
    offload = _Recorder()

    class Client:
        def query(self, sql: str) -> List[List[Optional[bytes]]]:
            return [[b"A", b"*", None]]

        def close(self) -> None:
            pass

    rows = LibraryRows(Client, offload, timeout)  # type: ignore[arg-type]
    answers: List[Any] = []
    rows.fetch("t", 25, lambda r, e: answers.append((r, e)))
    assert answers == [([[b"A", b"*", None]], None)]
    assert offload.deadlines == [deadline]


def test_library_helper_reports_connect_errors() -> None:
    """A database that cannot be reached is an answer of the helper
    (IndiMail's "Unable to connect" text), not an exception that the
    child would log as its fatal internal error."""
    def refused() -> Any:
        raise LibraryError(2002, "Can't connect to local server through socket '/x' (111)",
                           "connect")

    offload = _Recorder()
    rows = LibraryRows(refused, offload, 5.0)  # type: ignore[arg-type]
    answers: List[Any] = []
    rows.fetch("t", 25, lambda r, e: answers.append((r, e)))
    [(got, error)] = answers
    assert got is None and error.code == 2002
    assert error.message == ("Unable to connect to MySQL Server: Can't connect to local "
                             "server through socket '/x' (111)")


@_PYTEST_THREADS
def test_library_helper_connect_error_through_the_pipe() -> None:
    """The same in a real helper child: the parent reads the error the
    child met, not a lost connection."""
    reactor = Reactor()
    offload = Offload(reactor)

    def refused() -> Any:
        raise LibraryError(2003, "Can't connect to MySQL server on '127.0.0.1' (111)",
                           "connect")

    rows = LibraryRows(refused, offload, 5.0)
    answers: List[Any] = []
    rows.fetch("t", 25, lambda r, e: answers.append((r, e)))
    start = time.monotonic()
    while not answers and time.monotonic() - start < 10:
        reactor.run_once(0.1)
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        pass
    [(got, error)] = answers
    assert got is None and error.code == 2003
    assert error.message.startswith("Unable to connect to MySQL Server: Can't connect")


# -- the table name and db.conf --------------------------------------------------
def _write_dbconf(folder: Any, db: Any, table: str, mode: int = 0o600,
                  server: str = "127.0.0.1", tail: str = "\n") -> str:
    path = os.path.join(os.fspath(folder), "db.conf")
    with open(path, "w") as handle:
        handle.write(f"{server}:{db.user}:{db.password}:{db.database}:{table}{tail}")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("client", CLIENTS)
def test_odd_table_name_is_quoted(servers: Any, mariadb: Any, tmp_path: Any,
                                  client: str) -> None:
    """A table name with a backtick and a space is one identifier: the
    missing table is created under that very name and then read."""
    name = f"odd`rules {client}"
    quoted = "`" + name.replace("`", "``") + "`"
    mariadb.sql(f"drop table if exists {quoted}")
    conf = _write_dbconf(tmp_path, mariadb, name)
    server = servers(["-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, client))
    try:
        assert server.talk() == b"WHO= X=\n", server.log()
        mariadb.sql(f"insert into {quoted} (port, timestamp, iprule, decision, env) "
                    f"values ({server.port}, now(), '*', 'A', 'WHO=odd')")
        assert server.talk() == b"WHO=odd X=\n", server.log()
        assert "warning" not in server.log()
    finally:
        mariadb.sql(f"drop table if exists {quoted}")


def test_crlf_dbconf_is_refused_at_startup(tmp_path: Any) -> None:
    """A CRLF db.conf leaves a CR in the table name: one clear line,
    exit 111, before any database is asked."""
    from tests.fix_server import OURS, run_once
    path = os.path.join(os.fspath(tmp_path), "db.conf")
    with open(path, "wb") as handle:
        handle.write(b"127.0.0.1:u:p:db:tcprules\r\n")
    result = run_once(OURS, ["-HRl0", "-m", path, "127.0.0.1", "0", "true"],
                      env=clean_env(MYSQL_TIMEOUT="2"))
    assert (result.returncode, result.stderr.decode()) == (
        111, 'tcpserver: fatal: Invalid db.conf: the table name "tcprules\\r" has a control '
             'character\n')


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True),
                                          (0o604, True), (0o644, True)])
def test_dbconf_readable_by_others_is_warned(servers: Any, mariadb: Any, tmp_path: Any,
                                             mode: int, warned: bool) -> None:
    conf = _write_dbconf(tmp_path, mariadb, "perm_rules", mode)
    server = servers(["-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, "builtin"))
    assert server.talk() == b"WHO= X=\n", server.log()
    warnings = [line for line in server.lines() if "warning" in line]
    if warned:
        assert warnings == [f"tcpserver: warning: {conf} holds a password and is readable by "
                            f"group or others (mode {mode:04o}): make it readable by its "
                            "owner only"], warnings
    else:
        assert warnings == []
    mariadb.sql("drop table if exists perm_rules")


# -- host-name rules whose lookup fails -------------------------------------------
def _name_server(query: Any) -> Any:
    """AAAA and A answers by name: ``me`` is the client, ``other`` is not,
    ``gone`` does not exist, ``broken`` fails fast (TC over UDP, then a
    closed TCP connection: a protocol error), ``half``/``halfme`` fail
    for AAAA only."""
    from tests.fix_dns import response, rr
    from ucspi.dns import msg as dnsmsg
    name = dnsmsg.render_name(query.name).rstrip(".")
    label = name.split(".")[0]
    aaaa = query.qtype == dnsmsg.TYPE_AAAA
    if label == "broken" or (label.startswith("half") and aaaa):
        return None if query.tcp else [(0, response(query, tc=True))]
    if label == "gone":
        return [(0, response(query, rcode=3))]
    if aaaa:
        return [(0, response(query))]                       # no AAAA record
    ip = {"me": "127.0.0.1", "halfme": "127.0.0.1", "other": "127.0.0.9",
          "half": "127.0.0.9"}.get(label)
    if ip is None:
        return [(0, response(query, rcode=3))]
    return [(0, response(query, [rr(b"\xc0\x0c", dnsmsg.TYPE_A, socket.inet_aton(ip))]))]


@pytest.fixture(scope="module")
def name_server() -> Any:
    from tests.fix_dns import fake_dns_on_53
    from tests.util import need_root
    need_root()
    with fake_dns_on_53(_name_server) as fake:
        yield fake


@pytest.fixture
def rules_table(mariadb: Any, request: pytest.FixtureRequest) -> Any:
    name = "h_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[-40:]
    mariadb.sql(f"drop table if exists {name}; create table {name} "
                "(id int auto_increment primary key, port int, iprule char(40), "
                "decision char(1), env varchar(255))")
    yield name
    mariadb.sql(f"drop table if exists {name}")


def _set_rows(db: Any, table: str, port: int, rows: List[Tuple[str, str, Optional[str]]]
              ) -> None:
    values = ", ".join(f"({port}, '{rule}', '{decision}', "
                       f"{'NULL' if env is None else repr(env)})" for rule, decision, env in rows)
    db.sql(f"delete from {table}; insert into {table} (port, iprule, decision, env) "
           f"values {values}")


@pytest.mark.parametrize("client", CLIENTS)
def test_failed_host_name_lookup_drops_the_client(servers: Any, mariadb: Any, name_server: Any,
                                                  rules_table: str, tmp_path: Any,
                                                  client: str) -> None:
    """A deny row (or an allow row with variables) by host name whose
    lookup fails is not a row that does not apply: the client is
    dropped with a warning, never served.  "No such name" is an answer,
    and a lookup that found the client despite a failure decides."""
    conf = _write_dbconf(tmp_path, mariadb, rules_table)
    server = servers(["-v", "-HRl0", "-m", conf], prog=PRINT,
                     env=_env(mariadb, client, DNSCACHEIP=name_server.ip))
    port = server.port
    star = ("*", "A", "WHO=in")
    for rule, decision in [("broken.example", "D"), ("half.example", "D"),
                           ("broken.example", "A")]:
        _set_rows(mariadb, rules_table, port, [(rule, decision, "X=1"), star])
        mark = len(server.lines())
        assert server.talk() == b"", (rule, server.log())
        lines = server.wait_log(rf"unable to look up {rule}", timeout=10)
        assert lines[-1] == (f"tcpserver: warning: dropping connection from 127.0.0.1, "
                             f"MySQL: unable to look up {rule}: protocol error"), lines
        assert not [line for line in server.lines()[mark:] if " ok " in line or "deny" in line]
    # answers: no such name, another address, the client (also despite
    # a failed AAAA query)
    for rule, expected in [("gone.example", b"WHO=in X=\n"), ("other.example", b"WHO=in X=\n"),
                           ("me.example", b""), ("halfme.example", b"")]:
        _set_rows(mariadb, rules_table, port, [(rule, "D", None), star])
        assert server.talk() == expected, (rule, server.log())
    assert server.log().count("unable to look up") == 3
    assert "Traceback" not in server.log()


def test_descriptor_budget_counts_the_host_name_lookups() -> None:
    from ucspi.options import parse
    from ucspi.server.conn import descriptors_needed

    def need_for(*args: str) -> int:
        return descriptors_needed(parse([*args, "0", "0", "prog"], {}))
    assert need_for("-HRl0", "-m", "db.conf") == 3           # the socket, AAAA and A
    assert need_for("-HRl0") == 1
    assert need_for("-p", "-m", "db.conf") == 5              # the lookups step needs more
    assert need_for("-HR", "-m", "db.conf") == 3


class _StarvedLookups:
    """A lookup service that has no descriptor to give."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.asked: List[str] = []

    def addresses(self, name: str, done: Callable[..., None],
                  abort: Callable[[OSError], None]) -> Any:
        self.asked.append(name)
        self.reactor.call_later(0, lambda: abort(OSError(errno.EMFILE, "Too many open files")))
        return None


def test_starved_host_name_lookup_drops_the_client() -> None:
    from ucspi.environ import Endpoints
    from ucspi.log import Log
    from ucspi.server.mysql_access import MysqlAccess

    class Rows:
        def fetch(self, table: str, port: int, done: Callable[..., None]) -> None:
            done([[b"D", b"evil.example", None], [b"A", b"*", b"WHO=in"]], None)

    reactor = Reactor()
    lookups = _StarvedLookups(reactor)
    rfd, wfd = os.pipe()
    try:
        access = MysqlAccess(None, Rows(), lookups, Log(1, fd=wfd), None, 0)  # type: ignore
        access.conf = type("Conf", (), {"table": "t"})()
        ep = Endpoints(proto6=False, v6sock=False, local_ip="127.0.0.1", local_ip6="",
                       local_port=25, remote_ip="127.0.0.5", remote_ip6="", remote_port=4000)
        verdicts: List[Any] = []
        access.check(ep, verdicts.append)
        for _ in range(10):
            reactor.run_once(0.01)
        os.close(wfd)
        wfd = -1
        log = os.read(rfd, 65536).decode()
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    assert lookups.asked == ["evil.example"]
    [verdict] = verdicts
    assert not verdict.allow and verdict.quiet
    assert log == ("tcpserver: warning: dropping connection from 127.0.0.5, unable to start "
                   "a lookup: process cannot open more files\n")


# -- the password on the way to the database ---------------------------------------
SECURE_ONLY = "a secure connection (a UNIX socket, or TLS verified with $MYSQL_SSL_CA) is required"
HASHED = b"mysql_native_password,caching_sha2_password,client_ed25519"


@pytest.fixture(scope="module")
def db_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fix_mariadb import make_db_certs
    return make_db_certs(str(tmp_path_factory.mktemp("db-tls")))


def _server_context(cert: str, key: str) -> Any:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _fake(db_certs: Any, tls: str = "", **kw: Any) -> Any:
    """A fake database for alice/secret that answers every query with
    one row, ``*`` allowed with WHO=fake; ``tls``: "" (not offered),
    "good" (a certificate for 127.0.0.1 from db_certs.ca) or
    "misnamed" (one from the same CA for another name)."""
    from tests.fix_mysql_fake import Canned, FakeMysql
    context = None
    if tls == "good":
        context = _server_context(db_certs.cert, db_certs.key)
    elif tls == "misnamed":
        context = _server_context(db_certs.misnamed, db_certs.misnamed_key)
    return FakeMysql(user="alice", password="secret", offer_tls=bool(tls), tls_context=context,
                     fallback=Canned(["decision", "iprule", "env"], [[b"A", b"*", b"WHO=fake"]]),
                     **kw)


def _fake_env(fake: Any, client: str, **extra: str) -> Any:
    env = clean_env(MYSQL_TCP_PORT=str(fake.port), MYSQL_TIMEOUT="5", **extra)
    for name in ("MYSQL_LIB", "MYSQL_SSL", "MYSQL_SSL_CA"):
        if name not in extra:
            env.pop(name, None)
    if client == "library":
        from tests.fix_mariadb import need_libmariadb
        env["MYSQL_LIB"] = need_libmariadb()
    return env


def _fake_conf(tmp_path: Any) -> str:
    path = os.path.join(os.fspath(tmp_path), "db.conf")
    with open(path, "w") as handle:
        handle.write("127.0.0.1:alice:secret:db:rules\n")
    os.chmod(path, 0o600)
    return path


def _start_fails(tmp_path: Any, env: Any) -> str:
    """Start a server that must not start: its one line (exit 111)."""
    from tests.fix_server import OURS, run_once
    result = run_once(OURS, ["-HRl0", "-m", _fake_conf(tmp_path), "127.0.0.1", "0", "true"],
                      env=env, timeout=20)
    err = result.stderr.decode()
    assert result.returncode == 111 and err.count("\n") == 1, (result.returncode, err)
    assert err.startswith("tcpserver: fatal: Unable to connect to MySQL Server: "), err
    return err


def _never_sent(fake: Any) -> None:
    assert all(b"secret" not in data for data in fake.auth_data), fake.auth_data


CLEAR_CASES = [("mysql_clear_password", "mysql_clear_password"),      # in the greeting
               ("mysql_native_password", "mysql_clear_password")]     # by a switch


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("greeting, account", CLEAR_CASES)
@pytest.mark.parametrize("tls", ["", "good"])
def test_clear_password_refused_without_verified_tls(tmp_path: Any, db_certs: Any, client: str,
                                                     greeting: str, account: str,
                                                     tls: str) -> None:
    """A server (an impostor, maybe) that asks for mysql_clear_password
    over plain TCP or over TLS that nobody verified does not get the
    password: start-up fails with a clear line."""
    with _fake(db_certs, tls, greeting_plugin=greeting, account_plugin=account) as fake:
        err = _start_fails(tmp_path, _fake_env(fake, client))
        assert SECURE_ONLY in err, err
        _never_sent(fake)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("greeting, account, sha2", [
    ("mysql_clear_password", "mysql_clear_password", "fast"),
    ("mysql_native_password", "mysql_clear_password", "fast"),
    ("caching_sha2_password", "caching_sha2_password", "full"),
    ("mysql_native_password", "mysql_native_password", "fast"),
])
@pytest.mark.slow
def test_verified_tls_carries_the_password(servers: Any, tmp_path: Any, db_certs: Any,
                                           client: str, greeting: str, account: str,
                                           sha2: str) -> None:
    """With $MYSQL_SSL_CA the server's certificate is checked, and then
    the password may go in clear (mysql_clear_password, caching_sha2's
    full authentication)."""
    with _fake(db_certs, "good", greeting_plugin=greeting, account_plugin=account,
               sha2=sha2) as fake:
        server = servers(["-HRl0", "-m", _fake_conf(tmp_path)], prog=PRINT,
                         env=_fake_env(fake, client, MYSQL_SSL_CA=db_certs.ca))
        assert server.talk() == b"WHO=fake X=\n", server.log()
        assert "tls" in fake.events and "auth ok" in fake.events, fake.events
        assert "warning" not in server.log()


def test_sha2_full_authentication_needs_verified_tls(tmp_path: Any, db_certs: Any) -> None:
    """The built-in client counts TLS as secure only once verified."""
    with _fake(db_certs, "good", greeting_plugin="caching_sha2_password",
               sha2="full") as fake:
        err = _start_fails(tmp_path, _fake_env(fake, "builtin"))
        assert "full authentication sends the password, and " + SECURE_ONLY in err, err
        _never_sent(fake)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("which", ["misnamed", "other_ca"])
def test_unverified_server_is_refused(tmp_path: Any, db_certs: Any, client: str,
                                      which: str) -> None:
    """A certificate for another name, or from another CA: no start."""
    tls = "misnamed" if which == "misnamed" else "good"
    ca = db_certs.other_ca if which == "other_ca" else db_certs.ca
    with _fake(db_certs, tls, greeting_plugin="mysql_clear_password") as fake:
        err = _start_fails(tmp_path, _fake_env(fake, client, MYSQL_SSL_CA=ca))
        assert "SSL" in err, err
        assert fake.logins == []
        _never_sent(fake)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("variable", ["MYSQL_SSL", "MYSQL_SSL_CA"])
def test_tls_required_but_not_offered(tmp_path: Any, db_certs: Any, client: str,
                                      variable: str) -> None:
    value = "REQUIRED" if variable == "MYSQL_SSL" else db_certs.ca
    with _fake(db_certs, "") as fake:
        err = _start_fails(tmp_path, _fake_env(fake, client, **{variable: value}))
        assert "SSL is required" in err, err
        _never_sent(fake)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.slow
def test_tls_required_without_a_ca(servers: Any, tmp_path: Any, db_certs: Any,
                                   client: str) -> None:
    """$MYSQL_SSL=required: TLS, not verified, for a server that offers
    it (the password itself still stays home)."""
    with _fake(db_certs, "misnamed") as fake:
        server = servers(["-HRl0", "-m", _fake_conf(tmp_path)], prog=PRINT,
                         env=_fake_env(fake, client, MYSQL_SSL="required"))
        assert server.talk() == b"WHO=fake X=\n", server.log()
        assert "tls" in fake.events, fake.events


@pytest.mark.parametrize("env, message, code", [
    ({"MYSQL_SSL": "verify"}, 'tcpserver: fatal: MYSQL_SSL must be preferred or required, '
                              'not "verify"\n', 100),
    ({"MYSQL_SSL": "yes\n"}, 'tcpserver: fatal: MYSQL_SSL must be preferred or required, '
                             'not "yes\\n"\n', 100),
    ({"MYSQL_SSL_CA": "/nonexistent/ca.pem"},
     "tcpserver: fatal: unable to read $MYSQL_SSL_CA /nonexistent/ca.pem: file does not "
     "exist\n", 111),
])
def test_tls_settings_errors(tmp_path: Any, env: Any, message: str, code: int) -> None:
    from tests.fix_server import OURS, run_once
    result = run_once(OURS, ["-HRl0", "-m", _fake_conf(tmp_path), "127.0.0.1", "0", "true"],
                      env=clean_env(MYSQL_TIMEOUT="2", **env))
    assert (result.returncode, result.stderr.decode()) == (code, message)


def test_ca_file_without_a_certificate(tmp_path: Any) -> None:
    from tests.fix_server import OURS, run_once
    bad = os.path.join(os.fspath(tmp_path), "ca.pem")
    with open(bad, "w") as handle:
        handle.write("not a certificate\n")
    result = run_once(OURS, ["-HRl0", "-m", _fake_conf(tmp_path), "127.0.0.1", "0", "true"],
                      env=clean_env(MYSQL_TIMEOUT="2", MYSQL_SSL_CA=bad))
    err = result.stderr.decode()
    assert result.returncode == 111 and err.count("\n") == 1, err
    assert err.startswith(f"tcpserver: fatal: unable to load $MYSQL_SSL_CA {bad}: "), err


@pytest.mark.parametrize("client", CLIENTS)
def test_verified_tls_to_mariadb(servers: Any, mariadb: Any, tmp_path: Any,
                                 client: str) -> None:
    """The real server, its certificate checked: served; with another
    CA it is not trusted."""
    conf = _write_dbconf(tmp_path, mariadb, "tls_rules")
    server = servers(["-HRl0", "-m", conf], prog=PRINT,
                     env=_env(mariadb, client, MYSQL_SSL_CA=mariadb.certs.ca))
    assert server.talk() == b"WHO= X=\n", server.log()
    mariadb.sql("drop table if exists tls_rules")
    from tests.fix_server import OURS, run_once
    result = run_once(OURS, ["-HRl0", "-m", conf, "127.0.0.1", "0", "true"],
                      env=_env(mariadb, client, MYSQL_SSL_CA=mariadb.certs.other_ca))
    err = result.stderr.decode()
    assert result.returncode == 111 and "SSL" in err and err.count("\n") == 1, err


def test_db_tls_settings() -> None:
    from ucspi.errors import Fatal
    from ucspi.mysql.rules import DbTls, db_tls
    assert db_tls({}) == DbTls(False, None)
    assert db_tls({"MYSQL_SSL": "", "MYSQL_SSL_CA": ""}) == DbTls(False, None)
    assert db_tls({"MYSQL_SSL": "Preferred"}) == DbTls(False, None)
    assert db_tls({"MYSQL_SSL": "REQUIRED"}) == DbTls(True, None)
    assert db_tls({"MYSQL_SSL_CA": "/etc/ssl/db-ca.pem"}) == DbTls(True, "/etc/ssl/db-ca.pem")
    assert db_tls({"MYSQL_SSL_CA": "ca.pem"}) == DbTls(True, os.path.abspath("ca.pem"))
    with pytest.raises(Fatal) as info:
        db_tls({"MYSQL_SSL": "off"})
    assert (str(info.value), info.value.code) == (
        'MYSQL_SSL must be preferred or required, not "off"', 100)


def test_libmariadb_is_told_apart() -> None:
    from tests.fix_mariadb import need_libmariadb
    from ucspi.mysql import library
    lib = library.load(need_libmariadb())
    assert lib.flavour is library.MARIADB
    assert lib.mysql_get_ssl_cipher is not None


class _Options:
    """A library whose mysql_options records what it is told."""

    def __init__(self, flavour: Any, cipher: bool = True) -> None:
        self.flavour = flavour
        self.path = "/usr/lib/libfake.so"
        self.told: List[Tuple[int, Any]] = []
        self.mysql_get_ssl_cipher = (lambda handle: b"TLS_AES_128_GCM_SHA256") if cipher else None

    def mysql_options(self, handle: int, option: int, value: Any) -> int:
        raw = getattr(value, "_obj", value)           # byref(...) keeps its object
        self.told.append((option, raw.value))
        return 0


@pytest.mark.parametrize("required, ca, told", [
    (False, None, [(30, b"\0")]),
    (True, None, [(35, 3), (30, b"\0")]),
    (True, "/etc/db-ca.pem", [(21, b"/etc/db-ca.pem"), (35, 5)]),
])
def test_libmysqlclient8_options(required: bool, ca: Optional[str], told: Any) -> None:
    """libmysqlclient 8's numbers (not MariaDB's): the clear-text plugin
    off, SSL_MODE REQUIRED or VERIFY_IDENTITY with the CA."""
    from ucspi.mysql import library
    from ucspi.mysql.rules import DbTls
    lib = _Options(library.MYSQL8)
    library.LibraryClient(lib)._protect(1, DbTls(required, ca))  # type: ignore[arg-type]
    assert lib.told == told


def test_libmysqlclient_cleartext_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from ucspi.mysql import library
    from ucspi.mysql.rules import DbTls
    monkeypatch.setenv("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "Y")
    for flavour in (library.MYSQL8, library.OTHER):
        with pytest.raises(LibraryError) as info:
            library.LibraryClient(_Options(flavour))._protect(  # type: ignore[arg-type]
                1, DbTls(False, None))
        assert info.value.code == 2059 and SECURE_ONLY in info.value.message
    # with a checked certificate the variable does no harm
    lib = _Options(library.MYSQL8)
    library.LibraryClient(lib)._protect(1, DbTls(True, "/ca.pem"))  # type: ignore[arg-type]
    # MariaDB Connector/C gets its list of plugins instead
    lib = _Options(library.MARIADB)
    library.LibraryClient(lib)._protect(1, DbTls(False, None))  # type: ignore[arg-type]
    assert lib.told == [(7026, HASHED), (36, b"\0")]


@pytest.mark.parametrize("tls", [(True, None), (True, "/ca.pem")])
def test_older_library_cannot_do_tls_settings(tls: Any) -> None:
    from ucspi.mysql import library
    from ucspi.mysql.rules import DbTls
    with pytest.raises(LibraryError) as info:
        library.LibraryClient(_Options(library.OTHER))._protect(  # type: ignore[arg-type]
            1, DbTls(*tls))
    assert info.value.code == 2026
    assert info.value.message.startswith("an older libmysqlclient (/usr/lib/libfake.so) cannot ")
