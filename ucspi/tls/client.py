"""A TLS client's ``ssl`` context: tcpclient's ``-n -c -L -m -f -M``
(design: tcpclient, tls-settings).

* :func:`client_files` (pure): which files, IndiMail's names.  ``-n
  FILE`` is the client certificate (chain and key in one file); ``-n
  ""`` means ``$TLS_CERTFILE``, else ``clientcert.pem``, in ``$CERTDIR``
  (default ``/etc/indimail/certs``), used when that file exists, so
  that ``-n ""`` also asks for TLS without a certificate.  The CA file
  (``-c``, else ``$SERVERCA`` or ``serverca.pem``) and the CRL file
  (``-L``, else ``$SERVERCRL`` or ``servercrl.pem``) work the same way:
  a default that does not exist is left out; a file named on the
  command line, or a default that exists, must load.
* :func:`context`: the context.  With a CA file the server's
  certificate is verified against it, and the name asked for
  (``-m``, else the host argument) must be in it; without one nothing
  is verified.  The versions and ciphers follow tcpserver's rules
  (:mod:`.settings`): TLS 1.2 at least unless ``-M`` asks for less.

Errors are :class:`~.settings.TlsError`, with the lines to print and a
reason in our words, as for the server.
"""

from __future__ import annotations

import os
import ssl
from typing import Callable, List, Mapping, Optional

from ..environ import TlsFacts
from ..scan import cut
from . import settings
from .context import (certificate_problem, key_problem, library_error, load_ca,
                      version_bounds)
from .settings import TlsError

#: ``-z``'s "server version": the protocol the library offers first
OFFERED = "TLSv1.3" if ssl.HAS_TLSv1_3 else "TLSv1.2"

Exists = Callable[[str], bool]


class ClientFiles:
    """The files of a TLS client; None: not used."""

    def __init__(self, certfile: Optional[str], cafile: Optional[str],
                 crlfile: Optional[str]) -> None:
        self.certfile = certfile
        self.cafile = cafile
        self.crlfile = crlfile

    def __repr__(self) -> str:
        return f"ClientFiles({vars(self)!r})"


def client_files(certfile: Optional[str], cafile: Optional[str], crlfile: Optional[str],
                 environ: Mapping[str, str], exists: Exists = os.path.exists) -> ClientFiles:
    """The file names, from the options and the environment.

    Args:
        certfile: ``-n``'s argument (None: no ``-n``; ``""``: the default).
        cafile, crlfile: ``-c`` and ``-L`` (None or ``""``: the default).
        environ: ``CERTDIR``, ``TLS_CERTFILE``, ``SERVERCA``, ``SERVERCRL``.
        exists: the existence check (tests replace it).
    """
    folder = environ.get("CERTDIR", settings.DEFAULT_CERTDIR)

    def default(variable: str, name: str) -> Optional[str]:
        path = environ.get(variable) or name
        if not path.startswith((".", "/")):
            path = os.path.join(folder, path)
        return path if exists(path) else None

    cert = certfile or (default("TLS_CERTFILE", "clientcert.pem")
                        if certfile is not None else None)
    return ClientFiles(cert, cafile or default("SERVERCA", "serverca.pem"),
                       crlfile or default("SERVERCRL", "servercrl.pem"))


def _no_passphrase() -> bytes:
    """Never a prompt on the terminal for an encrypted key."""
    return b""


def _bounds(ctx: ssl.SSLContext, method: Optional[str]) -> None:
    """``-M``: as tcpserver, TLS 1.2 at least unless the maximum asks
    for less.  Raises TlsError (an unknown name)."""
    for which, name, exc in version_bounds(ctx, method):
        raise TlsError([f"SSL_CTX_set_{which}_proto: {exc or name}".rstrip()],
                       f"-M: this TLS library cannot do {name}")


def _ciphers(ctx: ssl.SSLContext, cipher_arg: Optional[str], method: Optional[str],
             environ: Mapping[str, str]) -> None:
    """``-f``, ``$TLS_CIPHER_LIST``, ``$TLS_CIPHER_SUITE``, as for the
    server; Python cannot restrict TLS 1.3 suites, so a valid suite list
    leaves the defaults."""
    string, tls13 = settings.cipher_choice(cipher_arg, method, environ)
    if string is None:
        return
    if tls13:
        known = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
        if any(name not in known for name in string.split(":")):
            raise TlsError([f"tls_init: unable to set ciphersuites: {cut(string)}: "
                            "error:SSL routines::no cipher match"],
                           f"-f: no TLS 1.3 suite in {cut(string)}")
        return
    try:
        ctx.set_ciphers(string)
    except ssl.SSLError:
        if string != "PROFILE=SYSTEM":
            raise TlsError([f"tls_init: unable to set cipherlist: {cut(string)}: "
                            "error:SSL routines::no cipher match"],
                           f"-f: no cipher in {cut(string)}") from None


def _verify(ctx: ssl.SSLContext, files: ClientFiles) -> None:
    """The CA file turns verification on; the CRL file adds revocation
    checks."""
    if files.cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return
    load_ca(ctx, files.cafile)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if files.crlfile is not None:
        try:
            ctx.load_verify_locations(cafile=files.crlfile)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError([f"unable to load CRL file: {cut(files.crlfile)}: "
                            f"{library_error(exc)}"],
                           f"CRL file {cut(files.crlfile)}: "
                           f"{certificate_problem(files.crlfile, exc)}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN


def _certificate(ctx: ssl.SSLContext, certfile: str) -> None:
    try:
        ctx.load_cert_chain(certfile, password=_no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLError) and b"CERTIFICATE-----" not in _head(certfile):
            problem = "no certificate in the file"
        else:
            problem = key_problem(certfile, exc)
        raise TlsError(["SSL_CTX_use_certificate_chain_file: Unable to load certificate: "
                        f"{cut(certfile)}: {problem}"],
                       f"client certificate {cut(certfile)}: {problem}") from None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except OSError:
        return b""


def context(files: ClientFiles, cipher_arg: Optional[str], method: Optional[str],
            environ: Mapping[str, str]) -> ssl.SSLContext:
    """The client context.

    Raises:
        TlsError: a file does not load, ``-M`` or ``-f`` is wrong.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _bounds(ctx, method)
    _ciphers(ctx, cipher_arg, method, environ)
    _verify(ctx, files)
    if files.certfile is not None:
        _certificate(ctx, files.certfile)
    return ctx


def provider(details: bool, facts: TlsFacts) -> str:
    """``TLS_PROVIDER``: IndiMail's ``tcpclient, `` and, with ``-z``,
    the session (tcpserver's words)."""
    if not details:
        return "tcpclient, "
    return (f"tcpclient, TLS Server={OFFERED}, Client={facts.protocol}, "
            f"Ciphers={facts.cipher}, bits={facts.bits}")


def verify_lines(exc: BaseException) -> List[str]:
    """What a failed verification says beyond OpenSSL's reason (the
    certificate's problem, the name that did not match)."""
    message = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLCertVerificationError) and message:
        return [f"SSL_connect: verify err: {message}"]
    return []
