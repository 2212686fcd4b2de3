"""Hostile topic segments: forged fields of the topic region (csrc/topic.h) are refused at open
with CorruptQueueError, and garbage written under live handles gives clean errors or data, never
a crash, a hang or an access outside the mapping."""
import os
import struct

import pytest

import shmq

from _forge import check_child, read, run_py, write

H_REGIONS = 896 + 32 * 64        # shmq_region_t[8]: kind u32, pad u32, off u64, size u64, pad u64
REGION_TOPIC = 4
# shmq_topic_hdr_t field offsets (the _Static_asserts in topic.h pin the blocks)
T_MAGIC, T_MAX_SUBS, T_N_ENTRIES, T_DATA_SIZE, T_MAX_MESSAGE, T_ENTS_OFF = 0, 12, 16, 24, 40, 48
T_HEAD, T_DATA_HEAD, T_GATE, T_TAIL = 136, 144, 168, 256
ENT = 32                          # seq u64, pos u64, ts u64, size u32, hdr_size u16, kind u8, flags u8
SUB = 256                         # state, flags, gen, name_len u32; created u64; name; cursor at 128


def region_off(path):
    for i in range(8):
        kind, _pad, off, size = read(path, H_REGIONS + 32 * i, "<IIQQ")
        if kind == REGION_TOPIC:
            return off, size
    raise AssertionError("no topic region")


@pytest.fixture
def topic(qname):
    t = shmq.Topic(qname, create=True, capacity="256KiB")
    t.subscribe("named", start="earliest").close()
    t.publish_many([b"m%d" % i for i in range(20)] + [b"x" * 3000])
    yield t
    t.close()
    try:
        shmq.unlink(qname)
    except shmq.QueueNotFound:
        pass


@pytest.mark.parametrize("field,fmt,value", [
    (T_MAGIC, "<Q", 0x1234), (T_N_ENTRIES, "<I", 100), (T_N_ENTRIES, "<I", 1 << 30),
    (T_MAX_SUBS, "<I", 65), (T_DATA_SIZE, "<Q", 1 << 50), (T_DATA_SIZE, "<Q", 4097),
    (T_MAX_MESSAGE, "<Q", 1 << 40), (T_ENTS_OFF, "<Q", 1 << 20), (T_HEAD, "<Q", 0), (T_TAIL, "<Q", 1 << 40),
])
def test_forged_region_header_is_refused_at_open(topic, field, fmt, value):
    base, _ = region_off(topic.path)
    write(topic.path, base + field, fmt, value)
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Topic(topic.name)


def test_region_table_pointing_outside_the_file(topic):
    for i in range(8):
        kind, _pad, off, size = read(topic.path, H_REGIONS + 32 * i, "<IIQQ")
        if kind == REGION_TOPIC:
            write(topic.path, H_REGIONS + 32 * i + 16, "<Q", size * 1000)
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Topic(topic.name)


@pytest.mark.parametrize("what", ["size", "pos", "seq", "hdr_size"])
def test_forged_entry_under_a_live_reader(topic, what):
    base, _ = region_off(topic.path)
    ents = base + read(topic.path, base + T_ENTS_OFF, "<Q")[0]
    e = ents + ENT * 3                        # message 3
    if what == "size":
        write(topic.path, e + 24, "<I", 0xFFFFFFFF)
    elif what == "pos":
        data_size = read(topic.path, base + T_DATA_SIZE, "<Q")[0]
        write(topic.path, e + 8, "<Q", (1 << 40) * data_size - 1)   # its bytes would run past the ring
    elif what == "seq":
        write(topic.path, e, "<Q", 999)
    else:
        write(topic.path, e + 28, "<H", 0xFFFF)
    sub = topic.subscribe("named")
    got = []
    with pytest.raises(shmq.CorruptQueueError):
        for _ in range(100):
            got += [m.seq for m in sub.get_many(64, timeout=0.05)]
    assert got == [1, 2]                       # what came before the garbage was delivered
    topic.publish(b"still publishes")


def test_forged_cursors_and_names(topic):
    base, _ = region_off(topic.path)
    write(topic.path, base + T_TAIL, "<Q", 10 ** 9)          # tail past head
    write(topic.path, base + T_GATE, "<Q", 0)                # a gate below every cursor
    n = read(topic.path, base + T_N_ENTRIES, "<I")[0]
    subs = base + read(topic.path, base + T_ENTS_OFF, "<Q")[0] + ENT * n
    write(topic.path, subs + 12, "<I", 5000)                 # name_len beyond the name field
    write(topic.path, subs + 128, "<Q", 2 ** 64 - 5)         # cursor near the top
    infos = topic.subscriptions()
    assert len(infos) == 1 and len(infos[0].name) <= 100
    topic.publish(b"after forgery", timeout=2)               # no hang, no crash
    topic.stats()
    s = topic.subscribe()
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.05)


def test_random_garbage_in_the_region_never_crashes(topic):
    base, size = region_off(topic.path)
    code = f"""
        import os, random, shmq
        rnd = random.Random(1234)
        path, base, size = {topic.path!r}, {base}, {size}
        hot = [(0, 512), (512, 512 + 32 * 64), (size - 64 * 1024 - 8192, size - 64 * 1024)]
        ok = (shmq.ShmqError, ValueError, OSError, EOFError, TypeError, KeyError, IndexError,
              UnicodeDecodeError, MemoryError, OverflowError, LookupError)
        for it in range(150):
            fd = os.open(path, os.O_RDWR)
            lo, hi = hot[it % len(hot)]
            for _ in range(rnd.randint(1, 6)):
                off = base + rnd.randrange(max(lo, 0), max(hi, lo + 1))
                os.pwrite(fd, bytes(rnd.getrandbits(8) for _ in range(rnd.choice((1, 4, 8)))), off)
            os.close(fd)
            try:
                t = shmq.Topic({topic.name!r})
            except ok:
                continue
            try:
                for call in (lambda: t.subscriptions(), lambda: t.stats(),
                             lambda: t.subscribe(start="earliest").get_many(64, timeout=0),
                             lambda: t.subscribe("named", on_slow="block").get_many(64, timeout=0),
                             lambda: t.publish(b"p" * rnd.randint(0, 500), timeout=0.01),
                             lambda: t.peek(rnd.randint(1, 40))):
                    try:
                        call()
                    except ok:
                        pass
            finally:
                t.close()
        print("survived")
    """
    out = check_child(run_py(code, timeout=120), "topic region fuzz")
    assert "survived" in out
