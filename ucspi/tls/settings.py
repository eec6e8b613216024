"""What the TLS options and environment ask for, without ``ssl``.

Pure functions over the options and an environment mapping (IndiMail's
meanings; design: tls-settings):

* :func:`resolve`: the certificate, CA and CRL file names;
* :func:`parse_method`: ``-M``'s protocol bounds;
* :func:`cipher_choice`: the cipher string and whether it is a TLS 1.3
  suite list or a TLS <= 1.2 cipher list;
* :func:`sni_name`: the check a client's SNI name must pass to select a
  certificate file; :func:`sni_file` and :func:`wildcard`: which file
  names serve which names (``<name>.pem``, ``*.<domain>.pem``).
"""

from __future__ import annotations

import os
from typing import Callable, List, Mapping, Optional, Tuple

from ..errors import UcspiError
from ..scan import cut, shown

#: where certificates live when neither ``-i`` nor ``$CERTDIR`` says
DEFAULT_CERTDIR = "/etc/indimail/certs"

#: ``-M`` names and IndiMail's method numbers
METHODS = {"SSLv23": 2, "SSLv3": 3, "TLSv1": 4, "TLSv1_1": 5, "TLSv1_2": 6, "TLSv1_3": 7}
#: the number of "automatic" (no ``-M``, or ``MIN:``)
AUTOMATIC = 0
TLS13 = 7

Access = Callable[[str], bool]


class TlsError(UcspiError):
    """TLS cannot be set up.  ``lines`` are printed as they are (the
    original's helper lines), then ``tcpserver: fatal: unable to
    initialize TLS``, followed by ``: <reason>`` when there is one:
    what is wrong with which file, in our words (the original's lines
    can mislead: a missing server certificate is "unable to load CA
    certificate")."""

    def __init__(self, lines: List[str], reason: Optional[str] = None) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
        self.reason = reason

    @property
    def last(self) -> str:
        """One line for a warning: the original's last line, else our
        reason (a failure the original has no line for)."""
        return self.lines[-1] if self.lines else self.reason or "unknown error"


class Files:
    """The files of a TLS server (IndiMail's names)."""

    def __init__(self, certdir: str, certfile: str, cafile: Optional[str],
                 crlfile: Optional[str]) -> None:
        self.certdir = certdir
        self.certfile = certfile
        self.cafile = cafile
        self.crlfile = crlfile

    def __repr__(self) -> str:
        return f"Files({vars(self)!r})"


def _in_dir(certdir: str, name: str) -> str:
    """A name not starting with ``.`` or ``/`` is taken in the directory."""
    return name if name.startswith((".", "/")) else os.path.join(certdir, name)


def _readable(path: str) -> bool:
    return os.access(path, os.R_OK)


def resolve(certfile: Optional[str], certdir: Optional[str], cafile: Optional[str],
            crlfile: Optional[str], environ: Mapping[str, str],
            readable: Access = _readable) -> Files:
    """The file names, as IndiMail resolves them.

    Args:
        certfile: ``-n``'s argument; ``None`` or empty for the default
            (``$TLS_CERTFILE``, else ``servercert.pem``, in the directory).
        certdir: ``-i``'s argument, else ``$CERTDIR``, else
            :data:`DEFAULT_CERTDIR`.
        cafile, crlfile: ``-a`` and ``-L``; ``None`` or empty: the
            default (``$CLIENTCA`` or ``clientca.pem``, ``$CLIENTCRL`` or
            ``clientcrl.pem``, in the directory), dropped when not
            readable.
        environ: the server's environment.
        readable: the access check (tests replace it).
    """
    folder = certdir if certdir is not None else environ.get("CERTDIR", DEFAULT_CERTDIR)
    cert = certfile or _in_dir(folder, environ.get("TLS_CERTFILE", "servercert.pem"))

    def extra(given: Optional[str], variable: str, default: str) -> Optional[str]:
        if given:
            return given
        path = _in_dir(folder, environ.get(variable, default))
        return path if readable(path) else None

    return Files(folder, cert, extra(cafile, "CLIENTCA", "clientca.pem"),
                 extra(crlfile, "CLIENTCRL", "clientcrl.pem"))


class Bounds:
    """``-M``: the method number and the names of the bounds."""

    def __init__(self, method: int, minimum: Optional[str], maximum: Optional[str]) -> None:
        self.method = method
        self.minimum = minimum
        self.maximum = maximum

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bounds) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Bounds({vars(self)!r})"


def _bad_method(text: str) -> TlsError:
    """IndiMail's lines, with every name ``-M`` takes (IndiMail lists
    only two of them)."""
    return TlsError([f"tls_method: Invalid TLS method configured [{cut(text)}]",
                     "tls_method: Supported methods: " + ", ".join(METHODS),
                     "SSL_CTX_new: error initializing method: protocol error"],
                    f"-M wants a method name or MIN:MAX, not {shown(text)}")


def parse_method(text: Optional[str]) -> Bounds:
    """``-M NAME``, ``MIN:MAX``, ``:MAX``, ``MIN:`` (IndiMail's forms).

    Raises:
        TlsError: an unknown name (the original's three lines).
    """
    if text is None:
        return Bounds(AUTOMATIC, None, None)
    low, colon, high = text.partition(":")
    if not colon:
        low, high = "", low
    for name in (low, high):
        if name and name not in METHODS:
            raise _bad_method(text)
    if not low and not high:
        raise _bad_method(text)
    method = METHODS[high] if high else AUTOMATIC
    return Bounds(method, low or None, high or None)


def cipher_string(arg: Optional[str]) -> Optional[str]:
    """``-f ARG`` (design: tls-settings): the first whitespace-free token of the file ARG
    when it is a readable file, else ARG itself; an empty result is no
    cipher string."""
    if arg is None:
        return None
    try:
        with open(arg, "rb") as handle:
            data = handle.read(65536)
    except OSError:
        text = arg
    else:
        text = data.decode("ascii", "replace")
    words = text.split()
    return words[0] if words else None


def cipher_choice(cipher_arg: Optional[str], method: Optional[str],
                  environ: Mapping[str, str]) -> Tuple[Optional[str], bool]:
    """The cipher string and whether it is a TLS 1.3 suite list (as IndiMail decides).

    Returns:
        ``(string or None, tls13)``.  Without ``-M`` the string (from
        ``-f`` or ``$TLS_CIPHER_SUITE``) is a TLS 1.3 suite list and
        ``$TLS_CIPHER_LIST`` is ignored; with a maximum below TLS 1.3 it
        is a TLS <= 1.2 list (``$TLS_CIPHER_LIST`` when no ``-f``).

    Raises:
        TlsError: ``-M`` names an unknown method.
    """
    number = TLS13
    if method is not None:
        low, colon, high = method.partition(":")
        name = high if colon else low
        number = METHODS.get(name, -1) if name else TLS13
    string = cipher_string(cipher_arg)
    if string is None and cipher_arg is None:
        string = environ.get("TLS_CIPHER_LIST" if number < TLS13 else "TLS_CIPHER_SUITE") or None
    return string, parse_method(method).method in (AUTOMATIC, TLS13)


#: the longest host name a client may select a certificate with
NAME_MAX = 253


def sni_name(name: Optional[str]) -> Optional[str]:
    """A client's SNI name, lower-cased and without the one trailing dot
    of an absolute name (``a.example.`` is ``a.example``, for the
    certificate and ``SSL_TLS_SNI_SERVERNAME`` alike), if it may name a
    certificate file: letters, digits, ``-`` and ``.``, no ``..``, not
    starting with ``.``, at most 253 bytes.  ``None`` otherwise."""
    if name and name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name or len(name) > NAME_MAX or not name.isascii():
        return None
    name = name.lower()
    if name.startswith(".") or ".." in name:
        return None
    if any(not (c.isalnum() or c in "-.") for c in name):
        return None
    return name


#: what starts the name of a wildcard certificate file (``*.example.com.pem``)
WILDCARD = "*."


def sni_file(stem: str) -> Optional[str]:
    """The key under which ``<certdir>/<stem>.pem`` serves
    (design: sni-wildcards): ``stem`` itself for a name that passes
    :func:`sni_name` unchanged (lower case, no trailing dot), ``*.``
    and such a name for a wildcard file, None for any other file."""
    name = stem[len(WILDCARD):] if stem.startswith(WILDCARD) else stem
    return stem if sni_name(name) == name else None


def wildcard(name: str) -> Optional[str]:
    """The wildcard key that may serve a checked SNI name: ``*.`` and the
    name without its first label (RFC 6125: one label exactly, so
    ``*.example.com`` serves ``a.example.com``, not ``example.com`` nor
    ``a.b.example.com``); None for a name of one label."""
    _, dot, domain = name.partition(".")
    return WILDCARD + domain if dot and domain else None


# -- the ClientHello's server name, before the TLS library sees it -------------------------
#: the biggest ClientHello looked into (OpenSSL refuses any above 131396 bytes)
HELLO_MAX = 1 << 18
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0


def hello_server_name(data: bytes) -> Tuple[bool, Optional[bytes]]:
    """The SNI host name in the first bytes a TLS client sent.

    ``data`` is what the client has sent so far: TLS records (5-byte
    header, then the fragment), the ClientHello possibly split over
    several records.

    Returns:
        ``(complete, name)``: ``complete`` is False while more bytes are
        needed; once True, ``name`` is the raw ``host_name`` of the
        ``server_name`` extension, or None (no such extension, not a
        ClientHello, malformed, or more than :data:`HELLO_MAX` bytes:
        what to make of those is left to the TLS library).
    """
    body = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return (True, None) if pos > 2 * HELLO_MAX else (False, None)
        if data[pos] != _HANDSHAKE:
            return True, None
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) - pos - 5 < length:
            return False, None
        body += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                return True, None
            need = int.from_bytes(body[1:4], "big")
            if need > HELLO_MAX:
                return True, None
            if len(body) >= 4 + need:
                return True, _host_name(bytes(body[4:4 + need]))


def _host_name(hello: bytes) -> Optional[bytes]:
    """The first ``host_name`` of a ClientHello body's ``server_name``
    extension (RFC 6066 §3), or None."""
    def u16(at: int) -> int:
        if at + 2 > len(hello):
            raise IndexError(at)
        return int.from_bytes(hello[at:at + 2], "big")

    try:
        pos = 2 + 32                                   # version, random
        pos += 1 + hello[pos]                          # session id
        pos += 2 + u16(pos)                            # cipher suites
        pos += 1 + hello[pos]                          # compression methods
        end = min(pos + 2 + u16(pos), len(hello))
        pos += 2
        while pos + 4 <= end:
            kind, size = u16(pos), u16(pos + 2)
            pos += 4
            if kind == _SERVER_NAME:
                names = hello[pos + 2:min(pos + 2 + u16(pos), pos + size, end)]
                at = 0
                while at + 3 <= len(names):
                    length = int.from_bytes(names[at + 1:at + 3], "big")
                    if names[at] == _HOST_NAME:
                        found = names[at + 3:at + 3 + length]
                        return found if len(found) == length else None
                    at += 3 + length
                return None
            pos += size
    except IndexError:
        return None
    return None
