"""The first bytes of a TLS client, read without the ``ssl`` module.

The server waits for a TLS client's first record, its ClientHello, in
the loop before it gives the client a ``-c`` slot and a relay process
(design: tls-handshakes-and-slots): a client that sends half a
ClientHello and stops then costs a descriptor and a few hundred bytes,
not a process and a slot.  This module says, from the bytes that have
arrived, how many the first record needs.  It is pure: bytes in, a
number out.

A TLS record starts with five bytes: the content type (22 for a
handshake), the protocol version (3, x) and the length of what follows
(RFC 8446 §5.1).  A plaintext record holds at most 2**14 bytes.
"""

from __future__ import annotations

#: the record header's size
HEADER = 5
#: content type of a handshake record
HANDSHAKE = 22
#: the longest plaintext record body (RFC 8446 §5.1: 2**14)
MAX_BODY = 1 << 14


def first_record(data: bytes) -> int:
    """How many bytes the client's first record takes.

    Args:
        data: what has arrived so far (a peek: more may follow).

    Returns:
        :data:`HEADER` while fewer bytes than a header have arrived; the
        size of the whole record once the header is known; 0 when the
        bytes are not a TLS handshake record at all (the handshake will
        fail on them, which is not this module's business: wait no more).
    """
    if len(data) < HEADER:
        return 0 if data and data[0] != HANDSHAKE else HEADER
    if data[0] != HANDSHAKE or data[1] != 3:
        return 0
    length = int.from_bytes(data[3:5], "big")
    if length == 0 or length > MAX_BODY:
        return 0
    return HEADER + length
