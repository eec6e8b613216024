"""A throw-away MariaDB server for the MySQL tests.

:func:`mariadb_server` (the session fixture ``mariadb`` of
``tests/conftest.py``) creates a data directory in a temporary folder
(``mariadb-install-db``), starts ``mariadbd`` on a UNIX socket in it and
on a free TCP port of 127.0.0.1, creates a database, a user with a
``mysql_native_password`` password (for ``localhost`` and ``%``) that may
do anything in that database, and yields a :class:`MariaDB`.  The server
offers TLS with a certificate for 127.0.0.1 and ``localhost`` from a CA
of its own (:func:`make_db_certs`; ``.certs.ca`` is what
``$MYSQL_SSL_CA`` names).  At the end the server is stopped by its pid
and the folder removed.

Skipped when ``mariadbd`` or the ``mariadb`` client is missing (failed
under ``UCSPI_REQUIRE_ALL=1``, tests/util.py ``need``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Iterator, List, NamedTuple, Optional

from tests.util import free_port, missing, need, wait_until

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
CLIENT = "/usr/bin/mariadb"
LIBMARIADB = "/usr/lib/x86_64-linux-gnu/libmariadb.so.3"


class DbCerts(NamedTuple):
    """Certificates for a database server on 127.0.0.1 (PEM files)."""

    ca: str            # the CA that signed cert and misnamed
    cert: str          # for IP 127.0.0.1 and DNS localhost
    key: str
    other_ca: str      # a CA that signed nothing here
    misnamed: str      # the CA's certificate for wrong.example only
    misnamed_key: str


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run([need("openssl"), *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_db_certs(folder: str) -> DbCerts:
    """A CA, a server certificate it signed (subjectAltName IP:127.0.0.1,
    DNS:localhost) and another CA, in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem",
                 "-days", "30", "-subj", f"/CN=ucspi test {name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    for name, cn, alt, serial in (("server", "127.0.0.1", "IP:127.0.0.1, DNS:localhost", 1),
                                  ("misnamed", "wrong.example", "DNS:wrong.example", 2)):
        with open(os.path.join(folder, name + ".ext"), "w") as handle:
            handle.write(f"subjectAltName = {alt}\n"
                         "basicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", str(serial), "-days", "30", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)
    return DbCerts(*(os.path.join(folder, name) for name in
                     ("ca.pem", "server.pem", "server.key", "other-ca.pem", "misnamed.pem",
                      "misnamed.key")))


class MariaDB:
    """A running (or stopped) test server.

    Attributes:
        datadir: the server's folder (socket, pid file, error log in it).
        socket: the UNIX socket path.
        host, port: its TCP address.
        user, password, database: the account the tests connect as.
    """

    def __init__(self, folder: str, tls: bool = True) -> None:
        self.folder = folder
        self.datadir = os.path.join(folder, "data")
        self.socket = os.path.join(folder, "sock")
        self.pidfile = os.path.join(folder, "pid")
        self.errlog = os.path.join(folder, "err")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = "ucspi"
        self.password = "s3cret pw'x"   # no colon: db.conf cannot hold one
        self.database = "ucspitest"
        self.certs: Optional[DbCerts] = (make_db_certs(os.path.join(folder, "tls")) if tls
                                         else None)
        self.proc: "Optional[subprocess.Popen[bytes]]" = None

    # -- lifetime --------------------------------------------------------
    def install(self) -> None:
        os.makedirs(self.datadir)
        done = subprocess.run(
            [INSTALL_DB, "--no-defaults", "--user=root", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if done.returncode:
            raise RuntimeError("mariadb-install-db failed:\n" + done.stdout.decode(errors="replace"))

    def start(self) -> None:
        """Start the server (same data, socket and port) and wait until
        it answers on its socket."""
        if self.proc is not None:
            return
        argv: List[str] = [
            MARIADBD, "--no-defaults", "--user=root", f"--datadir={self.datadir}",
            f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
            "--skip-name-resolve", f"--pid-file={self.pidfile}", f"--log-error={self.errlog}",
            "--skip-log-bin", "--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M",
            "--skip-innodb-doublewrite", "--innodb-flush-log-at-trx-commit=0",
            "--performance-schema=OFF"]
        if self.certs is not None:
            argv += [f"--ssl-ca={self.certs.ca}", f"--ssl-cert={self.certs.cert}",
                     f"--ssl-key={self.certs.key}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                return True
            return self.ping()
        if not wait_until(up, timeout=30, step=0.05) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("mariadbd did not start:\n" + self.log_tail())

    def stop(self) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        """Does the server accept connections on its socket?"""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(self.socket)
                return bool(sock.recv(1))        # the server's greeting
            except OSError:
                return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.errlog, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no error log)"

    # -- statements ------------------------------------------------------
    def sql(self, statement: str, database: Optional[str] = None) -> str:
        """Run ``statement`` as root through the ``mariadb`` client (in
        the test database unless told other) and return its output
        (tab-separated, no column names).

        Raises:
            RuntimeError: the client failed (its error message).
        """
        argv = [CLIENT, "--no-defaults", "-S", self.socket, "-uroot", "-N", "-B",
                "-e", statement]
        argv.append(self.database if database is None else database)
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if done.returncode:
            raise RuntimeError(done.stderr.decode(errors="replace").strip())
        return done.stdout.decode(errors="replace")

    def setup(self) -> None:
        quoted = self.password.replace("\\", "\\\\").replace("'", "''")
        self.sql(
            f"create database {self.database};"
            f"create user '{self.user}'@'localhost' identified by '{quoted}';"
            f"create user '{self.user}'@'%' identified by '{quoted}';"
            f"grant all on {self.database}.* to '{self.user}'@'localhost';"
            f"grant all on {self.database}.* to '{self.user}'@'%';",
            database="mysql")


@contextlib.contextmanager
def mariadb_server(tls: bool = True) -> Iterator[MariaDB]:
    """Install, start and set up a server (offering TLS unless ``tls`` is
    false); stop it and remove its folder at the end."""
    for program in (MARIADBD, INSTALL_DB, CLIENT):
        need(program)
    folder = tempfile.mkdtemp(prefix="ucspi-mariadb-")
    server = MariaDB(folder, tls)
    try:
        server.install()
        server.start()
        server.setup()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def need_libmariadb() -> str:
    """The path of Debian's libmariadb, or skip (fail under
    ``UCSPI_REQUIRE_ALL=1``)."""
    if not os.access(LIBMARIADB, os.R_OK):
        missing(LIBMARIADB)
    return LIBMARIADB


__all__ = ["MariaDB", "DbCerts", "make_db_certs", "mariadb_server", "need_libmariadb"]
