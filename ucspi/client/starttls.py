"""The plaintext dialogues before a STARTTLS handshake: tcpclient's
``-s smtp|pop3|imap`` (design: tcpclient).

Pure: a :class:`Dialogue` is fed what the server sent and answers with
what to send; the driver owns the socket and the deadline.

* SMTP (RFC 3207): the greeting (every line of it) must be 220; we say
  ``EHLO name``, wait for the whole 250 reply, say ``STARTTLS`` and
  want 220.  (IndiMail's tcpclient skips the EHLO, which servers that
  follow the RFC refuse.)
* POP3 (RFC 2595): the greeting must be ``+OK``; ``STLS``, then ``+OK``.
* IMAP (RFC 3501): the greeting must be ``* OK``; ``a1 STARTTLS``, then,
  after any untagged lines, ``a1 OK``.  (IndiMail sends the command
  without a tag.)

Anything else ends the dialogue with :class:`Refused`, whose text
quotes the server's line.  A reply is read to its last line and no
further: a server has nothing to say before our ClientHello, and bytes
that come anyway are dropped (:attr:`Dialogue.extra` counts them) so
that nothing sent in clear is taken for data protected by TLS.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from ..errors import UcspiError

#: the longest line a server may send (SMTP allows 512, IMAP more)
LINE_MAX = 8192
#: the most a server may send before it agrees to TLS
DIALOGUE_MAX = 65536
#: the IMAP tag of our command
TAG = b"a1"


class Refused(UcspiError):
    """The server did not agree to TLS; the text says why."""


def shown(line: bytes, limit: int = 200) -> str:
    """A server's line for a message: printable ASCII, CR LF dropped,
    cut after ``limit`` characters."""
    text = line.rstrip(b"\r\n")
    if len(text) > limit:
        text = text[:limit] + b"..."
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in text)


def helo_name(name: str) -> str:
    """The EHLO argument: a name without blanks or control characters
    (``localhost`` if nothing is left)."""
    cleaned = "".join(c for c in name if 32 < ord(c) < 127)
    return cleaned or "localhost"


def _word(line: bytes, start: bytes) -> bool:
    """Does ``line`` start with the words ``start`` (any case), followed
    by a blank or the end of the line?"""
    return (line[:len(start)].upper() == start.upper()
            and line[len(start):len(start) + 1] in (b" ", b"\r", b"\n", b""))


class Dialogue:
    """One STARTTLS dialogue.

    Args:
        protocol: ``smtp``, ``pop3`` or ``imap``.
        helo: the name for SMTP's ``EHLO``.
    """

    def __init__(self, protocol: str, helo: str = "localhost") -> None:
        self.protocol = protocol
        self.helo = helo_name(helo)
        self.buffer = bytearray()
        self.received = 0
        self.done = False
        #: bytes the server sent after agreeing (dropped)
        self.extra = 0
        steps: Dict[str, Callable[[bytes], Optional[bytes]]] = {
            "smtp": self._smtp_greeting, "pop3": self._pop3_greeting,
            "imap": self._imap_greeting}
        self.step: Callable[[bytes], Optional[bytes]] = steps[protocol]
        self.lines: List[bytes] = []

    # -- input ------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """What the server sent; returns what to send (maybe nothing).

        Raises:
            Refused: the server refused, or broke the protocol.
        """
        if self.done:
            self.extra += len(data)
            return b""
        self.received += len(data)
        if self.received > DIALOGUE_MAX:
            raise Refused(f"the server sent more than {DIALOGUE_MAX} bytes before TLS")
        self.buffer += data
        out = b""
        while not self.done:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > LINE_MAX:
                    raise Refused(f"the server sent a line longer than {LINE_MAX} bytes")
                break
            line = bytes(self.buffer[:end + 1])
            del self.buffer[:end + 1]
            said = self.step(line)
            if said:
                out += said
        if self.done:
            self.extra += len(self.buffer)
            self.buffer.clear()
        return out

    def ended(self) -> Refused:
        """The error for a server that closed the connection first."""
        return Refused("the server closed the connection")

    # -- SMTP ---------------------------------------------------------------------
    def _reply(self, line: bytes) -> Optional[bytes]:
        """Collect one line of an SMTP reply; the first line of the
        reply once its last line is in, else None."""
        if len(line) < 3 or not line[:3].isdigit():
            raise Refused(f"the server's reply is not SMTP: {shown(line)}")
        self.lines.append(line)
        if line[3:4] == b"-":
            return None
        first = self.lines[0]
        if any(reply[:3] != first[:3] for reply in self.lines):
            raise Refused(f"the server's reply mixes codes: {shown(line)}")
        self.lines = []
        return line

    def _smtp_greeting(self, line: bytes) -> Optional[bytes]:
        last = self._reply(line)
        if last is None:
            return None
        if last[:3] != b"220":
            raise Refused(f"the server's greeting is {shown(last)}")
        self.step = self._smtp_ehlo
        return b"EHLO " + self.helo.encode("ascii") + b"\r\n"

    def _smtp_ehlo(self, line: bytes) -> Optional[bytes]:
        last = self._reply(line)
        if last is None:
            return None
        if last[:3] != b"250":
            raise Refused(f"the server refused EHLO: {shown(last)}")
        self.step = self._smtp_starttls
        return b"STARTTLS\r\n"

    def _smtp_starttls(self, line: bytes) -> Optional[bytes]:
        last = self._reply(line)
        if last is None:
            return None
        if last[:3] != b"220":
            raise Refused(f"the server refused STARTTLS: {shown(last)}")
        self.done = True
        return None

    # -- POP3 ----------------------------------------------------------------------
    def _pop3_greeting(self, line: bytes) -> Optional[bytes]:
        if not line.startswith(b"+OK"):
            raise Refused(f"the server's greeting is {shown(line)}")
        self.step = self._pop3_stls
        return b"STLS\r\n"

    def _pop3_stls(self, line: bytes) -> Optional[bytes]:
        if not line.startswith(b"+OK"):
            raise Refused(f"the server refused STLS: {shown(line)}")
        self.done = True
        return None

    # -- IMAP ----------------------------------------------------------------------
    def _imap_greeting(self, line: bytes) -> Optional[bytes]:
        if not _word(line, b"* OK"):
            raise Refused(f"the server's greeting is {shown(line)}")
        self.step = self._imap_starttls
        return TAG + b" STARTTLS\r\n"

    def _imap_starttls(self, line: bytes) -> Optional[bytes]:
        if line.startswith(b"* "):
            return None                              # untagged: CAPABILITY...
        if not _word(line, TAG + b" OK"):
            raise Refused(f"the server refused STARTTLS: {shown(line)}")
        self.done = True
        return None
