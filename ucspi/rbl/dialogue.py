"""rblsmtpd's SMTP dialogue with a refused client, as a state machine
over bytes (design: rblsmtpd): no socket, no clock.

djb's rblsmtpd answers a listed client itself: a greeting, ``250`` to
``helo``, ``ehlo``, ``mail``, ``rset`` and ``noop``, ``221`` to
``quit`` (then the end), and its refusal line (``451 text`` or
``553 text``) to every other command, so that the client's mail stays
queued (451) or bounces (553) instead of being accepted.  A line ends
at LF, a CR before it is dropped, the command is what comes before the
first space, compared without case (a NUL byte is kept as an LF, as
djb's line reader does, so ``helo\0x`` is no ``helo``).  With no
timeout (``-t 0``) the refusal line is the greeting and the dialogue
ends at once.

:class:`Dialogue` is fed what the client sends and returns what to
answer; two drivers run it: tcpserver's loop, for a client refused by
``DNSBL``, and the ``rblsmtpd`` command, on its standard input and
output.  A line is kept to :data:`LINE_MAX` bytes (djb's grows without
bound): the rest of a longer line is read and dropped.
"""

from __future__ import annotations

from typing import List

#: the greeting name (djb's); ``$RBLGREETING`` changes it (IndiMail)
GREETING = "rblsmtpd.local"
#: the longest line kept; more is dropped up to the line's end
LINE_MAX = 1000
#: commands answered 250 with the greeting name
HELLO = frozenset((b"helo", b"ehlo", b"mail", b"rset", b"noop"))


def printable(text: bytes) -> bytes:
    """``text`` with every byte outside 32..126 made ``?``."""
    return bytes(b if 32 <= b <= 126 else 63 for b in text)


def refusal_line(code: int, text: bytes) -> bytes:
    """``CODE text`` as rblsmtpd sends and logs it: the text cut to 200
    bytes, every byte outside 32..126 made ``?`` (no CRLF)."""
    return printable(b"%d %s" % (code, text[:200]))


class Dialogue:
    """One refused client's dialogue.

    Args:
        refusal: the refusal line (:func:`refusal_line`), without CRLF.
        greeting: the name in the greeting and the 250/221 lines.
        talk: False for ``-t 0``: the refusal line is all there is.

    Attributes:
        done: the dialogue is over (``quit``, or ``-t 0``): send what is
            left and close.
        commands: how many command lines the client sent.
    """

    def __init__(self, refusal: bytes, greeting: str = GREETING, talk: bool = True) -> None:
        self.refusal = refusal + b"\r\n"
        self.name = greeting.encode("utf-8", "surrogateescape")
        self.talk = talk
        self.done = False
        self.commands = 0
        self._line = bytearray()
        self._overlong = False

    def start(self) -> bytes:
        """The greeting (with no dialogue: the refusal, and done)."""
        if not self.talk:
            self.done = True
            return self.refusal
        return b"220 " + self.name + b"\r\n"

    def feed(self, data: bytes) -> bytes:
        """What the client sent; returns the answers to the complete
        lines in it (nothing after ``quit``)."""
        out: List[bytes] = []
        for line in self._lines(data):
            if self.done:
                break
            out.append(self._answer(line))
        return b"".join(out)

    def _lines(self, data: bytes) -> List[bytes]:
        lines: List[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            room = LINE_MAX - len(self._line)
            if len(piece) > room:
                piece = piece[:max(room, 0)]
                self._overlong = True
            self._line += piece
            if end < 0:
                return lines
            line = bytes(self._line)
            if line.endswith(b"\r") and not self._overlong:
                line = line[:-1]
            lines.append(line)
            self._line.clear()
            self._overlong = False
            start = end + 1

    def _answer(self, line: bytes) -> bytes:
        self.commands += 1
        line = line.replace(b"\0", b"\n")       # as djb's reader stores a NUL
        verb = line.split(b" ", 1)[0].lower()
        if verb == b"quit":
            self.done = True
            return b"221 " + self.name + b"\r\n"
        if verb in HELLO:
            return b"250 " + self.name + b"\r\n"
        return self.refusal
