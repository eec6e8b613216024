"""The server's ``ssl`` contexts, built in the parent.

:class:`Setup` holds what the options and the environment ask for and
:meth:`Setup.build` makes a :class:`Contexts`: the default context and
one per SNI name (``<certdir>/<name>.pem``, design: sni;
``<certdir>/*.<domain>.pem``, design: sni-wildcards), each asking
for a client certificate or not (``-Y``, ``-y``,
design: client-certificates).  Everything is built before the listener
exists (start-up errors print the original's lines, then ``unable to
initialize TLS``, exit 111) and again on SIGHUP (design: tls-reload),
when a failure keeps the old contexts.  The relay children inherit the
contexts through the fork, so a session ticket issued by one child is
accepted by any other.
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..errors import errtext
from ..log import Log
from ..scan import cut
from . import settings
from .settings import Files, TlsError

if TYPE_CHECKING:
    from ..options import Options

_VERSIONS = {
    "SSLv3": ssl.TLSVersion.SSLv3, "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1, "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}
#: SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3)
OP_ALLOW_CLIENT_RENEGOTIATION = 0x100
#: DH parameter files looked for in the certificate directory (IndiMail's order)
DH_FILES = ("dh8192.pem", "dh4096.pem", "dh2048.pem", "dh512.pem")
NO_TLS13_SUITES = "tls_init: TLS 1.3 ciphersuites cannot be restricted, using defaults"


def version_bounds(ctx: ssl.SSLContext, method: Optional[str]
                   ) -> List[Tuple[str, str, Optional[Exception]]]:
    """``-M`` on a context, for a server or a client: TLS 1.2 at least
    unless the maximum asks for less (design: tls-settings).  Returns
    the bounds the library refused, as ``(which, name, error)``:
    ``which`` is ``min`` or ``max``; ``error`` is None for a name this
    Python has no version for.  Raises TlsError: an unknown name."""
    bounds = settings.parse_method(method)
    if bounds.minimum is None:
        below = bounds.maximum is not None and settings.METHODS[bounds.maximum] < 6
        ctx.minimum_version = (ssl.TLSVersion.MINIMUM_SUPPORTED if below
                               else ssl.TLSVersion.TLSv1_2)
    refused: List[Tuple[str, str, Optional[Exception]]] = []
    for which, name in (("min", bounds.minimum), ("max", bounds.maximum)):
        if name is None:
            continue
        if name not in _VERSIONS:
            refused.append((which, name, None))
            continue
        try:
            setattr(ctx, which + "imum_version", _VERSIONS[name])
        except (ValueError, ssl.SSLError) as exc:
            refused.append((which, name, exc))
    return refused


def load_ca(ctx: ssl.SSLContext, cafile: str) -> None:
    """The certificates to verify the peer against (``-a`` for a server,
    ``-c`` for a client).  Raises TlsError: IndiMail's line and what is
    wrong with the file."""
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(["SSL_CTX_load_verify_locations: Unable to load CA certificate: "
                        f"{cut(cafile)}: {library_error(exc)}"],
                       f"CA file {cut(cafile)}: {certificate_problem(cafile, exc)}") from None


def library_error(exc: BaseException) -> str:
    """An error in the shape of OpenSSL's error strings, as far as
    Python tells: ``error:<library>::<reason>``, else djb's errno text."""
    if isinstance(exc, ssl.SSLError):
        if not getattr(exc, "reason", None):
            return str(exc.args[1] if len(exc.args) > 1 else exc)
        library = getattr(exc, "library", None) or "SSL"
        library = "SSL routines" if library == "SSL" else library
        return f"error:{library}::{str(exc.reason).lower().replace('_', ' ')}"
    if isinstance(exc, OSError) and exc.errno:
        return errtext(exc)
    return str(exc) or type(exc).__name__


#: how much of a certificate file is read to say what is wrong with it
PEM_READ = 1 << 20


def _pem(path: str) -> bytes:
    """The start of a PEM file, empty if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(PEM_READ)
    except OSError:
        return b""


def _system(exc: BaseException) -> Optional[str]:
    """djb's text for a system error (not an ``ssl`` one), else None."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return errtext(exc)
    return None


def certificate_problem(path: str, exc: BaseException) -> str:
    """What is wrong with a file that should hold certificates."""
    found = _system(exc)
    if found is not None:
        return found
    if b"CERTIFICATE-----" not in _pem(path):
        return "no certificate in the file"
    if isinstance(exc, ssl.SSLError) and not getattr(exc, "reason", None):
        return "a PEM block in the file is damaged"     # Python: "[X509] PEM lib (_ssl.c:N)"
    return library_error(exc)


def key_problem(path: str, exc: BaseException) -> str:
    """What is wrong with the private key of a certificate file."""
    found = _system(exc)
    if found is not None:
        return found
    if "KEY_VALUES_MISMATCH" in str(getattr(exc, "reason", "")):
        return "the private key does not belong to the certificate"
    data = _pem(path)
    if b"PRIVATE KEY-----" not in data:
        return "no private key in the file"
    if b"ENCRYPTED" in data:
        return "the private key is encrypted (tcpserver takes no passphrase)"
    return "the private key cannot be read"


def _no_passphrase() -> bytes:
    """The passphrase callback: none (never a prompt on the terminal)."""
    return b""


def quiet_unraisable(log: Log) -> None:
    """In a relay child: an exception that Python can only report, not
    raise (one from the machinery around the SNI callback), becomes at
    most one warning naming its type, instead of a traceback with the
    client's bytes in the server's log."""
    said: List[bool] = []

    def hook(unraisable: Any) -> None:
        if not said:
            said.append(True)
            log.warning("ignored an error in the TLS library's callback: "
                        f"{type(unraisable.exc_value).__name__}")

    sys.unraisablehook = hook


def renegotiation_supported() -> bool:
    """``-N`` exists only with OpenSSL 3 (as in IndiMail)."""
    return ssl.OPENSSL_VERSION_INFO >= (3,)


class Contexts:
    """The contexts of one generation: ``default`` and ``by_name``."""

    def __init__(self, default: ssl.SSLContext, by_name: Dict[str, ssl.SSLContext]) -> None:
        self.default = default
        self.by_name = by_name


#: the attribute of an ``ssl.SSLObject`` that holds its client's checked
#: SNI name: the result of one handshake stays with its own connection
SNI_ATTRIBUTE = "ucspi_sni_name"


def sni_of(obj: ssl.SSLObject) -> Optional[str]:
    """The checked SNI name of a server-side ``SSLObject``'s client
    (None: none, or not a name we serve)."""
    name: Optional[str] = getattr(obj, SNI_ATTRIBUTE, None)
    return name


class Sni:
    """Selects a context by the client's SNI name, during the handshake,
    and leaves the (checked) name on the connection's ``SSLObject``
    (:func:`sni_of`) for ``SSL_TLS_SNI_SERVERNAME``.

    Python decodes the name as ASCII before it calls the callback, and a
    name it cannot decode fails the handshake (an ``internal error``
    alert) and prints a traceback on stderr, the server's log.  So the
    relay child shows the Sni the client's first bytes (:meth:`received`,
    from :meth:`start` on): when the ClientHello names a host in bytes
    that are not ASCII, the callback is taken off the context of this
    child's one connection, and the client gets the default
    certificate, as for any name that cannot select a file.
    """

    def __init__(self) -> None:
        self.by_name: Dict[str, ssl.SSLContext] = {}
        self._hello = bytearray()
        self._context: Optional[ssl.SSLContext] = None

    def __call__(self, conn: ssl.SSLObject, name: Optional[str], ctx: ssl.SSLContext) -> None:
        checked = settings.sni_name(name)
        setattr(conn, SNI_ATTRIBUTE, checked)
        if not checked:
            return
        chosen = self.by_name.get(checked)          # an exact name wins over a wildcard
        if chosen is None:
            chosen = self.by_name.get(settings.wildcard(checked) or "")
        if chosen is not None:
            conn.context = chosen

    def start(self, ctx: ssl.SSLContext) -> None:
        """A connection (the relay child's one) is about to handshake
        with ``ctx``, the context this Sni is the callback of."""
        self._hello = bytearray()
        self._context = ctx

    def received(self, data: bytes) -> None:
        """Bytes from the client, before the TLS library sees them."""
        if self._context is None:
            return
        self._hello += data
        complete, raw = settings.hello_server_name(bytes(self._hello))
        if not complete:
            return
        if raw is not None and not raw.isascii():
            self._context.sni_callback = None    # in this child only
        self._context = None
        self._hello = bytearray()


def crl_problem(path: str, exc: BaseException) -> str:
    """What is wrong with a file that should hold revocation lists."""
    found = _system(exc)
    if found is not None:
        return found
    if b"X509 CRL-----" not in _pem(path):
        return "no revocation list in the file"
    return library_error(exc)


#: the verify mode of ``Options.client_cert`` ("": no certificate asked for)
CLIENT_MODES = {"": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED}


class Setup:
    """The TLS settings of a server, and the contexts built from them.

    ``client`` is ``Options.client_cert``: ``""`` (no client
    certificate asked for), ``"optional"`` (``-Y``) or ``"required"``
    (``-y``)."""

    def __init__(self, certfile: Optional[str], certdir: Optional[str], cafile: Optional[str],
                 crlfile: Optional[str], cipher_arg: Optional[str], method: Optional[str],
                 renegotiation: bool, environ: Mapping[str, str], client: str = "") -> None:
        self.args = (certfile, certdir, cafile, crlfile)
        self.cipher_arg = cipher_arg
        self.method = method
        self.renegotiation = renegotiation
        self.client = client
        self.environ = dict(environ)
        self.sni = Sni()
        #: lines to print once at start-up (not on every reload)
        self.notes: List[str] = []
        #: problems with SNI files, one line each
        self.skipped: List[str] = []

    @classmethod
    def of(cls, opts: "Options", environ: Mapping[str, str]) -> "Setup":
        """The settings of the server's options and environment."""
        return cls(opts.certfile, opts.certdir, opts.cafile, opts.crlfile, opts.ciphers,
                   opts.tls_method, opts.renegotiation, environ, opts.client_cert)

    def files(self) -> Files:
        certfile, certdir, cafile, crlfile = self.args
        return settings.resolve(certfile, certdir, cafile, crlfile, self.environ)

    # -- one context ------------------------------------------------------
    def _bounds(self, ctx: ssl.SSLContext, notes: List[str]) -> None:
        for which, _, exc in version_bounds(ctx, self.method):
            notes.append(f"SSL_CTX_set_{which}_proto: {exc or ''}".rstrip())

    def _ciphers(self, ctx: ssl.SSLContext, notes: List[str]) -> None:
        string, tls13 = settings.cipher_choice(self.cipher_arg, self.method, self.environ)
        if string is None:
            return
        if tls13:
            known = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
            if any(name not in known for name in string.split(":")):
                raise TlsError([f"tls_init: unable to set ciphersuites: {cut(string)}: "
                                "error:SSL routines::no cipher match"])
            notes.append(NO_TLS13_SUITES)
            return
        try:
            ctx.set_ciphers(string)
        except ssl.SSLError:
            if string == "PROFILE=SYSTEM":
                return                       # RHEL's word for the defaults
            raise TlsError([f"tls_init: unable to set cipherlist: {cut(string)}: "
                            "error:SSL routines::no cipher match"]) from None

    @staticmethod
    def _dh(ctx: ssl.SSLContext, certdir: str) -> None:
        for name in DH_FILES:
            path = os.path.join(certdir, name)
            try:
                os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue
                raise TlsError([f"error reading dh parameters {cut(path)}: {errtext(exc)}"]) from None
            try:
                ctx.load_dh_params(path)
            except (OSError, ssl.SSLError):
                continue
            return

    def context(self, files: Files, certfile: str, notes: List[str]) -> ssl.SSLContext:
        """One server context with ``certfile`` (chain and key).

        Raises:
            TlsError: the original's lines for what failed.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._bounds(ctx, notes)
        ctx.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3
        ctx.options |= getattr(ssl, "OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION", 0)
        if self.renegotiation:
            ctx.options |= OP_ALLOW_CLIENT_RENEGOTIATION
        self._trust(ctx, files, certfile)
        self._ciphers(ctx, notes)
        try:
            ctx.load_cert_chain(certfile, password=_no_passphrase)
        except (OSError, ssl.SSLError) as exc:
            problem = key_problem(certfile, exc)
            reason = f"server certificate {cut(certfile)}: {problem}"
            if "KEY_VALUES_MISMATCH" in str(getattr(exc, "reason", "")):
                raise TlsError(["SSL_CTX_use_certificate_file: Unable to use private key: "
                                f"{cut(certfile)}: {library_error(exc)}"], reason) from None
            # IndiMail's line, with the file and our words for the
            # library's (Python says only "[SSL] PEM lib (_ssl.c:3926)")
            raise TlsError(["SSL_CTX_use_PrivateKey_file: Unable to load private keys: "
                            f"{cut(certfile)}: {problem}"], reason) from None
        self._dh(ctx, files.certdir)
        return ctx

    def _trust(self, ctx: ssl.SSLContext, files: Files, certfile: str) -> None:
        """The verify locations and the verify mode.

        Without ``-Y``/``-y`` (design: tls-settings), IndiMail's: the
        certificate file and directory, ``-a`` and ``-L``; they verify
        nothing, since no client certificate is asked for.  With them
        (design: client-certificates), only ``-a`` and ``-L``: a client
        certificate must come from a CA of ``-a``, not from whoever
        issued the server's own (the certificate file is still loaded,
        for its errors, into a context of its own).

        Raises:
            TlsError: a file that cannot be used, or no ``-a`` file for
                ``-Y``/``-y``.
        """
        capath = files.certdir if os.path.isdir(files.certdir) else None
        own = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if self.client else ctx
        try:
            own.load_verify_locations(cafile=certfile, capath=None if self.client else capath)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError([f"unable to load CA certificate: {cut(certfile)}: "
                            f"{library_error(exc)}"],
                           f"server certificate {cut(certfile)}: "
                           f"{certificate_problem(certfile, exc)}") from None
        if self.client and not files.cafile:
            raise TlsError([], self._no_ca())
        if files.cafile:
            load_ca(ctx, files.cafile)
        if files.crlfile:
            self._crl(ctx, files.crlfile)
        ctx.verify_mode = CLIENT_MODES[self.client]

    def _crl(self, ctx: ssl.SSLContext, crlfile: str) -> None:
        """``-L``: without ``-Y``/``-y`` a file that does not load is
        ignored (as in IndiMail); with them, only a file that does not
        exist is (a CRL that cannot be read must not let revoked
        certificates in), and the client's certificate is checked."""
        try:
            ctx.load_verify_locations(cafile=crlfile)
        except (OSError, ssl.SSLError) as exc:
            if not self.client or getattr(exc, "errno", None) == errno.ENOENT:
                return
            raise TlsError(["SSL_CTX_load_verify_locations: Unable to load CRL file: "
                            f"{cut(crlfile)}: {library_error(exc)}"],
                           f"CRL file {cut(crlfile)}: {crl_problem(crlfile, exc)}") from None
        ctx.verify_flags |= (ssl.VERIFY_CRL_CHECK_LEAF if self.client
                             else ssl.VERIFY_CRL_CHECK_CHAIN)

    def _no_ca(self) -> str:
        """Why ``-Y``/``-y`` cannot work: the CA file they need is not there."""
        certfile, certdir, cafile, crlfile = self.args
        path = settings.resolve(certfile, certdir, cafile, crlfile, self.environ,
                                readable=lambda _: True).cafile or ""
        try:
            with open(path, "rb"):
                problem = "cannot be read"
        except OSError as exc:
            problem = errtext(exc)
        letter = "y" if self.client == "required" else "Y"
        return (f"-{letter} needs a CA file for client certificates: {cut(path)}: {problem} "
                "(give -a cafile or set $CLIENTCA)")

    # -- the whole set ------------------------------------------------------
    def _by_name(self, files: Files) -> Dict[str, ssl.SSLContext]:
        """A context per ``<certdir>/<name>.pem`` (and
        ``<certdir>/*.<domain>.pem``) holding a private key."""
        found: Dict[str, ssl.SSLContext] = {}
        try:
            entries = sorted(os.listdir(files.certdir))
        except OSError:
            return found
        for entry in entries:
            name = entry[:-4]
            if not entry.endswith(".pem") or settings.sni_file(name) is None:
                continue
            path = os.path.join(files.certdir, entry)
            try:
                with open(path, "rb") as handle:
                    if b"PRIVATE KEY-----" not in handle.read(1 << 20):
                        continue              # a CA, a CRL, DH parameters
            except OSError:
                continue
            try:
                found[name] = self.context(files, path, [])
            except TlsError as exc:
                self.skipped.append(f"SNI certificate {cut(path)} skipped: {exc.last}")
        return found

    def build(self) -> Contexts:
        """Build the contexts.

        Raises:
            TlsError: the default context cannot be made.
        """
        files = self.files()
        notes: List[str] = []
        default = self.context(files, files.certfile, notes)
        self.skipped = []
        by_name = self._by_name(files)
        if not self.notes:
            self.notes = notes
        default.sni_callback = self.sni
        self.sni.by_name = by_name
        return Contexts(default, by_name)
