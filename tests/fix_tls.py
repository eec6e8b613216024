"""Helpers for the TLS tests: certificates made with the ``openssl``
command, Python ``ssl`` clients and ``openssl s_client``.

:func:`make_certs` builds, once per test session (see
:func:`session_certs`), a folder of P-256 certificates whose serial
numbers tell them apart:

* ``certs/`` — the certificate directory given to the servers with
  ``-i``: ``servercert.pem`` (serial :data:`SERIAL_DEFAULT`, certificate
  and key in one file), ``a.example.pem`` and ``b.example.pem`` (the SNI
  certificates, :data:`SERIAL_A`, :data:`SERIAL_B`);
* ``extra/`` — files named directly: ``new.pem`` (:data:`SERIAL_NEW`,
  for SIGHUP), ``ca.pem`` (a CA certificate, no key), ``crl.pem`` (a CRL
  signed by it), ``broken.pem`` (a PEM armour around garbage),
  ``certonly.pem`` (no key), ``keyonly.pem`` (no certificate),
  ``mismatch.pem`` (a certificate with another certificate's key).

* ``clients/`` — client certificates (for ``-Y``/``-y``), each file a
  certificate followed by its key: ``ca.pem`` (the client CA, no key;
  ``ca.key`` beside it), ``good.pem`` (:data:`CLIENT_SUBJECT`, serial
  :data:`SERIAL_GOOD`), ``expired.pem`` (valid in January 2020 only),
  ``revoked.pem`` (revoked in ``crl.pem``, the client CA's list),
  ``stranger.pem`` (from another CA, ``stranger-ca.pem``).

A test that changes certificates (SIGHUP) works on its own copy:
:meth:`Certs.copy_dir`.  :mod:`tests.fix_x509` makes client
certificates with names ``openssl`` would not write.

Clients: :func:`tls_connect` (an ``ssl.SSLSocket`` over a harness
connection), :class:`TlsClient` (``ssl.MemoryBIO`` based, for the
half-close tests: it can send close_notify and go on reading, and tells
close_notify from a bare TCP end), :func:`peer_serial`, :func:`s_client`.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from tests.fix_server import PRINT_ENV, Server, Servers, clean_env, parse_env
from tests.util import need

__all__ = ["SERIAL_DEFAULT", "SERIAL_A", "SERIAL_B", "SERIAL_NEW", "SERIAL_X", "Certs",
           "make_certs", "session_certs", "client_context", "tls_connect", "TlsClient",
           "serial_of_der", "serial_of_pem", "peer_serial", "s_client", "tls_env",
           "status_of_end", "END_DROPPED", "read_tls", "pem_in", "NOLOOKUP", "DROPPED", "MARK_ENV",
           "start_tls", "end_status", "no_traceback", "tls_env_of", "client_hello", "exchange",
           "sni_seen"]

T = TypeVar("T")

SERIAL_DEFAULT = "1001"
SERIAL_A = "A001"
SERIAL_B = "B001"
SERIAL_NEW = "2002"
SERIAL_X = "3003"
SERIAL_CA = "0C0A"
#: the client certificates' serial numbers (hexadecimal)
SERIAL_GOOD = "1234"
SERIAL_EXPIRED = "2345"
SERIAL_REVOKED = "3456"
SERIAL_STRANGER = "4567"
#: the subject of the good client certificate, and of the client CA
CLIENT_SUBJECT = ("/C=DE/ST=Berlin/L=Berlin/O=Test Org/OU=Mail/CN=client.test"
                  "/emailAddress=client@example.test")
CLIENT_CA_SUBJECT = "/C=DE/O=Test Org/CN=Client CA"
#: the wait status of a relay child that exits 111 (failed handshake)
END_DROPPED = 111 << 8

#: variables a test run may inherit that would change the TLS set-up
TLS_VARIABLES = re.compile(r"^(TLS_.*|CERTDIR|CLIENTCA|CLIENTCRL|SSL_.*)$")


@dataclass
class Certs:
    """Where the session's certificates are (absolute paths)."""

    root: str
    certdir: str        # servercert.pem, a.example.pem, b.example.pem
    default: str        # certdir/servercert.pem
    sni_a: str
    sni_b: str
    new: str            # serial SERIAL_NEW
    x: str              # serial SERIAL_X (the "../x" trap)
    ca: str
    ca_key: str
    crl: str
    broken: str
    certonly: str
    keyonly: str
    mismatch: str
    client_ca: str      # the client CA (certificate only)
    client_ca_key: str
    client_crl: str     # revokes client_revoked
    client_good: str    # certificate and key, as the files below
    client_expired: str
    client_revoked: str
    client_stranger: str    # from another CA
    stranger_ca: str

    def copy_dir(self, dest: str) -> str:
        """A private copy of the certificate directory at ``dest``."""
        shutil.copytree(self.certdir, dest)
        return dest


def _openssl(args: Sequence[str], cwd: Optional[str] = None) -> None:
    subprocess.run([need("openssl"), *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def _self_signed(folder: str, name: str, serial: str, cn: str) -> str:
    """``folder/name``: a self-signed P-256 certificate followed by its
    key; returns the path."""
    key = os.path.join(folder, name + ".key")
    crt = os.path.join(folder, name + ".crt")
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", key, "-out", crt, "-days", "30", "-subj", f"/CN={cn}",
              "-set_serial", "0x" + serial])
    path = os.path.join(folder, name)
    with open(path, "wb") as out:
        for part in (crt, key):
            with open(part, "rb") as handle:
                out.write(handle.read())
    return path


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


_CLIENT_CA_CNF = b"""[ca]
default_ca = client_ca
[client_ca]
database = index.txt
new_certs_dir = .
serial = serial
crlnumber = crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = anything
unique_subject = no
x509_extensions = client
[anything]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""

_P256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _ca(folder: str, stem: str, subject: str, serial: str) -> str:
    """``folder/stem.pem`` (and ``stem.key``): a self-signed CA."""
    path = os.path.join(folder, stem + ".pem")
    _openssl(["req", "-x509", *_P256, "-keyout", os.path.join(folder, stem + ".key"),
              "-out", path, "-days", "30", "-subj", subject, "-set_serial", "0x" + serial,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return path


def _client(work: str, out: str, stem: str, subject: str, serial: str,
            dates: Sequence[str] = ()) -> str:
    """``out/stem.pem``: a client certificate of the client CA (made by
    ``openssl ca`` in ``work``), then its key."""
    key, csr, crt = (os.path.join(work, stem + ext) for ext in (".key", ".csr", ".crt"))
    _openssl(["req", "-new", *_P256, "-keyout", key, "-out", csr, "-subj", subject])
    _write(os.path.join(work, "serial"), serial.encode() + b"\n")
    _openssl(["ca", "-batch", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
              "-preserveDN", "-notext", "-in", csr, "-out", crt, *dates], cwd=work)
    return _write(os.path.join(out, stem + ".pem"), _read(crt) + _read(key))


def make_client_certs(folder: str) -> Dict[str, str]:
    """The client CA and its certificates (see the module doc), in
    ``folder``; the paths by name."""
    work = os.path.join(folder, "work")
    os.makedirs(work)
    ca = _ca(work, "ca", CLIENT_CA_SUBJECT, "0C1A")
    for name, data in (("index.txt", b""), ("crlnumber", b"01\n"), ("ca.cnf", _CLIENT_CA_CNF)):
        _write(os.path.join(work, name), data)
    found = {"client_ca": shutil.copy(ca, folder),
             "client_ca_key": shutil.copy(os.path.join(work, "ca.key"), folder)}
    found["client_good"] = _client(work, folder, "good", CLIENT_SUBJECT, SERIAL_GOOD)
    found["client_expired"] = _client(work, folder, "expired", "/CN=expired.test",
                                      SERIAL_EXPIRED, ["-startdate", "20200101000000Z",
                                                       "-enddate", "20200201000000Z"])
    found["client_revoked"] = _client(work, folder, "revoked", "/CN=revoked.test",
                                      SERIAL_REVOKED)
    _openssl(["ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
              "-revoke", "revoked.crt"], cwd=work)
    found["client_crl"] = os.path.join(folder, "crl.pem")
    _openssl(["ca", "-gencrl", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
              "-out", found["client_crl"]], cwd=work)
    # another CA's client
    stranger_ca = _ca(work, "stranger-ca", "/CN=Stranger CA", "0C2A")
    key, csr, crt = (os.path.join(work, "stranger" + ext) for ext in (".key", ".csr", ".crt"))
    _openssl(["req", "-new", *_P256, "-keyout", key, "-out", csr, "-subj", "/CN=stranger.test"])
    _openssl(["x509", "-req", "-in", csr, "-CA", stranger_ca,
              "-CAkey", os.path.join(work, "stranger-ca.key"), "-set_serial",
              "0x" + SERIAL_STRANGER, "-days", "30", "-out", crt])
    found["client_stranger"] = _write(os.path.join(folder, "stranger.pem"),
                                      _read(crt) + _read(key))
    found["stranger_ca"] = shutil.copy(stranger_ca, folder)
    return found


def make_certs(root: str) -> Certs:
    """Build every certificate file under ``root`` (see the module doc)."""
    certdir = os.path.join(root, "certs")
    extra = os.path.join(root, "extra")
    work = os.path.join(root, "work")
    for folder in (certdir, extra, work):
        os.makedirs(folder)
    default = _self_signed(work, "servercert.pem", SERIAL_DEFAULT, "default.test")
    sni_a = _self_signed(work, "a.example.pem", SERIAL_A, "a.example")
    sni_b = _self_signed(work, "b.example.pem", SERIAL_B, "b.example")
    new = _self_signed(work, "new.pem", SERIAL_NEW, "new.test")
    x = _self_signed(work, "x.pem", SERIAL_X, "x.test")
    for path in (default, sni_a, sni_b):
        shutil.copy(path, certdir)
    for path in (new,):
        shutil.copy(path, extra)
    # the "../x" trap sits beside the certificate directory
    shutil.copy(x, root)

    # a CA and a CRL it signed
    ca_key = os.path.join(extra, "ca.key")
    ca = os.path.join(extra, "ca.pem")
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", ca_key, "-out", ca, "-days", "30", "-subj", "/CN=Test CA",
              "-set_serial", "0x" + SERIAL_CA,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _write(os.path.join(work, "index.txt"), b"")
    _write(os.path.join(work, "crlnumber"), b"01\n")
    _write(os.path.join(work, "ca.cnf"),
           b"[ca]\ndefault_ca = CA_default\n[CA_default]\ndatabase = index.txt\n"
           b"crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n")
    crl = os.path.join(extra, "crl.pem")
    _openssl(["ca", "-gencrl", "-config", "ca.cnf", "-keyfile", ca_key, "-cert", ca,
              "-out", crl], cwd=work)

    # files that must not load
    broken = _write(os.path.join(extra, "broken.pem"),
                    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                    b"-----END CERTIFICATE-----\n")
    certonly = _write(os.path.join(extra, "certonly.pem"),
                      _read(os.path.join(work, "servercert.pem.crt")))
    keyonly = _write(os.path.join(extra, "keyonly.pem"),
                     _read(os.path.join(work, "servercert.pem.key")))
    mismatch = _write(os.path.join(extra, "mismatch.pem"),
                      _read(os.path.join(work, "servercert.pem.crt"))
                      + _read(os.path.join(work, "new.pem.key")))
    clients = make_client_certs(os.path.join(root, "clients"))
    return Certs(root=root, certdir=certdir, default=os.path.join(certdir, "servercert.pem"),
                 sni_a=os.path.join(certdir, "a.example.pem"),
                 sni_b=os.path.join(certdir, "b.example.pem"),
                 new=os.path.join(extra, "new.pem"), x=os.path.join(root, "x.pem"), ca=ca,
                 ca_key=ca_key, crl=crl, broken=broken, certonly=certonly, keyonly=keyonly,
                 mismatch=mismatch, **clients)


_SESSION: Dict[str, Certs] = {}
_SESSION_LOCK = threading.Lock()


def session_certs(base: str) -> Certs:
    """The certificates of this test session, made on the first call
    (in a new folder under ``base``), shared by every TLS test module."""
    with _SESSION_LOCK:
        if "certs" not in _SESSION:
            _SESSION["certs"] = make_certs(tempfile.mkdtemp(prefix="tls-", dir=base))
        return _SESSION["certs"]


def tls_env(**extra: str) -> Dict[str, str]:
    """:func:`tests.fix_server.clean_env` without inherited TLS settings,
    plus ``extra``."""
    env = {k: v for k, v in clean_env().items() if not TLS_VARIABLES.match(k)}
    env.update(extra)
    return env


# -- clients ------------------------------------------------------------------------------
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(minimum: Optional[str] = None, maximum: Optional[str] = None,
                   ciphers: Optional[str] = None, cert: Optional[str] = None
                   ) -> ssl.SSLContext:
    """A client context that accepts any server certificate; ``minimum``
    and ``maximum`` are "1.2" or "1.3"; ``ciphers`` a TLS <= 1.2 list;
    ``cert`` a file of a client certificate and its key, to present."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert)
    if minimum is not None:
        ctx.minimum_version = _VERSIONS[minimum]
    if maximum is not None:
        ctx.maximum_version = _VERSIONS[maximum]
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def tls_connect(server: Server, server_hostname: Optional[str] = None,
                minimum: Optional[str] = None, maximum: Optional[str] = None,
                ciphers: Optional[str] = None, timeout: float = 10.0,
                raw: Optional[socket.socket] = None,
                cert: Optional[str] = None) -> ssl.SSLSocket:
    """Connect to ``server`` (a :class:`tests.fix_server.Server`), or use
    the connected ``raw`` socket, and do the TLS handshake (raises
    ``ssl.SSLError`` / ``OSError`` when it fails), presenting the client
    certificate in ``cert`` if given."""
    sock = raw if raw is not None else server.connect(timeout=timeout)
    sock.settimeout(timeout)
    ctx = client_context(minimum, maximum, ciphers, cert)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def read_tls(sock: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    """Everything until close_notify or EOF."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return data
        if not chunk:
            return data
        data += chunk


class TlsClient:
    """A TLS client over ``ssl.MemoryBIO``: it can send close_notify and
    keep reading (half-close), and it records how the server's side
    ended (:attr:`close_notify` or :attr:`eof`)."""

    def __init__(self, sock: socket.socket, ctx: Optional[ssl.SSLContext] = None,
                 server_hostname: Optional[str] = None, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = (ctx or client_context()).wrap_bio(self.incoming, self.outgoing,
                                                      server_side=False,
                                                      server_hostname=server_hostname)
        self.close_notify = False   # the server sent close_notify
        self.eof = False            # the TCP stream ended
        sock.settimeout(timeout)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if chunk:
            self.incoming.write(chunk)
        else:
            self.eof = True
            self.incoming.write_eof()

    def _run(self, op: Callable[[], T]) -> T:
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                self._flush()
                if self.eof:
                    raise ssl.SSLEOFError("EOF while the TLS layer wanted more")
                self._fill()
                continue
            self._flush()
            return result

    def handshake(self) -> "TlsClient":
        self._run(self.obj.do_handshake)
        return self

    def handshake_with_data(self, data: bytes) -> "TlsClient":
        """The handshake, with ``data`` sent in the same segment as the
        client's last handshake flight (its Finished)."""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if self.eof:
                    raise ssl.SSLEOFError("EOF during the handshake")
                self._fill()
        self.obj.write(data)
        self._flush()
        return self

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = self._run(lambda: self.obj.write(view[:16384]))
            view = view[done:]

    def recv(self, size: int = 65536) -> bytes:
        """Some plaintext; b"" once the server's side has ended
        (close_notify or a bare EOF, see the flags)."""
        if self.close_notify or self.eof and not self.incoming.pending:
            return b""
        try:
            data: bytes = self._run(lambda: self.obj.read(size))
            if not data:                # the ssl module's way to report close_notify
                self.close_notify = True
            return data
        except ssl.SSLZeroReturnError:
            self.close_notify = True
            return b""
        except ssl.SSLEOFError:
            self.eof = True
            return b""

    def read_until_end(self) -> bytes:
        data = b""
        while True:
            chunk = self.recv()
            if not chunk:
                return data
            data += chunk

    def read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def send_close_notify(self) -> None:
        """Our close_notify, without waiting for the server's."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def version(self) -> Optional[str]:
        return self.obj.version()

    def peer_der(self) -> bytes:
        der = self.obj.getpeercert(binary_form=True)
        assert der is not None
        return der

    def close(self) -> None:
        self.sock.close()


def serial_of_der(der: bytes) -> str:
    """The serial number of a DER certificate, as openssl prints it."""
    out = subprocess.run([need("openssl"), "x509", "-inform", "DER", "-noout", "-serial"],
                         input=der, capture_output=True, check=True, timeout=10).stdout
    return out.decode().strip().split("=", 1)[1]


def serial_of_pem(pem: bytes) -> str:
    out = subprocess.run([need("openssl"), "x509", "-noout", "-serial"],
                         input=pem, capture_output=True, check=True, timeout=10).stdout
    return out.decode().strip().split("=", 1)[1]


def peer_serial(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return serial_of_der(der)


def sni_seen(server: Server, names: Sequence[str]) -> List[Tuple[str, str, Optional[str]]]:
    """For each name sent as SNI (one connection each): the name, the
    serial of the certificate the server chose, and the
    ``SSL_TLS_SNI_SERVERNAME`` its program saw."""
    seen = []
    for name in names:
        with tls_connect(server, server_hostname=name) as sock:
            serial = peer_serial(sock)
            env = parse_env(read_tls(sock))
        seen.append((name, serial, env.get("SSL_TLS_SNI_SERVERNAME")))
    return seen


def s_client(port: int, args: Sequence[str] = (), data: bytes = b"", timeout: float = 10.0,
             keep_open: bool = False) -> "subprocess.CompletedProcess[bytes]":
    """``openssl s_client -connect 127.0.0.1:PORT ARGS`` with ``data`` on
    its stdin.  It ends when the server closes (with ``-quiet`` or
    ``-ign_eof``), or at stdin's end otherwise.  At stdin's end
    s_client also half-closes the TCP connection (``shutdown(SHUT_WR)``);
    ``keep_open`` holds its stdin open until it has ended, so that no
    FIN goes to the server before the server has closed."""
    argv = [need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", *args]
    if not keep_open:
        return subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    got: Dict[str, bytes] = {}

    def write() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.flush()
        except OSError:
            pass

    def read(name: str, stream: IO[bytes]) -> None:
        got[name] = stream.read()

    workers = [threading.Thread(target=write),
               threading.Thread(target=read, args=("out", proc.stdout)),
               threading.Thread(target=read, args=("err", proc.stderr))]
    for worker in workers:
        worker.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for worker in workers:
            worker.join(5)
        try:
            proc.stdin.close()
        except OSError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, got.get("out", b""),
                                       got.get("err", b""))


def pem_in(output: bytes) -> bytes:
    """The first PEM certificate in ``output`` (s_client's listing)."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n",
                      output, re.S)
    assert match, output
    return match.group(0)


def status_of_end(lines: List[str], pid: int) -> Optional[int]:
    """The wait status in the ``end PID status W`` line of ``pid``."""
    for line in lines:
        match = re.match(rf"^tcpserver: end {pid} status (\d+)$", line)
        if match:
            return int(match.group(1))
    return None



# -- servers -----------------------------------------------------------------------------
NOLOOKUP = ["-H", "-R", "-l", "Local"]
#: the last line of every failed handshake
DROPPED = r"^tcpserver: warning: dropping connection, unable to accept SSL connection$"
#: a program that says on stderr (the server's log) that it ran, then prints its environment
MARK_ENV = ["sh", "-c", "echo PROGRAM-RAN >&2; env; echo END"]


def start_tls(servers: Servers, certs: Certs, options: Sequence[str] = (),
              prog: Optional[Sequence[str]] = None, tls: Optional[Sequence[str]] = None,
              env: Optional[Dict[str, str]] = None, certdir: Optional[str] = None,
              prefix: Sequence[str] = ()) -> Server:
    """Our server at ``-v``, without lookups, with TLS (``tls``, default
    ``-s``: the certificate directory's ``servercert.pem``) and
    ``-i certdir`` (default the session's); ``prog`` defaults to
    PRINT_ENV."""
    args = ["-v", *NOLOOKUP, "-i", certdir or certs.certdir,
            *(tls if tls is not None else ["-s"]), *options]
    return servers(args, prog=list(prog) if prog is not None else PRINT_ENV,
                   env=env if env is not None else tls_env(), prefix=prefix)


def end_status(server: Server, pid: int, timeout: float = 10.0) -> int:
    """Wait for ``end PID status W`` and return W."""
    server.wait_log(rf"^tcpserver: end {pid} status \d+$", timeout=timeout)
    status = status_of_end(server.lines(), pid)
    assert status is not None
    return status


def no_traceback(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log, log


def tls_env_of(server: Server, **kwargs: Any) -> Dict[str, str]:
    """Connect with TLS (``kwargs`` as for :func:`tls_connect`) to a
    PRINT_ENV server and return the environment the program saw."""
    with tls_connect(server, **kwargs) as sock:
        return parse_env(read_tls(sock))


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (Python's defaults)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def exchange(client: TlsClient, data: bytes, expect: int, timeout: float = 60.0) -> bytes:
    """Send ``data`` while reading, until ``expect`` bytes came back (or
    the server's side ended): neither side can block the other, however
    the relay schedules its two directions."""
    sock = client.sock
    sock.setblocking(False)
    received = bytearray()
    out = b""
    offset = 0
    deadline = time.monotonic() + timeout
    try:
        while len(received) < expect or offset < len(data) or out:
            if not out and offset < len(data):
                offset += client.obj.write(data[offset:offset + 16384])
                out = client.outgoing.read()
            left = deadline - time.monotonic()
            assert left > 0, f"stalled: sent {offset}/{len(data)}, got {len(received)}/{expect}"
            readable, writable, _ = select.select([sock], [sock] if out else [], [], left)
            if writable:
                try:
                    out = out[sock.send(out):]
                except BlockingIOError:
                    pass
            if readable:
                try:
                    chunk = sock.recv(262144)
                except BlockingIOError:
                    continue
                if not chunk:
                    client.eof = True
                    break
                client.incoming.write(chunk)
                while True:
                    try:
                        piece = client.obj.read(262144)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        client.close_notify = True
                        return bytes(received)
                    if not piece:               # close_notify
                        client.close_notify = True
                        return bytes(received)
                    received += piece
                out += client.outgoing.read()
    finally:
        sock.setblocking(True)
        sock.settimeout(client.timeout)
    return bytes(received)
