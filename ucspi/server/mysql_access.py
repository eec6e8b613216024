"""``-m db.conf``: access rules from a MySQL table (spec subsystems §3,
DECISIONS D40).

:class:`MysqlAccess` is an access source (:mod:`.access`).  For each
client it asks the table for the rows of the listener's port
(``select decision, iprule, env from T where port = P``; on error 1146
the table is created and asked again), resolves the host-name patterns
that need it with the server's own non-blocking resolver, and evaluates
the rows (:func:`ucspi.mysql.rules.evaluate`).  With ``-x`` too, an
allowed client is then looked up in the cdb, whose environment comes
after the table's.

The rows come from one of two sources:

* :class:`BuiltinRows`: the pure-Python client (:mod:`ucspi.mysql.driver`),
  non-blocking in the loop over one persistent connection;
* :class:`LibraryRows`: ``$MYSQL_LIB`` (libmysqlclient or libmariadb
  through ctypes), which blocks, so each query runs in a helper child
  (:class:`.offload.Offload`) and its rows come back through a pipe.

It fails closed: a client whose rows cannot be had is dropped, with one
warning line per failure burst (the next success ends the burst).
"""

from __future__ import annotations

import ipaddress
import marshal
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..environ import Change, Endpoints
from ..errors import Fatal, UcspiError
from ..log import Log, safe
from ..mysql import rules
from ..mysql.protocol import MysqlError, Result
from .access import Access, Answer, Verdict
from ..reactor import Reactor
from .lookups import Lookups
from .offload import Offload

Rows = List[List[Optional[bytes]]]
RowsDone = Callable[[Optional[Rows], Optional[BaseException]], None]
NO_SUCH_TABLE = 1146


class BuiltinRows:
    """Rows through the built-in client (:class:`~ucspi.mysql.driver.Driver`)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def fetch(self, select: str, create: str, done: RowsDone) -> None:
        def selected(result: Optional[Result], error: Optional[BaseException],
                     again: bool = True) -> None:
            if error is not None:
                done(None, error)
            elif result is not None and result.error is not None:
                if result.error.code == NO_SUCH_TABLE and again:
                    self.driver.request(create, created)
                else:
                    done(None, _query_error(select, result.error))
            else:
                done(result.rows if result is not None else [], None)

        def created(result: Optional[Result], error: Optional[BaseException]) -> None:
            if error is not None:
                done(None, error)
            elif result is not None and result.error is not None and result.error.code != 1050:
                done(None, _query_error(create, result.error))     # 1050: made meanwhile
            else:
                self.driver.request(select, lambda r, e: selected(r, e, again=False))

        self.driver.request(select, selected)


class LibraryRows:
    """Rows through ``$MYSQL_LIB``, in a helper child per query."""

    def __init__(self, client_factory: Callable[[], Any], offload: Offload) -> None:
        self.client_factory = client_factory
        self.offload = offload
        self.waiting: Dict[str, List[RowsDone]] = {}

    def fetch(self, select: str, create: str, done: RowsDone) -> None:
        if select in self.waiting:              # a helper is on it: share its answer
            self.waiting[select].append(done)
            return
        self.waiting[select] = [done]

        def work() -> bytes:
            client = self.client_factory()
            try:
                try:
                    rows = client.query(select)
                except UcspiError as exc:
                    if getattr(exc, "code", 0) != NO_SUCH_TABLE:
                        raise
                    try:
                        client.query(create)
                    except UcspiError as made:
                        if getattr(made, "code", 0) != 1050:
                            raise _query_error(create, made) from None
                    rows = client.query(select)
                return marshal.dumps(("ok", rows))
            except UcspiError as exc:
                return marshal.dumps(("error", getattr(exc, "code", 0),
                                      getattr(exc, "message", str(exc))))
            finally:
                client.close()

        def got(data: bytes, error: Optional[OSError]) -> None:
            waiters = self.waiting.pop(select, [])
            rows: Optional[Rows] = None
            failure: Optional[BaseException] = error
            if failure is None:
                try:
                    answer = marshal.loads(data)
                    if answer[0] == "ok":
                        rows = list(answer[1])
                    else:
                        failure = MysqlError(int(answer[1]), str(answer[2]))
                except (EOFError, ValueError, TypeError, IndexError):
                    failure = MysqlError(2013, "Lost connection to MySQL server during query")
            for waiter in waiters:
                waiter(rows, failure)

        self.offload.run(work, got)


def _query_error(sql: str, error: BaseException) -> MysqlError:
    message = getattr(error, "message", str(error))
    return MysqlError(getattr(error, "code", 0), f"{sql}: {message}")


def _text(address: Any) -> str:
    """An address from the resolver as the client's IP is written."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class MysqlAccess:
    """The ``-m`` access source (and ``-x`` after it, if given)."""

    def __init__(self, conf: Any, source: Any, lookups: Lookups, log: Log,
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
        select = rules.select_sql(self.conf.table, port)
        create = rules.create_sql(self.conf.table)
        self.source.fetch(select, create,
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
        from ..dns.lookup import lookup_addresses
        resolved: Dict[str, List[str]] = {}
        left = [len(names)]
        conf = self.lookups.dns_config()

        def one(name: str) -> None:
            def done(addresses: List[Any], error: Optional[BaseException]) -> None:
                resolved[name] = [] if error is not None else [_text(a) for a in addresses]
                left[0] -= 1
                if left[0] == 0:
                    self._evaluate(ep, answer, port, plan, resolved)

            def abort(error: OSError) -> None:
                done([], error)

            lookup_addresses(self.lookups.reactor, conf, name, done, abort)

        for name in names:
            one(name)

    def _evaluate(self, ep: Endpoints, answer: Answer, port: int, plan: "rules.Plan",
                  resolved: Dict[str, List[str]]) -> None:
        outcome = plan.evaluate(ep.remote_ip, resolved)
        if outcome.denied:
            if self.log.verbosity >= 1:
                self.log.line(b"MySQL: Port %d: IPrule %s"
                              % (port, safe(outcome.deny_rule)))
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


def describe_endpoint(endpoint: Tuple[Any, ...]) -> str:
    return endpoint[1] if endpoint[0] == "unix" else f"{endpoint[1]}:{endpoint[2]}"


def build(path: str, environ: Mapping[str, str], reactor: Reactor, lookups: Lookups,
          log: Log, then: Optional[Access], max_per_host: int,
          offload: Offload) -> MysqlAccess:
    """``-m db.conf`` at start-up: read db.conf, choose the client, and
    connect once (a failure is fatal, as in IndiMail).

    Raises:
        Fatal: ``Invalid db.conf``, ``unable to read ...``, ``couldn't
            load MySQL shared lib: ...``, ``Unable to connect to MySQL
            Server: ...``.
    """
    from ..mysql import library
    conf = rules.read_dbconf(path)
    where = rules.endpoint(conf, environ)
    timeout = rules.mysql_timeout(environ)
    choice = library.configured(environ)
    if not choice.active:
        # IndiMail would ignore -m without a word; -m never does nothing here (D40)
        log.warning(f"MySQL library {environ.get('MYSQL_LIB', '')!r} is not readable: "
                    "using the built-in client")
    if choice.active and choice.path:
        lib = library.load(choice.path)

        def client() -> Any:
            made = library.LibraryClient(lib)
            made.connect(conf, where, timeout)
            return made

        try:
            client().close()
        except MysqlError as exc:
            raise Fatal(rules.connect_error(exc.message)) from None
        source: Any = LibraryRows(client, offload)
    else:
        from ..mysql.driver import Driver, connect_now
        driver = Driver(reactor, where, conf.user, conf.password, conf.database, timeout)
        try:
            connect_now(driver)
        except MysqlError as exc:
            raise Fatal(rules.connect_error(exc.message)) from None
        source = BuiltinRows(driver)
    return MysqlAccess(conf, source, lookups, log, then, max_per_host)
