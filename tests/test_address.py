"""Known answers for ucspi.address: dotted quads, scope ids and the
IPv4-mapped forms, and for the callers whose variants used to differ
(leading zeros, digits per part, brackets, fewer parts, empty or unknown
scopes)."""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Optional

import pytest

from ucspi import address
from ucspi.dns import conf as dnsconf
from ucspi.ident import lookup as ident
from ucspi.rules.lookup import lookup_keys
from ucspi.rules.parse import cidr_key
from ucspi.server import listen


# -- parse_quad ------------------------------------------------------------
@pytest.mark.parametrize("text, octets", [
    ("127.0.0.1", b"\x7f\0\0\x01"),
    ("127.000.000.001", b"\x7f\0\0\x01"),         # leading zeros allowed
    ("0.0.0.0", bytes(4)),
    ("255.255.255.255", b"\xff" * 4),
    ("1.2.3.0004", b"\x01\x02\x03\x04"),           # any length by default
    ("00000000001.2.3.4", b"\x01\x02\x03\x04"),
    ("1.2.3.256", None),
    ("1.2.3.1000", None),
    ("1.2.3", None), ("127", None), ("1.2.3.4.5", None),
    ("", None), ("1..3.4", None), ("1.2.3.", None), (".1.2.3", None),
    ("[1.2.3.4]", None),                           # brackets: the caller's business
    ("1.2.3.-4", None), ("+1.2.3.4", None), (" 1.2.3.4", None), ("1.2.3.4 ", None),
    ("1.2.3.4\n", None), ("0x1.2.3.4", None), ("1.2.3.4x", None),
    ("\u0661.2.3.4", None), ("\u00b2.2.3.4", None),  # non-ASCII digits
])
def test_parse_quad(text: str, octets: Optional[bytes]) -> None:
    assert address.parse_quad(text) == octets


def test_parse_quad_huge_parts() -> None:
    """No int() of a huge string (Python 3.11+ refuses over 4300 digits)."""
    assert address.parse_quad("1.2.3." + "9" * 5000) is None
    assert address.parse_quad("1.2.3." + "0" * 5000 + "7") == b"\x01\x02\x03\x07"


@pytest.mark.parametrize("text, octets", [
    ("1.2.3.004", b"\x01\x02\x03\x04"),
    ("1.2.3.0004", None),
    ("001.002.003.004", b"\x01\x02\x03\x04"),
])
def test_parse_quad_max_digits(text: str, octets: Optional[bytes]) -> None:
    assert address.parse_quad(text, max_digits=3) == octets


@pytest.mark.parametrize("text, octets", [
    ("127", b"\x7f\0\0\0"),
    ("127.0", b"\x7f\0\0\0"),
    ("10.1.2", b"\x0a\x01\x02\0"),
    ("10.1.2.3", b"\x0a\x01\x02\x03"),
    ("10.1.2.3.4", None),
    ("", None), ("10.", None), ("256", None),
])
def test_parse_quad_fewer_parts(text: str, octets: Optional[bytes]) -> None:
    assert address.parse_quad(text, min_parts=1) == octets


# The callers, where the old copies differed: each keeps its own rule.
@pytest.mark.parametrize("text, server, dns, cidr", [
    # (text, tcpserver host argument, DNS literal, rules CIDR block /8)
    ("1.2.3.4", "1.2.3.4", "::ffff:1.2.3.4", True),
    ("001.002.003.004", "1.2.3.4", "::ffff:1.2.3.4", True),
    ("1.2.3.0004", None, "::ffff:1.2.3.4", False),     # digits per part
    ("[1.2.3.4]", "1.2.3.4", "::ffff:1.2.3.4", False),  # brackets
    ("1.[2].3.4", None, "::ffff:1.2.3.4", False),       # djb's DNS drops every bracket
    ("1.2", None, None, True),                           # fewer parts
    ("0.0.0.0", "0.0.0.0", "::", True),                  # DNS: 0.0.0.0 is ::
])
def test_quad_callers(text: str, server: Optional[str], dns: Optional[str], cidr: bool) -> None:
    assert listen.dotted_quad(text) == server
    found = dnsconf.literal(text)
    assert found == ([] if dns is None else [IPv6Address(dns)])
    assert (cidr_key(text.encode() + b"/8") is not None) == cidr


def test_quad_callers_non_ascii() -> None:
    assert listen.dotted_quad("\u0661.2.3.4") is None
    assert dnsconf.quad("\u0661.2.3.4") is None
    assert cidr_key(b"\xb2.1.1.1/8") is None             # latin-1 superscript two
    assert cidr_key("\u0661.1.1.1/8".encode()) is None


def test_rules_keys_take_any_length_quad() -> None:
    """An address with a long part still gets the CIDR keys (``_``)."""
    def cidr(ip: str) -> list:
        return [k for k in lookup_keys(ip, None, None) if k.startswith(b"_")]

    assert list(lookup_keys("1.2.3.0004", None, None))[0] == b"1.2.3.0004"
    assert len(cidr("1.2.3.4")) == 31
    assert cidr("1.2.3.0004") == cidr("1.2.3.4")
    assert cidr("1.2.3.256") == []
    assert cidr("1.2.3.\u0664") == []


# -- scope ids -------------------------------------------------------------
IFACES = {"eth0": 2}


def fake_ifindex(name: str) -> int:
    if name not in IFACES:
        raise OSError(errno.ENODEV, "no such device")
    return IFACES[name]


def test_scope_id() -> None:
    assert address.scope_id("7") == 7
    assert address.scope_id("007") == 7
    assert address.scope_id("lo") == socket.if_nametoindex("lo")
    assert address.scope_id("eth0", fake_ifindex) == 2
    assert address.scope_id("3", fake_ifindex) == 3


@pytest.mark.parametrize("text", ["", "no-such-interface0", "\u00b2", "\udcff"])
def test_scope_id_unknown_is_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        address.scope_id(text)


def test_scope_callers() -> None:
    lo = socket.if_nametoindex("lo")
    # tcpserver: none or unknown is 0, as in C
    assert listen.host_address("fe80::1%lo", False, lambda h: []) == (False, "fe80::1", lo)
    assert listen.host_address("fe80::1%", False, lambda h: []) == (False, "fe80::1", 0)
    assert listen.host_address("fe80::1%nosuch0", False, lambda h: []) == (False, "fe80::1", 0)
    assert listen.interface_index("\u00b2") == 0
    # DNS servers: an empty or unknown scope makes the literal invalid
    assert dnsconf.parse_server("fe80::1%eth0", fake_ifindex) == ("fe80::1", 2)
    for bad in ("fe80::1%", "fe80::1%nosuch0"):
        with pytest.raises(ValueError):
            dnsconf.parse_server(bad, fake_ifindex)
    # ident: the connection's scope id first, then the text; unknown is an error
    assert ident.sockaddr("fe80::1%lo", 113) == (socket.AF_INET6, ("fe80::1", 113, 0, lo))
    assert ident.sockaddr("fe80::1%nosuch0", 113, 5) == (socket.AF_INET6, ("fe80::1", 113, 0, 5))
    assert ident.sockaddr("fe80::1%", 113) == (socket.AF_INET6, ("fe80::1", 113, 0, 0))
    with pytest.raises(ValueError):
        ident.sockaddr("fe80::1%nosuch0", 113)


# -- IPv4-mapped -----------------------------------------------------------
def test_mapped_forms() -> None:
    assert address.MAPPED_PREFIX == "::ffff:"
    assert address.MAPPED_PACKED == bytes(10) + b"\xff\xff"
    assert address.mapped_text("1.2.3.4") == "::ffff:1.2.3.4"
    assert address.strip_mapped("::ffff:1.2.3.4") == "1.2.3.4"
    assert address.strip_mapped("::1") == "::1"
    assert address.strip_mapped("1.2.3.4") == "1.2.3.4"
    assert address.mapped_packed(b"\x01\x02\x03\x04") == IPv6Address("::ffff:1.2.3.4").packed
    assert address.mapped_ipv6(IPv4Address("1.2.3.4")) == IPv6Address("::ffff:1.2.3.4")
    assert address.mapped_ipv6(IPv4Address("0.0.0.0")) == IPv6Address("::ffff:0.0.0.0")
    assert dnsconf.ip4_literal(IPv4Address("0.0.0.0")) == IPv6Address("::")
    assert dnsconf.ip4_literal(IPv4Address("1.2.3.4")) == IPv6Address("::ffff:1.2.3.4")
    assert address.unmap(address.mapped_text("10.0.0.1")) == ("10.0.0.1", True)


def test_mapped_callers() -> None:
    assert ident.sockaddr("::ffff:10.0.0.1", 113) == (socket.AF_INET, ("10.0.0.1", 113))
    assert ident.sockaddr("::ffff:a00:1", 113) == (socket.AF_INET, ("10.0.0.1", 113))
    assert ident.sockaddr("::a00:1", 113)[0] == socket.AF_INET6
