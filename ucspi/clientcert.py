"""A client's certificate as the program's variables
(design: client-certificates).  Pure: no ``ssl``, no I/O.

Under ``-Y`` or ``-y`` the relay hands :func:`client_changes` what the
handshake learnt of the client's certificate (``Channel.facts()``: the
DER, and Python's decoded form of it, which Python gives only for a
verified certificate), and gets ucspi-ssl's and mod_ssl's variables
(``SSL_CLIENT_*``) and s6's ``SSL_PEER_CERT_HASH``.

A certificate's names are whatever its issuer signed, so nothing is
passed raw: in every value a byte outside printable ASCII (``\\x20`` to
``\\x7e``), and ``\\`` itself, is written ``\\xHH`` (OpenSSL's form, upper
case), UTF-8 text included (``é`` is ``\\xC3\\xA9``).  In the one-line
names (``SSL_CLIENT_S_DN``: ``/C=DE/O=Org/CN=name``) ``/`` and ``+``
inside a value are written so too, or a common name ``x/O=Trusted``
would read as two fields.

The module imports ``hashlib``: :func:`ucspi.environ.tls_changes`
imports it only for a server that asks for client certificates, and
the server imports it at start-up under ``-Y`` or ``-y``, before it
drops its privileges.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

#: a change of the program's environment, as :mod:`ucspi.environ` has it
#: (this module imports nothing of the package: environ imports it)
Change = Tuple[bytes, Optional[bytes]]

#: OpenSSL's short names, for the one-line form, of the attributes
#: Python names by their long names; any other is shown as Python names it
SHORT_NAMES = {
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "organizationName": "O", "organizationalUnitName": "OU", "commonName": "CN",
    "emailAddress": "emailAddress", "serialNumber": "serialNumber", "title": "title",
    "surname": "SN", "givenName": "GN", "initials": "initials", "pseudonym": "pseudonym",
    "generationQualifier": "generationQualifier", "dnQualifier": "dnQualifier",
    "domainComponent": "DC", "userId": "UID", "streetAddress": "street",
    "postalCode": "postalCode", "businessCategory": "businessCategory", "name": "name",
    "description": "description",
}
#: the attribute behind each ``SSL_CLIENT_S_DN_x`` variable (the fields of
#: ``ucspi.environ.CLIENT_FIELDS``)
FIELD_ATTRIBUTES = {
    "C": "countryName", "ST": "stateOrProvinceName", "L": "localityName",
    "O": "organizationName", "OU": "organizationalUnitName", "CN": "commonName",
    "Email": "emailAddress",
}


def _table(more: Iterable[int] = ()) -> List[bytes]:
    """What each byte becomes: itself if printable ASCII, else ``\\xHH``."""
    written = set(more) | {0x5C}
    return [bytes((c,)) if 0x20 <= c <= 0x7E and c not in written else b"\\x%02X" % c
            for c in range(256)]


_VALUE = _table()
_IN_NAME = _table(b"/+")


def escape(data: bytes) -> bytes:
    """A value with every byte outside printable ASCII, and ``\\``,
    written ``\\xHH``."""
    return b"".join([_VALUE[c] for c in data])


def _text(value: Any) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


def one_line(name: Any) -> bytes:
    """A name (Python's form: a sequence of RDNs, each a sequence of
    ``(attribute, value)`` pairs) in OpenSSL's one-line form:
    ``/C=DE/O=Org/CN=name``, the values of a multi-valued RDN joined by
    ``+``."""
    rdns = []
    for rdn in name:
        pairs = [b"".join([_IN_NAME[c] for c in _text(SHORT_NAMES.get(attribute, attribute))])
                 + b"=" + b"".join([_IN_NAME[c] for c in _text(value)])
                 for attribute, value in rdn]
        rdns.append(b"/" + b"+".join(pairs))
    return b"".join(rdns)


def fields(name: Any) -> Dict[str, bytes]:
    """The first value of each attribute of :data:`FIELD_ATTRIBUTES` in
    a name, escaped, by its variable suffix (``CN``...)."""
    first: Dict[str, bytes] = {}
    for rdn in name:
        for attribute, value in rdn:
            first.setdefault(str(attribute), escape(_text(value)))
    return {suffix: first[attribute] for suffix, attribute in FIELD_ATTRIBUTES.items()
            if attribute in first}


def pem(der: bytes) -> bytes:
    """A DER certificate in PEM (64 characters a line)."""
    text = binascii.b2a_base64(der, newline=False)
    lines = [text[at:at + 64] + b"\n" for at in range(0, len(text), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"".join(lines) + b"-----END CERTIFICATE-----\n"


#: the longest serial number written in decimal, in hexadecimal digits
#: (RFC 5280 allows 20 octets; a longer one costs quadratic time to convert)
SERIAL_MAX = 256


def _serial(text: Any) -> Optional[bytes]:
    """Python's serial number (hexadecimal) in decimal; None if it is
    not a number or is longer than :data:`SERIAL_MAX` digits."""
    digits = str(text)
    if len(digits) > SERIAL_MAX:
        return None
    try:
        return b"%d" % int(digits, 16)
    except ValueError:
        return None


def _details(info: Mapping[str, Any]) -> List[Change]:
    """The variables that come from the decoded certificate."""
    changes: List[Change] = []
    for side, key in ((b"S", "subject"), (b"I", "issuer")):
        name = info.get(key, ())
        changes.append((b"SSL_CLIENT_%s_DN" % side, one_line(name)))
        changes += [(b"SSL_CLIENT_%s_DN_%s" % (side, suffix.encode()), value)
                    for suffix, value in fields(name).items()]
    if "version" in info:
        changes.append((b"SSL_CLIENT_M_VERSION", escape(_text(info["version"]))))
    serial = _serial(info.get("serialNumber", ""))
    if serial is not None:
        changes.append((b"SSL_CLIENT_M_SERIAL", serial))
    for variable, key in ((b"SSL_CLIENT_V_START", "notBefore"), (b"SSL_CLIENT_V_END", "notAfter")):
        if key in info:
            changes.append((variable, escape(_text(info[key]))))
    return changes


def client_changes(asked: bool, info: Optional[Mapping[str, Any]],
                   der: Optional[bytes]) -> List[Change]:
    """The variables of a client certificate.

    Args:
        asked: the server asked for one (``-Y``, ``-y``); if not, none.
        info: Python's decoded certificate (``getpeercert()``), or None
            when it could not decode it: then only ``SSL_CLIENT_VERIFY``,
            ``SSL_CLIENT_CERT`` and ``SSL_PEER_CERT_HASH`` are set.
        der: the certificate, or None when the client sent none: then
            ``SSL_CLIENT_VERIFY=NONE`` and nothing else.
    """
    if not asked:
        return []
    if der is None:
        return [(b"SSL_CLIENT_VERIFY", b"NONE")]
    changes: List[Change] = [(b"SSL_CLIENT_VERIFY", b"SUCCESS")]
    if info:
        changes += _details(info)
    changes += [(b"SSL_CLIENT_CERT", escape(pem(der))),
                (b"SSL_PEER_CERT_HASH", b"SHA256:" + hashlib.sha256(der).hexdigest().encode())]
    return changes
