"""ucspi.dns against a real dnsmasq (the ``dns_server`` fixture: port 53 of
an address chosen per run, tests/fix_dns.py)."""

from __future__ import annotations
from ipaddress import IPv6Address, ip_address
from typing import List

import pytest

from tests.fix_dns import RECORDS, udp_ask
from ucspi.dns import lookup as dns
from ucspi.dns import msg as dnsmsg
from ucspi.address import mapped_ipv6 as mapped
from ucspi.dns.conf import DnsConfig
from ucspi.reactor import Reactor


def as_v6(text: str) -> IPv6Address:
    ip = ip_address(text)
    return mapped(ip) if ip.version == 4 else ip  # type: ignore[arg-type]


@pytest.fixture
def conf(dns_server, tmp_path):
    env = {"DNSCACHEIP": dns_server.ip, "DNSREWRITEFILE": str(tmp_path / "none"),
           "LOCALDOMAIN": "example"}
    return DnsConfig.load(env)


PTRS = [(ip, RECORDS["rendered"].get(ip, name.lower()))  # type: ignore[union-attr]
        for ip, name in RECORDS["ptr"].items()]  # type: ignore[union-attr]


@pytest.mark.parametrize("ip, name", PTRS)
def test_ptr_records(conf, ip, name):
    assert dns.ptr(conf, ip_address(ip)) == name


def test_ptr_odd_characters_rendered_with_octal_escapes(conf):
    assert dns.ptr(conf, ip_address("127.53.0.2")) == "we\\045ird.example"
    assert dns.ptr(conf, ip_address("127.53.0.5")) == "we\\045ird\\072na\\134001me.example"
    assert dns.ptr(conf, IPv6Address("::ffff:127.53.0.4")) == "mixed.example"


@pytest.mark.parametrize("ip", RECORDS["no_ptr"])
def test_ptr_nxdomain(conf, ip):
    assert dns.ptr(conf, ip_address(ip)) is None


@pytest.mark.parametrize("name, addresses", sorted(RECORDS["addresses"].items()))  # type: ignore[union-attr]
def test_addresses(conf, name, addresses):
    assert sorted(dns.addresses(conf, name)) == sorted(as_v6(a) for a in addresses)


@pytest.mark.parametrize("name", RECORDS["nxdomain"])
def test_addresses_nxdomain(conf, name):
    assert dns.addresses(conf, name) == []


def test_big_answer_is_truncated_over_udp_and_fetched_over_tcp(dns_server, conf):
    packet = udp_ask(dns_server.ip, 53, "many.example", dnsmsg.TYPE_A)
    assert packet[2] & 0x02                               # dnsmasq sets TC
    assert len(dns.addresses(conf, "many.example")) == 40


def test_both_dnscacheip_forms(dns_server, tmp_path):
    base = {"DNSREWRITEFILE": str(tmp_path / "none")}
    ip = dns_server.ip
    for value in (ip, f"{ip}.127.0.0.1", f"{ip} ::1", f"{ip},::1"):
        conf = DnsConfig.load(dict(base, DNSCACHEIP=value))
        assert conf.servers[0] == (ip, 0)
        assert dns.ptr(conf, ip_address("127.0.0.1")) == "localhost.example"
    # nothing listens on 127.53.0.250:53 (refused): the second server answers
    conf = DnsConfig.load(dict(base, DNSCACHEIP=f"127.53.0.250 {ip}"))
    conf.udp_timeouts = (5.0, 0.2, 5.0)    # rounds with seconds to spare for the answer
    assert dns.ptr(conf, ip_address("127.0.0.1")) == "localhost.example"


def test_qualify_through_localdomain(conf):
    assert dns.qualify(conf, "www") == [as_v6("127.53.0.10")]
    assert dns.qualify(conf, "www.test") == [as_v6("127.53.0.20")]      # has a dot
    assert dns.qualify(conf, "www.test.") == [as_v6("127.53.0.20")]
    assert dns.qualify(conf, "nx") == []
    assert sorted(dns.qualify(conf, "dual")) == [as_v6("127.53.0.11"), as_v6("2001:db8::11")]


def test_qualify_through_dnsrewrite_file(dns_server, tmp_path):
    rules = tmp_path / "dnsrewrite"
    rules.write_text("# tcpserver test rules\n-.local:me\n=me:127.0.0.1\n"
                     "?:+.nothing.example+.test+.example\n*.:\n")
    conf = DnsConfig.load({"DNSCACHEIP": dns_server.ip, "DNSREWRITEFILE": str(rules),
                           "LOCALDOMAIN": "ignored.example"})
    assert dns.qualify(conf, "box.local") == [as_v6("127.0.0.1")]
    assert dns.qualify(conf, "www") == [as_v6("127.53.0.20")]           # www.test first
    assert dns.qualify(conf, "mixed") == [as_v6("127.53.0.4")]
    assert dns.qualify(conf, "mixed.example") == [as_v6("127.53.0.4")]


def host(conf, ip: str, paranoid: bool = True):
    reactor = Reactor()
    box: List[tuple] = []
    dns.lookup_host(reactor, conf, ip_address(ip), paranoid, lambda *r: box.append(r))
    while not box:
        reactor.run_once()
    reactor.close()
    return box[0]


def test_paranoid_checks(conf):
    assert host(conf, "127.0.0.1") == ("localhost.example", None)
    assert host(conf, "::1") == ("localhost.example", None)
    assert host(conf, "127.53.0.4") == ("mixed.example", None)
    assert host(conf, "2001:db8::11") == ("dual.example", None)
    assert host(conf, "127.53.0.3") == (None, "mismatch.example")
    assert host(conf, "127.53.0.3", paranoid=False) == ("mismatch.example", None)
    assert host(conf, "127.53.0.2") == (None, "we\\045ird.example")     # no forward
    assert host(conf, "127.53.0.200") == (None, None)


def test_many_concurrent_lookups(conf):
    reactor = Reactor()
    results: List[str] = []
    for i in range(1, 41):
        dns.lookup_ptr(reactor, conf, ip_address("127.54.0.%d" % i),
                       lambda name, error: results.append(name))
    while len(results) < 40:
        reactor.run_once()
    reactor.close()
    assert results == ["many.example"] * 40
