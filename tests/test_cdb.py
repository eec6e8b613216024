"""ucspi.cdb: hash, writer (byte-identical to tinycdb), reader, errors."""

from __future__ import annotations

import errno
import os
import random
import struct
import time
from typing import List, Tuple

import pytest

from tests.fix_rules import dump_text, tinycdb_dump, tinycdb_make
from ucspi.cdb import make as cdbmake
from ucspi.cdb.make import CdbWriter, write_cdb
from ucspi.cdb.read import CdbError, CdbReader, cdb_hash, prefix_hashes
from ucspi.errors import UcspiError, errtext
from ucspi.rules.cache import CdbSnapshot

Records = List[Tuple[bytes, bytes]]


def random_records(rng: random.Random, n: int) -> Records:
    out = []
    for _ in range(n):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
        val = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        out.append((key, val))
    # some duplicates, kept in order
    out += [(out[i][0], b"dup%d" % i) for i in range(0, n, 7)]
    return out


RECORD_SETS = {
    "empty": [],
    "one": [(b"1.2.3.4", b"D\0")],
    "empty-key": [(b"", b""), (b"", b"x")],
    "duplicates": [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"a", b"4")],
    "binary": [(b"\0\xff\n->", b"\0\0\n"), (b"k", b"\xff" * 300)],
    "random": random_records(random.Random(7), 1500),
}


def make(tmp_path, records: Records, name: str = "x.cdb") -> str:
    path = str(tmp_path / name)
    write_cdb(path, records)
    return path


# ------------------------------------------------------------------ hash

def test_hash_known_answers():
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"a") == 177604
    assert cdb_hash(b"1.2.3.4") == 0x3C4CFACF
    assert cdb_hash(b"joe@127.0.0.1") == 0x01AC390E
    assert cdb_hash(bytes(range(256))) == 0xE63A4D05


def test_prefix_hashes():
    data = b"_0000000h000000o0"
    ph = prefix_hashes(data)
    assert ph == [cdb_hash(data[:n]) for n in range(len(data) + 1)]
    assert prefix_hashes(b"abc", cdb_hash(b"_")) [3] == cdb_hash(b"_abc")


def test_hash_matches_tinycdb_slots(tmp_path, tinycdb):
    records = RECORD_SETS["random"]
    data = tinycdb_make(str(tmp_path / "t.cdb"), records)
    by_pos = {}
    pos = 2048
    for key, val in records:
        by_pos[pos] = key
        pos += 8 + len(key) + len(val)
    seen = 0
    for t in range(256):
        tpos, slots = struct.unpack_from("<II", data, 8 * t)
        for s in range(slots):
            h, rpos = struct.unpack_from("<II", data, tpos + 8 * s)
            if rpos:
                assert h == cdb_hash(by_pos[rpos])
                assert h & 255 == t
                seen += 1
    assert seen == len(records)


# ------------------------------------------------------------------ writer

@pytest.mark.parametrize("name", sorted(RECORD_SETS))
def test_writer_byte_identical_to_tinycdb(tmp_path, tinycdb, name):
    records = RECORD_SETS[name]
    ours = make(tmp_path, records)
    with open(ours, "rb") as f:
        mine = f.read()
    assert mine == tinycdb_make(str(tmp_path / "t.cdb"), records)
    if not records:
        assert len(mine) == 2048


@pytest.mark.parametrize("name", sorted(RECORD_SETS))
def test_dump_matches_tinycdb(tmp_path, tinycdb, name):
    records = RECORD_SETS[name]
    path = make(tmp_path, records)
    assert tinycdb_dump(path) == dump_text(records)
    with CdbReader(path) as db:
        assert list(db.items()) == records
        assert db.verify() == len(records)


def test_writer_refuses_to_pass_4gib(tmp_path, monkeypatch):
    monkeypatch.setattr(cdbmake, "MAX_SIZE", 2048 + 100)
    fd = os.open(str(tmp_path / "big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        w = CdbWriter(fd)
        w.add(b"k", b"v" * 50)
        with pytest.raises(CdbError) as info:
            w.add(b"k", b"v" * 50)
        assert info.value.errno == errno.EFBIG
        assert errtext(info.value) == "file too big"
        assert isinstance(info.value, UcspiError)
    finally:
        os.close(fd)


def test_write_cdb_is_atomic_and_cleans_up(tmp_path):
    path = make(tmp_path, [(b"old", b"1")])

    def broken():
        yield (b"new", b"2")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_cdb(path, broken())
    with CdbReader(path) as db:
        assert db.get(b"old") == b"1"
    assert sorted(os.listdir(str(tmp_path))) == ["x.cdb"]
    write_cdb(path, [(b"new", b"2")])
    with CdbReader(path) as db:
        assert db.get(b"old") is None and db.get(b"new") == b"2"


@pytest.mark.parametrize("keep_tmp", [False, True])
def test_write_atomically_failing_fill(tmp_path, keep_tmp):
    path, tmp = str(tmp_path / "f"), str(tmp_path / "f.tmp")
    with open(path, "wb") as f:
        f.write(b"old")

    def fill(fd: int) -> None:
        os.write(fd, b"partial")
        raise KeyError("boom")          # passes through unchanged

    with pytest.raises(KeyError):
        cdbmake.write_atomically(path, tmp, fill, keep_tmp=keep_tmp)
    with open(path, "rb") as f:
        assert f.read() == b"old"
    assert os.path.exists(tmp) == keep_tmp


def test_write_atomically_steps(tmp_path, monkeypatch):
    """Each step's OSError goes through ``failed`` with the step's name."""
    seen = []

    def failed(step: str, error: OSError) -> BaseException:
        seen.append((step, error.errno))
        return RuntimeError(step)

    def fill(fd: int) -> None:
        os.write(fd, b"new")

    with pytest.raises(RuntimeError):
        cdbmake.write_atomically(str(tmp_path / "f"), str(tmp_path / "no" / "f.tmp"),
                                 fill, failed=failed)
    os.mkdir(str(tmp_path / "dir"))
    os.mkdir(str(tmp_path / "dir" / "full"))
    with pytest.raises(RuntimeError):
        cdbmake.write_atomically(str(tmp_path / "dir"), str(tmp_path / "f.tmp"), fill,
                                 keep_tmp=True, failed=failed)
    assert os.path.exists(str(tmp_path / "f.tmp"))

    def no_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "fsync")

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(RuntimeError):
        cdbmake.write_atomically(str(tmp_path / "g"), str(tmp_path / "g.tmp"), fill,
                                 failed=failed)
    assert not os.path.exists(str(tmp_path / "g.tmp"))
    assert [step for step, _ in seen] == [cdbmake.CREATE, cdbmake.MOVE, cdbmake.WRITE]
    assert seen[0][1] == errno.ENOENT and seen[2][1] == errno.EIO
    with pytest.raises(OSError) as info:            # no ``failed``: the OSError
        cdbmake.write_atomically(str(tmp_path / "g"), str(tmp_path / "g.tmp"), fill)
    assert info.value.errno == errno.EIO


# ------------------------------------------------------------------ reader

def test_get_first_and_all(tmp_path):
    path = make(tmp_path, RECORD_SETS["duplicates"])
    with CdbReader(path) as db:
        assert db.get(b"a") == b"1"
        assert db.get_all(b"a") == [b"1", b"3", b"4"]
        assert db.get(b"b", cdb_hash(b"b")) == b"2"
        assert db.get(b"c") is None and db.get_all(b"c") == []
        assert db.first_of([(b"c", cdb_hash(b"c")), (b"b", cdb_hash(b"b"))]) \
            == (b"b", b"2")
    db.close()  # twice is fine


def test_random_lookups_agree_with_model(tmp_path):
    records = RECORD_SETS["random"]
    path = make(tmp_path, records)
    model = {}
    for k, v in records:
        model.setdefault(k, []).append(v)
    with CdbReader(path) as db:
        for k, vs in model.items():
            assert db.get(k) == vs[0]
            assert db.get_all(k) == vs
        rng = random.Random(3)
        for _ in range(300):
            k = bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
            assert db.get(k) == (model[k][0] if k in model else None)


def test_from_bytes_matches_file(tmp_path):
    path = make(tmp_path, RECORD_SETS["random"])
    with open(path, "rb") as f:
        mem = CdbReader.from_bytes(f.read())
    for k, _ in RECORD_SETS["random"][:100]:
        with CdbReader(path) as db:
            assert mem.get_all(k) == db.get_all(k)


def test_fstat_and_contents(tmp_path):
    path = make(tmp_path, RECORD_SETS["duplicates"])
    with open(path, "rb") as f:
        data = f.read()
    with CdbReader(path) as db:
        assert db.contents() == data
        assert db.fstat().st_ino == os.stat(path).st_ino
        os.rename(path, path + ".old")
        make(tmp_path, [])                  # the path names a new file now
        assert db.fstat().st_ino == os.stat(path + ".old").st_ino
    with pytest.raises(CdbError) as info:
        db.fstat()                          # closed
    assert info.value.errno == errno.EBADF
    mem = CdbReader.from_bytes(data)
    assert mem.contents() == data
    with pytest.raises(CdbError):
        mem.fstat()


def test_missing_file_is_plain_oserror(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CdbReader(str(tmp_path / "nope.cdb"))
    assert not isinstance(info.value, CdbError)
    assert errtext(info.value) == "file does not exist"


@pytest.mark.parametrize("content,err,text", [
    (b"", errno.EINVAL, "invalid argument"),
    (b"x", errno.EPROTO, "protocol error"),
    (b"\0" * 2047, errno.EPROTO, "protocol error"),
])
def test_empty_and_short_files(tmp_path, content, err, text):
    path = tmp_path / "bad.cdb"
    path.write_bytes(content)
    with pytest.raises(CdbError) as info:
        CdbReader(str(path))
    assert info.value.errno == err and errtext(info.value) == text


def test_directory_and_fifo(tmp_path):
    with pytest.raises(CdbError) as info:
        CdbReader(str(tmp_path))
    assert errtext(info.value) == "is a directory"
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(CdbError) as info:
        CdbReader(fifo)  # must not block waiting for a writer
    assert errtext(info.value) == "invalid argument"
    assert time.monotonic() - started < 5


def _crafted(tables: bytes, header_entry: Tuple[int, int],
             records: bytes) -> bytes:
    header = struct.pack("<II", *header_entry) * 256
    return header + records + tables


def test_full_slot_table_does_not_hang():
    record = struct.pack("<II", 3, 1) + b"abc" + b"v"
    tpos = 2048 + len(record)
    # four slots, all used, none matching any key we ask for
    slots = b"".join(struct.pack("<II", 0xFFFFFF00 + i, 2048)
                     for i in range(4))
    db = CdbReader.from_bytes(_crafted(slots, (tpos, 4), record))
    started = time.monotonic()
    for key in (b"x", b"abcd", b"", b"1.2.3.4"):
        assert db.get(key) is None
        assert db.get_all(key) == []
    assert time.monotonic() - started < 10     # microseconds: a loop for ever otherwise


@pytest.mark.parametrize("entry,slots_data", [
    ((2048, 0x7FFFFFFF), b""),            # table far beyond the end
    ((100, 1), b""),                      # table inside the header
    ((2048, 1), struct.pack("<II", 0, 9999999)),  # record beyond the end
    ((2048, 1), struct.pack("<II", 0, 100)),      # record in the header
])
def test_bad_positions_raise(entry, slots_data):
    data = struct.pack("<II", *entry) * 256 + slots_data
    db = CdbReader.from_bytes(data)
    for key in (b"", b"a", b"1.2.3.4", b"zz"):
        try:
            db.get(key)
        except CdbError as e:
            assert e.errno == errno.EPROTO
        else:  # a key whose hash misses the bad slot is fine
            pass
    with pytest.raises(CdbError):
        db.verify()


# ------------------------------------------------------------------ fuzz

def _exercise(db: CdbReader, keys: List[bytes]) -> None:
    for k in keys:
        db.get(k)
        db.get_all(k)
    list(db.items())
    db.verify()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Tuple[bytes, List[bytes]]:
    rng = random.Random(11)
    records = random_records(rng, 120)
    path = str(tmp_path_factory.mktemp("fz") / "s.cdb")
    write_cdb(path, records)
    with open(path, "rb") as f:
        return f.read(), [k for k, _ in records[:40]] + [b"missing"]


def test_fuzz_byte_flips(sample):
    data, keys = sample
    rng = random.Random(1234)
    started = time.monotonic()
    failures = 0
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 9)):
            pos = rng.randrange(len(mutated))
            if rng.random() < 0.5 and pos < 2048:
                pos &= ~3  # hit header numbers hard
            mutated[pos] = rng.randrange(256)
        try:
            _exercise(CdbReader.from_bytes(bytes(mutated)), keys)
        except CdbError as e:
            assert e.errno in (errno.EPROTO, errno.EINVAL)
            failures += 1
    assert failures > 100  # the flips do find corruption
    assert time.monotonic() - started < 60


def test_fuzz_truncations(sample, tmp_path):
    data, keys = sample
    for cut in range(len(data)):
        with pytest.raises(CdbError):
            db = CdbReader.from_bytes(data[:cut])
            for k in keys:
                db.get(k)
            db.verify()
    rng = random.Random(99)
    path = str(tmp_path / "cut.cdb")
    for cut in rng.sample(range(len(data)), 200):  # through real files too
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(CdbError):
            with CdbReader(path) as db:
                for k in keys:
                    db.get(k)
                db.verify()


# ------------------------------------------------------------------ snapshot

def test_snapshot_caches_and_sees_changes(tmp_path):
    path = make(tmp_path, [(b"a", b"1"), (b"a", b"2")])
    snap = CdbSnapshot(path, settle_ns=0)
    table = snap.table()
    assert table == {b"a": b"1"}
    assert snap.table() is table
    write_cdb(path, [(b"b", b"3")])      # replaced: new inode
    assert snap.table() == {b"b": b"3"}
    with open(path, "r+b") as f:          # rewritten in place
        f.write(open(make(tmp_path, [(b"c", b"4")], "y.cdb"), "rb").read())
    os.utime(path, ns=(1, 1))
    assert snap.table() == {b"c": b"4"}


def test_snapshot_refuses_fresh_big_and_corrupt(tmp_path):
    path = make(tmp_path, [(b"a", b"1")])
    assert CdbSnapshot(path).table() is None          # just written
    assert CdbSnapshot(path, max_size=10, settle_ns=0).table() is None
    with open(path, "r+b") as f:
        f.seek(2048)
        f.write(b"\xff\xff\xff\x7f")                   # key length
    assert CdbSnapshot(path, settle_ns=0).table() is None
    with pytest.raises(FileNotFoundError):
        CdbSnapshot(str(tmp_path / "nope"), settle_ns=0).table()
