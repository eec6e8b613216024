"""Known-answer tests of ucspi.dnsmsg (pure DNS message code)."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from ucspi.dns import msg as dnsmsg
from ucspi.dns.msg import (ANSWER, IGNORE, SERVFAIL, TRUNCATED, BadName, FormatError,
                          Question, classify, encode_name, parse_addresses, parse_ptr,
                          read_name, render_name, reverse_name, skip_name)
from ucspi.errors import errtext

WWW = b"\x03www\x07example\x03com\x00"


def header(qid: int = 0x1234, flags: int = 0x8180, qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, 0, 0)


def rr(name: bytes, rtype: int, rdata: bytes, rclass: int = 1) -> bytes:
    return name + struct.pack("!HHIH", rtype, rclass, 300, len(rdata)) + rdata


def reply(qname: bytes, qtype: int, answers: list, qid: int = 0x1234,
          flags: int = 0x8180) -> bytes:
    return (header(qid, flags, 1, len(answers)) + qname + struct.pack("!HH", qtype, 1)
            + b"".join(answers))


# -- encode_name ---------------------------------------------------------------
@pytest.mark.parametrize("text, wire", [
    ("www.example.com", WWW),
    ("www.example.com.", WWW),
    ("www..example...com", WWW),
    ("", b"\x00"),
    (".", b"\x00"),
    ("a\\.b.c", b"\x03a.b\x01c\x00"),
    ("\\046", b"\x01&\x00"),
    ("\\1", b"\x01\x01\x00"),
    ("\\1234", b"\x02S4\x00"),          # at most three octal digits
    ("\\777", b"\x01\xff\x00"),         # wraps to one byte as in C
    ("\\8", b"\x018\x00"),              # \c escapes any other character
    ("x\\", b"\x01x\x00"),              # lone trailing backslash ignored
    ("WWW.Example", b"\x03WWW\x07Example\x00"),   # case kept on the wire
    (b"caf\xc3\xa9", b"\x05caf\xc3\xa9\x00"),
])
def test_encode_name(text, wire):
    assert encode_name(text) == wire


def test_encode_name_limits():
    assert len(encode_name("a" * 63)) == 65
    with pytest.raises(BadName):
        encode_name("a" * 64)
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(encode_name(longest)) == 255
    with pytest.raises(BadName) as info:
        encode_name(longest + "d")
    assert errtext(info.value) == "protocol error"
    with pytest.raises(BadName):
        encode_name("x." * 128)


def test_build_query():
    query = dnsmsg.build_query(Question(WWW, dnsmsg.TYPE_AAAA), 0xBEEF)
    assert query == (b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + WWW
                     + b"\x00\x1c\x00\x01")


# -- read_name -----------------------------------------------------------------
def test_read_name_plain_and_compressed():
    packet = header() + WWW + b"\x04mail\xc0\x10" + b"\x03foo\xc0\x1d"
    assert read_name(packet, 12) == (WWW, 12 + len(WWW))
    mail = 12 + len(WWW)
    assert read_name(packet, mail) == (b"\x04mail\x07example\x03com\x00", mail + 7)
    assert read_name(packet, mail + 7) == (b"\x03foo\x04mail\x07example\x03com\x00",
                                            mail + 13)


@pytest.mark.parametrize("packet, pos", [
    (header() + b"\xc0\x0c", 12),                    # points at itself
    (header() + b"\xc0\x0e\x01a\x00", 12),           # forward pointer
    (header() + b"\x01a\xc0\x10" + b"\x01b\xc0\x0c", 16),   # 16 -> 12 -> 16: loop
    (header() + b"\x01a\xc0", 12),                   # pointer cut short
    (header() + b"\x05ab", 12),                      # label past the end
    (header() + b"\x01a", 12),                       # no terminating zero
    (header() + b"\x40" + b"a" * 64 + b"\x00", 12),  # label length 64
    (header() + b"\x80\x00", 12),                    # 0x80..0xbf reserved
    (header(), 12),                                  # nothing at all
])
def test_read_name_rejects(packet, pos):
    with pytest.raises(FormatError):
        read_name(packet, pos)


def test_read_name_too_long_through_compression():
    long_name = encode_name(".".join(["a" * 63, "b" * 63, "c" * 62]))   # 192 bytes
    assert len(long_name) == 192
    packet = header() + long_name + b"\x3f" + b"x" * 63 + b"\xc0\x0c"
    with pytest.raises(FormatError):
        read_name(packet, 12 + len(long_name))
    packet = header() + long_name + b"\x3e" + b"x" * 62 + b"\xc0\x0c"
    name, _ = read_name(packet, 12 + len(long_name))
    assert len(name) == 255


def test_read_name_chain_of_pointers():
    # each pointer goes further back than the last: fine however many
    packet = bytearray(header() + b"\x00")
    previous = 12
    for _ in range(100):
        here = len(packet)
        packet += bytes([0xC0 | previous >> 8, previous & 0xFF])
        previous = here
    assert read_name(bytes(packet), previous) == (b"\x00", previous + 2)


# -- classify ------------------------------------------------------------------
Q = Question(WWW, dnsmsg.TYPE_A)


@pytest.mark.parametrize("packet, verdict", [
    (reply(WWW, 1, []), ANSWER),
    (reply(b"\x03WwW\x07EXAMPLE\x03com\x00", 1, []), ANSWER),   # case-insensitive
    (reply(WWW, 1, [], flags=0x8183), ANSWER),                  # NXDOMAIN is final
    (reply(WWW, 1, [], flags=0x0100), ANSWER),                  # QR not checked
    (reply(WWW, 1, [], flags=0x8182), SERVFAIL),
    (reply(WWW, 1, [], flags=0x8185), SERVFAIL),                # REFUSED
    (reply(WWW, 1, [], flags=0x8380), TRUNCATED),
    (reply(WWW, 1, [], flags=0x8382), TRUNCATED),               # TC before RCODE
    (reply(WWW, 1, [], qid=0x1235), IGNORE),
    (reply(b"\x03www\x07example\x03org\x00", 1, []), IGNORE),
    (reply(WWW, 28, []), IGNORE),
    (header(an=0) + WWW + b"\x00\x01\x00\x03", IGNORE),        # class CH
    (header(qd=0), IGNORE),
    (header(qd=2) + WWW + b"\x00\x01\x00\x01" + WWW + b"\x00\x01\x00\x01", IGNORE),
    (header() + WWW + b"\x00\x01", IGNORE),                    # question cut short
    (header()[:11], IGNORE),
    (b"", IGNORE),
])
def test_classify(packet, verdict):
    assert classify(packet, 0x1234, Q) == verdict


# -- parse_ptr -----------------------------------------------------------------
REV = reverse_name(IPv4Address("192.0.2.1"))


def test_parse_ptr_first_ptr_wins_and_skips_others():
    answers = [rr(b"\xc0\x0c", dnsmsg.TYPE_CNAME, b"\x01x\x00"),
               rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x02ch\x00", rclass=3),
               rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x04Host\x07Example\x00"),
               rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x06second\x00")]
    name = parse_ptr(reply(REV, 12, answers))
    assert name == b"\x04Host\x07Example\x00"
    assert render_name(name) == "host.example"


def test_parse_ptr_compressed_target_and_no_answer():
    answers = [rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x04host\xc0\x0e")]   # -> 0.2.192...
    assert parse_ptr(reply(REV, 12, answers)) == b"\x04host" + REV[2:]
    assert parse_ptr(reply(REV, 12, [])) is None
    assert parse_ptr(reply(REV, 12, [], flags=0x8183)) is None


@pytest.mark.parametrize("answer", [
    rr(b"\xc0\x0c", 12, b"\x04host\x00")[:-3],                       # data past the end
    b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 0, 2) + b"\x04host\x00",  # name past rdlength
    b"\xc0\x0c\x00\x0c\x00",                                          # header cut short
    rr(b"\xc0\x60", 12, b"\x04host\x00"),                             # forward owner
])
def test_parse_ptr_format_errors(answer):
    with pytest.raises(FormatError):
        parse_ptr(reply(REV, 12, [answer]))


def test_an_owner_pointing_at_offset_12_is_only_trusted_after_a_question():
    """The owner ``\xc0\x0c`` is taken without a walk because the
    question's name at 12 was checked; with no question, 12 is the
    owner itself, a pointer to itself, and is refused."""
    ptr = rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x04host\x00")
    assert parse_ptr(reply(REV, 12, [ptr])) == b"\x04host\x00"
    with pytest.raises(FormatError):
        parse_ptr(header(qd=0, an=1) + ptr)
    bad_question = header(an=1) + b"\x04host\xc0\x40" + b"\x00\x0c\x00\x01" + ptr
    with pytest.raises(FormatError):
        parse_ptr(bad_question)


# -- parse_addresses -----------------------------------------------------------
def test_parse_addresses():
    v6 = IPv6Address("2001:db8::1").packed
    answers = [rr(b"\xc0\x0c", dnsmsg.TYPE_CNAME, b"\x01x\x00"),
               rr(b"\x01x\x00", dnsmsg.TYPE_A, bytes([192, 0, 2, 7])),   # any owner
               rr(b"\xc0\x0c", dnsmsg.TYPE_AAAA, v6),
               rr(b"\xc0\x0c", dnsmsg.TYPE_A, b"\x01\x02\x03"),          # wrong size
               rr(b"\xc0\x0c", dnsmsg.TYPE_AAAA, bytes(4)),              # wrong size
               rr(b"\xc0\x0c", dnsmsg.TYPE_A, bytes(4), rclass=3)]       # class CH
    found = parse_addresses(reply(WWW, 1, answers))
    assert [IPv6Address(a) for a in found] == [IPv6Address("::ffff:192.0.2.7"),
                                               IPv6Address("2001:db8::1")]


def test_parse_addresses_keeps_records_before_a_bad_one():
    answers = [rr(b"\xc0\x0c", dnsmsg.TYPE_A, bytes([10, 0, 0, 1])),
               rr(b"\xc0\x0c", dnsmsg.TYPE_A, bytes([10, 0, 0, 2]))[:-2]]
    packet = header(an=3) + WWW + b"\x00\x01\x00\x01" + b"".join(answers)
    assert parse_addresses(packet) == [bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])]
    assert parse_addresses(b"garbage") == []


# -- render_name, reverse_name -------------------------------------------------
@pytest.mark.parametrize("wire, text", [
    (b"\x09LocalHost\x07Example\x00", "localhost.example"),
    (b"\x0cwe%ird:na\x01me\x07example\x00", "we\\045ird\\072na\\001me.example"),
    (b"\x00", "."),
    (b"\x05a_b-9\x00", "a_b-9"),
    (b"\x03\xc3\xa9.\x00", "\\303\\251\\056"),
    (b"\x03a\\b\x01 \x00", "a\\134b.\\040"),
    (b"\x03a.b\x01C\x00", "a\\056b.c"),          # a dot inside a label, all else plain
    (b"\x01a\x00", "a"),
])
def test_render_name(wire, text):
    assert render_name(wire) == text


def test_render_then_encode_round_trip():
    wire = bytes([8]) + bytes(range(0, 256, 32)) + b"\x03Abc\x00"
    assert encode_name(render_name(wire)) == wire.lower()


def dotted(wire: bytes) -> str:
    return ".".join(label.decode() for label in dnsmsg.labels(wire))


def test_reverse_names():
    assert dotted(reverse_name(IPv4Address("192.0.2.1"))) == "1.2.0.192.in-addr.arpa"
    assert dotted(reverse_name(IPv6Address("::ffff:10.1.2.3"))) == "3.2.1.10.in-addr.arpa"
    assert dotted(reverse_name(IPv6Address("2001:db8::abc"))) == (
        "c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
    assert dotted(reverse_name(IPv6Address("::1"))) == "1." + "0." * 31 + "ip6.arpa"
    rnd = random.Random(23)
    for _ in range(200):
        octets = [rnd.choice([0, 9, 10, 99, 100, 255, rnd.randrange(256)]) for _ in range(4)]
        text = ".".join(map(str, octets))
        want = ".".join(map(str, reversed(octets))) + ".in-addr.arpa"
        assert dotted(reverse_name(IPv4Address(text))) == want
        assert reverse_name(IPv6Address("::ffff:" + text)) == reverse_name(IPv4Address(text))


# -- robustness ----------------------------------------------------------------
def test_fuzz_parsers_only_raise_format_errors():
    rnd = random.Random(1035)
    base = reply(WWW, 1, [rr(b"\xc0\x0c", 1, bytes(4)), rr(b"\x01x\xc0\x0c", 12, b"\xc0\x0c"),
                          rr(b"\xc0\x0c", 28, bytes(16))])
    for _ in range(5000):
        packet = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            packet[rnd.randrange(len(packet))] = rnd.randrange(256)
        packet = bytes(packet[:rnd.randint(0, len(packet))]) if rnd.random() < 0.3 else bytes(packet)
        classify(packet, 0x1234, Q)
        parse_addresses(packet)
        try:
            parse_ptr(packet)
        except FormatError:
            pass
        for pos in range(0, len(packet), 7):
            try:
                name, end = read_name(packet, pos)
            except FormatError:
                with pytest.raises(FormatError):
                    skip_name(packet, pos)
                continue
            assert len(name) <= 255 and end <= len(packet)
            assert skip_name(packet, pos) == end
            render_name(name)
