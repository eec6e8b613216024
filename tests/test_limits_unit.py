"""The limits of issue 19 as pure logic: the policy from the
environment and from rules (:mod:`ucspi.policy`), and admission's rules
and tables (:mod:`ucspi.server.admission`) with a fake clock and a fake
load average.  No server, no sockets."""

from __future__ import annotations

from typing import List

import pytest

from ucspi.errors import UsageError
from ucspi.policy import DEFAULT_WINDOW, Policy, from_environ
from ucspi.server.admission import Admission, RateTable, Refusal
from ucspi.server.limits import Descriptors, Limit



class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(policy: Policy, clock: Clock, load: float = 0.0) -> Admission:
    return Admission(Limit(10**6), Descriptors(1, available=10**6), policy, clock,
                     lambda: load)


# -- the policy ----------------------------------------------------------------------------
def test_from_environ_reads_every_variable() -> None:
    p = from_environ({"MAXCONIP": "3", "MAXCONNIP": "0", "MAXCONNC": "10", "MAXLOAD": "312",
                      "MAXCONNRATE": "5", "CONNRATEWINDOW": "30", "DIEMSG": "421 busy"}, 20)
    assert (p.max_per_host, p.maxconip, p.maxconnip, p.maxconnc, p.maxload, p.rate,
            p.window, p.diemsg) == (20, 3, 0, 10, 312, 5, 30, b"421 busy")
    empty = from_environ({"MAXCONNIP": "", "CONNRATEWINDOW": ""}, 0)
    assert empty.maxconnip is None and empty.window == DEFAULT_WINDOW
    assert not from_environ({}, 0).per_address()


@pytest.mark.parametrize("name, value, wants", [
    ("MAXCONNIP", "x", "MAXCONNIP wants a number from 0 to 2147483647, not 'x'"),
    ("MAXCONIP", "-1", "MAXCONIP wants a number from 0 to 2147483647, not '-1'"),
    ("MAXCONNC", "99999999999999999999", "MAXCONNC wants a number from 0 to 2147483647"),
    ("CONNRATEWINDOW", "0", "CONNRATEWINDOW wants a number from 1 to 2147483647, not '0'"),
    ("MAXLOAD", "1.5", "MAXLOAD wants a number from 0 to 2147483647, not '1.5'"),
    ("MAXCONNRATE", " 5", "MAXCONNRATE wants a number"),
])
def test_bad_values_in_the_environment_are_usage_errors(name: str, value: str,
                                                          wants: str) -> None:
    with pytest.raises(UsageError) as info:
        from_environ({name: value}, 20)
    assert str(info.value).startswith(wants)


def test_a_rule_overrides_and_a_bad_value_is_one_warning() -> None:
    base = from_environ({"MAXCONNIP": "2", "MAXCONNRATE": "5", "DIEMSG": "go away"}, 20)
    warnings: List[str] = []
    mine = base.with_rule([(b"MAXCONNIP", b"9"), (b"RELAYCLIENT", b""),
                           (b"MAXCONNRATE", b"many"), (b"DIEMSG", None),
                           (b"MAXCONNC", b"4")], 7, warnings.append)
    assert (mine.maxconnip, mine.rate, mine.diemsg, mine.maxconnc, mine.max_per_host) == \
        (9, None, None, 4, 7)
    assert warnings == ["MAXCONNRATE wants a number from 0 to 2147483647, not 'many': "
                        "that limit is not applied to this client"]
    assert (base.maxconnip, base.rate, base.diemsg) == (2, 5, b"go away")   # untouched
    assert base.with_rule([(b"OTHER", b"1")], 20, warnings.append) is base


# -- admission's rules ------------------------------------------------------------------------
def test_per_address_limits_and_what_zero_means() -> None:
    clock = Clock()
    adm = admission(Policy(0, maxconip=2), clock)
    for _ in range(2):
        assert adm.accept("10.0.0.1", final=True) is None
    refusal = adm.accept("10.0.0.1", final=True)
    assert refusal is not None and (refusal.what, refusal.limit, refusal.count) == \
        ("MAXCONIP", 2, 2)
    assert refusal.suffix() == b" MAXCONIP:2"
    assert admission(Policy(0, maxconip=0), clock).accept("a", True) is None   # none
    zero = admission(Policy(0, maxconnip=0), clock).accept("a", True)          # refuse all
    assert zero is not None and zero.suffix() == b" MAXCONNIP:0"
    both = admission(Policy(5, maxconip=4, maxconnip=1), clock)
    assert both.accept("b", True) is None
    refusal = both.accept("b", True)
    assert refusal is not None and refusal.what == "MAXCONNIP"   # all that are set apply


@pytest.mark.parametrize("first, second, same", [
    ("192.0.2.1", "192.0.2.200", True), ("192.0.2.1", "192.0.3.1", False),
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),
    ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
])
def test_per_network_limit(first: str, second: str, same: bool) -> None:
    adm = admission(Policy(0, maxconnc=1), Clock())
    assert adm.accept(first, True) is None
    refusal = adm.accept(second, True)
    assert (refusal is not None) == same
    if refusal is not None:
        assert refusal.suffix() == b" MAXCONNC:1"
    adm.ended(first, slot=True)                # the network count follows the ends
    assert adm.accept(first, True) is None


def test_load_limit_reads_the_load_at_most_once_a_second() -> None:
    clock = Clock()
    loads = [3.12, 0.5]
    adm = Admission(Limit(10), Descriptors(1, available=100), Policy(0, maxload=300), clock,
                    lambda: loads[0])
    refusal = adm.accept("a", True)
    assert refusal is not None and refusal.suffix() == b" LOAD:312"
    loads[0] = 0.5
    assert adm.accept("a", True) is not None        # the reading is reused for a second
    clock.now += 1.0
    assert adm.accept("a", True) is None
    unix = admission(Policy(1, maxload=100, maxconnip=0), clock, load=2.0)
    refused = unix.accept("", True, unix=True)     # UNIX clients: MAXLOAD only...
    assert refused is not None and refused.what == "LOAD"
    calm = admission(Policy(1, maxconnip=0), clock)
    assert calm.accept("", True, unix=True) is None     # ...and -C over all of them
    refused = calm.accept("", True, unix=True)
    assert refused is not None and refused.what == "MAXPERIP"


def test_rate_is_a_sliding_window_of_admitted_connections() -> None:
    clock = Clock()
    adm = admission(Policy(0, rate=3, window=60), clock)
    for step in range(3):
        assert adm.accept("a", True) is None
        clock.now += 10
    refusal = adm.accept("a", True)
    assert refusal is not None and refusal.suffix() == b" MAXCONNRATE:3/60"
    clock.now += 31          # the first admission (at 0) has left the window of 60
    assert adm.accept("a", True) is None
    assert adm.accept("a", True) is not None
    assert adm.accept("b", True) is None            # per address
    # refusals do not count: a client that keeps trying is not shut out longer
    for _ in range(100):
        assert adm.accept("a", True) is not None
    clock.now += 60
    assert adm.accept("a", True) is None


def test_rate_counts_at_the_second_moment_only_when_admitted() -> None:
    clock = Clock()
    adm = admission(Policy(0, rate=1), clock)
    assert adm.accept("a", final=False) is None        # rules to come: not counted yet
    assert adm.rates.count("a", 60, clock()) == 0
    refused = adm.identified("a", Policy(0, maxconnip=0))
    assert refused is not None and adm.rates.count("a", 60, clock()) == 0
    assert adm.identified("a", Policy(0, rate=1)) is None
    assert adm.rates.count("a", 60, clock()) == 1


def test_rate_table_is_bounded_by_its_window_and_its_cap() -> None:
    """A flood from 50,000 rotating addresses: the table never holds more
    than its cap, and it empties once the window has passed."""
    clock = Clock()
    table = RateTable(cap=1000)
    for n in range(50_000):
        table.admitted(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 5, 60, clock())
        clock.now += 0.0001
        assert len(table.entries) <= 1000
    assert table.count("10.0.195.79", 60, clock()) == 1       # the newest are kept
    clock.now += 61
    table.expire(clock())
    assert not table.entries and not table.windows
    table.admitted("a", 2, 60, clock())
    table.admitted("a", 2, 60, clock())
    table.admitted("a", 2, 60, clock())
    assert len(table.entries["a"]) - 1 == 2        # only the times that can matter


def test_counters_after_every_end() -> None:
    clock = Clock()
    adm = admission(Policy(0, maxconnc=10), clock)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert adm.accept(ip, True) is None
    adm.set_up()
    adm.program_ended("192.0.2.1")            # a program's end
    adm.ended("192.0.2.2", slot=True)         # denied by a rule, dropped, or a step raised
    adm.moved("192.0.2.3", "198.51.100.7")    # a PROXY header
    adm.ended("198.51.100.7", slot=True)
    assert (adm.count, adm.hosts, adm.networks) == (0, {}, {})
    assert adm.descriptors.used == 0


def test_refusal_suffixes() -> None:
    assert Refusal("MAXCONNIP", 2, 2).suffix() == b" MAXCONNIP:2"
    assert Refusal("MAXCONNC", 10, 10).suffix() == b" MAXCONNC:10"
    assert Refusal("LOAD", 300, 312).suffix() == b" LOAD:312"
    assert Refusal("MAXCONNRATE", 5, 5, 60).suffix() == b" MAXCONNRATE:5/60"
