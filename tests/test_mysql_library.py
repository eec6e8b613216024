"""The ctypes client (ucspi/mysql/library.py): choosing and loading the
library (as IndiMail's load_mysql.c), and queries through Debian's libmariadb
against a real MariaDB server (tests/fix_mariadb.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List

import pytest

from tests.fix_mariadb import need_libmariadb
from tests.util import free_port
from ucspi.errors import Fatal
from ucspi.mysql import library, rules
from ucspi.mysql.library import Choice, LibraryClient, LibraryError, configured, load
from ucspi.mysql.packets import MysqlError
from ucspi.mysql.rules import DbConf, Endpoint

if TYPE_CHECKING:
    from tests.fix_mariadb import MariaDB


# -- which library -------------------------------------------------------------
def test_configured_env(tmp_path: Path) -> None:
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"")
    empty = str(tmp_path / "nocontrol")
    assert configured({"MYSQL_LIB": str(lib)}, empty) == Choice(True, str(lib))
    # set but unreadable (here: missing) -> MySQL not active, silently
    assert configured({"MYSQL_LIB": str(tmp_path / "nothere.so")}, empty) == Choice(False, None)
    assert configured({"MYSQL_LIB": ""}, empty) == Choice(False, None)
    # the variable wins over the control file
    (tmp_path / "libmysql").write_text("/some/lib.so\n")
    assert configured({"MYSQL_LIB": str(lib)}, str(tmp_path)).path == str(lib)


def test_configured_control_file(tmp_path: Path) -> None:
    # nothing configured: active, with the built-in client (design: mysql-rules)
    assert configured({}, str(tmp_path)) == Choice(True, None)
    (tmp_path / "mysql_lib").write_text("/old/name.so\n")
    assert configured({}, str(tmp_path)) == Choice(True, "/old/name.so")
    (tmp_path / "libmysql").write_text("/usr/lib/libmysqlclient.so.21 \t\n\nsecond line\n")
    assert configured({}, str(tmp_path)) == Choice(True, "/usr/lib/libmysqlclient.so.21")
    (tmp_path / "libmysql").write_text("")
    assert configured({}, str(tmp_path)) == Choice(True, "")


def test_configured_control_unreadable(tmp_path: Path) -> None:
    control = tmp_path / "libmysql"
    control.mkdir()                         # passes access(R_OK), fails to read
    with pytest.raises(Fatal) as info:
        configured({}, str(tmp_path))
    assert str(info.value) == "couldn't load MySQL shared lib: is a directory"
    if os.geteuid() != 0:
        control.rmdir()
        control.write_text("/x.so\n")
        control.chmod(0)
        assert configured({}, str(tmp_path)) == Choice(True, None)


def test_load_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothere.so")
    with pytest.raises(Fatal) as info:
        load(missing)
    assert str(info.value) == (f"couldn't load MySQL shared lib: {missing}: "
                               "cannot open shared object file: No such file or directory")
    assert info.value.code == 111
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        pytest.skip(libc)
    with pytest.raises(Fatal) as info:
        load(libc)
    # IndiMail's line: the symbol and the loader's text run together,
    # and it ends in ": "
    assert str(info.value) == (f"couldn't load MySQL shared lib: getlibObject: mysql_init{libc}: "
                               "undefined symbol: mysql_init: ")


def test_load_libmariadb() -> None:
    lib = load(need_libmariadb())
    for name in library.SYMBOLS:
        assert getattr(lib, name) is not None
    assert len(library.SYMBOLS) == 12


# -- against a server ------------------------------------------------------------
@pytest.fixture
def client() -> Iterator[LibraryClient]:
    conn = LibraryClient(load(need_libmariadb()))
    try:
        yield conn
    finally:
        conn.close()


def conf_of(db: "MariaDB", table: str = "tcprules", password: str = "") -> DbConf:
    return DbConf("127.0.0.1", db.user, password or db.password, db.database, table)


def test_tcp_and_unix(mariadb: "MariaDB", client: LibraryClient) -> None:
    conf = conf_of(mariadb)
    client.connect(conf, ("tcp", mariadb.host, mariadb.port), 5)
    assert client.query("select 1, 'two', NULL") == [[b"1", b"two", None]]
    assert client.query("select user(), @@port, 3")[0][1] == str(mariadb.port).encode()
    client.connect(conf._replace(server="localhost"), ("unix", mariadb.socket), 5)
    rows = client.query("select current_user(), database(), 3")
    assert rows == [[f"{mariadb.user}@localhost".encode(), mariadb.database.encode(), b"3"]]
    client.close()
    client.close()                          # twice is fine


def test_endpoint_from_conf(mariadb: "MariaDB", client: LibraryClient) -> None:
    conf = conf_of(mariadb)._replace(server="localhost")
    ep = rules.endpoint(conf, {"MYSQL_UNIX_PORT": mariadb.socket})
    client.connect(conf, ep, rules.mysql_timeout({}))
    assert client.query("select 1, 2, 3") == [[b"1", b"2", b"3"]]
    ep = rules.endpoint(conf._replace(server="127.0.0.1"), {"MYSQL_TCP_PORT": str(mariadb.port)})
    client.connect(conf, ep, 0)             # 0: no timeout set
    assert client.query("select 1, 2, 3") == [[b"1", b"2", b"3"]]


def test_wrong_password(mariadb: "MariaDB", client: LibraryClient) -> None:
    conf = conf_of(mariadb, password="wrong")
    endpoints: List[Endpoint] = [("tcp", mariadb.host, mariadb.port), ("unix", mariadb.socket)]
    for ep in endpoints:
        with pytest.raises(LibraryError) as info:
            client.connect(conf, ep, 5)
        assert info.value.code == 1045
        assert info.value.stage == "connect"
        assert "Access denied" in info.value.message
        assert isinstance(info.value, MysqlError)
        assert client.handle is None
        line = rules.connect_error(info.value.message)
        assert line.startswith("Unable to connect to MySQL Server: Access denied for user 'ucspi'@")


def test_cannot_connect(tmp_path: Path, client: LibraryClient) -> None:
    conf = DbConf("127.0.0.1", "u", "p", "d", "t")
    with pytest.raises(LibraryError) as info:
        client.connect(conf, ("tcp", "127.0.0.1", free_port()), 2)
    assert info.value.code == 2002 or info.value.code == 2003
    with pytest.raises(LibraryError) as info:
        client.connect(conf, ("unix", str(tmp_path / "no.sock")), 2)
    assert info.value.code == 2002
    with pytest.raises(LibraryError) as info:
        client.query("select 1, 2, 3")
    assert info.value.code == 2006


def test_missing_table_then_create(mariadb: "MariaDB", client: LibraryClient) -> None:
    table = "rules_missing"
    mariadb.sql(f"drop table if exists {table}")
    client.connect(conf_of(mariadb, table), ("unix", mariadb.socket), 5)
    sql = rules.select_sql(table, 25)
    with pytest.raises(LibraryError) as info:
        client.query(sql)
    assert info.value.code == rules.ER_NO_SUCH_TABLE == 1146
    assert info.value.stage == "query"
    assert rules.query_error(table, 25, info.value.message) == \
        f"select decision, iprule, env from `{table}` where port = 25: " \
        f"Table '{mariadb.database}.{table}' doesn't exist"
    # IndiMail's create statement is valid SQL, and has no result set
    assert client.query(rules.create_sql(table)) == []
    assert client.query(sql) == []
    columns = mariadb.sql(f"select column_name from information_schema.columns "
                          f"where table_name = '{table}' order by ordinal_position")
    assert columns.split() == ["port", "timestamp", "iprule", "decision", "env"]


def test_rows_and_nulls(mariadb: "MariaDB", client: LibraryClient) -> None:
    table = "rules_rows"
    mariadb.sql(f"drop table if exists {table};"
                f"create table {table} (port int, iprule char(40), decision char(1), env varchar(255));"
                f"insert into {table} values (25, '10.0.0.*', 'A', 'RELAYCLIENT=,X=a\\\\,b'),"
                f"(25, '*', 'A', NULL), (25, '192.168.*.*', 'D', NULL), (26, '*', 'D', NULL),"
                f"(25, NULL, NULL, NULL)")
    client.connect(conf_of(mariadb, table), ("tcp", mariadb.host, mariadb.port), 5)
    rows = client.query(rules.select_sql(table, 25) + " order by iprule")
    assert rows == [
        [None, None, None],
        [b"A", b"*", None],
        [b"A", b"10.0.0.*", b"RELAYCLIENT=,X=a\\,b"],
        [b"D", b"192.168.*.*", None],
    ]
    allowed = rules.evaluate(rows, "10.0.0.7", {}, 25)
    assert not allowed.denied
    assert allowed.changes == [(b"RELAYCLIENT", b""), (b"X", b"a,b")]
    denied = rules.evaluate(rows, "192.168.1.1", {}, 25)
    assert denied.denied and denied.deny_rule == "192.168.*.*"


def test_server_restart(mariadb: "MariaDB", client: LibraryClient) -> None:
    """A connection does not survive the server: the query fails (gone
    away / lost), a new connection works once the server is back."""
    ep: Endpoint = ("unix", mariadb.socket)
    client.connect(conf_of(mariadb), ep, 5)
    mariadb.stop()
    try:
        with pytest.raises(LibraryError) as info:
            client.query("select 1, 2, 3")
        assert info.value.code in (2006, 2013)
        with pytest.raises(LibraryError) as info:
            client.connect(conf_of(mariadb), ep, 5)
        assert info.value.code == 2002
    finally:
        mariadb.start()
    client.connect(conf_of(mariadb), ep, 5)
    assert client.query("select 1, 2, 3") == [[b"1", b"2", b"3"]]
