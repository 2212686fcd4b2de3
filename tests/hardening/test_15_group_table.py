"""Hostile writes into the message-group table (region kind 3, csrc/group.h): a bad table size
is refused at open; garbage entries, a dead holder's lock stamp or a forced rebuild never crash,
hang or lose a message; the groups go on delivering."""
import os
import struct

import pytest

import shmq

REGIONS = 896 + 32 * 64
GROUP_REGION = 3


def _group_region(path):
    with open(path, "rb") as f:
        f.seek(REGIONS)
        raw = f.read(32 * 8)
    for i in range(8):
        kind, _pad, off, size, _p = struct.unpack_from("<IIQQQ", raw, 32 * i)
        if kind == GROUP_REGION:
            return off, size
    raise AssertionError("no group region")


def _pwrite(path, off, data):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


@pytest.fixture
def gq(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=30)
    yield q
    q.close()
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


@pytest.mark.parametrize("slots", [0, 1, 3, 4097, 1 << 30, 0xFFFFFFFF])
def test_bad_table_size_is_refused_at_open(gq, slots):
    off, _size = _group_region(gq.path)
    _pwrite(gq.path, off, struct.pack("<I", slots))
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Queue(gq.name)


def _drain(q):
    out = []
    while True:
        try:
            m = q.receive(timeout=0.3)
        except shmq.Empty:
            return out
        out.append(m.body)
        m.ack()


@pytest.mark.parametrize("garbage", ["random", "all_used", "counts"])
def test_garbage_entries_never_crash_or_lose(gq, garbage):
    off, size = _group_region(gq.path)
    for s in range(5):
        for g in range(4):
            gq.send(f"g{g} {s}", group=f"g{g}")
    first = [gq.receive(timeout=1) for _ in range(4)]   # the four heads are out
    if garbage == "random":
        _pwrite(gq.path, off + 128, os.urandom(size - 128))
    elif garbage == "all_used":
        ent = struct.pack("<QQQQIIQIIQ", 1, 2, 3, 4, 0xFFFFFFFF, 0xFFFFFFFF, 5, 1, 7, 0)
        _pwrite(gq.path, off + 128, ent * ((size - 128) // 64))
        _pwrite(gq.path, off + 8, struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF))
    else:
        _pwrite(gq.path, off + 8, struct.pack("<III", 0xFFFFFFFF, 0, 0))
    for m in first:
        m.ack()
    gq.send("g9 0", group="g9")
    gq.send("plain 0")
    got = _drain(gq)
    expect = {f"g{g} {s}" for g in range(4) for s in range(1, 5)} | {"g9 0", "plain 0"}
    assert set(got) == expect, sorted(expect - set(got))   # nothing lost, nothing invented
    assert len(got) == len(set(got))


def test_dead_lock_stamp_and_dirty_flag_are_taken_over(gq):
    off, _size = _group_region(gq.path)
    for s in range(3):
        gq.send(f"g0 {s}", group="g0")
    # a lock stamped with an owner id that no live participant has (slot 200, generation 7)
    _pwrite(gq.path, off + 4, struct.pack("<I", ((200 + 1) << 21) | 7))
    _pwrite(gq.path, off + 16, struct.pack("<I", 1))     # "rebuild first"
    got = []
    for _ in range(3):
        m = gq.receive(timeout=2)
        got.append(m.body)
        m.ack()
    assert got == ["g0 0", "g0 1", "g0 2"]
    gq.send("g0 3", group="g0")
    assert _drain(gq) == ["g0 3"]
