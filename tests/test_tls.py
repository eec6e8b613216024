"""TLS (-n -s -i -a -L -f -M -z): start-up, the program's environment,
protocol versions, ciphers, SNI, SIGHUP reloads, and what happens on the
clear socket before the handshake (rules, per-host limit, banner).

Design: (design: tls-settings, tls-reload, sni); the relay itself is
in tests/test_tls_relay.py.

Every server here is ours (``sys.executable tcpserver.py``) at ``-v``
with ``-H -R -l Local``; certificates come from tests/fix_tls.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from tests.fix_server import (OURS, Server, Servers, children_of, parse_env, read_all,
                              read_exactly, run_once)
from tests.fix_tls import (DROPPED, END_DROPPED, MARK_ENV, SERIAL_A, SERIAL_B, SERIAL_DEFAULT,
                           SERIAL_NEW, SERIAL_X, Certs, client_context, client_hello, end_status,
                           no_traceback, peer_serial, pem_in, read_tls, s_client, serial_of_pem,
                           session_certs, sni_seen, start_tls, tls_connect, tls_env, tls_env_of)
from tests.util import PYTHON, ROOT, need, wait_until

FATAL = "tcpserver: fatal: unable to initialize TLS"
#: PRINT_ENV that also prints the program's own pid (the status line's childpid)
PID_ENV = ["sh", "-c", "echo SHPID=$$; env; echo END"]
#: the four variables the TLS path sets or removes
TLS_NAMES = ("TLS_PROVIDER", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI_SERVERNAME")
STALE = {name: "stale" for name in TLS_NAMES}



def _fatal(args: Sequence[str], first: str, env: Optional[Dict[str, str]] = None
           ) -> List[str]:
    """Start-up must fail: a line matching ``first`` (regex), the fatal
    line last (with what is wrong after it, where we know: issue 18,
    item 19), exit 111, no port printed (nothing bound)."""
    result = run_once(OURS, ["-1", "-H", "-R", "-l", "Local", *args, "127.0.0.1", "0", "true"],
                      env=env or tls_env())
    err = result.stderr.decode("latin-1")
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert result.returncode == 111, err
    assert result.stdout == b"", err           # -1 never printed a port: nothing listens
    assert lines and (lines[-1] == FATAL or lines[-1].startswith(FATAL + ": ")), err
    assert any(re.search(first, line) for line in lines[:-1]), err
    return lines


# -- start-up -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bogus", "tlsv1_2", "TLSV1_3"])
def test_unknown_method_is_fatal(certs: Certs, method: str) -> None:
    result = run_once(OURS, ["-1", "-s", "-i", certs.certdir, "-M", method, "127.0.0.1", "0",
                             "true"], env=tls_env())
    assert result.returncode == 111
    assert result.stdout == b""
    assert result.stderr.decode("latin-1").splitlines() == [
        f"tls_method: Invalid TLS method configured [{method}]",
        "tls_method: Supported methods: SSLv23, SSLv3, TLSv1, TLSv1_1, TLSv1_2, TLSv1_3",
        "SSL_CTX_new: error initializing method: protocol error",
        f"{FATAL}: -M wants a method name or MIN:MAX, not {method!r}"]


def test_sslv23_is_a_warning_not_fatal(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-M", "SSLv23"])
    server.wait_log(r"^SSL_CTX_set_max_proto:( |$)")   # the error part may be empty
    assert tls_env_of(server)["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    no_traceback(server)


def test_missing_certificate(certs: Certs, tmp_path: Path) -> None:
    path = str(tmp_path / "none.pem")
    _fatal(["-n", path], rf"^unable to load CA certificate: {re.escape(path)}: ")


def test_missing_default_certificate(certs: Certs, tmp_path: Path) -> None:
    """-s with a certificate directory that has no servercert.pem."""
    path = os.path.join(str(tmp_path), "servercert.pem")
    _fatal(["-s", "-i", str(tmp_path)], rf"^unable to load CA certificate: {re.escape(path)}: ")


@pytest.mark.parametrize("which", ["broken", "keyonly"])
def test_certificate_file_without_certificate(certs: Certs, which: str) -> None:
    path = getattr(certs, which)
    _fatal(["-n", path], rf"^unable to load CA certificate: {re.escape(path)}: ")


def test_certificate_without_key(certs: Certs) -> None:
    _fatal(["-n", certs.certonly], r"^SSL_CTX_use_PrivateKey_file: Unable to load private keys: ")


def test_certificate_with_wrong_key(certs: Certs) -> None:
    _fatal(["-n", certs.mismatch],
           r"^SSL_CTX_use_(PrivateKey_file: Unable to load private keys: "
           r"|certificate_file: Unable to use private key: )")


def test_tls_certfile_variable(certs: Certs) -> None:
    """$TLS_CERTFILE names the default certificate (absolute: as is)."""
    _fatal(["-s", "-i", certs.certdir],
           r"^SSL_CTX_use_PrivateKey_file: Unable to load private keys: ",
           env=tls_env(TLS_CERTFILE=certs.certonly))


def test_tls_certfile_relative_to_certdir(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, env=tls_env(TLS_CERTFILE="b.example.pem"))
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_B


def test_certdir_variable_and_empty_n(servers: Servers, certs: Certs) -> None:
    """``-n ""`` is -s; $CERTDIR is the directory when -i is absent."""
    server = servers(["-v", "-H", "-R", "-l", "Local", "-n", ""],
                     env=tls_env(CERTDIR=certs.certdir))
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT


@pytest.mark.parametrize("which", ["missing", "broken"])
def test_bad_ca_file_is_fatal(certs: Certs, tmp_path: Path, which: str) -> None:
    path = str(tmp_path / "none.pem") if which == "missing" else certs.broken
    _fatal(["-s", "-i", certs.certdir, "-a", path],
           rf"^SSL_CTX_load_verify_locations: Unable to load CA certificate: {re.escape(path)}: ")


def test_default_ca_file_in_certdir_is_loaded(certs: Certs, tmp_path: Path) -> None:
    """clientca.pem in the directory is used when readable, so a broken
    one stops the start-up."""
    folder = certs.copy_dir(str(tmp_path / "certs"))
    path = os.path.join(folder, "clientca.pem")
    shutil.copy(certs.broken, path)
    _fatal(["-s", "-i", folder],
           rf"^SSL_CTX_load_verify_locations: Unable to load CA certificate: {re.escape(path)}: ")


@pytest.mark.parametrize("extra", [["-a", "CA"], ["-L", "CRL"], ["-a", "CA", "-L", "CRL"],
                                   ["-L", "MISSING"], ["-L", "BROKEN"]])
def test_ca_and_crl_accepted(servers: Servers, certs: Certs, tmp_path: Path,
                             extra: List[str]) -> None:
    """A good CA or CRL file starts; a CRL that cannot be loaded is
    ignored (as in IndiMail)."""
    names = {"CA": certs.ca, "CRL": certs.crl, "MISSING": str(tmp_path / "none.pem"),
             "BROKEN": certs.broken}
    server = start_tls(servers, certs, [x if x.startswith("-") else names[x] for x in extra])
    assert tls_env_of(server)["PROTO"] == "TCP"
    no_traceback(server)


def test_default_crl_variable(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, env=tls_env(CLIENTCRL=certs.crl, CLIENTCA=certs.ca))
    assert tls_env_of(server)["PROTO"] == "TCP"


def test_quiet_start_up_failure(certs: Certs, tmp_path: Path) -> None:
    result = run_once(OURS, ["-1", "-q", "-n", str(tmp_path / "none.pem"), "127.0.0.1", "0",
                             "true"], env=tls_env())
    assert (result.returncode, result.stdout, result.stderr) == (111, b"", b"")


# -- ciphers (-f, $TLS_CIPHER_LIST) -----------------------------------------------------------
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"


def _refused(server: Server, count: int, **kwargs: Any) -> None:
    """A client that must fail the handshake; the server logs the drop
    and its relay child ends 111 without running the program."""
    with pytest.raises((ssl.SSLError, OSError)):
        with tls_connect(server, **kwargs) as sock:
            sock.recv(1)
    server.wait_log(DROPPED, count)
    pid = server.wait_pids(count)[-1]
    assert end_status(server, pid) == END_DROPPED


def test_cipher_list_restricts_tls12(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-M", "TLSv1_2", "-f", AES128], prog=MARK_ENV)
    _refused(server, 1, maximum="1.2", ciphers=AES256)
    env = tls_env_of(server, ciphers=AES128)
    assert (env["SSL_PROTOCOL"], env["SSL_CIPHER"]) == ("TLSv1.2", AES128)
    # a client that does not cap the version gets TLS 1.2 too
    assert tls_env_of(server)["SSL_CIPHER"] == AES128
    assert server.log().count("PROGRAM-RAN") == 2
    no_traceback(server)


def test_cipher_file_first_token(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "ciphers"
    path.write_text(f"{AES256} {AES128}\n")
    server = start_tls(servers, certs, ["-M", "TLSv1_2", "-f", str(path)])
    _refused(server, 1, ciphers=AES128)
    assert tls_env_of(server, ciphers=AES256)["SSL_CIPHER"] == AES256


def test_cipher_list_variable_with_tls12_max(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-M", "TLSv1_2"], env=tls_env(TLS_CIPHER_LIST=CHACHA))
    _refused(server, 1, ciphers=AES128)
    assert tls_env_of(server, ciphers=CHACHA)["SSL_CIPHER"] == CHACHA


def test_cipher_list_variable_ignored_without_method(servers: Servers, certs: Certs) -> None:
    """Without -M, $TLS_CIPHER_LIST is not looked at (as in IndiMail)."""
    server = start_tls(servers, certs, env=tls_env(TLS_CIPHER_LIST="NOT-A-CIPHER"))
    assert tls_env_of(server, maximum="1.2", ciphers=AES128)["SSL_CIPHER"] == AES128
    assert "tls_init" not in server.log()


def test_bad_cipher_list_is_fatal(certs: Certs) -> None:
    _fatal(["-s", "-i", certs.certdir, "-M", "TLSv1_2", "-f", "NOT-A-CIPHER"],
           r"^tls_init: unable to set cipherlist: NOT-A-CIPHER: ")


def test_unknown_tls13_suite_is_fatal(certs: Certs) -> None:
    _fatal(["-s", "-i", certs.certdir, "-f", "TLS_BOGUS_SUITE"],
           r"^tls_init: unable to set ciphersuites: TLS_BOGUS_SUITE: ")


@pytest.mark.parametrize("how", ["option", "variable"])
def test_tls13_suites_cannot_be_restricted(servers: Servers, certs: Certs, how: str) -> None:
    suites = "TLS_AES_128_GCM_SHA256"
    if how == "option":
        server = start_tls(servers, certs, ["-f", suites])
    else:
        server = start_tls(servers, certs, env=tls_env(TLS_CIPHER_SUITE=suites))
    env = tls_env_of(server, minimum="1.3")
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    lines = server.lines()
    assert lines.count("tls_init: TLS 1.3 ciphersuites cannot be restricted, using defaults") == 1
    no_traceback(server)


# -- protocol versions (-M) ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["TLSv1_3:", "TLSv1_3:TLSv1_3"])
def test_minimum_tls13_refuses_tls12_client(servers: Servers, certs: Certs, method: str) -> None:
    server = start_tls(servers, certs, ["-M", method], prog=MARK_ENV)
    _refused(server, 1, maximum="1.2")
    lines = server.lines()
    assert "SSL_accept: decoded err: non-recoverable, fatal protocol error" in lines, lines
    assert any(line.startswith("SSL_accept: TLS/SSL err: ") for line in lines), lines
    assert tls_env_of(server)["SSL_PROTOCOL"] == "TLSv1.3"
    assert server.log().count("PROGRAM-RAN") == 1
    no_traceback(server)


def test_method_name_is_a_maximum(servers: Servers, certs: Certs) -> None:
    """``-M NAME`` sets only the maximum (as in IndiMail): a TLS 1.2 client is
    still served by ``-M TLSv1_3``."""
    server = start_tls(servers, certs, ["-M", "TLSv1_3"])
    assert tls_env_of(server, maximum="1.2")["SSL_PROTOCOL"] == "TLSv1.2"
    assert tls_env_of(server)["SSL_PROTOCOL"] == "TLSv1.3"


@pytest.mark.parametrize("method", ["TLSv1_2", ":TLSv1_2", "TLSv1_2:TLSv1_2"])
def test_maximum_tls12_refuses_tls13_client(servers: Servers, certs: Certs, method: str) -> None:
    server = start_tls(servers, certs, ["-M", method])
    _refused(server, 1, minimum="1.3")
    assert tls_env_of(server)["SSL_PROTOCOL"] == "TLSv1.2"
    no_traceback(server)


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_s_client_versions(servers: Servers, certs: Certs, flag: str, version: str) -> None:
    server = start_tls(servers, certs,
                       prog=["sh", "-c", 'read x; echo "got $x $SSL_PROTOCOL $TLS_PROVIDER."'])
    result = s_client(server.port, ["-quiet", "-noservername", flag], b"hello\n",
                      keep_open=True)
    assert result.stdout == f"got hello {version} tcpserver, .\n".encode(), result


# -- the program's environment ---------------------------------------------------------------
def _status_line(server: Server, pid: int) -> str:
    return server.wait_log(rf"^tcpserver: status: \d+/\d+ encrypted session, sslpid={pid}, ")[0]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_environment(servers: Servers, certs: Certs, version: str) -> None:
    server = start_tls(servers, certs, prog=PID_ENV, env=tls_env(**STALE))
    with tls_connect(server, minimum=version, maximum=version) as sock:
        negotiated = sock.cipher()
        assert negotiated is not None
        cipher, _, bits = negotiated
        client_port = sock.getsockname()[1]
        env = parse_env(read_tls(sock))
    protocol = f"TLSv{version}"
    assert env["SSL_PROTOCOL"] == protocol
    assert env["SSL_CIPHER"] == cipher
    assert env["TLS_PROVIDER"] == "tcpserver, "
    assert "SSL_TLS_SNI_SERVERNAME" not in env
    assert (env["PROTO"], env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["TCPLOCALPORT"]) == (
        "TCP", "127.0.0.1", str(client_port), str(server.port))
    pid = server.wait_pids(1)[0]
    assert _status_line(server, pid) == (
        f"tcpserver: status: 1/40 encrypted session, sslpid={pid}, childpid={env['SHPID']}, "
        f"IP 127.0.0.1, TLS Server=TLSv1.3, Client={protocol}, Ciphers={cipher}, bits={bits}")
    assert end_status(server, pid) == 0
    no_traceback(server)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_provider_details_with_z(servers: Servers, certs: Certs, version: str) -> None:
    server = start_tls(servers, certs, ["-z"])
    with tls_connect(server, minimum=version, maximum=version) as sock:
        negotiated = sock.cipher()
        assert negotiated is not None
        cipher, _, bits = negotiated
        env = parse_env(read_tls(sock))
    assert env["TLS_PROVIDER"] == (f"tcpserver, TLS Server=TLSv1.3, Client=TLSv{version}, "
                                   f"Ciphers={cipher}, bits={bits}")
    assert env["SSL_CIPHER"] == cipher


def test_plain_server_has_no_tls_variables(servers: Servers, certs: Certs) -> None:
    server = servers(["-H", "-R", "-l", "Local"], env=tls_env())
    env = server.env()
    assert not [name for name in TLS_NAMES if name in env]


def test_program_descriptors_are_pipes(servers: Servers, certs: Certs) -> None:
    """fd 0 and 1 are two pipes, and the program holds no socket (not
    the client's, not the listener)."""
    server = start_tls(servers, certs, prog=[
        "sh", "-c", 'readlink /proc/$$/fd/0 /proc/$$/fd/1; echo --; '
                    'for f in /proc/$$/fd/*; do readlink "$f"; done'])
    with tls_connect(server) as sock:
        text = read_tls(sock).decode()
    std, _, every = text.partition("--\n")
    lines = std.splitlines()
    assert len(lines) == 2 and all(line.startswith("pipe:[") for line in lines), text
    assert lines[0] != lines[1]
    assert not [line for line in every.splitlines() if line.startswith("socket:")], text


# -- SNI --------------------------------------------------------------------------------------
def test_sni_picks_certificate(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs)
    cases = [(None, SERIAL_DEFAULT, None),
             ("a.example", SERIAL_A, "a.example"),
             ("b.example", SERIAL_B, "b.example"),
             ("A.Example", SERIAL_A, "a.example"),
             ("unknown.example", SERIAL_DEFAULT, "unknown.example"),
             ("x", SERIAL_DEFAULT, "x")]                  # ../x.pem is not in the directory
    assert sni_seen(server, [name for name, _, _ in cases]) == cases
    no_traceback(server)


@pytest.mark.parametrize("name", ["../x", "a..example", "a.example/", "a_example", "-" * 254])
def test_sni_hostile_names_get_default(servers: Servers, certs: Certs, name: str) -> None:
    need("openssl")
    server = start_tls(servers, certs)
    result = s_client(server.port, ["-ign_eof", "-servername", name], keep_open=True)
    assert result.returncode == 0, result
    assert serial_of_pem(pem_in(result.stdout)) == SERIAL_DEFAULT
    assert b"PROTO=TCP" in result.stdout, result.stdout
    assert b"SSL_TLS_SNI_SERVERNAME" not in result.stdout, result.stdout
    no_traceback(server)


def test_sni_s_client_name(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs)
    result = s_client(server.port, ["-ign_eof", "-servername", "B.EXAMPLE"], keep_open=True)
    assert serial_of_pem(pem_in(result.stdout)) == SERIAL_B
    assert b"\nSSL_TLS_SNI_SERVERNAME=b.example\n" in result.stdout, result.stdout


def test_sni_file_with_bad_key_is_skipped(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    with open(certs.certonly, "rb") as handle:
        cert = handle.read()
    Path(folder, "bad.example.pem").write_bytes(
        cert + b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    shutil.copy(certs.ca, os.path.join(folder, "ca.pem"))     # no key: ignored silently
    shutil.copy(certs.crl, os.path.join(folder, "crl.pem"))
    server = start_tls(servers, certs, certdir=folder)
    with tls_connect(server, server_hostname="bad.example") as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    with tls_connect(server, server_hostname="a.example") as sock:
        assert peer_serial(sock) == SERIAL_A
    warnings = [line for line in server.lines() if "warning" in line]
    assert len(warnings) == 1 and "bad.example" in warnings[0], server.log()
    assert "ca.pem" not in server.log() and "crl.pem" not in server.log()
    no_traceback(server)


# -- SIGHUP -------------------------------------------------------------------------------------
def _replace(src: str, dest: str) -> None:
    """Put ``src`` at ``dest`` in one rename (no half-written file)."""
    shutil.copy(src, dest + ".tmp")
    os.replace(dest + ".tmp", dest)


def test_sighup_reloads_certificates(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    server = start_tls(servers, certs, certdir=folder)
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    _replace(certs.new, os.path.join(folder, "servercert.pem"))
    _replace(certs.x, os.path.join(folder, "a.example.pem"))
    _replace(certs.sni_a, os.path.join(folder, "c.example.pem"))     # a name new on SIGHUP
    server.marker()
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_NEW
    with tls_connect(server, server_hostname="a.example") as sock:
        assert peer_serial(sock) == SERIAL_X
    with tls_connect(server, server_hostname="c.example") as sock:
        assert peer_serial(sock) == SERIAL_A
    with tls_connect(server, server_hostname="b.example") as sock:
        assert peer_serial(sock) == SERIAL_B
    assert "unable to reload" not in server.log()
    no_traceback(server)


@pytest.mark.parametrize("which", ["broken", "certonly", "missing"])
def test_sighup_broken_certificate_keeps_old(servers: Servers, certs: Certs, tmp_path: Path,
                                             which: str) -> None:
    folder = certs.copy_dir(str(tmp_path / "certs"))
    target = os.path.join(folder, "servercert.pem")
    server = start_tls(servers, certs, tls=["-n", target], certdir=folder)
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    if which == "missing":
        os.unlink(target)
    else:
        _replace(getattr(certs, which), target)
    server.marker()
    server.wait_log(r"^tcpserver: warning: unable to reload TLS certificates: .")
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_DEFAULT
    assert server.running()
    # and a good file later is taken
    _replace(certs.new, target)
    server.marker()
    with tls_connect(server) as sock:
        assert peer_serial(sock) == SERIAL_NEW
    assert len([line for line in server.lines() if "unable to reload" in line]) == 1
    no_traceback(server)


# -- before the handshake: rules, limits, banner ------------------------------------------------
def _rules(path: str, text: str) -> str:
    subprocess.run([PYTHON, os.path.join(ROOT, "tcprules.py"), path, path + ".tmp"],
                   input=text.encode(), check=True, timeout=30)
    return path


def _answer(sock: socket.socket) -> bytes:
    """What the server sends to a client that offers a TLS ClientHello
    (b"" if it closes, even with a reset because the hello went unread)."""
    try:
        sock.sendall(client_hello())
        return read_all(sock)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_rules_deny_before_handshake(servers: Servers, certs: Certs, tmp_path: Path) -> None:
    cdb = _rules(str(tmp_path / "r.cdb"), "127.0.0.1:deny\n")
    server = start_tls(servers, certs, ["-x", cdb], prog=MARK_ENV)
    with server.connect() as sock:
        assert _answer(sock) == b""
    server.wait_log(r"^tcpserver: deny \d+ ")
    assert wait_until(lambda: not children_of(server.pid))
    log = server.log()
    assert "SSL_accept" not in log and "encrypted session" not in log and "PROGRAM-RAN" not in log
    no_traceback(server)


def test_per_host_limit(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs, ["-C", "1"], prog=["cat"])
    with tls_connect(server) as held:
        held.sendall(b"one\n")
        assert held.recv(100) == b"one\n"
        with server.connect() as second:
            assert _answer(second) == b""
        server.wait_log(r"^tcpserver: end 127\.0\.0\.1 perIPlimit 1$")
        held.sendall(b"two\n")
        assert held.recv(100) == b"two\n"
    no_traceback(server)


def test_banner_in_clear_before_handshake(servers: Servers, certs: Certs) -> None:
    banner = b"220 hello in clear\r\n"
    server = start_tls(servers, certs, ["-B", banner.decode()])
    raw = server.connect()
    assert read_exactly(raw, len(banner)) == banner
    with tls_connect(server, raw=raw) as sock:
        env = parse_env(read_tls(sock))
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    no_traceback(server)


def test_banner_breaks_a_plain_tls_client(servers: Servers, certs: Certs) -> None:
    """A TLS client that does not expect the banner fails (as with IndiMail)."""
    server = start_tls(servers, certs, ["-B", "220 hello\r\n"], prog=MARK_ENV)
    with pytest.raises((ssl.SSLError, OSError)):
        with tls_connect(server) as sock:
            sock.recv(1)
    server.wait_log(DROPPED)
    assert "PROGRAM-RAN" not in server.log()


# -- session resumption across relay children (design: sni) ---------------------------------
def test_s_client_reconnect_resumes_tls12(servers: Servers, certs: Certs) -> None:
    server = start_tls(servers, certs)
    result = s_client(server.port, ["-noservername", "-reconnect", "-tls1_2"])
    kinds = [line.split(",")[0] for line in result.stdout.decode("latin-1").splitlines()
             if line.startswith(("New,", "Reused,"))]
    assert kinds == ["New"] + ["Reused"] * 5, result.stdout.decode("latin-1")[-3000:]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_python_session_resumed_by_next_relay(servers: Servers, certs: Certs, version: str) -> None:
    server = start_tls(servers, certs)
    ctx = client_context(version, version)
    with ctx.wrap_socket(server.connect(timeout=10)) as first:
        read_tls(first)                        # TLS 1.3 tickets come after the handshake
        session = first.session
        assert session is not None and not first.session_reused
    with ctx.wrap_socket(server.connect(timeout=10), session=session) as second:
        assert second.session_reused
        assert parse_env(read_tls(second))["SSL_PROTOCOL"] == f"TLSv{version}"
    assert len(server.wait_pids(2)) == 2          # two relay children


def test_dns_and_ident_before_the_handshake(servers: Servers, certs: Certs, dns_server: Any,
                                            identd: Any) -> None:
    """-h and -r run in the loop on the clear socket, as on the plain
    path; the program behind the relay sees their answers."""
    env = tls_env(DNSCACHEIP=dns_server.ip, DNSREWRITEFILE="/nonexistent/ucspi-test-dnsrewrite")
    server = start_tls(servers, certs, ["-h", "-r", "-t", "5"], env=env)
    seen = tls_env_of(server)
    assert seen["TCPREMOTEHOST"] == "localhost.example"
    assert seen["TCPREMOTEINFO"] == identd.user
    assert seen["TLS_PROVIDER"] == "tcpserver, "
    server.wait_log(r"^tcpserver: ok \d+ Local:127\.0\.0\.1:\d+ localhost\.example:127\.0\.0\.1:"
                    + re.escape(identd.user) + r":\d+$")
    no_traceback(server)
