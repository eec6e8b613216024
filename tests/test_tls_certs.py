"""Client certificates (``-Y``, ``-y``) and SNI wildcard files
(issue "TLS, second part", items 2 and 3;
design: client-certificates, sni-wildcards).

Clients are Python's ``ssl`` and ``openssl s_client`` presenting the
certificates of tests/fix_tls.py (the client CA's good, expired and
revoked ones, a stranger's) or certificates with hostile names made by
tests/fix_x509.py; the program prints its environment (immediate TLS)
or, under ``-w``, the variables of the ``Y`` reply.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from tests.fix_server import OURS, PRINT_ENV, Server, Servers, parse_env, run_once
from tests.fix_tls import (CLIENT_CA_SUBJECT, CLIENT_SUBJECT, DROPPED, END_DROPPED, MARK_ENV,
                           SERIAL_A, SERIAL_DEFAULT, SERIAL_GOOD, SERIAL_NEW, SERIAL_X, Certs,
                           client_context, end_status, no_traceback, peer_serial, pem_in,
                           read_tls, s_client, serial_of_pem, sni_seen, start_tls, tls_connect,
                           tls_env)
from tests.fix_x509 import PRINTABLESTRING, issue
from tests.util import PYTHON, ROOT, need, read_line

FATAL = "tcpserver: fatal: unable to initialize TLS"
VERSIONS = ["1.2", "1.3"]
#: every variable of a client certificate
CLIENT_NAMES = ["SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN", "SSL_CLIENT_I_DN",
                *[f"SSL_CLIENT_{side}_DN_{field}" for side in "SI"
                  for field in ("C", "ST", "L", "O", "OU", "CN", "Email")],
                "SSL_CLIENT_M_SERIAL", "SSL_CLIENT_M_VERSION", "SSL_CLIENT_V_START",
                "SSL_CLIENT_V_END", "SSL_CLIENT_CERT", "SSL_PEER_CERT_HASH"]
STALE = {name: "stale" for name in CLIENT_NAMES}
STARTTLS_PROG = os.path.join(ROOT, "tests", "starttls_prog.py")


def unescape(value: str) -> bytes:
    """A variable's value as bytes, its ``\\xHH`` undone."""
    return re.sub(rb"\\x([0-9A-F]{2})", lambda m: bytes((int(m.group(1), 16),)),
                  value.encode("latin-1"))


def openssl_x509(path: str, *args: str) -> str:
    return subprocess.run([need("openssl"), "x509", "-in", path, "-noout", *args],
                          capture_output=True, check=True, timeout=10).stdout.decode()


def first_pem(path: str) -> str:
    with open(path) as handle:
        text = handle.read()
    return text[:text.index("-----END CERTIFICATE-----\n") + 26]


def der_of(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(first_pem(path))


def start(servers: Servers, certs: Certs, flag: str, options: Sequence[str] = (),
          prog: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None,
          crl: Optional[str] = "") -> Server:
    """A TLS server with ``flag`` (-y or -Y), the client CA and, unless
    ``crl`` says otherwise, the client CA's revocation list."""
    lists = ["-L", crl or certs.client_crl] if crl is not None else []
    return start_tls(servers, certs, [flag, "-a", certs.client_ca, *lists, *options],
                     prog=prog, env=env)


def program_env(server: Server, cert: Optional[str] = None, version: Optional[str] = None,
                **kwargs: str) -> Dict[str, str]:
    with tls_connect(server, cert=cert, minimum=version, maximum=version, **kwargs) as sock:
        return parse_env(read_tls(sock))


def client_vars(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if k in CLIENT_NAMES}


# -- the command line and start-up ---------------------------------------------------------
@pytest.mark.parametrize("flag", ["-y", "-Y"])
def test_needs_tls(flag: str) -> None:
    result = run_once(OURS, [flag, "127.0.0.1", "0", "true"], env=tls_env())
    assert (result.returncode, result.stderr.decode()) == (
        100, f"tcpserver: fatal: {flag} needs TLS: give -n certfile or -s\n")


@pytest.mark.parametrize("flag", ["-y", "-Y"])
def test_no_ca_file_is_fatal(certs: Certs, flag: str) -> None:
    """The default CA file, clientca.pem in the directory, is not there."""
    result = run_once(OURS, ["-1", "-s", "-i", certs.certdir, flag, "127.0.0.1", "0", "true"],
                      env=tls_env())
    assert (result.returncode, result.stdout) == (111, b"")
    assert result.stderr.decode().splitlines() == [
        f"{FATAL}: {flag} needs a CA file for client certificates: "
        f"{certs.certdir}/clientca.pem: file does not exist (give -a cafile or set $CLIENTCA)"]


def test_ca_file_from_the_environment(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-y"], env=tls_env(CLIENTCA=certs.client_ca))
    assert program_env(server, certs.client_good)["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_unreadable_crl_is_fatal_with_y(certs: Certs) -> None:
    """Without -Y/-y a CRL that does not load is ignored (IndiMail); with
    them it would let revoked certificates in: start-up fails."""
    result = run_once(OURS, ["-1", "-s", "-i", certs.certdir, "-y", "-a", certs.client_ca,
                             "-L", certs.broken, "127.0.0.1", "0", "true"], env=tls_env())
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 111 and result.stdout == b""
    assert lines[0].startswith(f"SSL_CTX_load_verify_locations: Unable to load CRL file: "
                               f"{certs.broken}: "), lines
    assert lines[-1] == f"{FATAL}: CRL file {certs.broken}: no revocation list in the file"


def test_sighup_without_the_ca_file_keeps_the_old_contexts(servers: Servers, certs: Certs,
                                                           tmp_path: Path) -> None:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    shutil.copy(certs.client_ca, os.path.join(folder, "clientca.pem"))
    server = start_tls(servers, certs, ["-y"], certdir=folder)
    assert program_env(server, certs.client_good)["SSL_CLIENT_VERIFY"] == "SUCCESS"
    os.unlink(os.path.join(folder, "clientca.pem"))
    server.marker()
    server.wait_log(r"^tcpserver: warning: unable to reload TLS certificates: -y needs a CA "
                    r"file for client certificates: .*/clientca\.pem: file does not exist ")
    assert program_env(server, certs.client_good)["SSL_CLIENT_VERIFY"] == "SUCCESS"
    no_traceback(server)


# -- what is asked, what is refused ---------------------------------------------------------
@pytest.mark.parametrize("flag,requested", [(None, False), ("-Y", True), ("-y", True)])
def test_certificate_request_only_with_y(servers: Servers, certs: Certs, flag: Optional[str],
                                         requested: bool) -> None:
    """openssl s_client lists the signature algorithms of a
    CertificateRequest; there is none without -Y/-y.  Python cannot
    name the CAs in it."""
    options = [flag, "-a", certs.client_ca] if flag else ["-a", certs.client_ca]
    server = start_tls(servers, certs, options, prog=["echo", "hello"])
    result = s_client(server.port, ["-ign_eof", "-cert", certs.client_good, "-key",
                                    certs.client_good], keep_open=True)
    out = result.stdout.decode("latin-1")
    assert ("Requested Signature Algorithms" in out) is requested, out
    assert "No client certificate CA names sent" in out
    assert "hello" in out


def test_without_y_a_certificate_changes_nothing(servers: Servers, certs: Certs) -> None:
    """No -Y/-y: no client variable, inherited ones removed."""
    server = start_tls(servers, certs, ["-a", certs.client_ca], env=tls_env(**STALE))
    for cert in (None, certs.client_good, certs.client_expired):
        env = program_env(server, cert)
        assert env["SSL_PROTOCOL"].startswith("TLSv1.") and client_vars(env) == {}


def _refusal(server: Server, cert: Optional[str], version: str, count: int,
             cause: str, error: str) -> None:
    """A client the server must refuse: nothing reaches it, and the log
    has the cause, IndiMail's lines and the drop, in that order."""
    got = b""
    try:
        with tls_connect(server, cert=cert, minimum=version, maximum=version) as sock:
            got = read_tls(sock)        # TLS 1.3: the alert comes after the client's Finished
    except (ssl.SSLError, OSError):
        pass
    assert got == b""
    server.wait_log(DROPPED, count)
    pid = server.wait_pids(count)[-1]
    assert end_status(server, pid) == END_DROPPED
    relay = [line for line in server.lines()
             if not re.match(r"^tcpserver: (status|pid|ok|end) ", line)]
    at = max(n for n, line in enumerate(relay) if line == f"tcpserver: warning: {cause}")
    assert relay[at:at + 4] == [
        f"tcpserver: warning: {cause}",
        "SSL_accept: decoded err: non-recoverable, fatal protocol error",
        f"SSL_accept: TLS/SSL err: error:SSL routines::{error}",
        "tcpserver: warning: dropping connection, unable to accept SSL connection"], relay


VERIFY_FAILED = "certificate verify failed"
BAD = [("expired", "unable to validate client certificate: certificate has expired"),
       ("revoked", "unable to validate client certificate: certificate revoked"),
       ("stranger", "unable to validate client certificate: "
                    "unable to get local issuer certificate")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("flag", ["-y", "-Y"])
def test_bad_certificates_are_refused(servers: Servers, certs: Certs, flag: str,
                                      version: str) -> None:
    server = start(servers, certs, flag, prog=MARK_ENV)
    count = 0
    for which, cause in BAD:
        count += 1
        _refusal(server, getattr(certs, "client_" + which), version, count, cause,
                 VERIFY_FAILED)
    if flag == "-y":
        count += 1
        _refusal(server, None, version, count, "no client certificate",
                 "peer did not return a certificate")
    assert "PROGRAM-RAN" not in server.log()
    no_traceback(server)


@pytest.mark.parametrize("version", VERSIONS)
def test_optional_without_certificate(servers: Servers, certs: Certs, version: str) -> None:
    server = start(servers, certs, "-Y", env=tls_env(**STALE))
    env = program_env(server, None, version)
    assert client_vars(env) == {"SSL_CLIENT_VERIFY": "NONE"}
    assert env["SSL_PROTOCOL"] == f"TLSv{version}"


def test_missing_crl_file_checks_nothing_until_it_exists(servers: Servers, certs: Certs,
                                                         tmp_path: Path) -> None:
    """-L names a file that is not there: no revocation check; once it
    is there, SIGHUP brings the check."""
    crl = str(tmp_path / "crl.pem")
    server = start(servers, certs, "-y", crl=crl)
    assert program_env(server, certs.client_revoked)["SSL_CLIENT_S_DN"] == "/CN=revoked.test"
    shutil.copy(certs.client_crl, crl)
    server.marker()
    _refusal(server, certs.client_revoked, "1.3", 1,
             "unable to validate client certificate: certificate revoked", VERIFY_FAILED)
    assert program_env(server, certs.client_good)["SSL_CLIENT_VERIFY"] == "SUCCESS"


# -- the variables -----------------------------------------------------------------------------
def expected_good(certs: Certs) -> Dict[str, str]:
    """The variables of the good client certificate, from openssl's own
    words where it has them."""
    path = certs.client_good
    subject = openssl_x509(path, "-subject", "-nameopt", "compat").strip()
    issuer = openssl_x509(path, "-issuer", "-nameopt", "compat").strip()
    dates = dict(line.split("=", 1) for line in openssl_x509(path, "-dates").splitlines())
    assert subject == "subject=" + CLIENT_SUBJECT and issuer == "issuer=" + CLIENT_CA_SUBJECT
    return {
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": CLIENT_SUBJECT,
        "SSL_CLIENT_S_DN_C": "DE", "SSL_CLIENT_S_DN_ST": "Berlin", "SSL_CLIENT_S_DN_L": "Berlin",
        "SSL_CLIENT_S_DN_O": "Test Org", "SSL_CLIENT_S_DN_OU": "Mail",
        "SSL_CLIENT_S_DN_CN": "client.test", "SSL_CLIENT_S_DN_Email": "client@example.test",
        "SSL_CLIENT_I_DN": CLIENT_CA_SUBJECT,
        "SSL_CLIENT_I_DN_C": "DE", "SSL_CLIENT_I_DN_O": "Test Org",
        "SSL_CLIENT_I_DN_CN": "Client CA",
        "SSL_CLIENT_M_SERIAL": str(int(SERIAL_GOOD, 16)),
        "SSL_CLIENT_M_VERSION": "3",
        "SSL_CLIENT_V_START": dates["notBefore"], "SSL_CLIENT_V_END": dates["notAfter"],
        "SSL_CLIENT_CERT": first_pem(path).replace("\n", "\\x0A"),
        "SSL_PEER_CERT_HASH": "SHA256:" + hashlib.sha256(der_of(path)).hexdigest(),
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("flag", ["-y", "-Y"])
def test_good_certificate_variables(servers: Servers, certs: Certs, flag: str,
                                    version: str) -> None:
    server = start(servers, certs, flag, env=tls_env(**STALE))
    env = program_env(server, certs.client_good, version)
    assert client_vars(env) == expected_good(certs)
    assert unescape(env["SSL_CLIENT_CERT"]).decode() == first_pem(certs.client_good)
    assert re.fullmatch(r"SHA256:[0-9a-f]{64}", env["SSL_PEER_CERT_HASH"])
    assert env["SSL_PROTOCOL"] == f"TLSv{version}" and env["TLS_PROVIDER"] == "tcpserver, "
    no_traceback(server)


def test_s_client_with_a_certificate(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs, "-y", prog=[
        "sh", "-c", 'echo "verify=$SSL_CLIENT_VERIFY dn=$SSL_CLIENT_S_DN '
                    'serial=$SSL_CLIENT_M_SERIAL"'])
    result = s_client(server.port, ["-quiet", "-cert", certs.client_good, "-key",
                                    certs.client_good], keep_open=True)
    assert f"verify=SUCCESS dn={CLIENT_SUBJECT} serial=4660\n".encode() in result.stdout, result
    refused = s_client(server.port, ["-quiet"], keep_open=True)
    assert b"verify=" not in refused.stdout
    server.wait_log(r"^tcpserver: warning: no client certificate$")
    no_traceback(server)


def test_resumed_session_keeps_the_certificate(servers: Servers, certs: Certs) -> None:
    """A TLS 1.2 session resumed by a later relay: the client sends no
    certificate again, and the program gets the same variables."""
    server = start(servers, certs, "-y")
    ctx = client_context(maximum="1.2", cert=certs.client_good)
    with ctx.wrap_socket(server.connect(timeout=10)) as first:
        before = parse_env(read_tls(first))
        session = first.session
    with ctx.wrap_socket(server.connect(timeout=10), session=session) as second:
        assert second.session_reused
        after = parse_env(read_tls(second))
    assert client_vars(after) == client_vars(before) == expected_good(certs)


# -- hostile names --------------------------------------------------------------------------
HOSTILE = [
    # (subject, expected SSL_CLIENT_S_DN, expected fields)
    ([[("CN", b"evil\nSSL_CLIENT_VERIFY=SUCCESS")]],
     "/CN=evil\\x0ASSL_CLIENT_VERIFY=SUCCESS",
     {"CN": "evil\\x0ASSL_CLIENT_VERIFY=SUCCESS"}),
    ([[("O", b"nul\0byte")], [("CN", b"a=b")]],
     "/O=nul\\x00byte/CN=a=b", {"O": "nul\\x00byte", "CN": "a=b"}),
    ([[("OU", b"back\\x41slash")], [("CN", b"x/O=Trusted+CN=root")]],
     "/OU=back\\x5Cx41slash/CN=x\\x2FO=Trusted\\x2BCN=root",
     {"OU": "back\\x5Cx41slash", "CN": "x/O=Trusted+CN=root"}),
    ([[("C", (PRINTABLESTRING, b"DE"))], [("L", "Köln\u2028".encode())],
      [("emailAddress", (0x16, b"a@b\x7f\x1b[31m"))]],
     "/C=DE/L=K\\xC3\\xB6ln\\xE2\\x80\\xA8/emailAddress=a@b\\x7F\\x1B[31m",
     {"C": "DE", "L": "K\\xC3\\xB6ln\\xE2\\x80\\xA8", "Email": "a@b\\x7F\\x1B[31m"}),
    ([[("CN", b"A" * 10240)]], "/CN=" + "A" * 10240, {"CN": "A" * 10240}),
]


@pytest.fixture
def hostile(certs: Certs, tmp_path: Path) -> List[str]:
    return [issue(certs.client_ca, certs.client_ca_key, subject, str(tmp_path), f"h{n}",
                  serial=0x5150 + n)
            for n, (subject, _, _) in enumerate(HOSTILE)]


def test_hostile_subjects_are_escaped(servers: Servers, certs: Certs,
                                      hostile: List[str]) -> None:
    server = start(servers, certs, "-y")
    for path, (_, dn, fields) in zip(hostile, HOSTILE):
        with tls_connect(server, cert=path) as sock:
            raw = read_tls(sock)
        assert not re.search(rb"[^\n\x20-\x7e]", raw), raw[:2000]    # nothing raw
        env = parse_env(raw)
        assert env["SSL_CLIENT_S_DN"] == dn
        assert {k[len("SSL_CLIENT_S_DN_"):]: v for k, v in env.items()
                if k.startswith("SSL_CLIENT_S_DN_")} == fields
        assert env["SSL_CLIENT_I_DN"] == CLIENT_CA_SUBJECT
        assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["SSL_CLIENT_M_VERSION"] == "3"
        assert unescape(env["SSL_CLIENT_CERT"]).decode() == first_pem(path)
    no_traceback(server)


def test_multi_valued_name_as_openssl_writes_it(servers: Servers, certs: Certs,
                                                tmp_path: Path) -> None:
    path = issue(certs.client_ca, certs.client_ca_key,
                 [[("O", b"Org")], [("CN", b"multi"), ("UID", b"u1")]], str(tmp_path), "m")
    server = start(servers, certs, "-y")
    env = program_env(server, path)
    subject = openssl_x509(path, "-subject", "-nameopt", "compat").strip()
    assert "subject=" + env["SSL_CLIENT_S_DN"] == subject
    assert env["SSL_CLIENT_S_DN_CN"] == "multi" and "+" in subject


# -- delayed TLS: the Y reply -------------------------------------------------------------------
def starttls_vars(server: Server, cert: Optional[str]) -> Dict[str, str]:
    """SMTP STARTTLS, the handshake presenting ``cert``, and EHLO over
    TLS: the variables of the ``Y`` reply, as the program got them."""
    sock = server.connect(timeout=10)
    assert read_line(sock).startswith(b"220 ")
    sock.sendall(b"STARTTLS\r\n")
    assert read_line(sock) == b"220 ready for TLS\r\n"
    with client_context(cert=cert).wrap_socket(sock) as tls:
        tls.sendall(b"EHLO me\r\n")
        answer = read_line(tls).decode("latin-1").rstrip("\r\n")    # type: ignore[arg-type]
        tls.sendall(b"QUIT\r\n")
        assert read_line(tls) == b"221 bye\r\n"                      # type: ignore[arg-type]
    assert answer.startswith("250 ")
    return dict(item.split("=", 1) for item in answer[4:].split(";") if item)


def test_y_reply_has_the_client_variables(servers: Servers, certs: Certs,
                                          hostile: List[str]) -> None:
    server = start(servers, certs, "-y", ["-w"], prog=[PYTHON, STARTTLS_PROG, "smtp", "Y"])
    got = starttls_vars(server, certs.client_good)
    assert client_vars(got) == expected_good(certs)
    # a NUL and a newline in a name do not break the reply's NUL framing
    got = starttls_vars(server, hostile[1])
    assert got["SSL_CLIENT_S_DN"] == "/O=nul\\x00byte/CN=a=b"
    assert got["SSL_PEER_CERT_HASH"] == ("SHA256:"
                                         + hashlib.sha256(der_of(hostile[1])).hexdigest())
    no_traceback(server)


def test_y_reply_optional_without_certificate(servers: Servers, certs: Certs) -> None:
    server = start(servers, certs, "-Y", ["-w"], prog=[PYTHON, STARTTLS_PROG, "smtp", "Y"])
    got = starttls_vars(server, None)
    assert client_vars(got) == {"SSL_CLIENT_VERIFY": "NONE"}


def test_delayed_refusal(servers: Servers, certs: Certs) -> None:
    """-w -y: a refused certificate logs the cause and the usual lines;
    the program reads end of file and its status is the end line's."""
    server = start(servers, certs, "-y", ["-w"], prog=[PYTHON, STARTTLS_PROG, "smtp", "Y"])
    sock = server.connect(timeout=10)
    assert read_line(sock).startswith(b"220 ")
    sock.sendall(b"STARTTLS\r\n")
    assert read_line(sock) == b"220 ready for TLS\r\n"
    with pytest.raises((ssl.SSLError, OSError)):
        with client_context(cert=certs.client_expired).wrap_socket(sock) as tls:
            tls.recv(1)
    server.wait_log(DROPPED)
    relay = [line for line in server.lines() if not line.startswith(("tcpserver: status",
                                                                      "PROGRAM: "))]
    at = relay.index("tcpserver: warning: unable to validate client certificate: "
                     "certificate has expired")
    assert relay[at + 1].startswith("SSL_accept: decoded err: ")
    pid = server.wait_pids(1)[0]
    server.wait_log(rf"^tcpserver: end {pid} status 0$")


# -- the man page's recipe ----------------------------------------------------------------------
def _examples(after: str) -> List[str]:
    """The .EX blocks of tcpserver.1 after the line ``after``, as a
    shell reads them."""
    with open(os.path.join(ROOT, "man", "tcpserver.1"), encoding="utf-8") as handle:
        page = handle.read()
    text = page[page.index(after):]
    blocks = re.findall(r"^\.EX\n(.*?)^\.EE$", text, re.M | re.S)
    return [block.replace("\\-", "-").replace("\\(aq", "'").replace("\\e", "\\")
            for block in blocks]


def test_the_man_pages_recipe(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    """The client CA and certificate of "Client certificates", made as
    printed, then served as printed (our port instead of 4650)."""
    need("openssl")
    make, serve = _examples("A client CA and a client certificate, with")[:2]
    subprocess.run(["sh", "-e", "-c", make], cwd=str(tmp_path), check=True,
                   capture_output=True, timeout=60)
    assert "tcpserver.py" in serve and "-y -a clientca.pem" in serve
    server = start_tls(servers, certs, ["-y", "-a", str(tmp_path / "clientca.pem")],
                       prog=["sh", "-c", 'echo "hello $SSL_CLIENT_S_DN_CN"'])
    client = str(tmp_path / "client.pem")
    result = s_client(server.port, ["-quiet", "-cert", client, "-key", client],
                      keep_open=True)
    assert result.stdout == b"hello client.example.org\n", result


# -- privileges ------------------------------------------------------------------------------
def test_after_the_privilege_drop(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    """The relays run as nobody, from code only root may read: what
    turns a certificate into variables was imported at start-up."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    shutil.copy(os.path.join(ROOT, "tcpserver.py"), hidden)
    shutil.copytree(os.path.join(ROOT, "ucspi"), hidden / "ucspi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    server = servers(["-v", "-H", "-R", "-l", "Local", "-u", "nobody", "-s", "-i",
                      certs.certdir, "-y", "-a", certs.client_ca],
                     impl=str(hidden / "tcpserver.py"), env=tls_env())
    assert os.stat(f"/proc/{server.pid}").st_uid == 65534
    env = program_env(server, certs.client_good)
    assert env["SSL_PEER_CERT_HASH"] == expected_good(certs)["SSL_PEER_CERT_HASH"]
    no_traceback(server)


# -- SNI wildcards ------------------------------------------------------------------------------
def wildcard_dir(certs: Certs, tmp_path: Path) -> str:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    shutil.copy(certs.x, os.path.join(folder, "*.wild.example.pem"))
    shutil.copy(certs.new, os.path.join(folder, "exact.wild.example.pem"))
    for ignored in ("*.pem", "*.*.wild.example.pem", "*.Caps.example.pem", "a*.example.pem"):
        shutil.copy(certs.sni_a, os.path.join(folder, ignored))
    return folder


def test_wildcard_serves_one_label(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    server = start_tls(servers, certs, certdir=wildcard_dir(certs, tmp_path))
    cases = [("a.wild.example", SERIAL_X, "a.wild.example"),
             ("A.Wild.Example.", SERIAL_X, "a.wild.example"),
             ("exact.wild.example", SERIAL_NEW, "exact.wild.example"),   # exact wins
             ("wild.example", SERIAL_DEFAULT, "wild.example"),
             ("a.b.wild.example", SERIAL_DEFAULT, "a.b.wild.example"),
             ("x.caps.example", SERIAL_DEFAULT, "x.caps.example"),
             ("b.x.wild.example", SERIAL_DEFAULT, "b.x.wild.example"),
             ("a.example", SERIAL_A, "a.example")]
    assert sni_seen(server, [name for name, _, _ in cases]) == cases
    assert "warning" not in server.log()
    no_traceback(server)


def test_wildcard_with_s_client(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    server = start_tls(servers, certs, certdir=wildcard_dir(certs, tmp_path))
    result = s_client(server.port, ["-ign_eof", "-servername", "mail.wild.example"],
                      keep_open=True)
    assert serial_of_pem(pem_in(result.stdout)) == SERIAL_X
    assert b"\nSSL_TLS_SNI_SERVERNAME=mail.wild.example\n" in result.stdout


def test_sighup_loads_a_new_wildcard(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    server = start_tls(servers, certs, certdir=folder)
    with tls_connect(server, server_hostname="smtp.late.example") as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    shutil.copy(certs.x, os.path.join(folder, "*.late.example.pem.tmp"))
    os.replace(os.path.join(folder, "*.late.example.pem.tmp"),
               os.path.join(folder, "*.late.example.pem"))
    server.marker()
    with tls_connect(server, server_hostname="smtp.late.example") as sock:
        assert peer_serial(sock) == SERIAL_X
    os.unlink(os.path.join(folder, "*.late.example.pem"))
    server.marker()
    with tls_connect(server, server_hostname="smtp.late.example") as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    no_traceback(server)


# -- the pure parts --------------------------------------------------------------------------
def test_escape_table() -> None:
    from ucspi.clientcert import escape
    assert escape(bytes(range(256))) == b"".join(
        bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x5C else b"\\x%02X" % c for c in range(256))
    assert escape(b"a\\b c\n") == b"a\\x5Cb c\\x0A"


def test_one_line_and_fields() -> None:
    from ucspi.clientcert import fields, one_line
    name = ((("countryName", "DE"),), (("organizationalUnitName", "a"),),
            (("organizationalUnitName", "b"),), (("commonName", "x/y"), ("userId", "u+v")),
            (("1.2.3.4", "z"),))
    assert one_line(name) == b"/C=DE/OU=a/OU=b/CN=x\\x2Fy+UID=u\\x2Bv/1.2.3.4=z"
    assert fields(name) == {"C": b"DE", "OU": b"a", "CN": b"x/y"}     # the first OU
    assert one_line(()) == b"" and fields(()) == {}


def test_client_changes_cases(certs: Certs) -> None:
    from ucspi.clientcert import client_changes, pem
    der = der_of(certs.client_good)
    assert pem(der).decode() == ssl.DER_cert_to_PEM_cert(der)
    assert client_changes(False, None, der) == []
    assert client_changes(True, None, None) == [(b"SSL_CLIENT_VERIFY", b"NONE")]
    undecoded = dict(client_changes(True, None, der))        # Python could not decode it
    assert sorted(undecoded) == [b"SSL_CLIENT_CERT", b"SSL_CLIENT_VERIFY", b"SSL_PEER_CERT_HASH"]
    info = {"subject": ((("commonName", "c"),),), "issuer": (), "version": 3,
            "serialNumber": "0A", "notBefore": "Jan  1 00:00:00 2020 GMT"}
    changes = dict(client_changes(True, info, der))
    assert changes[b"SSL_CLIENT_M_SERIAL"] == b"10" and changes[b"SSL_CLIENT_I_DN"] == b""
    assert b"SSL_CLIENT_V_END" not in changes
    for bad in ("zz", "1" * 257):
        assert dict(client_changes(True, {**info, "serialNumber": bad}, der)).get(
            b"SSL_CLIENT_M_SERIAL") is None
    assert dict(client_changes(True, {**info, "serialNumber": "-0A"}, der))[
        b"SSL_CLIENT_M_SERIAL"] == b"-10"


def test_every_variable_is_one_tls_changes_removes(certs: Certs) -> None:
    from ucspi.clientcert import client_changes
    from ucspi.environ import CLIENT_VARIABLES
    assert sorted(CLIENT_VARIABLES) == sorted(name.encode() for name in CLIENT_NAMES)
    subject = tuple(((attribute, "v"),) for attribute in (
        "countryName", "stateOrProvinceName", "localityName", "organizationName",
        "organizationalUnitName", "commonName", "emailAddress"))
    info = {"subject": subject, "issuer": subject, "version": 3, "serialNumber": "01",
            "notBefore": "a", "notAfter": "b"}
    names = [name for name, _ in client_changes(True, info, der_of(certs.client_good))]
    assert sorted(names) == sorted(CLIENT_VARIABLES)


@pytest.mark.parametrize("flag,loaded", [("-s", False), ("-Y", True), ("-y", True)])
def test_hashlib_only_for_client_certificates(certs: Certs, flag: str, loaded: bool) -> None:
    """What turns a certificate into variables, and hashlib with it, is
    loaded at start-up under -Y/-y, and not at all without them."""
    argv = ["-s", "-i", certs.certdir, "-a", certs.client_ca, flag, "0", "0", "true"]
    code = ("import sys; from ucspi.options import parse; "
            "from ucspi.server.service import launcher; "
            f"launcher(parse({argv!r}, {{}})); "
            "print('hashlib' in sys.modules, 'ucspi.clientcert' in sys.modules)")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, timeout=30,
                         check=True, env=tls_env())
    assert out.stdout.decode().split() == [str(loaded)] * 2


def test_tls_changes_remove_inherited_client_variables() -> None:
    from ucspi.environ import TlsFacts, apply, tls_changes
    stale = {name.encode(): b"stale" for name in CLIENT_NAMES}
    env = apply(stale, tls_changes(TlsFacts("TLSv1.3", "x", 256), "p"))
    assert not [name for name in env if name.startswith((b"SSL_CLIENT", b"SSL_PEER"))]
    asked = apply(stale, tls_changes(TlsFacts("TLSv1.3", "x", 256, client_asked=True), "p"))
    assert {k: v for k, v in asked.items() if k in stale} == {b"SSL_CLIENT_VERIFY": b"NONE"}


@pytest.mark.parametrize("stem,key", [
    ("a.example", "a.example"), ("*.example", "*.example"), ("*.a.example", "*.a.example"),
    ("*", None), ("*.", None), ("*.*.example", None), ("a*.example", None), ("*a.example", None),
    ("*.Example", None), ("A.example", None), ("*..example", None), ("*.example.", None),
])
def test_sni_file_names(stem: str, key: Optional[str]) -> None:
    from ucspi.tls.settings import sni_file
    assert sni_file(stem) == key


@pytest.mark.parametrize("name,key", [
    ("a.example.com", "*.example.com"), ("a.b.example.com", "*.b.example.com"),
    ("example", None), ("a.b", "*.b"),
])
def test_wildcard_key(name: str, key: Optional[str]) -> None:
    from ucspi.tls.settings import wildcard
    assert wildcard(name) == key
