"""Certificates with names the ``openssl`` command will not write: a
newline, a NUL or a backslash in a value, a 10 KiB common name.  The
TBSCertificate is put together here in DER, and ``openssl dgst`` signs
it with a CA's P-256 key.

    issue(ca_pem, ca_key, subject, folder, "name", serial=0x5151)

``subject`` is a list of RDNs, each a list of ``(attribute, value)``
pairs; an attribute is a short name of :data:`OIDS` (or a dotted OID)
and a value is ``bytes`` (a UTF8String) or ``(tag, bytes)``.  The result
is ``folder/name.pem``: the certificate, then its key (what
``SSLContext.load_cert_chain`` and ``openssl s_client -cert`` take).
"""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
from typing import List, Sequence, Tuple, Union

from tests.util import need

OIDS = {"C": "2.5.4.6", "ST": "2.5.4.8", "L": "2.5.4.7", "O": "2.5.4.10", "OU": "2.5.4.11",
        "CN": "2.5.4.3", "emailAddress": "1.2.840.113549.1.9.1", "UID":
        "0.9.2342.19200300.100.1.1"}
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
UTF8STRING = 0x0C
PRINTABLESTRING = 0x13

Value = Union[bytes, Tuple[int, bytes]]
Name = Sequence[Sequence[Tuple[str, Value]]]


def der(tag: int, content: bytes) -> bytes:
    """One DER element."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def seq(*parts: bytes) -> bytes:
    return der(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    numbers = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * numbers[0] + numbers[1]])
    for number in numbers[2:]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


def name(rdns: Name) -> bytes:
    """A Name: a SEQUENCE of SETs of (type, value)."""
    sets = []
    for rdn in rdns:
        pairs = []
        for attribute, value in rdn:
            tag, data = value if isinstance(value, tuple) else (UTF8STRING, value)
            pairs.append(seq(oid(OIDS.get(attribute, attribute)), der(tag, data)))
        sets.append(der(0x31, b"".join(sorted(pairs))))
    return seq(*sets)


def elements(data: bytes) -> List[bytes]:
    """The elements (whole, header included) in the content of a
    constructed DER element ``data``."""
    pos = 1
    first = data[pos]
    pos += 1 if first < 0x80 else 1 + (first & 0x7F)
    found = []
    while pos < len(data):
        size = data[pos + 1]
        head = 2
        if size >= 0x80:
            count = size & 0x7F
            size = int.from_bytes(data[pos + 2:pos + 2 + count], "big")
            head += count
        found.append(data[pos:pos + head + size])
        pos += head + size
    return found


def subject_of(pem_path: str) -> bytes:
    """The subject Name (DER) of a PEM certificate file."""
    with open(pem_path) as handle:
        cert = ssl.PEM_cert_to_DER_cert(handle.read())
    tbs = elements(cert)[0]
    return elements(tbs)[5]       # version, serial, algorithm, issuer, validity, subject


def _utc(when: datetime.datetime) -> bytes:
    return der(0x17, when.strftime("%y%m%d%H%M%SZ").encode())


def _openssl(args: Sequence[str], data: bytes = b"") -> bytes:
    return subprocess.run([need("openssl"), *args], input=data, check=True,
                          capture_output=True, timeout=60).stdout


def issue(ca_pem: str, ca_key: str, subject: Name, folder: str, stem: str,
          serial: int = 0x5151) -> str:
    """``folder/stem.pem``: a new P-256 key's certificate, version 3
    without extensions, valid from yesterday for 30 days, issued by the
    CA ``ca_pem`` (signed with ``ca_key``), and the key."""
    key = os.path.join(folder, stem + ".key")
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", key])
    public = _openssl(["pkey", "-in", key, "-pubout", "-outform", "DER"])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    algorithm = seq(oid(ECDSA_SHA256))
    tbs = seq(der(0xA0, integer(2)), integer(serial), algorithm, subject_of(ca_pem),
              seq(_utc(now - datetime.timedelta(days=1)), _utc(now + datetime.timedelta(days=30))),
              name(subject), public)
    signature = _openssl(["dgst", "-sha256", "-sign", ca_key], tbs)
    cert = seq(tbs, algorithm, der(0x03, b"\0" + signature))
    path = os.path.join(folder, stem + ".pem")
    with open(key, "rb") as handle:
        key_pem = handle.read()
    with open(path, "wb") as out:
        out.write(ssl.DER_cert_to_PEM_cert(cert).encode() + key_pem)
    return path
