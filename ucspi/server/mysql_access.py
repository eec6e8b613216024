"""``-m db.conf``: access rules from a MySQL table (IndiMail's
load_mysql.c; design: mysql-rules).

:class:`MysqlAccess` is an access source (:mod:`.access`).  For each
client it asks the table for the rows of the listener's port
(``select decision, iprule, env from `T` where port = P``; on error 1146
the table is created and asked again), resolves the host-name patterns
that need it, one at a time, through the lookup service
(:meth:`.lookups.Lookups.addresses`: the server's own non-blocking
resolver), and evaluates the rows (:func:`ucspi.mysql.rules.evaluate`).  With ``-x`` too, an
allowed client is then looked up in the cdb, whose environment comes
after the table's.

The rows come from one of two sources:

* :class:`BuiltinRows`: the pure-Python client (:mod:`ucspi.mysql.driver`),
  non-blocking in the loop over one persistent connection;
* :class:`LibraryRows`: ``$MYSQL_LIB`` (libmysqlclient or libmariadb
  through ctypes), which blocks, so each query runs in a helper child
  (:class:`ucspi.proc.offload.Offload`) and its rows come back through a pipe.

It fails closed: a client whose rows cannot be had is dropped, with one
warning line per failure burst (the next success ends the burst); so is
a client for whom a host-name lookup failed (a time-out, a server
failure, no descriptor: never taken for "no such name"), with a warning
naming it.
"""

from __future__ import annotations

import ipaddress
import marshal
import os
import stat
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Protocol, Tuple, Union

from ..dns.msg import BadName
from ..environ import Change, Endpoints
from ..errors import Fatal, errtext
from ..log import Log, safe
from ..mysql import rules
from ..mysql.protocol import MysqlError, Result

if TYPE_CHECKING:
    from ..mysql.driver import Driver
    from ..mysql.library import LibraryClient
from ..reactor import Reactor
from .access import Access, Answer, Verdict
from .lookups import Lookups
from ..proc.offload import Offload

Rows = List[List[Optional[bytes]]]
#: a helper's deadline in ``$MYSQL_TIMEOUT``s: connect, select, create,
#: select, each of which libmysqlclient may try three times
HELPER_ROUNDS = 12
RowsDone = Callable[[Optional[Rows], Optional[BaseException]], None]


def failure(table: str, port: int, error: BaseException, creating: bool = False
            ) -> MysqlError:
    """The error a client is dropped with: IndiMail's line for the
    statement that failed (:func:`ucspi.mysql.rules.query_error` and
    its siblings), with the error's number kept."""
    message = getattr(error, "message", None) or str(error)
    if creating:
        text = rules.create_error(table, message)
    elif getattr(error, "stage", "") == "result":
        text = rules.result_error(table, port, message)
    else:
        text = rules.query_error(table, port, message)
    return MysqlError(getattr(error, "code", 0), text)


class RowSource(Protocol):
    """Where the rows of the rules table come from."""

    def fetch(self, table: str, port: int, done: RowsDone) -> None:
        """Call ``done(rows, None)`` or ``done(None, error)`` once."""


class BuiltinRows:
    """Rows through the built-in client (:class:`~ucspi.mysql.driver.Driver`)."""

    def __init__(self, driver: "Driver") -> None:
        self.driver = driver

    def fetch(self, table: str, port: int, done: RowsDone) -> None:
        select = rules.select_sql(table, port)

        def selected(result: Optional[Result], error: Optional[BaseException],
                     again: bool = True) -> None:
            if error is not None:
                done(None, error)
            elif result is not None and result.error is not None:
                if result.error.code == rules.ER_NO_SUCH_TABLE and again:
                    self.driver.request(rules.create_sql(table), created)
                else:
                    done(None, failure(table, port, result.error))
            else:
                done(result.rows if result is not None else [], None)

        def created(result: Optional[Result], error: Optional[BaseException]) -> None:
            if error is not None:
                done(None, error)
            elif (result is not None and result.error is not None
                  and result.error.code != rules.ER_TABLE_EXISTS):
                done(None, failure(table, port, result.error, creating=True))
            else:
                self.driver.request(select, lambda r, e: selected(r, e, again=False))

        self.driver.request(select, selected)


class LibraryRows:
    """Rows through ``$MYSQL_LIB``, in a helper child per query.

    Args:
        client_factory: a connected client (raises the library's error).
        offload: runs the helpers.
        timeout: ``$MYSQL_TIMEOUT`` (0: none).  The library keeps to it
            on each call; the helper is killed only if it works
            :data:`HELPER_ROUNDS` times longer (the calls of one lookup,
            each of which a libmysqlclient may try three times), and
            never when there is no timeout.
    """

    def __init__(self, client_factory: Callable[[], "LibraryClient"], offload: Offload,
                 timeout: float = 0.0) -> None:
        self.client_factory = client_factory
        self.offload = offload
        self.deadline = helper_deadline(timeout)
        self.waiting: Dict[str, List[RowsDone]] = {}

    def fetch(self, table: str, port: int, done: RowsDone) -> None:
        select = rules.select_sql(table, port)
        if select in self.waiting:              # a helper is on it: share its answer
            self.waiting[select].append(done)
            return
        self.waiting[select] = [done]

        def work() -> bytes:
            # in the helper: every error of the library becomes the
            # answer, never an exception (which would be the child's
            # "internal error")
            try:
                return marshal.dumps(("ok", self._rows(table, port, select)))
            except MysqlError as exc:
                return marshal.dumps(("error", exc.code, exc.message))

        def got(data: bytes, error: Optional[OSError]) -> None:
            waiters = self.waiting.pop(select, [])
            rows: Optional[Rows] = None
            failed: Optional[BaseException] = error
            if failed is None:
                try:
                    answer = marshal.loads(data)
                    if answer[0] == "ok":
                        rows = list(answer[1])
                    else:
                        failed = MysqlError(int(answer[1]), str(answer[2]))
                except (EOFError, ValueError, TypeError, IndexError):
                    failed = MysqlError(2013, "Lost connection to MySQL server during query")
            for waiter in waiters:
                waiter(rows, failed)

        self.offload.run(work, got, deadline=self.deadline)

    def _rows(self, table: str, port: int, select: str) -> Rows:
        """The helper's work: connect, ask (create the table if it is
        missing, ask again), close.

        Raises:
            MysqlError: IndiMail's texts (``Unable to connect to MySQL
                Server: ...``, the statement and the error).
        """
        try:
            client = self.client_factory()
        except MysqlError as exc:
            raise MysqlError(exc.code, rules.connect_error(exc.message)) from None
        try:
            try:
                return list(client.query(select))
            except MysqlError as exc:
                if exc.code != rules.ER_NO_SUCH_TABLE:
                    raise failure(table, port, exc) from None
            try:
                client.query(rules.create_sql(table))
            except MysqlError as made:
                if made.code != rules.ER_TABLE_EXISTS:
                    raise failure(table, port, made, creating=True) from None
            try:
                return list(client.query(select))
            except MysqlError as again:
                raise failure(table, port, again) from None
        finally:
            client.close()


def helper_deadline(timeout: float) -> Optional[float]:
    """How long a ``$MYSQL_LIB`` helper may work: None (no limit) when
    ``$MYSQL_TIMEOUT`` is 0, else :data:`HELPER_ROUNDS` times it."""
    return None if timeout <= 0 else HELPER_ROUNDS * timeout


def _text(address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> str:
    """An address from the resolver as the client's IP is written."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class MysqlAccess:
    """The ``-m`` access source (and ``-x`` after it, if given)."""

    def __init__(self, conf: rules.DbConf, source: RowSource, lookups: Lookups, log: Log,
                 then: Optional[Access], max_per_host: int) -> None:
        self.conf = conf
        self.source = source
        self.lookups = lookups
        self.log = log
        self.then = then
        self.max_per_host = max_per_host
        self.failing = False
        self._seen_rows: Optional[Rows] = None
        self._seen_plan: Optional[rules.Plan] = None

    def plan(self, rows: Rows) -> "rules.Plan":
        """The rows read once for every client of this answer, and of the
        next answers as long as the table does not change."""
        plan = self._seen_plan
        if plan is None or (rows is not self._seen_rows and rows != self._seen_rows):
            plan = self._seen_plan = rules.Plan(rows)
        self._seen_rows = rows
        return plan

    def check(self, ep: Endpoints, answer: Answer) -> None:
        port = int(ep.local_port)
        self.source.fetch(self.conf.table, port,
                          lambda rows, error: self._rows(ep, answer, port, rows, error))

    # -- steps ------------------------------------------------------------------
    def _rows(self, ep: Endpoints, answer: Answer, port: int, rows: Optional[Rows],
              error: Optional[BaseException]) -> None:
        if error is not None or rows is None:
            if not self.failing:
                self.failing = True
                message = getattr(error, "message", None) or str(error)
                self.log.drop(f"MySQL: {message}")
            answer(Verdict(False, [], 0, quiet=True))
            return
        if self.failing:
            self.failing = False
            self.log.warning("MySQL: answering again")
        plan = self.plan(rows)
        names = plan.names_to_resolve(ep.remote_ip)
        if not names:
            self._evaluate(ep, answer, port, plan, {})
            return
        self._resolve(ep, answer, port, plan, names)

    def _resolve(self, ep: Endpoints, answer: Answer, port: int, plan: "rules.Plan",
                 names: List[str]) -> None:
        """Look the host names up one after the other (so that a
        connection holds the sockets of one lookup at a time, as the
        descriptor budget counts), through the lookup service; then
        evaluate.  A lookup that failed for a reason other than "no such
        name" (a time-out, a server failure, no descriptor) and did not
        find the client drops the connection: it is never taken for "no
        match" (design: mysql-rules)."""
        resolved: Dict[str, List[str]] = {}
        waiting = list(reversed(names))

        def step() -> None:
            if not waiting:
                self._evaluate(ep, answer, port, plan, resolved)
                return
            name = waiting.pop()

            def done(addresses: List[ipaddress.IPv6Address],
                     error: Optional[BaseException]) -> None:
                found = [_text(a) for a in addresses]
                if (error is not None and not isinstance(error, BadName)
                        and not rules.resolves_to(ep.remote_ip, found)):
                    self.log.drop_from(ep.remote_ip, f"MySQL: unable to look up {name}: "
                                       f"{errtext(error)}")
                    answer(Verdict(False, [], 0, quiet=True))
                    return
                resolved[name] = found
                step()

            def abort(error: OSError) -> None:
                self.log.drop_from(ep.remote_ip,
                                   f"unable to start a lookup: {errtext(error)}")
                answer(Verdict(False, [], 0, quiet=True))

            self.lookups.addresses(name, done, abort)

        step()

    def _evaluate(self, ep: Endpoints, answer: Answer, port: int, plan: "rules.Plan",
                  resolved: Dict[str, List[str]]) -> None:
        outcome = plan.evaluate(ep.remote_ip, resolved)
        if outcome.denied:
            if self.log.verbosity >= 1:
                rule = safe(outcome.deny_rule).decode("latin-1")   # the log's filter
                self.log.line(rules.deny_line(port, rule).encode("latin-1"))
            answer(Verdict(False, [], 0))
            return
        limit = self.max_per_host if outcome.max_per_host is None else outcome.max_per_host
        changes: List[Change] = list(outcome.changes)
        if self.then is None:
            answer(Verdict(True, changes, limit))
            return

        def merged(verdict: Verdict) -> None:
            if verdict.failure is not None or not verdict.allow:
                answer(verdict)
                return
            own = any(name == b"MAXPERIP" for name, _ in verdict.changes)
            answer(Verdict(True, changes + verdict.changes,
                           verdict.max_per_host if own or outcome.max_per_host is None
                           else limit))

        self.then.check(ep, merged)


def _readable_ca(path: str) -> None:
    """The CA file can be read (the library reads it on each connection).

    Raises:
        Fatal: ``unable to read $MYSQL_SSL_CA PATH: ERROR``.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise Fatal(f"unable to read $MYSQL_SSL_CA {path}: {errtext(exc)}") from None


def readable_by_others(path: str) -> Optional[int]:
    """The permission bits of ``path`` if its group or others may read
    it (db.conf holds a password: warn, as ssh does for a key), else
    None (also when it cannot be examined: reading it has worked)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


def build(path: str, environ: Mapping[str, str], reactor: Reactor, lookups: Lookups,
          log: Log, then: Optional[Access], max_per_host: int,
          offload: Offload) -> MysqlAccess:
    """``-m db.conf`` at start-up: read db.conf, choose the client, and
    connect once (a failure is fatal, as in IndiMail).

    Warns when db.conf is readable by group or others.  TLS to a
    database over TCP as ``$MYSQL_SSL`` and ``$MYSQL_SSL_CA`` say
    (:func:`ucspi.mysql.rules.db_tls`); the CA file is read now.

    Raises:
        Fatal: ``Invalid db.conf``, ``unable to read ...``, ``couldn't
            load MySQL shared lib: ...``, ``Unable to connect to MySQL
            Server: ...``, ``MYSQL_SSL must be ...`` (exit 100),
            ``unable to load $MYSQL_SSL_CA ...``.
    """
    from ..mysql import library
    conf = rules.read_dbconf(path)
    lookups.preload(dns=True, ident=False)     # the host names of the rules, after the drop
    exposed = readable_by_others(path)
    if exposed is not None:
        log.warning(f"{path} holds a password and is readable by group or others "
                    f"(mode {exposed:04o}): make it readable by its owner only")
    where = rules.endpoint(conf, environ)
    timeout = rules.mysql_timeout(environ)
    tls = rules.db_tls(environ)
    if tls.ca is not None and where[0] == "tcp":
        _readable_ca(tls.ca)
    choice = library.configured(environ)
    if not choice.active:
        # IndiMail would ignore -m without a word; -m never does nothing here (design: mysql-rules)
        log.warning(f"MySQL library {environ.get('MYSQL_LIB', '')!r} is not readable: "
                    "using the built-in client")
    if choice.active and choice.path:
        lib = library.load(choice.path)

        def client() -> library.LibraryClient:
            made = library.LibraryClient(lib)
            made.connect(conf, where, timeout, tls)
            return made

        try:
            client().close()
        except MysqlError as exc:
            raise Fatal(rules.connect_error(exc.message)) from None
        source: RowSource = LibraryRows(client, offload, timeout)
    else:
        from ..mysql.driver import Driver, connect_now, verified_context
        context = None
        if tls.ca is not None and where[0] == "tcp":
            try:
                context = verified_context(tls.ca)
            except OSError as exc:     # ssl.SSLError too: no certificate in it
                raise Fatal(f"unable to load $MYSQL_SSL_CA {tls.ca}: "
                            f"{getattr(exc, 'reason', None) or errtext(exc)}") from None
        driver = Driver(reactor, where, conf.user, conf.password, conf.database, timeout,
                        context, tls.required)
        try:
            connect_now(driver)
        except MysqlError as exc:
            raise Fatal(rules.connect_error(exc.message)) from None
        source = BuiltinRows(driver)
    return MysqlAccess(conf, source, lookups, log, then, max_per_host)
