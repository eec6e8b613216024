"""The password scrambles of the MySQL authentication plugins (pure;
the only module of the package that imports ``hashlib``, design: standard-library-only).

* ``mysql_native_password``: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)));
* ``caching_sha2_password``: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble);
* ``mysql_clear_password``: the password and a NUL (also what
  ``caching_sha2_password`` sends for its full authentication over a
  secure transport).

An empty password gives an empty response for the two hashed plugins,
as the C client does.
"""

from __future__ import annotations

import hashlib


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_password(password: bytes, scramble: bytes) -> bytes:
    """The 20-byte ``mysql_native_password`` response (b"" for an empty
    password)."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(scramble + stage2).digest())


def caching_sha2(password: bytes, scramble: bytes) -> bytes:
    """The 32-byte ``caching_sha2_password`` fast-path response (b"" for
    an empty password)."""
    if not password:
        return b""
    stage1 = hashlib.sha256(password).digest()
    stage2 = hashlib.sha256(stage1).digest()
    return _xor(stage1, hashlib.sha256(stage2 + scramble).digest())


def clear_password(password: bytes) -> bytes:
    """The password in clear with its NUL: only ever over a UNIX socket
    or verified TLS."""
    return password + b"\0"
