"""Known-answer tests of the ident query line and reply parser
(djb's remoteinfo.c; design: ident)."""

from __future__ import annotations

import random
from typing import List, Optional

import pytest

from ucspi.ident.msg import MAX_VALUE, ReplyParser, request


def parse_reply(data: bytes) -> Optional[bytes]:
    """A whole reply (everything the peer sent before closing): the
    value, or None if ``data`` holds no complete reply."""
    return ReplyParser().feed(data)


def at_eof(parser: ReplyParser) -> Optional[bytes]:
    """What an end of input means, as the driver reads it: the value if
    the reply is complete, else failure (None)."""
    return parser.feed(b"") if parser.complete else None


# -- request ------------------------------------------------------------

@pytest.mark.parametrize("remote, local, line", [
    (40123, 25, b"40123 , 25\r\n"),
    (39297, 50016, b"39297 , 50016\r\n"),   # as Debian's tcpserver sends it
    (0, 65535, b"0 , 65535\r\n"),
])
def test_request(remote: int, local: int, line: bytes) -> None:
    assert request(remote, local) == line


@pytest.mark.parametrize("remote, local", [(-1, 25), (25, 65536), (True, 25), ("25", 25)])
def test_request_bad_port(remote: object, local: object) -> None:
    with pytest.raises(ValueError):
        request(remote, local)  # type: ignore[arg-type]


# -- replies ------------------------------------------------------------

KNOWN = [
    (b"40123 , 25 : USERID : UNIX : joe\r\n", b"joe"),
    (b"40123 , 25 : USERID : UNIX,UTF-8 : j o e\r\n", b"joe"),
    (b"40123 , 25 : USERID : OTHER : a:b\r\n", b"a:b"),
    (b"40123 , 25 : ERROR : NO-USER\r\n", b""),
    (b"40123,25:USERID:UNIX:joe\n", b"joe"),
    (b"x : USERID : UNIX : jo e\t%x\r\n", b"joe%x"),    # as djb's remoteinfo.c
    (b"\n", b""),
    (b"garbage\r\n", b""),                                 # no colons: empty
    (b":::\n", b""),
    (b"::::\n", b":"),
    (b"1,2:USERID:UNIX:\x00\x01\xff\x7f\n", b"\x00\x01\xff\x7f"),
    (b"1,2:USERID:UNIX:joe\r\nextra : junk\n", b"joe"),   # after LF: ignored
    (b"1,2:USERID:UNIX:\rj\to\r e\r\r\n", b"joe"),
    (b"1,2:USERID:UNIX:joe\r\n\r\n", b"joe"),
]


@pytest.mark.parametrize("reply, value", KNOWN)
def test_known_replies(reply: bytes, value: bytes) -> None:
    assert parse_reply(reply) == value


@pytest.mark.parametrize("reply, value", KNOWN)
def test_known_replies_byte_by_byte(reply: bytes, value: bytes) -> None:
    parser = ReplyParser()
    result = None
    for i in range(len(reply)):
        result = parser.feed(reply[i:i + 1])
        if result is not None:
            break
    assert result == value
    assert parser.complete
    assert at_eof(parser) == value


def test_long_value_is_cut_at_257() -> None:
    reply = b"1 , 2 : USERID : UNIX : " + b"u" * 300 + b"\r\n"
    assert parse_reply(reply) == b"u" * 257


def test_long_value_completes_without_newline() -> None:
    parser = ReplyParser()
    assert parser.feed(b"1,2:USERID:UNIX:" + b"a" * 256) is None
    assert parser.feed(b"b") == b"a" * 256 + b"b"
    assert parser.feed(b"more\n") == b"a" * 256 + b"b"     # stays the same


def test_long_value_counts_only_kept_bytes() -> None:
    """Blanks do not count towards the 256 bytes."""
    parser = ReplyParser()
    assert parser.feed(b"1,2:USERID:UNIX:" + b"a " * 256 + b"\r") is None
    assert parser.feed(b"\n") == b"a" * 256


def test_exactly_256_needs_newline() -> None:
    parser = ReplyParser()
    assert parser.feed(b"1,2:USERID:UNIX:" + b"x" * 256) is None
    assert parser.feed(b"\r\n") == b"x" * 256


@pytest.mark.parametrize("reply", [
    b"", b"40123 , 25 : USERID : UNIX : joe", b"1,2:USERID:UNIX:joe\r",
    b"1,2:ERROR:NO-USER", b" \t\r",
])
def test_no_newline_is_failure(reply: bytes) -> None:
    assert parse_reply(reply) is None
    parser = ReplyParser()
    assert parser.feed(reply) is None
    assert not parser.complete
    assert at_eof(parser) is None


def test_empty_feeds_are_harmless() -> None:
    parser = ReplyParser()
    for piece in [b"", b"1,2:", b"", b"USERID:UNIX:", b"", b"me", b"", b"\n"]:
        result = parser.feed(piece)
    assert result == b"me"


# -- fuzz against a direct transcription of djb's remoteinfo.c loop ------

def reference(reply: bytes) -> Optional[bytes]:
    out = bytearray()
    colons = 0
    for ch in reply:
        if ch in b" \t\r":
            continue
        if ch == 0x0A:
            return bytes(out)
        if colons < 3:
            if ch == 0x3A:
                colons += 1
        else:
            out.append(ch)
            if len(out) > MAX_VALUE:
                return bytes(out)
    return None


def random_reply(rng: random.Random) -> bytes:
    alphabet = [b" ", b"\t", b"\r", b"\n", b":", b"a", b"Z", b"\x00", b"\xff", b","]
    weights = [4, 2, 2, 1, 4, 8, 4, 1, 1, 2]
    size = rng.choice([5, 20, 60, 300, 600])
    return b"".join(rng.choices(alphabet, weights, k=size))


def feed_in_pieces(reply: bytes, rng: random.Random) -> Optional[bytes]:
    parser = ReplyParser()
    pos = 0
    while pos < len(reply):
        size = rng.randint(1, 40)
        result = parser.feed(reply[pos:pos + size])
        if result is not None:
            return result
        pos += size
    return at_eof(parser)


def test_fuzz_against_reference() -> None:
    rng = random.Random(1413)
    for _ in range(3000):
        reply = random_reply(rng)
        expected = reference(reply)
        assert parse_reply(reply) == expected, reply
        assert feed_in_pieces(reply, rng) == expected, reply


def test_fuzz_values_bounded() -> None:
    rng = random.Random(113)
    lengths: List[int] = []
    for _ in range(500):
        value = parse_reply(b"1,2:USERID:UNIX:" + bytes(rng.randrange(256) for _ in range(400)))
        if value is not None:
            lengths.append(len(value))
            assert len(value) <= MAX_VALUE + 1
            assert not set(value) & set(b" \t\r\n")
    assert MAX_VALUE + 1 in lengths
