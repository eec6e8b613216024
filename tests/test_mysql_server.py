"""``-m db.conf`` end to end: our server in front of a real MariaDB
(tests/fix_mariadb.py), with the built-in client and with
``$MYSQL_LIB`` = Debian's libmariadb; a loopback fake database for the
stalls (design: mysql-rules)."""

from __future__ import annotations

import os
import signal
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.fix_server import clean_env, wait_until


def _since(server: object, mark: int) -> List[str]:
    return getattr(server, "lines")()[mark:]


def _wait_since(server: object, mark: int, text: str, timeout: float = 10.0) -> List[str]:
    assert wait_until(lambda: any(text in line for line in _since(server, mark)), timeout), \
        getattr(server, "log")()
    return _since(server, mark)

CLIENTS = ["builtin", "library"]
PRINT = ["sh", "-c", 'echo "WHO=$WHO X=$X"']


def _env(db: object, client: str, **extra: str) -> Dict[str, str]:
    env = clean_env(MYSQL_TCP_PORT=str(getattr(db, "port")), MYSQL_TIMEOUT="5", **extra)
    env.pop("MYSQL_LIB", None)
    if client == "library":
        from tests.fix_mariadb import need_libmariadb
        env["MYSQL_LIB"] = need_libmariadb()
    return env


@pytest.fixture
def table(mariadb: object, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh rules table (no primary key: several rows per port)."""
    name = "r_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[-40:]
    sql = getattr(mariadb, "sql")
    sql(f"drop table if exists {name}")
    sql(f"create table {name} (port int, iprule char(40), decision char(1), env varchar(255))")
    yield name
    sql(f"drop table if exists {name}")


def _dbconf(tmp_path: "os.PathLike[str]", db: object, table: str, server: str = "127.0.0.1",
            password: str = "") -> str:
    path = os.path.join(os.fspath(tmp_path), "db.conf")
    with open(path, "w") as handle:
        handle.write(f"{server}:{getattr(db, 'user')}:{password or getattr(db, 'password')}:"
                     f"{getattr(db, 'database')}:{table}\n")
    os.chmod(path, 0o600)                   # it holds a password (else a warning)
    return path


def _rules(db: object, table: str, port: int, rows: List[Tuple[str, str, str]]) -> None:
    values = ", ".join(
        f"({port}, '{rule}', '{decision}', {'NULL' if env is None else repr(env)})"
        for rule, decision, env in rows)
    getattr(db, "sql")(f"delete from {table}; insert into {table} values {values}")


@pytest.mark.parametrize("client", CLIENTS)
def test_allow_deny_env_exact_wildcard_range(servers, mariadb, table, tmp_path,
                                             client: str) -> None:
    conf = _dbconf(tmp_path, mariadb, table)
    server = servers(["-v", "-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, client))
    port = server.port
    cases = [
        # exact address with env
        ([("127.0.0.1", "A", "WHO=exact")], b"WHO=exact X=\n"),
        # wildcard and ? matching, two allowing rows both add (later wins)
        ([("127.0.*.?", "A", "WHO=wild,X=1"), ("127.0.0.1", "A", "X=2")], b"WHO=wild X=2\n"),
        # ranges
        ([("127.0-5.0.1-9", "A", "WHO=range")], b"WHO=range X=\n"),
        # a row for another address does not apply
        ([("10.0.0.1", "D", None), ("*", "A", "WHO=star")], b"WHO=star X=\n"),
        # backslash-comma is a literal comma
        ([("*", "A", r"WHO=a\,b")], b"WHO=a,b X=\n"),
    ]
    for rows, expected in cases:
        _rules(mariadb, table, port, rows)
        assert server.talk() == expected, (rows, server.log())
    for rows in ([("127.0.0.1", "D", None)], [("127.0.0.*", "D", None), ("*", "A", "WHO=x")],
                 [("127.0.0.2-9", "A", None), ("127.?.0.1", "D", None)]):
        _rules(mariadb, table, port, rows)
        mark = len(server.lines())
        assert server.talk() == b"", rows
        lines = _wait_since(server, mark, "deny 0 ")
        assert any(f"MySQL: Port {port}: IPrule " in line for line in lines), lines
    assert "Traceback" not in server.log()


def test_both_clients_give_the_same_answers(servers, mariadb, table, tmp_path) -> None:
    conf = _dbconf(tmp_path, mariadb, table)
    answers: Dict[str, List[bytes]] = {}
    rows_list = [[("127.0.0.1", "A", "WHO=a")], [("127.*.*.*", "D", None)],
                 [("12?.0.0.1", "A", "WHO=q,X=y")], [("1-.0.0.1", "A", "WHO=hi")],
                 [("no-such-host.invalid", "D", None), ("*", "A", "WHO=nomatch")]]
    for client in CLIENTS:
        server = servers(["-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, client))
        got = []
        for rows in rows_list:
            _rules(mariadb, table, server.port, rows)
            got.append(server.talk())
        answers[client] = got
    assert answers["builtin"] == answers["library"]
    assert answers["builtin"] == [b"WHO=a X=\n", b"", b"WHO=q X=y\n", b"WHO=hi X=\n",
                                  b"WHO=nomatch X=\n"]


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_table_is_created(servers, mariadb, tmp_path, client: str) -> None:
    name = f"made_{client}"
    mariadb.sql(f"drop table if exists {name}")
    conf = _dbconf(tmp_path, mariadb, name)
    server = servers(["-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, client))
    assert server.talk() == b"WHO= X=\n", server.log()
    columns = mariadb.sql(f"show columns from {name}")
    assert [line.split("\t")[0] for line in columns.splitlines()] == [
        "port", "timestamp", "iprule", "decision", "env"]
    mariadb.sql(f"insert into {name} (port, timestamp, iprule, decision, env) "
                f"values ({server.port}, now(), '*', 'A', 'WHO=made')")
    assert server.talk() == b"WHO=made X=\n"
    mariadb.sql(f"drop table {name}")


@pytest.mark.parametrize("client", CLIENTS)
def test_database_down_and_back(servers, mariadb, table, tmp_path, client: str) -> None:
    conf = _dbconf(tmp_path, mariadb, table)
    server = servers(["-HRl0", "-m", conf], prog=PRINT, env=_env(mariadb, client))
    _rules(mariadb, table, server.port, [("*", "A", "WHO=up")])
    assert server.talk() == b"WHO=up X=\n"
    mariadb.stop()
    try:
        mark = len(server.lines())
        for _ in range(4):
            assert server.talk() == b""          # fails closed
        warnings = [line for line in _since(server, mark) if "warning" in line]
        assert len(warnings) == 1 and "dropping connection, MySQL: " in warnings[0], warnings
        # the server is not dying: no "fatal" line from a helper child
        assert not [line for line in server.lines() if "fatal" in line], server.log()
        if client == "library":
            assert "MySQL: Unable to connect to MySQL Server: Can't connect" in warnings[0]
    finally:
        mariadb.start()
    # served again without a restart (after the back-off)
    assert wait_until(lambda: server.talk() == b"WHO=up X=\n", timeout=20), server.log()
    assert server.running
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_password_is_fatal_at_startup(servers, mariadb, table, tmp_path,
                                            client: str) -> None:
    from tests.fix_server import run_once, OURS
    conf = _dbconf(tmp_path, mariadb, table, password="wrong")
    result = run_once(OURS, ["-HRl0", "-m", conf, "127.0.0.1", "0", "true"],
                      env=_env(mariadb, client))
    err = result.stderr.decode()
    assert result.returncode == 111, err
    assert err.startswith("tcpserver: fatal: Unable to connect to MySQL Server: ") and \
        "Access denied" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1:u:p:db\n", "tcpserver: fatal: Invalid db.conf\n"),
    ("127.0.0.1:u:p:db:\n", "tcpserver: fatal: Invalid db.conf\n"),
    ("", "tcpserver: fatal: Invalid db.conf\n"),
])
def test_malformed_dbconf(tmp_path, text: str, message: str) -> None:
    from tests.fix_server import run_once, OURS
    path = os.path.join(os.fspath(tmp_path), "db.conf")
    with open(path, "w") as handle:
        handle.write(text)
    result = run_once(OURS, ["-HRl0", "-m", path, "127.0.0.1", "0", "true"],
                      env=clean_env(MYSQL_TIMEOUT="2"))
    assert (result.returncode, result.stderr.decode()) == (111, message)


def test_missing_dbconf(tmp_path) -> None:
    from tests.fix_server import run_once, OURS
    path = os.path.join(os.fspath(tmp_path), "none.conf")
    result = run_once(OURS, ["-HRl0", "-m", path, "127.0.0.1", "0", "true"])
    assert result.returncode == 111
    assert result.stderr.decode() == f"tcpserver: fatal: unable to read {path}: file does not exist\n"


def test_unreachable_database_is_fatal_at_startup(tmp_path) -> None:
    from tests.fix_server import run_once, OURS
    from tests.util import free_port
    path = os.path.join(os.fspath(tmp_path), "db.conf")
    with open(path, "w") as handle:
        handle.write("127.0.0.1:u:p:db:t\n")
    os.chmod(path, 0o600)
    result = run_once(OURS, ["-HRl0", "-m", path, "127.0.0.1", "0", "true"],
                      env=clean_env(MYSQL_TCP_PORT=str(free_port()), MYSQL_TIMEOUT="2"))
    err = result.stderr.decode()
    assert result.returncode == 111
    assert err.startswith("tcpserver: fatal: Unable to connect to MySQL Server: Can't connect")


def test_stalled_database_times_out_and_the_loop_goes_on(servers, tmp_path) -> None:
    """A database that stops answering queries: each client is dropped
    after $MYSQL_TIMEOUT, and meanwhile the loop answers SIGHUP."""
    from tests.fix_mysql_fake import FakeMysql
    with FakeMysql(user="alice", password="secret", stall="query") as fake:
        path = os.path.join(os.fspath(tmp_path), "db.conf")
        with open(path, "w") as handle:
            handle.write("127.0.0.1:alice:secret:db:t\n")
        server = servers(["-v", "-HRl0", "-m", path], prog=PRINT,
                         env=clean_env(MYSQL_TCP_PORT=str(fake.port), MYSQL_TIMEOUT="3"))
        client = server.connect()
        assert wait_until(lambda: any(e.startswith("query ") for e in fake.events), 10), \
            fake.events                                        # the query is stuck
        mark = len(server.lines())
        os.kill(server.pid, signal.SIGHUP)
        _wait_since(server, mark, "sighup: ", timeout=2)        # the loop is not stuck
        client.settimeout(10)
        assert client.recv(100) == b""                         # dropped at the timeout
        client.close()
        _wait_since(server, mark, "warning: dropping connection, MySQL: Lost connection")
