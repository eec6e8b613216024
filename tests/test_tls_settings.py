"""The pure TLS settings (file names, -M, cipher choice, SNI names) and
the contexts' start-up errors, against IndiMail's behaviour (design: tls-settings)."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, Iterator, List, Optional

import pytest

from tests.util import need
from ucspi.tls import settings
from ucspi.tls.settings import Bounds, TlsError, cipher_choice, parse_method, resolve, sni_name


def never(path: str) -> bool:
    return False


def always(path: str) -> bool:
    return True


def test_default_names_are_taken_in_the_certificate_directory() -> None:
    files = resolve(None, None, None, None, {}, always)
    assert files.certdir == settings.DEFAULT_CERTDIR
    assert files.certfile == settings.DEFAULT_CERTDIR + "/servercert.pem"
    assert files.cafile == settings.DEFAULT_CERTDIR + "/clientca.pem"
    assert files.crlfile == settings.DEFAULT_CERTDIR + "/clientcrl.pem"


def test_environment_names_and_directory() -> None:
    env = {"CERTDIR": "/c", "TLS_CERTFILE": "s.pem", "CLIENTCA": "./ca.pem",
           "CLIENTCRL": "/abs/crl.pem"}
    files = resolve(None, None, None, None, env, always)
    assert (files.certfile, files.cafile, files.crlfile) == ("/c/s.pem", "./ca.pem",
                                                             "/abs/crl.pem")
    files = resolve("", "/i", None, None, env, always)       # -i beats $CERTDIR
    assert files.certfile == "/i/s.pem"


def test_given_names_are_used_exactly_and_unreadable_defaults_dropped() -> None:
    files = resolve("cert.pem", "/d", "ca.pem", "crl.pem", {}, never)
    assert (files.certfile, files.cafile, files.crlfile) == ("cert.pem", "ca.pem", "crl.pem")
    files = resolve(None, "/d", None, "", {}, never)
    assert files.cafile is None and files.crlfile is None
    assert files.certfile == "/d/servercert.pem"             # never dropped


@pytest.mark.parametrize("text, bounds", [
    (None, Bounds(0, None, None)),
    ("TLSv1_2", Bounds(6, None, "TLSv1_2")),
    ("TLSv1_2:TLSv1_3", Bounds(7, "TLSv1_2", "TLSv1_3")),
    (":TLSv1_2", Bounds(6, None, "TLSv1_2")),
    ("TLSv1_3:", Bounds(0, "TLSv1_3", None)),
    ("SSLv23", Bounds(2, None, "SSLv23")),
])
def test_method(text: Optional[str], bounds: Bounds) -> None:
    assert parse_method(text) == bounds


@pytest.mark.parametrize("text", ["tlsv1_2", "TLSv1.2", "bogus", ":", "TLSv1_2:x", ""])
def test_unknown_method_is_the_originals_three_lines(text: str) -> None:
    with pytest.raises(TlsError) as info:
        parse_method(text)
    assert info.value.lines == [f"tls_method: Invalid TLS method configured [{text}]",
                                "tls_method: Supported methods: SSLv23, SSLv3, TLSv1, "
                                "TLSv1_1, TLSv1_2, TLSv1_3",
                                "SSL_CTX_new: error initializing method: protocol error"]


ENV = {"TLS_CIPHER_LIST": "HIGH", "TLS_CIPHER_SUITE": "TLS_AES_128_GCM_SHA256"}


@pytest.mark.parametrize("method, env, expected", [
    (None, ENV, ("TLS_AES_128_GCM_SHA256", True)),      # $TLS_CIPHER_LIST ignored
    (None, {"TLS_CIPHER_LIST": "HIGH"}, (None, True)),
    ("TLSv1_2", ENV, ("HIGH", False)),
    ("TLSv1_1:TLSv1_2", ENV, ("HIGH", False)),
    ("TLSv1_3", ENV, ("TLS_AES_128_GCM_SHA256", True)),
    ("TLSv1_2:", ENV, ("TLS_AES_128_GCM_SHA256", True)),  # MIN: = automatic
    ("TLSv1_2", {}, (None, False)),
])
def test_cipher_variable_by_method(method: Optional[str], env: Dict[str, str],
                                   expected: object) -> None:
    assert cipher_choice(None, method, env) == expected


def test_f_names_a_file_or_is_the_string(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(os.fspath(tmp_path), "ciphers")
    with open(path, "w") as handle:
        handle.write("ECDHE-RSA-AES128-GCM-SHA256:HIGH more words\n")
    assert cipher_choice(path, "TLSv1_2", ENV) == ("ECDHE-RSA-AES128-GCM-SHA256:HIGH", False)
    assert cipher_choice("AES256", "TLSv1_2", ENV) == ("AES256", False)
    assert cipher_choice(path, None, ENV)[1] is True       # no -M: TLS 1.3 suites
    empty = os.path.join(os.fspath(tmp_path), "empty")
    open(empty, "w").close()
    assert cipher_choice(empty, "TLSv1_2", ENV) == (None, False)


@pytest.mark.parametrize("name, checked", [
    ("mail.example.com", "mail.example.com"), ("Mail.Example.COM", "mail.example.com"),
    ("a-b.c", "a-b.c"), ("localhost", "localhost"),
    ("../x", None), ("a/b", None), ("a..b", None), (".hidden", None), ("", None),
    (None, None), ("x" * 254, None), ("caf\u00e9.example", None), ("a b", None),
    ("a_b", None), ("a\0b", None),
])
def test_sni_name(name: Optional[str], checked: Optional[str]) -> None:
    assert sni_name(name) == checked


# -- contexts: start-up errors (real certificates from openssl) ------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    openssl = need("openssl")
    folder = os.fspath(tmp_path_factory.mktemp("tlsctx"))
    for name in ("one", "two"):
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                        "-keyout", f"{folder}/{name}.key", "-out", f"{folder}/{name}.crt"],
                       check=True, capture_output=True)
    with open(f"{folder}/good.pem", "w") as out:
        for part in ("one.key", "one.crt"):
            out.write(open(f"{folder}/{part}").read())
    with open(f"{folder}/mismatch.pem", "w") as out:
        for part in ("two.key", "one.crt"):
            out.write(open(f"{folder}/{part}").read())
    with open(f"{folder}/junk.pem", "w") as out:
        out.write("not a certificate\n")
    yield folder


def build(folder: str, certfile: str, cafile: Optional[str] = None, crl: Optional[str] = None,
          ciphers: Optional[str] = None, method: Optional[str] = None) -> List[str]:
    from ucspi.tls.context import Setup
    setup = Setup(certfile, folder, cafile, crl, ciphers, method, False, {})
    try:
        setup.build()
    except TlsError as exc:
        return exc.lines
    return setup.notes


def test_good_certificate_builds(certs: str) -> None:
    assert build(certs, f"{certs}/good.pem") == []


def test_missing_certificate(certs: str) -> None:
    assert build(certs, f"{certs}/none.pem") == [
        f"unable to load CA certificate: {certs}/none.pem: file does not exist"]


def test_certificate_without_key(certs: str) -> None:
    lines = build(certs, f"{certs}/one.crt")
    assert len(lines) == 1
    assert lines[0].startswith("SSL_CTX_use_PrivateKey_file: Unable to load private keys: ")


def test_key_of_another_certificate(certs: str) -> None:
    lines = build(certs, f"{certs}/mismatch.pem")
    assert len(lines) == 1 and lines[0].startswith(
        f"SSL_CTX_use_certificate_file: Unable to use private key: {certs}/mismatch.pem: ")


def test_bad_ca_given_is_fatal_bad_crl_is_ignored(certs: str) -> None:
    assert build(certs, f"{certs}/good.pem", cafile=f"{certs}/junk.pem") == [
        "SSL_CTX_load_verify_locations: Unable to load CA certificate: "
        f"{certs}/junk.pem: error:X509::no certificate or crl found"]
    assert build(certs, f"{certs}/good.pem", crl=f"{certs}/junk.pem") == []


def test_cipher_errors_and_the_tls13_note(certs: str) -> None:
    good = f"{certs}/good.pem"
    assert build(certs, good, ciphers="NOT-A-CIPHER", method="TLSv1_2") == [
        "tls_init: unable to set cipherlist: NOT-A-CIPHER: error:SSL routines::no cipher match"]
    assert build(certs, good, ciphers="TLS_AES_128_GCM_SHA256:TLS_BOGUS") == [
        "tls_init: unable to set ciphersuites: TLS_AES_128_GCM_SHA256:TLS_BOGUS: "
        "error:SSL routines::no cipher match"]
    assert build(certs, good, ciphers="TLS_AES_128_GCM_SHA256") == [
        "tls_init: TLS 1.3 ciphersuites cannot be restricted, using defaults"]
    assert build(certs, good, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", method="TLSv1_2") == []


def test_sni_contexts_are_the_files_with_a_key(certs: str) -> None:
    from ucspi.tls.context import Setup
    import shutil
    folder = os.path.join(certs, "sni")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(f"{certs}/good.pem", f"{folder}/a.example.pem")
    shutil.copy(f"{certs}/one.crt", f"{folder}/clientca.pem")          # no key: ignored
    shutil.copy(f"{certs}/mismatch.pem", f"{folder}/broken.example.pem")
    shutil.copy(f"{certs}/good.pem", f"{folder}/bad_name.pem")         # not a host name
    setup = Setup(f"{certs}/good.pem", folder, None, None, None, None, False, {})
    contexts = setup.build()
    assert sorted(contexts.by_name) == ["a.example"]
    assert len(setup.skipped) == 1 and "broken.example.pem" in setup.skipped[0]
