"""Known-answer tests of ucspi.dnsconf (servers, rewriting rules,
qualification, literals)."""

from __future__ import annotations

import errno
import os
from ipaddress import IPv6Address

import pytest

from ucspi.dns.conf import (DnsConfig, apply_rule, apply_rules, candidates, default_servers,
                           literal, parse_dnscacheip, parse_resolv_servers, parse_server,
                           rules_from_file, rules_from_hostname, rules_from_localdomain,
                           rules_from_resolv)
from ucspi.dns.msg import DnsError
from ucspi.errors import errtext

IFACES = {"lo": 1, "eth0": 2}


def ifindex(name: str) -> int:
    if name not in IFACES:
        raise OSError(errno.ENODEV, "no such device")
    return IFACES[name]


# -- servers -------------------------------------------------------------------
@pytest.mark.parametrize("text, servers", [
    ("10.0.0.1", [("10.0.0.1", 0)]),
    ("10.0.0.1.10.0.0.2", [("10.0.0.1", 0), ("10.0.0.2", 0)]),      # djbdns form
    ("10.0.0.1.10.0.0.2.10.0.0.3", [("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.3", 0)]),
    ("10.0.0.1 10.0.0.2", [("10.0.0.1", 0), ("10.0.0.2", 0)]),      # documented form
    (" 10.0.1.53\tfe80::1%lo ::1 ", [("10.0.1.53", 0), ("fe80::1", 1), ("::1", 0)]),
    ("10.0.0.1,2001:DB8::1%eth0", [("10.0.0.1", 0), ("2001:db8::1", 2)]),
    ("fe80::1%7", [("fe80::1", 7)]),
    ("::ffff:10.0.0.9", [("10.0.0.9", 0)]),
    ("127.000.000.001", [("127.0.0.1", 0)]),
    ("0.0.0.0 :: 10.0.0.1", [("10.0.0.1", 0)]),                     # "no server"
    ("10.0.0.1 bogus 10.0.0.2", [("10.0.0.1", 0)]),                 # stop at garbage
    ("10.0.0.1 fe80::1%nosuch 10.0.0.2", [("10.0.0.1", 0)]),
    ("10.0.0.1%lo 10.0.0.2", []),
    ("256.0.0.1", []),
    ("10.0.0.1.10.0.0", []),
    ("", []),
])
def test_parse_dnscacheip(text, servers):
    assert parse_dnscacheip(text, ifindex) == servers


def test_parse_dnscacheip_at_most_32():
    text = " ".join("10.0.0.%d" % i for i in range(1, 41))
    servers = parse_dnscacheip(text, ifindex)
    assert len(servers) == 32 and servers[-1] == ("10.0.0.32", 0)


def test_parse_server():
    assert parse_server("::1") == ("::1", 0)
    assert parse_server("0.0.0.0") is None
    with pytest.raises(ValueError):
        parse_server("1.2.3")


RESOLV = """\
# comment
domain corp.example
nameserver 10.0.0.1
nameserver\t10.0.0.2 # trailing text ignored
 nameserver 10.0.0.3
nameservers 10.0.0.4
nameserver bogus
nameserver 0.0.0.0
nameserver fe80::53%eth0
nameserver 10.0.0.5;x
search a.example b.example
"""


def test_parse_resolv_servers():
    assert parse_resolv_servers(RESOLV, ifindex) == [
        ("10.0.0.1", 0), ("10.0.0.2", 0), ("fe80::53", 2), ("10.0.0.5", 0)]
    assert parse_resolv_servers("", ifindex) == []


def test_default_servers():
    assert default_servers() == [("::1", 0), ("127.0.0.1", 0)]
    assert default_servers(ipv4_only=True) == [("127.0.0.1", 0)]


# -- rule sources --------------------------------------------------------------
def test_rules_from_file():
    text = "-.local:me \r\n=me:127.0.0.1\t\n# comment\n\n*.:"
    assert rules_from_file(text) == ["-.local:me", "=me:127.0.0.1", "# comment", "", "*.:"]


@pytest.mark.parametrize("value, rules", [
    ("a.example b.example", ["?:+.a.example+.b.example", "*.:"]),
    ("example", ["?:+.example", "*.:"]),
    ("", ["?:+.", "*.:"]),
    ("a  b", ["?:+.a+.+.b", "*.:"]),
])
def test_rules_from_localdomain(value, rules):
    assert rules_from_localdomain(value) == rules


def test_rules_from_resolv():
    assert rules_from_resolv(RESOLV) == ["?:+.corp.example", "*.:"]   # first line only
    assert rules_from_resolv("search\ta.example  \tb.example\n") == [
        "?:+.a.example+.b.example", "*.:"]
    assert rules_from_resolv(" search x\nsearch\nsearches x\n") is None
    assert rules_from_resolv("nameserver 10.0.0.1\n") is None


def test_rules_from_hostname():
    assert rules_from_hostname("mx1.example.com") == ["?:.example.com", "*.:"]
    assert rules_from_hostname("vm") == ["*.:"]


# -- applying rules ------------------------------------------------------------
DJBDNS = ["-.local:me", "=me:127.0.0.1", "*.a:.af.mil", "?:.heaven.af.mil", "*.:"]


@pytest.mark.parametrize("name, result", [
    ("x.local", "127.0.0.1"),
    ("lion.a", "lion.af.mil"),
    ("cheetah", "cheetah.heaven.af.mil"),
    ("gw.", "gw"),
    ("1.2.3.4", "1.2.3.4"),
    ("LION.A", "LION.af.mil"),              # suffixes compare without case
    ("X.LOCAL", "127.0.0.1"),
    ("me", "127.0.0.1"),
    ("::1", "::1"),                         # ? never qualifies IPv6 literals
    ("[10.0.0.1]", "[10.0.0.1]"),
    ("cheetah+.heaven.af.mil+.af.mil", "cheetah+.heaven.af.mil+.af.mil"),
])
def test_djbdns_examples(name, result):
    assert apply_rules(name, DJBDNS) == result


@pytest.mark.parametrize("name, rule, result", [
    ("host", "=host:new", "new"),
    ("xhost", "=host:new", "xhost"),
    ("HOST", "=host:new", "new"),
    ("a.b", "-.b:z", "z"),
    ("b", "-b:z", "z"),
    ("a.b", "*.b:.c:d", "a.c:d"),           # replacement runs to the end
    ("a.b", "#.b:x", "a.b"),                # comment
    ("a.b", "*.b", "a.b"),                  # no colon
    ("a.b", "", "a.b"),
    ("a", "*abc:x", "a"),                   # suffix longer than the name
    ("a", "?:+.x+.y", "a+.x+.y"),
    ("a:b", "?:.x", "a:b"),
    ("a]", "?:.x", "a]"),
    ("é", "?:.x", "é.x"),
])
def test_apply_rule(name, rule, result):
    assert apply_rule(name, rule) == result


def test_rules_apply_once_each_in_order():
    assert apply_rules("a", ["*a:b", "*b:c", "*a:z"]) == "c"
    assert apply_rules("a", ["*a:aa"]) == "aa"


@pytest.mark.parametrize("name, result", [
    ("cheetah+.heaven.af.mil+.af.mil", ["cheetah.heaven.af.mil", "cheetah.af.mil"]),
    ("www+.example", ["www.example"]),
    ("a+", ["a"]),
    ("a+b+", ["ab", "a"]),
    ("plain", ["plain"]),
])
def test_candidates(name, result):
    assert candidates(name) == result


# -- literals ------------------------------------------------------------------
@pytest.mark.parametrize("text, result", [
    ("1.2.3.4", ["::ffff:1.2.3.4"]),
    ("127.000.000.001", ["::ffff:127.0.0.1"]),
    ("0.0.0.0", ["::"]),
    ("::1", ["::1"]),
    ("::ffff:10.0.0.1", ["::ffff:10.0.0.1"]),
    ("[10.0.0.1]", ["::ffff:10.0.0.1"]),     # bracketed: accepted (IndiMail refuses)
    ("[127.1]", []),
    ("127.1", []),
    ("00", []),
    ("1.2.3", []),
    ("www.example", None),
    ("cafe.example", None),
    ("1a.example", None),
    ("1.2.3x.example", None),
    ("a:b.example", None),
])
def test_literal(text, result):
    found = literal(text)
    assert found == (None if result is None else [IPv6Address(a) for a in result])


def test_literal_keeps_scope():
    (address,) = literal("fe80::1%eth0") or []
    assert address.scope_id == "eth0"


@pytest.mark.parametrize("text", [
    "1.2.3.4x", "10.0.0.1.nip.io", "1.2.3.4.5", "300.1.1.1", "10.0.0.1]", "::1x", "fe80::1/64",
])
def test_literal_prefix_is_an_error(text):
    with pytest.raises(DnsError) as info:
        literal(text)
    assert errtext(info.value) == "invalid argument"


# -- DnsConfig.load --------------------------------------------------------------
@pytest.fixture
def etc(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV)
    return tmp_path


def load(etc, env, **kw):
    env = dict(env)
    env.setdefault("DNSREWRITEFILE", str(etc / "no-dnsrewrite"))
    kw.setdefault("resolv_conf", str(etc / "resolv.conf"))
    return DnsConfig.load(env, ifindex=ifindex, hostname="vm.corp.example", **kw)


def test_load_dnscacheip_wins(etc):
    conf = load(etc, {"DNSCACHEIP": "10.9.9.9.10.9.9.8"})
    assert conf.servers == [("10.9.9.9", 0), ("10.9.9.8", 0)]
    assert conf.rules == ["?:+.corp.example", "*.:"]
    assert (conf.udp_timeouts, conf.patient_round, conf.tcp_timeout) == ((3, 11, 45), 1, 10)
    assert conf.port == 53 and conf.servers_error is None and conf.rules_error is None


def test_load_resolv_conf_then_defaults(etc):
    assert load(etc, {"DNSCACHEIP": "junk"}).servers[0] == ("10.0.0.1", 0)
    missing = str(etc / "missing")
    assert load(etc, {}, resolv_conf=missing).servers == [("::1", 0), ("127.0.0.1", 0)]
    assert load(etc, {}, resolv_conf=missing, ipv4_only=True).servers == [("127.0.0.1", 0)]
    assert load(etc, {}, resolv_conf=missing).rules == ["?:.corp.example", "*.:"]


def test_load_rule_sources_in_order(etc):
    rewrite = etc / "dnsrewrite"
    rewrite.write_text("")
    env = {"DNSREWRITEFILE": str(rewrite), "LOCALDOMAIN": "x.example"}
    assert load(etc, env).rules == [""]                       # the file exists: it wins
    rewrite.write_text("=a:b\n")
    assert load(etc, env).rules == ["=a:b", ""]
    del env["DNSREWRITEFILE"]
    assert load(etc, env).rules == ["?:+.x.example", "*.:"]
    assert load(etc, {}).rules == ["?:+.corp.example", "*.:"]


def test_load_read_errors_fail_lookups_later(etc):
    (etc / "dir").mkdir()
    conf = load(etc, {}, resolv_conf=str(etc / "dir"))
    assert conf.servers_error is not None and conf.rules_error is not None
    assert errtext(conf.servers_error) == "is a directory"
    conf = load(etc, {"DNSREWRITEFILE": str(etc / "dir")})
    assert conf.rules_error is not None and conf.servers_error is None
    conf = load(etc, {"DNSCACHEIP": "10.0.0.1", "LOCALDOMAIN": "x"},
                resolv_conf=str(etc / "dir"))
    assert conf.servers_error is None and conf.rules_error is None


def test_load_reads_real_environment_by_default(monkeypatch):
    monkeypatch.setenv("DNSCACHEIP", "10.1.1.1")
    monkeypatch.setenv("LOCALDOMAIN", "example")
    monkeypatch.setenv("DNSREWRITEFILE", os.devnull + ".missing")
    conf = DnsConfig.load()
    assert conf.servers == [("10.1.1.1", 0)]
    assert conf.rules == ["?:+.example", "*.:"]
