"""A MySQL client library through ctypes (as IndiMail's load_mysql.c loads one).

The only module of the package that imports :mod:`ctypes` for MySQL.

* :func:`configured`: which library ``$MYSQL_LIB`` or the control file
  ``/etc/indimail/control/libmysql`` (else ``mysql_lib`` beside it)
  names, and whether MySQL is active at all (IndiMail's rules, and
  our built-in client when nothing is configured: design: mysql-rules).
* :func:`load`: the library with its twelve symbols (as IndiMail loads it;
  IndiMail's error lines as :class:`~ucspi.errors.Fatal`).
* :class:`LibraryClient`: one blocking connection (start-up check, or a
  forked helper child): :meth:`~LibraryClient.connect`,
  :meth:`~LibraryClient.query`, :meth:`~LibraryClient.close`.  Errors
  are :class:`LibraryError` with the library's ``code`` and ``message``.

The password in clear (``mysql_clear_password``, which a server may ask
for in its greeting or later) goes only over a UNIX socket or TLS
verified against ``$MYSQL_SSL_CA``, as with the built-in client.  Over
other TCP connections the library is told so: MariaDB Connector/C
(which ignores ``MYSQL_ENABLE_CLEARTEXT_PLUGIN``) gets the list of the
plugins it may use (``MARIADB_OPT_RESTRICTED_AUTH``), libmysqlclient
8.0 or later ``MYSQL_ENABLE_CLEARTEXT_PLUGIN`` false (older ones refuse
the plugin unless it is enabled).  The options' numbers differ between
the two (:class:`Flavour`), so the library is told apart by its symbols.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
from typing import Any, List, Mapping, NamedTuple, Optional

from ..errors import Fatal, errtext
from .packets import CR_AUTH_PLUGIN_CANNOT_LOAD, CR_SSL_CONNECTION_ERROR, SECURE_ONLY, MysqlError
from .rules import DbConf, DbTls, Endpoint, to_bytes

#: IndiMail's fixed control directory (not ``$CONTROLDIR``)
CONTROL_DIR = "/etc/indimail/control"
#: the control file's name since 2022, and the older one (IndiMail's documents say ``mysql_lib``)
CONTROL_FILES = ("libmysql", "mysql_lib")

#: now, local, deep-bind, no-delete (as IndiMail loads it)
FLAGS = (os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
         | getattr(os, "RTLD_NODELETE", 0))

#: the symbols that must all resolve, in IndiMail's order
SYMBOLS = ("mysql_init", "mysql_real_connect", "mysql_error", "mysql_errno",
           "mysql_close", "mysql_options", "mysql_query", "mysql_store_result",
           "mysql_fetch_row", "mysql_num_rows", "mysql_affected_rows",
           "mysql_free_result")

# enum mysql_option (the same numbers in MySQL's and MariaDB's headers)
MYSQL_OPT_CONNECT_TIMEOUT = 0
MYSQL_OPT_READ_TIMEOUT = 11
MYSQL_OPT_WRITE_TIMEOUT = 12

#: the plugins MariaDB Connector/C may use where the password must not
#: travel in clear (none of them sends it)
HASHED_PLUGINS = b"mysql_native_password,caching_sha2_password,client_ed25519"


class Flavour(NamedTuple):
    """Which client library, and the numbers of its TLS and plugin
    options (``enum mysql_option`` differs past the first dozen; None:
    the library has no such option)."""

    name: str
    ssl_ca: Optional[int]
    verify_server_cert: Optional[int]      # my_bool (MariaDB)
    ssl_enforce: Optional[int]             # my_bool (MariaDB)
    ssl_mode: Optional[int]                # unsigned int (MySQL 8)
    enable_cleartext: Optional[int]        # my_bool / bool
    restricted_auth: Optional[int]         # const char * (MariaDB Connector/C 3.3)


#: MariaDB Connector/C (libmariadb): include/mysql.h of 3.3
MARIADB = Flavour("MariaDB Connector/C", ssl_ca=27, verify_server_cert=21, ssl_enforce=38,
                  ssl_mode=None, enable_cleartext=36, restricted_auth=7026)
#: libmysqlclient 8.0 and later (include/mysql.h of MySQL 8.0)
MYSQL8 = Flavour("libmysqlclient 8", ssl_ca=21, verify_server_cert=None, ssl_enforce=None,
                 ssl_mode=35, enable_cleartext=30, restricted_auth=None)
#: anything else (libmysqlclient 5.x: the clear-text plugin is off
#: unless enabled; its TLS options are not used)
OTHER = Flavour("an older libmysqlclient", ssl_ca=None, verify_server_cert=None,
                ssl_enforce=None, ssl_mode=None, enable_cleartext=None, restricted_auth=None)
#: enum mysql_ssl_mode of MySQL 8
SSL_MODE_REQUIRED = 3
SSL_MODE_VERIFY_IDENTITY = 5
#: MariaDB Connector/C's error when a server wants a plugin not in the list
CR_PLUGIN_NOT_ALLOWED = 5010
#: libmysqlclient's switch for the clear-text plugin, stronger than its option
CLEARTEXT_VARIABLE = "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"

#: client error numbers used when the library cannot tell
CR_OUT_OF_MEMORY = 2008
CR_COMMANDS_OUT_OF_SYNC = 2014

_PREFIX = "couldn't load MySQL shared lib: "


class LibraryError(MysqlError):
    """An error reported by the client library: a
    :class:`~.packets.MysqlError` (so one ``except`` serves both
    clients) that also says at which call it happened.

    Attributes:
        code: ``mysql_errno`` (1045 access denied, 1146 no such table,
            2002/2003 cannot connect, 2006/2013 connection lost, ...).
        message: ``mysql_error``.
        stage: ``"connect"``, ``"query"`` (``mysql_query`` failed) or
            ``"result"`` (``mysql_store_result`` failed), for the log
            lines of :mod:`.rules` (``query_error``, ``result_error``).
    """

    def __init__(self, code: int, message: str, stage: str = "query") -> None:
        super().__init__(code, message)
        self.stage = stage


class Choice(NamedTuple):
    """What the choice of a library found.

    Attributes:
        active: False when a library is configured but unreadable
            (``$MYSQL_LIB`` fails the access check): MySQL is not active
            and ``-m`` is silently ignored, as in IndiMail.
        path: the library to :func:`load`; None with ``active`` True:
            nothing is configured, so the built-in client is used (design: mysql-rules).
    """

    active: bool
    path: Optional[str]


def configured(environ: Mapping[str, str], control_dir: str = CONTROL_DIR) -> Choice:
    """Which client library to use (IndiMail's choice, plus our built-in client).

    1. ``$MYSQL_LIB`` set (even empty): readable → that path; not
       readable → not active.
    2. Else the control file ``libmysql`` of ``control_dir`` (when it
       does not exist: ``mysql_lib``): not readable → nothing configured;
       else its first line, trailing blanks and newlines removed (the
       library itself is not checked here: :func:`load` fails loudly).

    Raises:
        Fatal: ``couldn't load MySQL shared lib: ERROR`` when the control
            file passed the access check but could not be read.
    """
    lib = environ.get("MYSQL_LIB")
    if lib is not None:
        if lib and os.access(lib, os.R_OK):
            return Choice(True, lib)
        return Choice(False, None)
    for name in CONTROL_FILES:
        path = os.path.join(control_dir, name)
        if os.path.lexists(path):
            break
    else:
        return Choice(True, None)
    if not os.access(path, os.R_OK):
        return Choice(True, None)
    try:
        with open(path, "rb") as handle:
            line = handle.readline(65536)
    except OSError as exc:
        raise Fatal(_PREFIX + errtext(exc)) from None
    name = os.fsdecode(line.split(b"\n", 1)[0].rstrip(b" \t\r\n"))
    return Choice(True, name)


class Library:
    """A loaded client library and its twelve functions, typed."""

    def __init__(self, path: str, cdll: ctypes.CDLL, functions: Mapping[str, Any],
                 flavour: Flavour = OTHER) -> None:
        self.path = path
        self.cdll = cdll
        self.flavour = flavour
        f = functions
        vp, cp, ui = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint
        self.mysql_init: Any = f["mysql_init"]
        self.mysql_init.argtypes = [vp]
        self.mysql_init.restype = vp
        self.mysql_real_connect: Any = f["mysql_real_connect"]
        self.mysql_real_connect.argtypes = [vp, cp, cp, cp, cp, ui, cp, ctypes.c_ulong]
        self.mysql_real_connect.restype = vp
        self.mysql_error: Any = f["mysql_error"]
        self.mysql_error.argtypes = [vp]
        self.mysql_error.restype = cp
        self.mysql_errno: Any = f["mysql_errno"]
        self.mysql_errno.argtypes = [vp]
        self.mysql_errno.restype = ui
        self.mysql_close: Any = f["mysql_close"]
        self.mysql_close.argtypes = [vp]
        self.mysql_close.restype = None
        self.mysql_options: Any = f["mysql_options"]
        self.mysql_options.argtypes = [vp, ctypes.c_int, vp]
        self.mysql_options.restype = ctypes.c_int
        self.mysql_query: Any = f["mysql_query"]
        self.mysql_query.argtypes = [vp, cp]
        self.mysql_query.restype = ctypes.c_int
        self.mysql_store_result: Any = f["mysql_store_result"]
        self.mysql_store_result.argtypes = [vp]
        self.mysql_store_result.restype = vp
        self.mysql_fetch_row: Any = f["mysql_fetch_row"]
        self.mysql_fetch_row.argtypes = [vp]
        self.mysql_fetch_row.restype = ctypes.POINTER(cp)
        self.mysql_num_rows: Any = f["mysql_num_rows"]
        self.mysql_num_rows.argtypes = [vp]
        self.mysql_num_rows.restype = ctypes.c_ulonglong
        self.mysql_affected_rows: Any = f["mysql_affected_rows"]
        self.mysql_affected_rows.argtypes = [vp]
        self.mysql_affected_rows.restype = ctypes.c_ulonglong
        self.mysql_free_result: Any = f["mysql_free_result"]
        self.mysql_free_result.argtypes = [vp]
        self.mysql_free_result.restype = None
        # not one of the twelve: says whether a connection uses TLS
        self.mysql_get_ssl_cipher: Any = getattr(cdll, "mysql_get_ssl_cipher", None)
        if self.mysql_get_ssl_cipher is not None:
            self.mysql_get_ssl_cipher.argtypes = [vp]
            self.mysql_get_ssl_cipher.restype = cp


def load(path: str) -> Library:
    """Load ``path`` (now, local, deep-bind, no-delete) and resolve the
    twelve symbols IndiMail's load_mysql.c needs.

    Raises:
        Fatal: ``couldn't load MySQL shared lib: LOADER ERROR``, or for a
            missing symbol IndiMail's malformed line ``couldn't load MySQL
            shared lib: getlibObject: SYMBOLLOADER ERROR: `` (the symbol
            and the loader's text run together, and it ends in ``: ``).
    """
    try:
        cdll = ctypes.CDLL(path, mode=FLAGS)
    except OSError as exc:
        raise Fatal(_PREFIX + str(exc)) from None
    functions = {}
    for name in SYMBOLS:
        try:
            functions[name] = getattr(cdll, name)
        except AttributeError as exc:
            raise Fatal(f"{_PREFIX}getlibObject: {name}{exc}: ") from None
    return Library(path, cdll, functions, flavour(cdll))


def flavour(cdll: ctypes.CDLL) -> Flavour:
    """MariaDB Connector/C has ``mariadb_get_infov``; libmysqlclient 8
    says 80000 or more from ``mysql_get_client_version``."""
    if hasattr(cdll, "mariadb_get_infov"):
        return MARIADB
    try:
        version = cdll.mysql_get_client_version
    except AttributeError:
        return OTHER
    version.argtypes = []
    version.restype = ctypes.c_ulong
    return MYSQL8 if 80000 <= int(version()) < 1000000 else OTHER


Rows = List[List[Optional[bytes]]]


class LibraryClient:
    """One blocking connection through a loaded :class:`Library`."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self.handle: Optional[int] = None

    def _error(self, handle: Optional[int], stage: str, fallback: int) -> LibraryError:
        code = int(self.lib.mysql_errno(handle)) if handle else 0
        raw = self.lib.mysql_error(handle) if handle else None
        message = raw.decode("utf-8", "replace") if raw else ""
        if not code:
            code = fallback
        if not message:
            message = f"unknown error {code}"
        return LibraryError(code, message, stage)

    def _option(self, handle: int, option: int, seconds: int) -> None:
        value = ctypes.c_uint(seconds)
        self.lib.mysql_options(handle, option, ctypes.byref(value))

    def _cannot(self, what: str) -> LibraryError:
        return LibraryError(CR_SSL_CONNECTION_ERROR,
                            f"{self.lib.flavour.name} ({self.lib.path}) cannot {what}", "connect")

    def _set(self, handle: int, option: Optional[int], value: Any, what: str) -> None:
        """``mysql_options`` that must work: a library that refuses it
        cannot be made safe, so the connection is not made."""
        if option is None or self.lib.mysql_options(handle, option, value) != 0:
            raise self._cannot(what)

    def _protect(self, handle: int, tls: DbTls) -> None:
        """Over TCP: TLS as ``tls`` asks, and the password in clear only
        over TLS verified against its CA."""
        kind = self.lib.flavour
        on = ctypes.byref(ctypes.c_char(b"\1"))
        if tls.ca is not None:
            ca = ctypes.c_char_p(os.fsencode(tls.ca))
            self._set(handle, kind.ssl_ca, ca, "use $MYSQL_SSL_CA")
            if kind.ssl_mode is not None:
                mode = ctypes.c_uint(SSL_MODE_VERIFY_IDENTITY)
                self._set(handle, kind.ssl_mode, ctypes.byref(mode), "verify TLS")
            else:
                self._set(handle, kind.verify_server_cert, on, "verify TLS")
                self._set(handle, kind.ssl_enforce, on, "require TLS")
            return
        if tls.required:
            if self.lib.mysql_get_ssl_cipher is None:
                raise self._cannot("tell whether TLS is used")
            if kind.ssl_mode is not None:
                mode = ctypes.c_uint(SSL_MODE_REQUIRED)
                self._set(handle, kind.ssl_mode, ctypes.byref(mode), "require TLS")
            else:
                # asks for TLS; Connector/C does not refuse a server
                # without it unless it verifies, so connect() checks
                self._set(handle, kind.ssl_enforce, on, "require TLS")
        if kind.restricted_auth is not None:
            self._set(handle, kind.restricted_auth, ctypes.c_char_p(HASHED_PLUGINS),
                      "refuse mysql_clear_password")
        elif os.environ.get(CLEARTEXT_VARIABLE, "")[:1] in ("1", "Y", "y"):
            # libmysqlclient then sends the password in clear whatever it is told
            raise LibraryError(CR_AUTH_PLUGIN_CANNOT_LOAD,
                               f"${CLEARTEXT_VARIABLE} lets {self.lib.flavour.name} send the "
                               "password in clear, and " + SECURE_ONLY, "connect")
        if kind.enable_cleartext is not None:
            off = ctypes.c_char(b"\0")
            self.lib.mysql_options(handle, kind.enable_cleartext, ctypes.byref(off))

    def connect(self, conf: DbConf, endpoint: Endpoint, timeout: float,
                tls: Optional[DbTls] = None) -> None:
        """Connect (``mysql_init``, ``mysql_options``,
        ``mysql_real_connect``) as ``conf``'s user to its database.

        Args:
            conf: the parsed ``db.conf``.
            endpoint: ``("unix", path)`` (host ``localhost`` and that
                socket) or ``("tcp", host, port)`` (:func:`.rules.endpoint`).
            timeout: seconds, rounded up; 0 or less sets nothing (the
                library's default: no limit of ours).  It is the connect
                timeout (IndiMail's only one) and also the read and
                write timeouts, so that a server that stops answering
                cannot hold the lookup for ever.
            tls: over TCP, TLS required or verified against a CA
                (:func:`.rules.db_tls`); without a CA the library may not
                send the password in clear (see the module's docstring).

        Raises:
            LibraryError: stage ``"connect"``, the library's error (1045
                access denied, 2002/2003 cannot connect, 2026 TLS, ...).
        """
        self.close()
        handle = self.lib.mysql_init(None)
        if not handle:
            raise LibraryError(CR_OUT_OF_MEMORY, errtext(errno.ENOMEM), "connect")
        if timeout > 0:
            seconds = min(int(math.ceil(timeout)), 2**31 - 1)
            for option in (MYSQL_OPT_CONNECT_TIMEOUT, MYSQL_OPT_READ_TIMEOUT,
                           MYSQL_OPT_WRITE_TIMEOUT):
                self._option(handle, option, seconds)
        if endpoint[0] == "unix":
            host, port, socket_path = b"localhost", 0, to_bytes(endpoint[1])
            target: Optional[bytes] = socket_path
        else:
            host, port, target = to_bytes(endpoint[1]), endpoint[2], None
            try:
                self._protect(handle, tls or DbTls(False, None))
            except LibraryError:
                self.lib.mysql_close(handle)
                raise
        done = self.lib.mysql_real_connect(
            handle, host, to_bytes(conf.user), to_bytes(conf.password),
            to_bytes(conf.database), port, target, 0)
        if not done:
            error = self._error(handle, "connect", 2003)
            self.lib.mysql_close(handle)
            if error.code == CR_PLUGIN_NOT_ALLOWED and endpoint[0] == "tcp":
                # its text names the plugin from uninitialised memory
                error = LibraryError(error.code, "the server asked for an authentication "
                                     "plugin that may send the password in clear, and "
                                     + SECURE_ONLY, "connect")
            raise error
        if (endpoint[0] == "tcp" and tls is not None and tls.required
                and not self.lib.mysql_get_ssl_cipher(handle)):
            self.lib.mysql_close(handle)
            raise LibraryError(CR_SSL_CONNECTION_ERROR, "SSL connection error: SSL is required "
                               "but the server doesn't support it", "connect")
        self.handle = handle

    def query(self, sql: str, columns: int = 3) -> Rows:
        """Run ``sql`` and return its rows (``mysql_query``,
        ``mysql_store_result``, ``mysql_fetch_row``,
        ``mysql_free_result``): ``columns`` values each, None for NULL
        (a value stops at a NUL byte, as C strings do).  A statement
        without a result set (``create table``) returns [].

        Raises:
            LibraryError: stage ``"query"`` when ``mysql_query`` failed
                (1146 no such table, 2006 gone away, ...), ``"result"``
                when ``mysql_store_result`` did.
        """
        handle = self.handle
        if handle is None:
            raise LibraryError(2006, "MySQL server has gone away", "query")
        if self.lib.mysql_query(handle, to_bytes(sql)):
            raise self._error(handle, "query", 2013)
        result = self.lib.mysql_store_result(handle)
        if not result:
            if self.lib.mysql_errno(handle):
                raise self._error(handle, "result", CR_COMMANDS_OUT_OF_SYNC)
            return []
        rows: Rows = []
        try:
            while True:
                row = self.lib.mysql_fetch_row(result)
                if not row:
                    break
                rows.append([row[i] for i in range(columns)])
        finally:
            self.lib.mysql_free_result(result)
        return rows

    def close(self) -> None:
        """``mysql_close`` (sends COM_QUIT); nothing if not connected."""
        handle, self.handle = self.handle, None
        if handle is not None:
            self.lib.mysql_close(handle)
