"""shmq.PriorityQueue at most once: order (differential against queue.PriorityQueue), levels,
the put/get family, aging, the kind check, shmq.open, passing to children, and hostile
priority state in the segment."""
import os
import queue
import random
import struct
import time

import pytest

import shmq

SHM = "/dev/shm"
BACKENDS = ("shm", "redis")   # named queues run on shared memory and on Redis (tests/_redisfix.py)
ANON = "anonymous queues live in shared memory on every backend"


@pytest.fixture
def make_pq(qname):
    made = []

    def make(suffix="", **options):
        options.setdefault("capacity", "1MiB")
        q = shmq.PriorityQueue(qname + suffix, create=True, **options)
        made.append(q)
        return q

    yield make
    for q in made:
        names = (q.name, getattr(q, "dead_letter_queue", None))
        q.close()
        for n in names:
            if n:
                try:
                    shmq.unlink(n)
                except shmq.QueueNotFound:
                    pass


def _drain(q):
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except shmq.Empty:
            return out


@pytest.mark.parametrize("levels", [1, 2, 10, 64])
def test_differential_against_queue_priorityqueue(levels, make_pq):
    """One process, random interleaving of puts and gets: the order is queue.PriorityQueue's
    with the sense reversed (higher first) and FIFO within a level (the sequence number)."""
    q = make_pq(levels=levels)
    ref = queue.PriorityQueue()
    rng = random.Random(levels)
    seq = 0
    for _ in range(3000):
        if rng.random() < 0.6 or ref.empty():
            p = rng.randrange(levels)
            obj = (p, seq, b"x" * rng.choice((0, 10, 100, 3000)))
            q.put(obj, priority=p)
            ref.put((-p, seq, obj))
            seq += 1
        else:
            assert q.get_nowait() == ref.get_nowait()[2]
    while not ref.empty():
        assert q.get_nowait() == ref.get_nowait()[2]
    with pytest.raises(shmq.Empty):
        q.get_nowait()


@pytest.mark.shm_only(ANON)
def test_anonymous_default_levels_and_api():
    q = shmq.PriorityQueue()
    try:
        assert q.levels == 10 and q.max_wait is None
        assert q.empty() and q.qsize() == 0 and not q.full()
        q.put("low")
        q.put_nowait("high", 9)
        q.put("mid", priority=5, block=True, timeout=1)
        assert q.put_many(["m1", "m2"], priority=5) == 2
        assert q.qsize() == 5 and not q.empty()
        assert q.stats()["levels"] == [1, 0, 0, 0, 0, 3, 0, 0, 0, 1]
        assert q.get() == "high"
        assert q.get_many(3) == ["mid", "m1", "m2"]
        assert q.get_nowait() == "low"
        assert q.stats()["levels"] == [0] * 10
        with pytest.raises(shmq.Empty):
            q.get(timeout=0.01)
        assert q.stats()["kind"] == shmq._core.KIND_PRIORITY
    finally:
        q.close()


@pytest.mark.shm_only(ANON)
@pytest.mark.parametrize("bad", [-1, 10, 2**40, 1.0, True, "1", None, 3 + 0j])
def test_bad_priority_is_valueerror_never_clamped(bad):
    q = shmq.PriorityQueue(levels=10)
    try:
        for call in (lambda: q.put(1, priority=bad), lambda: q.put_nowait(1, bad),
                     lambda: q.put_many([1], priority=bad)):
            with pytest.raises(ValueError) as ei:
                call()
            assert isinstance(ei.value, shmq.ShmqError)
            assert "priority" in str(ei.value)
        assert q.qsize() == 0
    finally:
        q.close()


@pytest.mark.shm_only(ANON)
@pytest.mark.parametrize("levels", [0, 65, -1, 2.5, True, "10"])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        shmq.PriorityQueue(levels=levels)


def test_bad_max_wait(qname):
    with pytest.raises(ValueError, match="max_wait"):
        shmq.PriorityQueue(max_wait=-1)
    with pytest.raises(ValueError, match="max_wait"):
        shmq.PriorityQueue(max_wait=0)


def test_maxsize_full_and_timeouts(make_pq):
    q = make_pq(maxsize=3, levels=3)
    for i in range(3):
        q.put(i, priority=i)
    assert q.full()
    with pytest.raises(shmq.Full):
        q.put(9, priority=2, timeout=0.01)
    with pytest.raises(shmq.Full):
        q.put_nowait(9, 2)
    with pytest.raises(ValueError):
        q.put(9, priority=1, timeout=-1)
    assert _drain(q) == [2, 1, 0]


@pytest.mark.shm_only("capacity= sizes a segment's message slots; a Redis queue has none (maxsize= bounds it)")
def test_out_of_slots_is_full_not_a_hang(make_pq):
    """The smallest capacity: puts fill every message slot; the next one raises Full, whatever
    the level, and a get makes room again."""
    q = make_pq(capacity=64 * 1024, levels=4)
    n = 0
    with pytest.raises(shmq.Full):
        while True:
            q.put_nowait(n, n % 4)
            n += 1
    assert n > 16
    first = q.get_nowait()
    assert first % 4 == 3
    q.put_nowait("again", 3)
    got = _drain(q)
    assert len(got) == n and got[-1] % 4 == 0


def test_levels_one_is_fifo(make_pq):
    q = make_pq(levels=1)
    q.put_many(range(100))
    assert _drain(q) == list(range(100))
    with pytest.raises(ValueError):
        q.put(1, priority=1)


def test_aging_serves_an_old_message_first(make_pq):
    """max_wait: a message ready for longer than max_wait goes before younger ones of any level."""
    q = make_pq(levels=3, max_wait=0.05)
    q.put("old-low", priority=0)
    time.sleep(0.15)
    for i in range(5):
        q.put(f"high{i}", priority=2)
    assert q.get_nowait() == "old-low"
    assert _drain(q) == [f"high{i}" for i in range(5)]


def test_no_aging_by_default(make_pq):
    q = make_pq(levels=3)
    q.put("old-low", priority=0)
    time.sleep(0.1)
    q.put("high", priority=2)
    assert _drain(q) == ["high", "old-low"]


def test_aging_no_level_starves(make_pq):
    """A steady stream of high messages: with max_wait the low one still comes out, and early."""
    q = make_pq(levels=2, max_wait=0.02)
    q.put("low", priority=0)
    served = []
    deadline = time.monotonic() + 30
    while "low" not in served and time.monotonic() < deadline:
        q.put("h", priority=1)
        q.put("h", priority=1)
        served.append(q.get_nowait())
        time.sleep(0.001)
    assert "low" in served


@pytest.mark.shm_only("exact classes and list_queues() are shared memory's; tests/redis/test_redis_priority.py checks the kind on Redis")
def test_kind_is_part_of_the_segment(make_pq, make_queue, qname):
    make_pq("-p", levels=4)
    make_queue("-q", capacity="1MiB")
    with pytest.raises(shmq.IncompatibleQueueError) as ei:
        shmq.Queue(qname + "-p")
    assert "priority queue" in str(ei.value) and "FIFO queue" in str(ei.value)
    with pytest.raises(shmq.IncompatibleQueueError) as ei:
        shmq.PriorityQueue(qname + "-q")
    assert "priority queue" in str(ei.value) and "FIFO queue" in str(ei.value)
    with pytest.raises(shmq.IncompatibleQueueError):
        shmq.Queue(qname + "-p", create=True, exist_ok=True)
    with pytest.raises(shmq.IncompatibleQueueError):
        shmq.JoinableQueue(qname + "-p")
    p = shmq.open(qname + "-p")
    f = shmq.open(qname + "-q")
    try:
        assert type(p) is shmq.PriorityQueue and p.levels == 4
        assert type(f) is shmq.Queue
    finally:
        p.close()
        f.close()
    with pytest.raises(shmq.QueueNotFound):
        shmq.open(qname + "-none")
    kinds = {qi.name: qi.kind for qi in shmq.list_queues()}
    assert kinds[qname + "-p"] == "priority" and kinds[qname + "-q"] == "queue"


def test_existing_options_must_agree(make_pq, qname):
    make_pq(levels=4, max_wait=1.5)
    with pytest.raises(ValueError, match="levels=5"):
        shmq.PriorityQueue(qname, levels=5)
    with pytest.raises(ValueError, match="max_wait"):
        shmq.PriorityQueue(qname, max_wait=2)
    q = shmq.PriorityQueue(qname, levels=4, max_wait=1.5)
    try:
        assert q.levels == 4 and q.max_wait == 1.5
    finally:
        q.close()
    with pytest.raises(shmq.QueueExistsError):
        shmq.PriorityQueue(qname, create=True)


@pytest.mark.shm_only(ANON)
def test_asyncio_get_and_put_async():
    import asyncio

    async def main(q):
        await q.put_async("low", 0)
        await q.put_async("high", priority=2, timeout=1)
        with pytest.raises(ValueError):
            await q.put_async("bad", priority=3)
        return [await q.get_async(timeout=1), await q.get_async(timeout=1)]

    q = shmq.PriorityQueue(levels=3)
    try:
        assert asyncio.run(main(q)) == ["high", "low"]
    finally:
        q.close()


def _child_order(q, out):
    out.put(q.get(timeout=10))
    q.put("from-child", priority=0)


@pytest.mark.shm_only(ANON)
def test_passes_to_children(mpctx):
    q = shmq.PriorityQueue(levels=3)
    out = shmq.Queue()
    try:
        q.put("low", priority=0)
        q.put("high", priority=2)
        p = mpctx.Process(target=_child_order, args=(q, out))
        p.start()
        assert out.get(timeout=30) == "high"
        p.join(30)
        assert p.exitcode == 0
        assert sorted(_drain(q)) == ["from-child", "low"]
    finally:
        q.close()
        out.close()


@pytest.mark.shm_only("type(q2) is shmq.PriorityQueue: the Redis class is a subclass; tests/redis/test_redis_priority.py pickles one")
def test_pickles_through_another_queue(make_pq):
    q = make_pq(levels=3)
    carrier = shmq.Queue()
    try:
        carrier.put(q)
        q2 = carrier.get(timeout=5)
        assert type(q2) is shmq.PriorityQueue and q2.levels == 3
        q2.put("x", priority=2)
        assert q.get_nowait() == "x"
        q2.close()
    finally:
        carrier.close()


# -- hostile segments: corrupted priority state --------------------------------------------

def _region(path):
    """(offset, size) of the priority region (kind 2) from the region table of the header."""
    with open(path, "rb") as f:
        hdr = f.read(4096)
    base = 896 + 32 * 64
    for i in range(8):
        kind, _pad, off, size = struct.unpack_from("<IIQQ", hdr, base + 32 * i)
        if kind == 2:
            return off, size
    raise AssertionError("no priority region")


def _poke(path, off, data):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


@pytest.mark.parametrize("field,data", [
    (0, b"\0" * 8),                      # magic
    (8, struct.pack("<I", 0)),           # levels 0
    (8, struct.pack("<I", 65)),          # levels > 64
    (8, struct.pack("<I", 0xFFFFFFFF)),  # levels garbage (region size overflow)
    (12, struct.pack("<I", 40)),         # cells_log2 beyond any region
    (12, struct.pack("<I", 2)),          # cells_log2 too small
    (512 + 128, struct.pack("<Q", 1 << 40)),  # level 0's tail far beyond its head
])
@pytest.mark.shm_only("a hostile segment: shared memory's priority region")
def test_corrupt_region_is_refused_at_open(field, data, make_pq, qname):
    q = make_pq(levels=4)
    q.close()
    path = os.path.join(SHM, "shmq." + qname)
    off, _size = _region(path)
    _poke(path, off + field, data)
    with pytest.raises(shmq.CorruptQueueError):
        shmq.PriorityQueue(qname)


@pytest.mark.shm_only("a hostile segment: shared memory's priority region")
def test_garbage_bitmap_never_hangs_or_loses(make_pq, qname):
    """Every bit set (beyond the levels too) and a bogus sequence: gets still find the real
    messages in order, report Empty when there are none, and the bits settle."""
    q = make_pq(levels=4)
    q.put("a", priority=1)
    q.put("b", priority=3)
    path = os.path.join(SHM, "shmq." + qname)
    off, _ = _region(path)
    _poke(path, off + 128, struct.pack("<QQ", 0xFFFFFFFFFFFFFFFF, 12345))
    assert q.get(timeout=1) == "b"
    assert q.get(timeout=1) == "a"
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.05)
    q.put("c", priority=0)
    assert q.get(timeout=1) == "c"


@pytest.mark.shm_only("a hostile segment: shared memory's priority region")
def test_cleared_bitmap_is_rescued(make_pq, qname):
    """A bit lost (a producer killed between its publish and its bit, or a zeroed word):
    a consumer that finds no bit set scans the levels and still delivers everything."""
    q = make_pq(levels=4)
    q.put("a", priority=2)
    q.put("b", priority=2)
    path = os.path.join(SHM, "shmq." + qname)
    off, _ = _region(path)
    _poke(path, off + 128, struct.pack("<QQ", 0, 0))
    assert _drain(q) == ["a", "b"]


@pytest.mark.shm_only("a hostile segment: shared memory's priority region")
def test_garbage_handles_in_a_level_ring_are_skipped(make_pq, qname):
    """Cells planted FULL with handles naming no descriptor: a consumer skips (and counts) them,
    delivers the real message, and never reads outside the segment."""
    q = make_pq(levels=2, capacity=64 * 1024)
    path = os.path.join(SHM, "shmq." + qname)
    off, size = _region(path)
    with open(path, "rb") as f:
        f.seek(off)
        h = f.read(16)
    _magic, levels, lg = struct.unpack_from("<QII", h)
    cells = off + 512 + levels * 256 + 1 * (16 << lg)   # level 1's cells (after the 512-byte header)
    tail1 = off + 512 + 1 * 256 + 128
    bogus = [0xFF << 56, (0 << 56) | (0xFFFFFF << 32) | 7, 12345]
    for i, handle in enumerate(bogus):   # FULL at lap 0: word = state FULL(2) << 30
        _poke(path, cells + 16 * i, struct.pack("<QQ", 2 << 30, handle))
    _poke(path, tail1, struct.pack("<Q", len(bogus)))
    _poke(path, off + 128, struct.pack("<QQ", 0b10, 1))
    q.put("real", priority=1)
    assert q.get(timeout=1) == "real"
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.05)
    assert q.stats()["corrupt_skipped"] >= 2
