"""ucspi.dns drivers against loopback fakes: retries, timeouts, garbage,
TC -> TCP, server failures, concurrency, cancellation."""

from __future__ import annotations

import errno
import os
import socket
import time
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import List, Optional

import pytest

from tests.fix_dns import FakeDns, Query, response, rr
from tests.util import FakeClock, free_port
from ucspi.dns import lookup as dns
from ucspi.dns import msg as dnsmsg
from ucspi.dns.conf import DnsConfig
from ucspi.errors import errtext
from ucspi.reactor import Reactor

#: the schedule of the tests on the fake clock (virtual seconds)
FAST = dict(udp_timeouts=(0.2, 0.5, 0.3), tcp_timeout=0.3)
#: conf_for()'s schedule, in real time: a fake that answers at once has
#: seconds to spare on a loaded machine, so no retry comes between
ROOMY = dict(udp_timeouts=(5.0, 10.0, 5.0), tcp_timeout=5.0)
HOST = dnsmsg.encode_name("Host.Example")
PTR_ANSWER = [rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, HOST)]


def conf_for(*fakes: FakeDns, **kw) -> DnsConfig:
    args = dict(ROOMY, rules=[])
    args.update(kw)
    return DnsConfig(servers=[(f.ip, 0) for f in fakes], port=fakes[0].port, **args)


def ptr_server(query: Query):
    return [(0, response(query, PTR_ANSWER))]


def silent(query: Query):
    return []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Stepped:
    """One lookup on a reactor whose clock stands still (``fake_clock``)
    until :meth:`wait` moves it: the schedule is checked as logic, an
    event exactly when it is due and nothing just before, whatever the
    load of the machine.  While the clock stands still the reactor only
    dispatches what the descriptors bring."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.reactor = Reactor()
        self.results: List[object] = []

    def done(self, *value: object) -> None:
        self.results.append(value)

    def turn_until(self, until, limit: float = 10.0) -> None:
        """Run the reactor until ``until()`` holds (the clock stopped)."""
        start = time.monotonic()
        while not until():
            assert time.monotonic() - start < limit, "never happened"
            self.reactor.run_once(0.01)

    def wait(self, delay: float) -> None:
        """Nothing may happen up to just before ``delay`` from now; then
        move the clock by exactly ``delay`` (what the driver's timer
        armed now is due at: the same sum)."""
        now = self.clock.now
        count = len(self.results)
        self.clock.now = now + delay - 0.001
        for _ in range(5):
            self.reactor.run_once(0.01)
        assert len(self.results) == count, "done before the deadline"
        self.clock.now = now + delay

    def close(self) -> None:
        self.reactor.close()


# -- basic answers -------------------------------------------------------------
def test_ptr_answer_and_query_format():
    with FakeDns(ptr_server) as fake:
        assert dns.ptr(conf_for(fake), IPv4Address("192.0.2.1")) == "host.example"
        assert dns.ptr(conf_for(fake), IPv6Address("::ffff:192.0.2.1")) == "host.example"
    query = fake.queries[0]
    assert dnsmsg.labels(query.name)[:4] == [b"1", b"2", b"0", b"192"]
    assert query.packet[2:12] == b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"   # RD, no EDNS
    assert query.qtype == dnsmsg.TYPE_PTR and not query.tcp
    assert 1025 <= query.source[1] <= 65534


def test_ptr_nxdomain_and_no_record():
    with FakeDns(lambda q: [(0, response(q, rcode=3))]) as fake:
        assert dns.ptr(conf_for(fake), IPv4Address("192.0.2.1")) is None
    with FakeDns(lambda q: [(0, response(q, [rr(b"\xc0\x0c", 5, HOST)]))]) as fake:
        assert dns.ptr(conf_for(fake), IPv6Address("2001:db8::1")) is None
    assert dnsmsg.labels(fake.queries[0].name)[-2:] == [b"ip6", b"arpa"]


def test_ptr_malformed_answer_is_protocol_error():
    bad = [rr(b"\xc0\x0c", dnsmsg.TYPE_PTR, b"\x04host\xc0\x60")]    # forward pointer
    with FakeDns(lambda q: [(0, response(q, bad))]) as fake:
        with pytest.raises(dnsmsg.DnsError) as info:
            dns.ptr(conf_for(fake), IPv4Address("192.0.2.1"))
    assert errtext(info.value) == "protocol error"


def test_ptr_over_ipv6_server():
    with FakeDns(ptr_server, ip="::1") as fake:
        assert dns.ptr(conf_for(fake), IPv4Address("192.0.2.1")) == "host.example"


def test_addresses_aaaa_and_a_mapped():
    def handler(q: Query):
        if q.qtype == dnsmsg.TYPE_AAAA:
            return [(0, response(q, [rr(b"\xc0\x0c", 28, IPv6Address("2001:db8::5").packed)]))]
        return [(0, response(q, [rr(b"\xc0\x0c", 1, bytes([192, 0, 2, i])) for i in (1, 2)]))]
    with FakeDns(handler) as fake:
        found = dns.addresses(conf_for(fake), "www.example")
        assert sorted(found) == sorted(IPv6Address(a) for a in (
            "2001:db8::5", "::ffff:192.0.2.1", "::ffff:192.0.2.2"))
        orders = {tuple(dns.addresses(conf_for(fake), "www.example")) for _ in range(30)}
    assert len(orders) > 1                                   # shuffled
    assert {q.qtype for q in fake.queries} == {dnsmsg.TYPE_A, dnsmsg.TYPE_AAAA}


def test_addresses_one_query_failing_keeps_the_other():
    def handler(q: Query):
        if q.qtype == dnsmsg.TYPE_AAAA:
            return [(0, response(q, rcode=2))]          # SERVFAIL, the only round
        return [(0, response(q, [rr(b"\xc0\x0c", 1, bytes([192, 0, 2, 9]))]))]
    with FakeDns(handler) as fake:
        assert dns.addresses(conf_for(fake, udp_timeouts=(5.0,)), "x") == [
            IPv6Address("::ffff:192.0.2.9")]


def test_addresses_bad_name():
    with pytest.raises(dnsmsg.BadName):
        dns.addresses(DnsConfig(servers=[]), "a" * 64)


# -- validation ----------------------------------------------------------------
def test_irrelevant_datagrams_are_ignored_then_answer_taken():
    def handler(q: Query):
        good = response(q, PTR_ANSWER)
        return [(0, b"garbage"),
                (0, response(q, PTR_ANSWER, qid=q.qid ^ 1)),
                (0, response(q, PTR_ANSWER, name=dnsmsg.encode_name("other.example"))),
                (0, response(q, PTR_ANSWER, qtype=dnsmsg.TYPE_A)),
                (0, response(q, PTR_ANSWER, qclass=3)),
                (0, response(q, PTR_ANSWER, qdcount=2)),
                (0, good + b"\x00" * (513 - len(good))),       # 513 bytes: too long
                (0.05, good)]
    with FakeDns(handler) as fake:
        assert dns.ptr(conf_for(fake), IPv4Address("192.0.2.1")) == "host.example"
    assert len(fake.queries) == 1


def test_ids_and_ports_are_random_and_fresh_per_attempt():
    with FakeDns(silent) as fake:
        with pytest.raises(dnsmsg.DnsError):
            dns.ptr(conf_for(fake, udp_timeouts=(0.05,) * 8), IPv4Address("192.0.2.1"))
    assert len(fake.queries) == 8
    assert len({q.source[1] for q in fake.queries}) >= 7
    assert len({q.qid for q in fake.queries}) >= 7
    assert all(1025 <= q.source[1] <= 65534 for q in fake.queries)


# -- retries -------------------------------------------------------------------
def test_timeout_schedule_every_server_every_round(fake_clock):
    """Every round asks every server in turn and waits its round's
    timeout for each: a, b after 0.1 s, a after 0.2 s more, b, a after
    0.3 s, b; the lookup fails 0.3 s after the last query (1.2 s in
    all), never earlier."""
    with FakeDns(silent, ip="127.53.1.1") as a, FakeDns(silent, ip="127.53.1.2",
                                                        port=a.port) as b:
        conf = DnsConfig(servers=[(a.ip, 0), (b.ip, 0)], port=a.port, rules=[],
                         udp_timeouts=(0.1, 0.2, 0.3))
        run = Stepped(fake_clock)
        start = fake_clock.now
        dns.lookup_ptr(run.reactor, conf, IPv4Address("192.0.2.1"), run.done)
        asked = []                              # (when, which server)
        for round_timeout in (0.1, 0.2, 0.3):
            for fake in (a, b):
                if asked:
                    run.wait(asked[-1][2])          # the previous attempt's timeout
                run.turn_until(lambda: len(a.queries) + len(b.queries) > len(asked))
                assert len(a.queries) + len(b.queries) == len(asked) + 1
                asked.append((round(fake_clock.now - start, 6), fake.ip, round_timeout))
                assert len(fake.queries) == sum(1 for _, ip, _ in asked if ip == fake.ip)
        run.wait(0.3)
        run.turn_until(lambda: run.results)
        run.close()
    assert [(when, ip) for when, ip, _ in asked] == [
        (0.0, a.ip), (0.1, b.ip), (0.2, a.ip), (0.4, b.ip), (0.6, a.ip), (0.9, b.ip)]
    assert round(fake_clock.now - start, 6) == 1.2
    [(name, error)] = run.results
    assert name is None
    assert errtext(error) == "timed out" and error.errno == errno.ETIMEDOUT
    assert len(a.queries) == len(b.queries) == 3


def test_next_server_answers(fake_clock):
    """a is silent: b is asked after a's 0.2 s and answers."""
    with FakeDns(silent, ip="127.53.1.1") as a:
        with FakeDns(ptr_server, ip="127.53.1.2", port=a.port) as b:
            conf = DnsConfig(servers=[(a.ip, 0), (b.ip, 0)], port=a.port, rules=[], **FAST)
            run = Stepped(fake_clock)
            dns.lookup_ptr(run.reactor, conf, IPv4Address("192.0.2.1"), run.done)
            run.turn_until(lambda: a.queries)
            run.wait(0.2)
            assert not b.queries
            run.turn_until(lambda: run.results)
            run.close()
    assert run.results == [("host.example", None)]
    assert len(a.queries) == len(b.queries) == 1


def servfail(q: Query):
    return [(0, response(q, rcode=2))]


def test_servfail_moves_on_at_once_except_in_the_patient_round(fake_clock):
    with FakeDns(servfail, ip="127.53.1.1") as a:
        seen: List[Query] = []

        def late(q: Query):                         # answers its second query
            seen.append(q)
            return [] if len(seen) == 1 else [(0, response(q, PTR_ANSWER))]
        with FakeDns(late, ip="127.53.1.2", port=a.port) as b:
            conf = DnsConfig(servers=[(a.ip, 0), (b.ip, 0)], port=a.port, rules=[], **FAST)
            run = Stepped(fake_clock)
            dns.lookup_ptr(run.reactor, conf, IPv4Address("192.0.2.1"), run.done)
            # round 1: a fails, b is asked at once (the clock stopped), and is silent
            run.turn_until(lambda: b.queries)
            assert len(a.queries) == 1
            run.wait(0.2)
            # round 2: a fails again, but its full 0.5 s is waited (djbdns quirk)
            run.turn_until(lambda: len(a.queries) == 2)
            run.wait(0.5)
            assert len(b.queries) == 1
            run.turn_until(lambda: run.results)       # then b answers
            run.close()
    assert run.results == [("host.example", None)]
    assert len(a.queries) == len(b.queries) == 2


def test_servfail_everywhere_is_a_temporary_failure():
    with FakeDns(servfail) as fake:
        with pytest.raises(dnsmsg.DnsError) as info:     # the patient round waits 0.5 s
            dns.ptr(conf_for(fake, udp_timeouts=(5.0, 0.5, 5.0)), IPv4Address("192.0.2.1"))
    assert errtext(info.value) == "temporary failure"
    assert len(fake.queries) == 3


def test_connection_refused_moves_on_except_in_the_patient_round():
    """Only the patient round (0.5 s) waits: the other two would take
    5 s each if a refusal waited for their deadline."""
    refused = free_port("127.53.1.250", socket.SOCK_DGRAM)    # nothing there: refused
    conf = DnsConfig(servers=[("127.53.1.250", 0)], port=refused, rules=[],
                     udp_timeouts=(5.0, 0.5, 5.0), tcp_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(dnsmsg.DnsError) as info:
        dns.ptr(conf, IPv4Address("192.0.2.1"))
    elapsed = time.monotonic() - start
    assert errtext(info.value) == "connection refused"
    assert 0.45 <= elapsed < 5.0                     # its wait, and no other


# -- TCP -----------------------------------------------------------------------
def test_truncated_answer_switches_to_tcp():
    many = [rr(b"\xc0\x0c", 1, bytes([10, 0, i // 256, i % 256])) for i in range(100)]
    with FakeDns(lambda q: [(0, response(q, tc=True))],
                 tcp_handler=lambda q: [(0, response(q, many if q.qtype == 1 else []))]
                 ) as fake:
        found = dns.addresses(conf_for(fake), "big.example")
    assert len(found) == 100 and IPv6Address("::ffff:10.0.0.99") in found
    assert sorted(q.tcp for q in fake.queries) == [False, False, True, True]


def test_tcp_tries_each_server_once_then_fails(fake_clock):
    """TC from a: a over TCP (a wrong answer: next), then b over TCP,
    silent: the lookup fails when b's 0.3 s are up, not before."""
    bad_id = lambda q: [(0, response(q, PTR_ANSWER, qid=q.qid ^ 1))]  # noqa: E731
    with FakeDns(lambda q: [(0, response(q, tc=True))], ip="127.53.1.1",
                 tcp_handler=bad_id) as a:
        with FakeDns(silent, ip="127.53.1.2", port=a.port, tcp_handler=silent) as b:
            conf = DnsConfig(servers=[(a.ip, 0), (b.ip, 0)], port=a.port, rules=[], **FAST)
            run = Stepped(fake_clock)
            dns.lookup_ptr(run.reactor, conf, IPv4Address("192.0.2.1"), run.done)
            run.turn_until(lambda: b.queries)
            run.wait(0.3)
            run.turn_until(lambda: run.results)
            run.close()
    [(name, error)] = run.results
    assert name is None and errtext(error) == "timed out"      # b never answered
    assert [q.tcp for q in a.queries] == [False, True]
    assert [q.tcp for q in b.queries] == [True]


@pytest.mark.parametrize("tcp_reply, text", [
    (None, "protocol error"),                                   # closed at once
    (lambda q: [(0, response(q, rcode=2))], "temporary failure"),
    (lambda q: [(0, response(q, tc=True))], "protocol error"),
])
def test_tcp_failures(tcp_reply, text):
    handler = tcp_reply or (lambda q: None)
    with FakeDns(lambda q: [(0, response(q, tc=True))], tcp_handler=handler) as fake:
        with pytest.raises(dnsmsg.DnsError) as info:
            dns.ptr(conf_for(fake), IPv4Address("192.0.2.1"))
    assert errtext(info.value) == text


def test_tcp_connection_refused():
    with FakeDns(lambda q: [(0, response(q, tc=True))]) as fake:
        fake.listener.close()
        with pytest.raises(dnsmsg.DnsError) as info:
            dns.ptr(conf_for(fake), IPv4Address("192.0.2.1"))
    assert errtext(info.value) == "connection refused"


# -- the non-blocking face -----------------------------------------------------
def slow_ptr(q: Query):
    return [(0.5, response(q, PTR_ANSWER))]


def test_fifty_concurrent_lookups_are_all_in_flight_at_once():
    """The fake answers nothing until it holds all 50 queries: they can
    only all be answered if no lookup waits for another's answer."""
    results: List[Optional[str]] = []
    fake: Optional[FakeDns] = None

    def all_at_once(q: Query):
        assert fake is not None
        if len(fake.queries) == 50:
            for each in fake.queries:
                fake.udp.sendto(response(each, PTR_ANSWER), each.source)
        return []

    with FakeDns(all_at_once) as fake:
        reactor = Reactor()
        conf = conf_for(fake, udp_timeouts=(30.0,))
        for i in range(50):
            dns.lookup_ptr(reactor, conf, IPv4Address("192.0.2.%d" % i),
                           lambda name, error: results.append(name))
        while len(results) < 50:
            reactor.run_once()
        reactor.close()
    assert results == ["host.example"] * 50
    assert len(fake.queries) == 50


def test_done_is_never_called_before_lookup_returns():
    calls: List[object] = []
    reactor = Reactor()
    conf = DnsConfig(servers=[], servers_error=dnsmsg.DnsError("x", errno.EISDIR))
    dns.lookup_ptr(reactor, conf, IPv4Address("192.0.2.1"), lambda n, e: calls.append(e))
    dns.lookup_addresses(reactor, conf, "a" * 70, lambda a, e: calls.append(e))
    assert calls == []
    while len(calls) < 2:
        reactor.run_once()
    assert [errtext(e) for e in calls] == ["is a directory", "protocol error"]


def test_cancel_closes_everything_and_never_calls_done():
    before = open_fds()
    calls: List[object] = []
    with FakeDns(slow_ptr) as fake:
        reactor = Reactor()
        conf = conf_for(fake, udp_timeouts=(0.3,))
        handles = [dns.lookup_ptr(reactor, conf, IPv4Address("192.0.2.1"),
                                  lambda n, e: calls.append(n)),
                   dns.lookup_addresses(reactor, conf, "x.example",
                                        lambda a, e: calls.append(a)),
                   dns.lookup_host(reactor, conf, IPv4Address("192.0.2.1"), True,
                                   lambda h, p: calls.append(h))]
        reactor.run_once(0.1)
        while len(fake.queries) < 4:
            reactor.run_once(0.05)
        for handle in handles:
            handle.cancel()
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            reactor.run_once(0.05)
        assert not reactor.pending()
        reactor.close()
    assert calls == []
    assert open_fds() <= before


def test_blocking_calls_leave_no_descriptors():
    with FakeDns(ptr_server) as fake:
        dns.ptr(conf_for(fake), IPv4Address("192.0.2.1"))
        before = open_fds()
        for _ in range(20):
            dns.ptr(conf_for(fake), IPv4Address("192.0.2.1"))
        assert open_fds() == before


# -- paranoid check ------------------------------------------------------------
def forward_of(address: str):
    def handler(q: Query):
        if q.qtype == dnsmsg.TYPE_PTR:
            return [(0, response(q, PTR_ANSWER))]
        ip = ip_address(address)
        if (q.qtype == dnsmsg.TYPE_A) != (ip.version == 4):
            return [(0, response(q))]
        return [(0, response(q, [rr(b"\xc0\x0c", q.qtype, ip.packed)]))]
    return handler


def host(fake: FakeDns, ip, paranoid: bool, **kw):
    box: list = []
    reactor = Reactor()
    dns.lookup_host(reactor, conf_for(fake, **kw), ip, paranoid,
                    lambda name, bad: box.append((name, bad)))
    while not box:
        reactor.run_once()
    reactor.close()
    return box[0]


@pytest.mark.parametrize("forward, client, paranoid, result", [
    ("192.0.2.1", IPv4Address("192.0.2.1"), True, ("host.example", None)),
    ("192.0.2.1", IPv6Address("::ffff:192.0.2.1"), True, ("host.example", None)),
    ("192.0.2.2", IPv4Address("192.0.2.1"), True, (None, "host.example")),
    ("192.0.2.2", IPv4Address("192.0.2.1"), False, ("host.example", None)),
    ("2001:db8::1", IPv6Address("2001:db8::1"), True, ("host.example", None)),
    ("2001:db8::1", IPv6Address("2001:db8::2"), True, (None, "host.example")),
])
def test_lookup_host(forward, client, paranoid, result):
    with FakeDns(forward_of(forward)) as fake:
        assert host(fake, client, paranoid) == result


def test_lookup_host_forward_failure_is_paranoid(fake_clock):
    def handler(q: Query):
        return [(0, response(q, PTR_ANSWER))] if q.qtype == dnsmsg.TYPE_PTR else []
    with FakeDns(handler) as fake:
        run = Stepped(fake_clock)
        dns.lookup_host(run.reactor, conf_for(fake, udp_timeouts=(0.1,)),
                        IPv4Address("192.0.2.1"), True, run.done)
        # the PTR answered (the clock stopped), the forward queries asked...
        run.turn_until(lambda: len(fake.queries) == 3)
        run.wait(0.1)                                   # ...and timed out
        run.turn_until(lambda: run.results)
        run.close()
    assert run.results == [(None, "host.example")]
    with FakeDns(lambda q: [(0, response(q, rcode=3))]) as fake:
        assert host(fake, IPv4Address("192.0.2.1"), True) == (None, None)


# -- qualify -------------------------------------------------------------------
def test_qualify_literals_and_any():
    conf = DnsConfig(servers=[], rules=["*.:"])
    assert dns.qualify(conf, "") == [IPv6Address("::")]
    assert dns.qualify(conf, "0") == [IPv6Address("::")]
    assert dns.qualify(conf, "127.0.0.1.") == [IPv6Address("::ffff:127.0.0.1")]
    assert dns.qualify(conf, "[10.0.0.1]") == [IPv6Address("::ffff:10.0.0.1")]
    assert dns.qualify(conf, "127.1") == []
    with pytest.raises(dnsmsg.DnsError):
        dns.qualify(conf, "10.0.0.1.nip.io")


def test_qualify_search_candidates():
    def handler(q: Query):
        if q.qtype == dnsmsg.TYPE_A and q.name == dnsmsg.encode_name("www.b.example"):
            return [(0, response(q, [rr(b"\xc0\x0c", 1, bytes([192, 0, 2, 80]))]))]
        return [(0, response(q, rcode=3))]
    with FakeDns(handler) as fake:
        conf = conf_for(fake, rules=["?:+.a.example+.b.example", "*.:"])
        assert dns.qualify(conf, "www") == [IPv6Address("::ffff:192.0.2.80")]
        assert dns.qualify(conf, "nothing") == []
        conf.rules = ["=me:www+.a.example+.b.example"]
        assert dns.qualify(conf, "me") == [IPv6Address("::ffff:192.0.2.80")]
    names = [dnsmsg.render_name(q.name) for q in fake.queries if q.qtype == 1]
    assert names[:2] == ["www.a.example", "www.b.example"]       # never bare "www"


def test_qualify_failures():
    with FakeDns(silent) as fake:
        conf = conf_for(fake, udp_timeouts=(0.05,))
        assert dns.qualify(conf, "down.example") == []           # as IndiMail
        with pytest.raises(dnsmsg.DnsError) as info:
            dns.qualify(conf, "down.example", strict=True)
        assert errtext(info.value) == "timed out"
        with pytest.raises(dnsmsg.BadName):
            dns.qualify(conf, "x" * 64)
        conf.rules_error = dnsmsg.DnsError("unreadable", errno.EACCES)
        with pytest.raises(dnsmsg.DnsError):
            dns.qualify(conf, "127.0.0.1")
