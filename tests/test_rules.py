"""ucspi.rules: the line parser, key generation, applying a value."""

from __future__ import annotations

import errno
import os
import random
from typing import List, Optional, Tuple

import pytest

from ucspi.cdb.make import write_cdb
from ucspi.cdb.read import CdbError
from ucspi.errors import errtext
from ucspi.rules.cache import RulesCache
from ucspi.rules.lookup import Decision, apply, find, lookup_keys
from ucspi.rules.parse import (NoColonError, RuleSyntaxError, cidr_key, ip4_bits, ip6_bits,
                               parse_line)


def encode_value(deny: bool, changes: List[Tuple[bytes, Optional[bytes]]]) -> bytes:
    """A rule value from its parts, as tcprules stores it."""
    out = [b"D\0"] if deny else []
    for name, val in changes:
        out.append(b"-" + name + b"\0" if val is None else b"+" + name + b"=" + val + b"\0")
    return b"".join(out)


def check(cdb_path: str, missing_ok: bool, ip: str, host: Optional[str],
          info: Optional[str]) -> Optional[Decision]:
    """The decision of ``tcpserver -x``/``-X`` for one client, from a
    fresh :class:`RulesCache`."""
    return RulesCache(cdb_path).check(missing_ok, ip, host, info)

# ------------------------------------------------------------------ parser


@pytest.mark.parametrize("line,records", [
    (b"1.2.3.4:deny", [(b"1.2.3.4", b"D\0")]),
    (b"1.2.3.4:deny,X=\"1\",Y=/a b/\n", [(b"1.2.3.4", b"D\0+X=1\0+Y=a b\0")]),
    (b"1.2.3.4:allow,X=\"1\",!Y,Z=::", [(b"1.2.3.4", b"+X=1\0-Y\0+Z=\0")]),
    (b"1.2.3.4:allow", [(b"1.2.3.4", b"")]),
    (b"1.2.3.4:allow \t \n", [(b"1.2.3.4", b"")]),
    (b"  1.2.3.4:allow", [(b"  1.2.3.4", b"")]),
    (b":allow,=/v/", [(b"", b"+=v\0")]),
    (b"127.:allow,which=+third+", [(b"127.", b"+which=third\0")]),
    (b":allow,which==fourth=", [(b"", b"+which=fourth\0")]),
    (b"x:allow,A=\"a,b:c\",B='x\"y'", [(b"x", b"+A=a,b:c\0+B=x\"y\0")]),
    (b"x:allow,!A=/v/", [(b"x", b"+!A=v\0")]),
    (b"x:allow,!A,!BB", [(b"x", b"-A\0-BB\0")]),
    (b"=host.example:deny", [(b"=host.example", b"D\0")]),
    (b"joe@=h.example:allow", [(b"joe@=h.example", b"")]),
    (b"::1:allow", [(b"::1", b"")]),
    (b"2001:db8::5:deny", [(b"2001:db8::5", b"D\0")]),
    (b"joe@::1:allow", [(b"joe@::1", b"")]),
    (b"a:b:allow", [(b"a:b", b"")]),
    (b"a:den:deny", [(b"a:den", b"D\0")]),
    (b"# comment", []),
    (b"#", []),
    (b"\n", []),
    (b"", []),
    (b"   \t \n", []),
    (b"\r\n", []),
    (b" \x0b\x0c\r", []),
])
def test_parse_known_answers(line, records):
    assert parse_line(line) == records


@pytest.mark.parametrize("address,keys", [
    (b"10.2-3.", [b"10.2.", b"10.3."]),
    (b"1.2.3.250-300", [b"1.2.3.%d" % n for n in range(250, 256)]),
    (b"1.2.3.7-4", []),
    (b"1.2.3.-5", [b"1.2.3.%d" % n for n in range(6)]),
    (b"1.2.3.4-", [b"1.2.3.%d" % n for n in range(4, 0)]),
    (b"-2", [b"0", b"1", b"2"]),
    (b"127.0-1.x.", [b"127.0.x.", b"127.1.x."]),
    (b"=host-name.example", [b"=host-name.example"]),
    (b"joe@1.2.3.4-5", [b"joe@1.2.3.4-5"]),
    (b"1.2.3.18446744073709551615-3", []),              # the largest bound C reads
])
def test_range_expansion(address, keys):
    assert [k for k, _ in parse_line(address + b":allow")] == keys


@pytest.mark.parametrize("line", [
    b"1.2.3.4:foo", b"1.2.3.4:allowX", b"1.2.3.4:allowed",
    b"1.2.3.4:deny junk", b"1.2.3.4:allow,", b"1.2.3.4:allow,A,B=\"x\"",
    b"1.2.3.4:allow,!", b"1.2.3.4:allow,!RELAYCLIENT=", b"1.2.3.4:allow,X",
    b"1.2.3.4:allow,X=", b"1.2.3.4:allow,X=\"abc", b"1.2.3.4:allow,X=\"a\"b",
    b"1.2.3.4:allow;X=\"a\"", b"1.2.3.a-4:allow", b"fe80::1-3:allow",
    b"1.2.3.4:allow\r", b"1.2.3.4:allow\r\n", b"1.2.3.4 :allow x",
    b"10.0.0.0/33:deny", b"10.0.0.0/1:deny", b"10.0.0.0/0:deny",
    b"10.0.0.256/8:deny", b"10..0/8:deny", b"10.0.0.0.0/8:deny",
    b"10.0.0.0/x:deny", b"10.0.0.0/:deny", b"/8:deny",
    b"2001:zz::/32:deny", b"::/129:deny", b"::/1:deny", b"fe80::%1/64:deny",
    b"1.2.3.4-5/24:deny",
])
def test_parse_errors(line):
    with pytest.raises(RuleSyntaxError) as info:
        parse_line(line + b"  \n")
    assert info.value.line == line.rstrip(b"\n \t")


@pytest.mark.parametrize("line", [b"foo bar", b"  # not a comment",
                                  b"1.2.3.4 allow", b"\tx"])
def test_no_colon_is_fatal(line):
    with pytest.raises(NoColonError) as info:
        parse_line(line + b"\n")
    assert str(info.value) == "Unable to find colon on non-empty line."


# ------------------------------------------------------------------ CIDR

def test_ipv4_bit_string_vectors():
    bits = ip4_bits(bytes([1, 2, 3, 4]))
    assert bits == b"0000000h000000o0000000wx00000400"
    assert ip4_bits(bytes(4)) == b"0" * 32
    assert ip4_bits(b"\xff" * 4) == b"abcdefghijklmnopqrstuvwxyz123456"
    keys = [k for k in lookup_keys("1.2.3.4", None, None)
            if k.startswith(b"_")]
    assert len(keys) == 31
    assert keys[0] == b"_0000000h000000o0000000wx00000400"
    assert keys[32 - 24] == b"_0000000h000000o0000000wx"
    assert keys[32 - 16] == b"_0000000h000000o0"
    assert keys[32 - 8] == b"_0000000h"
    assert keys[-1] == b"_00"


def test_ipv6_bit_string_vectors():
    import ipaddress
    packed = ipaddress.IPv6Address("2001:db8::5").packed
    assert ip6_bits(packed)[:16] == b"00`000000000000a"
    keys = [k for k in lookup_keys("2001:db8::5", None, None)
            if k.startswith(b"^")]
    assert len(keys) == 127
    assert keys[128 - 16] == b"^00`000000000000a"
    one = [k for k in lookup_keys("::1", None, None) if k.startswith(b"^")]
    assert one[0] == b"^" + b"0" * 127 + b"`"
    allones = ip6_bits(b"\xff" * 16)
    assert allones == bytes(range(96, 224))  # non-ASCII beyond 127


@pytest.mark.parametrize("address,key", [
    (b"127.0/8", b"_0bcdefgh"),
    (b"127/8", b"_0bcdefgh"),
    (b"1.2.3.4/24", b"_0000000h000000o0000000wx"),
    (b"1.2.3.99/24", b"_0000000h000000o0000000wx"),
    (b"1.2.3.4/32", b"_0000000h000000o0000000wx00000400"),
    (b"192.168.0.0/2", b"_ab"),
    (b"2001:db8::/16", b"^00`000000000000a"),
    (b"2002::/48", b"^00`00000000000a0" + b"0" * 32),
    (b"::1/128", b"^" + b"0" * 127 + b"`"),
    (b"::ffff:1.2.3.0/120", None),
])
def test_cidr_compile(address, key):
    if key is None:  # compare with the lookup side instead
        key = [k for k in lookup_keys("::ffff:1.2.3.77", None, None)
               if len(k) == 121][0]
    assert cidr_key(address) == key
    assert parse_line(address + b":deny") == [(key, b"D\0")]
    assert parse_line(b"joe@" + address + b":deny")[0][0] == b"joe@" + address


# ------------------------------------------------------------------ keys

def cidr4(ip: str) -> List[bytes]:
    return [k for k in lookup_keys(ip, None, None) if k.startswith(b"_")]


def test_ipv4_key_order_full():
    keys = list(lookup_keys("86.75.30.9", "one.two.three", "xyz"))
    assert keys[:7] == [b"xyz@86.75.30.9", b"xyz@=one.two.three",
                        b"86.75.30.9", b"=one.two.three", b"86.75.30.",
                        b"86.75.", b"86."]
    assert keys[7:38] == cidr4("86.75.30.9")
    assert keys[38:] == [b"=.two.three", b"=.three", b"=", b""]


def test_ipv4_key_order_partial():
    assert list(lookup_keys("86.75.30.9", None, b"xyz"))[:2] == \
        [b"xyz@86.75.30.9", b"86.75.30.9"]
    keys = list(lookup_keys("86.75.30.9", b"four", None))
    assert keys[:2] == [b"86.75.30.9", b"=four"]
    assert keys[-2:] == [b"=", b""]
    assert list(lookup_keys("junk", None, None)) == [b"junk", b""]
    empty = list(lookup_keys("1.2.3.4", "", ""))
    assert empty[:4] == [b"@1.2.3.4", b"@=", b"1.2.3.4", b"="]
    assert empty[-2:] == [b"=", b""]


def test_ipv6_key_order():
    exp = b"0000:0000:0000:0000:0000:0000:0000:0001"
    keys = list(lookup_keys("::1", "h.example", "joe"))
    assert keys[:5] == [b"joe@" + exp, b"joe@=h.example", exp, b"::1",
                        b"=h.example"]
    assert keys[5] == b"^" + b"0" * 127 + b"`"   # CIDR even with a host
    assert len(keys) == 5 + 127 + 3
    assert keys[-3:] == [b"=.example", b"=", b""]


def test_ipv6_text_forms():
    keys = list(lookup_keys("0:0::1", None, None))
    assert keys[:2] == [b"0000:0000:0000:0000:0000:0000:0000:0001", b"::1"]
    mapped = list(lookup_keys("::ffff:1.2.3.4", None, None))
    assert mapped[:2] == [b"0000:0000:0000:0000:0000:ffff:0102:0304",
                          b"::ffff:1.2.3.4"]
    assert list(lookup_keys("2001:DB8:0:0:1::1", None, None))[1] == \
        b"2001:db8::1:0:0:1"
    assert list(lookup_keys("not:an:address", None, b"i")) == \
        [b"not:an:address", b""]
    assert list(lookup_keys("fe80::1%eth0", None, None))[:2] == \
        [b"fe80:0000:0000:0000:0000:0000:0000:0001", b"fe80::1"]


# ------------------------------------------------------------------ apply

@pytest.mark.parametrize("value,decision", [
    (b"", Decision()),
    (b"D\0", Decision(deny=True)),
    (b"D\0+X=1\0", Decision(True, [(b"X", b"1")])),
    (b"+X=1\0-Y\0+Z=\0", Decision(False, [(b"X", b"1"), (b"Y", None),
                                          (b"Z", b"")])),
    (b"+X=a=b\0", Decision(False, [(b"X", b"a=b")])),
    (b"+MAXPERIP=5\0", Decision(False, [(b"MAXPERIP", b"5")], 5)),
    (b"+MAXPERIP=12abc\0", Decision(False, [(b"MAXPERIP", b"12abc")], 12)),
    (b"+MAXPERIP=x\0", Decision(False, [(b"MAXPERIP", b"x")], 0)),
    (b"+MAXPERIP=3\0-MAXPERIP\0", Decision(False, [(b"MAXPERIP", b"3"),
                                                  (b"MAXPERIP", None)], 3)),
    (b"-MAXPERIP\0", Decision(False, [(b"MAXPERIP", None)])),
    (b"+NOEQUALS\0?junk\0-\0+=v\0", Decision()),
    (b"+X=1\0+X=2\0", Decision(False, [(b"X", b"1"), (b"X", b"2")])),
    (b"+X=1\0+Y=unterminated", Decision(False, [(b"X", b"1")])),
    (b"+ID=\xff\x01\0", Decision(False, [(b"ID", b"\xff\x01")])),
])
def test_apply(value, decision):
    assert apply(value) == decision


def test_encode_value_round_trip():
    changes: List[tuple] = [(b"A", b"1"), (b"B", None), (b"C", b"")]
    value = encode_value(True, changes)
    assert value == b"D\0+A=1\0-B\0+C=\0"
    assert apply(value) == Decision(True, changes)


# ------------------------------------------------------------------ find

RULES = b"""\
1.:allow,which=/one-dot/
1.2.3.0/24:allow,which=/cidr24/
=.example:allow,which=/suffix/
0000:0000:0000:0000:0000:0000:0000:0001:allow,which=/expanded/
::1:allow,which=/compact/
::2:allow,which=/compact2/
2001:db8::/32:deny
"""


def build(tmp_path, text: bytes, name: str = "r.cdb") -> str:
    records = [r for line in text.splitlines() for r in parse_line(line)]
    path = str(tmp_path / name)
    write_cdb(path, records)
    return path


def which(path: str, ip: str, host: Optional[str] = None,
          info: Optional[str] = None) -> Optional[bytes]:
    found = find(path, ip, host, info)
    return None if found is None else found[1]


def test_find_precedence(tmp_path):
    path = build(tmp_path, RULES)
    assert which(path, "1.2.3.4", "a.example") == b"+which=one-dot\0"
    assert which(path, "2.2.3.4", "a.example") == b"+which=suffix\0"
    os.unlink(path)
    path = build(tmp_path, b"\n".join(RULES.splitlines()[1:]))
    assert which(path, "1.2.3.4", "a.example") == b"+which=cidr24\0"
    assert which(path, "1.2.4.4", "a.example") == b"+which=suffix\0"
    assert which(path, "::1") == b"+which=expanded\0"
    assert which(path, "::2") == b"+which=compact2\0"
    assert which(path, "2001:db8:1::7", "h.example") == b"D\0"
    assert which(path, "2001:db9::7", "h.example") == b"+which=suffix\0"
    assert find(path, "9.9.9.9", None, None) is None


def test_check(tmp_path):
    path = build(tmp_path, b"1.2.3.4:deny\n5.:allow,MAXPERIP=\"3\",!X\n")
    assert check(path, False, "1.2.3.4", None, None) == Decision(deny=True)
    assert check(path, False, "5.6.7.8", None, None) == \
        Decision(False, [(b"MAXPERIP", b"3"), (b"X", None)], 3)
    assert check(path, False, "6.6.6.6", None, None) is None
    missing = str(tmp_path / "missing.cdb")
    assert check(missing, True, "1.2.3.4", None, None) is None
    with pytest.raises(FileNotFoundError) as info:
        check(missing, False, "1.2.3.4", None, None)
    assert errtext(info.value) == "file does not exist"
    with pytest.raises(CdbError) as cinfo:
        check(str(tmp_path), True, "1.2.3.4", None, None)
    assert errtext(cinfo.value) == "is a directory"
    bad = tmp_path / "bad.cdb"
    bad.write_bytes(b"\xff" * 3000)
    with pytest.raises(CdbError) as cinfo:
        check(str(bad), True, "1.2.3.4", None, None)
    assert cinfo.value.errno == errno.EPROTO
    assert errtext(cinfo.value) == "protocol error"


def random_rules(rng: random.Random, n: int) -> bytes:
    lines = []
    for i in range(n):
        a, b, c, d = (rng.randrange(4) for _ in range(4))
        kind = rng.randrange(8)
        if kind == 0:
            addr = "%d.%d.%d.%d/%d" % (a, b, c, d, rng.randrange(2, 33))
        elif kind == 1:
            addr = "%d:%d::%d/%d" % (a, b, c, rng.randrange(2, 129))
        elif kind == 2:
            addr = "=h%d.d%d.example" % (a, b)
        elif kind == 3:
            addr = "u%d@%d.%d.%d.%d" % (a, a, b, c, d)
        elif kind == 4:
            addr = "%d.%d." % (a, b)
        elif kind == 5:
            addr = "%d:%d::%d" % (a, b, c)
        else:
            addr = "%d.%d.%d.%d" % (a, b, c, d)
        lines.append("%s:allow,N=/%d/" % (addr, i))
    return "\n".join(lines).encode()


def test_cache_agrees_with_find(tmp_path):
    rng = random.Random(5)
    path = build(tmp_path, random_rules(rng, 400))
    cache = RulesCache(path)
    cache._snapshot.settle_ns = 0
    assert cache._snapshot.table() is not None
    hosts = [None, "h1.d2.example", "x.d0.example", ""]
    for _ in range(1500):
        a, b, c, d = (rng.randrange(4) for _ in range(4))
        ip = rng.choice(["%d.%d.%d.%d" % (a, b, c, d),
                         "%d:%d::%d" % (a, b, c), "%d:%d::" % (a, b)])
        host = rng.choice(hosts)
        info = rng.choice([None, "u%d" % a, ""])
        assert cache.find(ip, host, info) == find(path, ip, host, info)
    write_cdb(path, [(b"", b"D\0")])  # rebuilt: seen at once
    assert cache.find("1.1.1.1", None, None) == (b"", b"D\0")
    assert cache.check(False, "1.1.1.1", None, None) == Decision(deny=True)
    os.unlink(path)
    assert cache.check(True, "1.1.1.1", None, None) is None
    with pytest.raises(FileNotFoundError):
        cache.check(False, "1.1.1.1", None, None)
    os.mkdir(path)
    with pytest.raises(CdbError) as info:
        cache.check(True, "1.1.1.1", None, None)
    assert errtext(info.value) == "is a directory"
    os.rmdir(path)
    with open(path, "wb") as f:
        f.write(b"\xff" * 3000)
    os.utime(path, ns=(1, 1))
    with pytest.raises(CdbError) as info:
        cache.check(True, "1.1.1.1", None, None)
    assert errtext(info.value) == "protocol error"
