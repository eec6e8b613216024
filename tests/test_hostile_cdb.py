"""A hostile rules cdb never stalls the loop (issue 7, item 6).

The file below has one hash chain of 900,000 full slots, all with the
hash of the default key ``""``, so a lookup that reaches that key must
visit every slot (about 0.8 s in Python).  The server looks up in the
loop only within a budget of hash slots, and makes a lookup that would
pass it again in a helper child: the client still gets the right
answer, and other clients are not held up meanwhile."""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import List, Tuple

import pytest

from tests.fix_server import OURS, PRINT_ENV, clean_env, wait_until
from ucspi.cdb.format import TooMuchWork, cdb_hash
from ucspi.cdb.read import CdbReader
from ucspi.rules.cache import CdbSnapshot, pack_found, unpack_found
from ucspi.rules.lookup import find
from ucspi.cdb.format import CdbError

SLOTS = 900_000
PAIR = struct.Struct("<II")


def hostile_cdb(path: str, slots: int = SLOTS) -> None:
    """``127.0.0.2`` allows with WHO=fast; ``""`` allows with WHO=slow,
    at the far end of a chain of ``slots`` slots with its hash."""
    records = b""
    positions = {}
    for key, value in ((b"127.0.0.2", b"+WHO=fast\0"), (b"", b"+WHO=slow\0"),
                       (b"decoy", b"D")):
        positions[key] = 2048 + len(records)
        records += PAIR.pack(len(key), len(value)) + key + value
    end = 2048 + len(records)
    header = [(end, 0)] * 256
    tables = b""
    h_fast = cdb_hash(b"127.0.0.2")
    fast = [PAIR.pack(0, 0)] * 2
    fast[(h_fast >> 8) % 2] = PAIR.pack(h_fast, positions[b"127.0.0.2"])
    header[h_fast & 255] = (end, 2)
    tables += b"".join(fast)
    h_default = cdb_hash(b"")
    assert h_default & 255 != h_fast & 255
    start = (h_default >> 8) % slots
    last = (start - 1) % slots           # probed last
    decoy = PAIR.pack(h_default, positions[b"decoy"])
    chain = bytearray(decoy * slots)
    chain[8 * last:8 * last + 8] = PAIR.pack(h_default, positions[b""])
    header[h_default & 255] = (end + len(tables), slots)
    tables += bytes(chain)
    with open(path, "wb") as f:
        f.write(b"".join(PAIR.pack(*pair) for pair in header) + records + tables)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("hostile") / "rules.cdb")
    hostile_cdb(path)
    return path


def test_the_file_is_what_it_claims(hostile) -> None:
    assert os.path.getsize(hostile) > 7_000_000
    assert find(hostile, "127.0.0.2", None, None) == (b"127.0.0.2", b"+WHO=fast\0")
    assert find(hostile, "127.0.0.3", None, None) == (b"", b"+WHO=slow\0")


def test_a_budget_stops_the_long_chain_only(hostile) -> None:
    assert find(hostile, "127.0.0.2", None, None, max_slots=4096) == \
        (b"127.0.0.2", b"+WHO=fast\0")
    with pytest.raises(TooMuchWork):
        find(hostile, "127.0.0.3", None, None, max_slots=4096)
    with CdbReader(hostile) as db:      # the budget ends with its lookup
        assert db.get(b"") == b"+WHO=slow\0"


def test_a_hostile_file_is_never_held_in_memory(hostile) -> None:
    """Its load, in steps, finds the slots that do not match their keys."""
    snapshot = CdbSnapshot(hostile, settle_ns=0)
    assert [snapshot.table() for _ in range(5)] == [None] * 5
    assert snapshot._bad is not None and snapshot._loading is None


def test_a_big_file_is_loaded_in_bounded_steps(tmp_path) -> None:
    from ucspi.cdb.make import write_cdb
    path = str(tmp_path / "big.cdb")
    records = [(b"10.%d.%d" % (i >> 8, i & 255), b"+N=%d\0" % i) for i in range(12000)]
    write_cdb(path, records)
    snapshot = CdbSnapshot(path, settle_ns=0, step=5000)
    calls = 0
    table = None
    while table is None:
        calls += 1
        assert calls < 50
        table = snapshot.table()
    # 12,000 records and 24,000 slots in steps of 5,000: several calls
    assert 5 <= calls <= 9
    assert len(table) == 12000 and table[b"10.0.7"] == b"+N=7\0"
    assert snapshot.table() is table
    assert CdbSnapshot(path, settle_ns=0, step=0).table() == table   # all at once


@pytest.mark.parametrize("outcome", [
    None, (b"", b""), (b"1.2.3.4", b"+A=b\0D"),
    FileNotFoundError(2, "No such file or directory"), CdbError(71, "corrupt cdb: x"),
])
def test_outcomes_travel_from_the_child(outcome) -> None:
    data = pack_found(outcome)
    if isinstance(outcome, BaseException):
        with pytest.raises(type(outcome)) as info:
            unpack_found(data)
        assert info.value.errno == outcome.errno
    else:
        assert unpack_found(data) == outcome
    for cut in range(len(data)):           # a child that died part way
        if cut == 1 and data[:1] == b"N":
            continue
        try:
            got = unpack_found(data[:cut])
        except (OSError, CdbError) as exc:
            assert isinstance(exc, (CdbError, OSError))
        else:
            assert got == unpack_found(data) and cut == len(data)


def test_other_clients_are_not_held_up(servers, hostile) -> None:
    """Clients from 127.0.0.3 one after the other, each a slow lookup;
    meanwhile 150 from 127.0.0.2.  A loop that stalled on the slow
    lookup would hold a fast client for what is left of it: their
    median would be about half a slow lookup.  Both are measured side by
    side, on the same machine under the same load, and compared."""
    server = servers(["-v", "-HRl0", "-C", "0", "-x", hostile], prog=PRINT_ENV,
                     impl=OURS, env=clean_env())
    stop = threading.Event()
    slow: List[Tuple[str, float]] = []

    def slow_clients() -> None:
        while not stop.is_set():
            begin = time.monotonic()
            who = server.env(source="127.0.0.3", timeout=30).get("WHO", "?")
            slow.append((who, time.monotonic() - begin))

    worker = threading.Thread(target=slow_clients)
    worker.start()
    try:
        # the first slow one is through: the next slow lookup is under way
        assert wait_until(lambda: slow, 30), server.log()
        latencies = []
        for _ in range(150):
            begin = time.monotonic()
            env = server.env(source="127.0.0.2")
            latencies.append(time.monotonic() - begin)
            assert env["WHO"] == "fast"
    finally:
        stop.set()
        worker.join(60)
    latencies.sort()
    median = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    slow_times = sorted(took for _, took in slow)
    slow_median = slow_times[len(slow_times) // 2]
    print(f"fast: median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
          f"slow: median {slow_median * 1000:.0f} ms of {len(slow)}")
    # The bound is p99 < 50 ms (13 ms on a quiet machine, a slow
    # lookup 0.8 s): wall-clock bounds fail on a loaded machine, the
    # ratio does not.  A stalled loop gives about 2 here; 4 is the bound.
    assert median * 4 < slow_median, (median, slow_median)
    assert {who for who, _ in slow} == {"slow"}
    assert not [line for line in server.lines() if "warning" in line]
