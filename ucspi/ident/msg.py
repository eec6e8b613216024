"""RFC 1413 ident messages: the query line and the reply parser.

Pure code over bytes, no sockets (design: pure-core-thin-shell); the drivers that talk
to port 113 are in :mod:`ucspi.ident.lookup`.

The reply is read the way djb's ``remoteinfo.c`` reads it
(design: ident), not the way RFC 1413 describes it:

* space, tab and CR are dropped wherever they occur;
* the first three ``:`` are counted, everything after the third one
  (further ``:`` included) is the value;
* a LF ends the reply: the value collected so far is the answer, which
  may be empty (an ``ERROR`` reply has only two ``:``, so it yields an
  empty but *set* value);
* as soon as the value grows past 256 bytes the answer is those 257
  bytes and the rest of the line is ignored;
* an end of input before the LF is a failure.

Nothing checks that the reply names the right ports or says ``USERID``;
the value is not sanitised beyond the blank removal (the log filter does
that when the value is printed).

:class:`ReplyParser` is incremental ("bring your own I/O", as h11): feed
it whatever ``recv`` returned, in pieces of any size, until it returns
the value.
"""

from __future__ import annotations
from typing import Optional

#: The value is complete as soon as it is longer than this many bytes.
MAX_VALUE = 256

_BLANKS = b" \t\r"
_COLON = 0x3A
_LF = 0x0A


def request(remote_port: int, local_port: int) -> bytes:
    """Build the ident query line.

    Args:
        remote_port: the client's port (the port on the host we ask).
        local_port: our port, the one the client connected to.

    Returns:
        ``b"<remote_port> , <local_port>\\r\\n"``, e.g.
        ``request(40123, 25) == b"40123 , 25\\r\\n"``.

    Raises:
        ValueError: a port is not an integer in 0..65535.
    """
    for port in (remote_port, local_port):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"bad port number: {port!r}")
    return b"%d , %d\r\n" % (remote_port, local_port)


class ReplyParser:
    """Incremental parser of one ident reply line.

    Call :meth:`feed` with the bytes received, in order; it returns the
    value (``bytes``, possibly empty) once the reply is complete and
    ``None`` while more input is needed.  An end of input before the
    reply is :attr:`complete` is a failure.
    """

    __slots__ = ("_colons", "_value", "_result")

    def __init__(self) -> None:
        self._colons = 0
        self._value = bytearray()
        self._result: Optional[bytes] = None

    @property
    def complete(self) -> bool:
        """True once the value is known."""
        return self._result is not None

    def feed(self, data: bytes) -> Optional[bytes]:
        """Consume received bytes.

        Args:
            data: the next bytes of the reply (any length, may be empty).
                Bytes after the end of the reply are ignored.

        Returns:
            The value once the reply is complete (at the LF, or at the
            257th byte of the value), else ``None``.  After completion
            every call returns the same value.
        """
        if self._result is not None:
            return self._result
        end = data.find(b"\n")
        line = data if end < 0 else data[:end]
        line = line.translate(None, _BLANKS)
        self._take(line)
        if self._result is None and end >= 0:
            self._result = bytes(self._value)
        return self._result

    def _take(self, line: bytes) -> None:
        """Add blank-free bytes (no LF) to the colon count or the value."""
        start = 0
        while self._colons < 3:
            colon = line.find(b":", start)
            if colon < 0:
                return
            self._colons += 1
            start = colon + 1
        self._value += line[start:start + MAX_VALUE + 1 - len(self._value)]
        if len(self._value) > MAX_VALUE:
            self._result = bytes(self._value)
