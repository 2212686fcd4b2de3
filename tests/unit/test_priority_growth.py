"""Growable priority queues (capacity=None, and the anonymous default): a grown area carries a
ring per level, each level a chain of rings. Order after growth (differential against
queue.PriorityQueue), every level, ack=True (nack keeps the priority across areas), areas given
back after a drain, two processes growing the queue under load, and hostile level heads."""
import os
import queue
import random
import struct

import pytest

import shmq

SHM = "/dev/shm"
SHM_ONLY = "growth of shared memory's areas"


@pytest.fixture
def make_gpq(qname):
    made = []

    def make(**options):
        options.setdefault("capacity", None)
        q = shmq.PriorityQueue(qname, create=True, **options)
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


def _reference_order(prios):
    """queue.PriorityQueue's order for (-priority, seq): higher first, FIFO within a level."""
    ref = queue.PriorityQueue()
    for seq, p in enumerate(prios):
        ref.put((-p, seq))
    return [ref.get()[1] for _ in prios]


@pytest.mark.shm_only(SHM_ONLY)
@pytest.mark.parametrize("levels", [1, 10, 64])
def test_growth_keeps_strict_priority_then_fifo_on_every_level(make_gpq, levels):
    q = make_gpq(levels=levels)
    assert q.stats()["capacity"] == 0          # growable
    first = q.stats()["file_size"]
    rng = random.Random(levels)
    n = 6000
    prios = [rng.randrange(levels) for _ in range(n)]
    for seq, p in enumerate(prios):
        q.put(struct.pack("<I", seq) + bytes(rng.randrange(300)), priority=p)
    st = q.stats()
    assert st["areas"] >= 3 and st["file_size"] > first   # it grew, more than once
    assert sum(st["levels"]) == n == q.qsize()
    assert st["levels"] == [prios.count(p) for p in range(levels)]
    got = [struct.unpack_from("<I", q.get(timeout=1))[0] for _ in range(n)]
    assert got == _reference_order(prios)
    with pytest.raises(shmq.Empty):
        q.get_nowait()


@pytest.mark.shm_only(SHM_ONLY)
def test_interleaved_puts_and_gets_across_growth(make_gpq):
    """Gets between the puts, so level rings of several areas are live at once."""
    q = make_gpq(levels=5)
    rng = random.Random(3)
    model = queue.PriorityQueue()
    seq = 0
    for _round in range(40):
        for _ in range(rng.randrange(50, 400)):
            p = rng.randrange(5)
            q.put(seq, priority=p)
            model.put((-p, seq))
            seq += 1
        for _ in range(rng.randrange(0, 300)):
            if model.empty():
                break
            assert q.get(timeout=1) == model.get()[1]
    while not model.empty():
        assert q.get(timeout=1) == model.get()[1]
    assert q.stats()["areas"] >= 1 and q.qsize() == 0


@pytest.mark.shm_only(SHM_ONLY)
def test_drained_areas_are_given_back(make_gpq):
    q = make_gpq(levels=4)
    for i in range(20000):
        q.put(b"y" * 100, priority=i % 4)
    peak = q.stats()["areas"]
    assert peak >= 4
    for _ in range(20000):
        q.get(timeout=1)
    for i in range(20000):                     # the next growth retires the drained areas
        q.put(b"y" * 100, priority=i % 4)
    assert q.stats()["areas"] < peak
    got = [q.get(timeout=1) for _ in range(20000)]
    assert len(got) == 20000 and q.qsize() == 0


@pytest.mark.shm_only(SHM_ONLY)
def test_anonymous_priority_queue_grows_by_default():
    q = shmq.PriorityQueue(levels=3)
    try:
        assert q.stats()["capacity"] == 0
        body = b"z" * 1000
        for i in range(12000):                 # 12 MB: more than the old fixed 8 MiB
            q.put(body, priority=i % 3)
        assert q.qsize() == 12000
        assert [q.get(timeout=1) for _ in range(3)] == [body] * 3
        fixed = shmq.PriorityQueue(capacity="1MiB")
        try:
            with pytest.raises(shmq.Full):
                for _ in range(2000):
                    fixed.put_nowait(body)
        finally:
            fixed.close()
    finally:
        q.close()


@pytest.mark.shm_only(SHM_ONLY)
def test_ack_growable_keeps_priority_through_nack_across_areas(make_gpq):
    q = make_gpq(levels=4, ack=True, visibility_timeout=30)
    n = 4000
    for seq in range(n):
        q.send(struct.pack("<I", seq) + bytes(200), priority=seq % 4)
    assert q.stats()["areas"] >= 3
    # take the top 500 (level 3, from the first areas), return them: they go back at level 3
    held = [q.receive(timeout=1) for _ in range(500)]
    assert {m.priority for m in held} == {3}
    for m in held:
        m.nack()
    got = []
    for _ in range(n):
        m = q.receive(timeout=1)
        got.append((m.priority, struct.unpack_from("<I", m.body)[0]))
        m.ack()
    assert [p for p, _ in got] == sorted((p for p, _ in got), reverse=True)
    assert sorted(s for _, s in got) == list(range(n))
    level3 = [s for p, s in got if p == 3]
    assert sorted(level3[500:]) == level3[500:]    # the untouched rest of level 3 stays FIFO
    assert q.qsize() == 0


def _child(fn):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.shm_only(SHM_ONLY)
@pytest.mark.parametrize("ack", [False, True])
def test_two_processes_grow_it_under_load(make_gpq, qname, ack):
    """A producer process grows the queue while a consumer process drains it: nothing lost or
    doubled, FIFO per level holds across the areas, and the backlog left when the producer
    ends comes out in strict priority order."""
    levels, n = 10, 20000
    opts = dict(ack=True, visibility_timeout=30) if ack else {}
    q = make_gpq(levels=levels, **opts)
    r, w = os.pipe()

    def producer():
        p = shmq.PriorityQueue(qname)
        rng = random.Random(11)
        for seq in range(n):
            lvl = rng.randrange(levels)
            body = struct.pack("<II", seq, lvl) + bytes(rng.randrange(200))
            if ack:
                p.send(body, priority=lvl, timeout=30)
            else:
                p.put(body, priority=lvl, timeout=30)
        os.write(w, b"d")
        p.close()

    def take():
        if ack:
            m = q.receive(timeout=30)
            body = m.body
            assert m.priority == struct.unpack_from("<II", body)[1]
            m.ack()
            return body
        return q.get(timeout=30)

    pid = _child(producer)
    got = []
    try:
        while len(got) < n // 2:                 # drain while it grows
            got.append(struct.unpack_from("<II", take()))
        os.read(r, 1)                            # the producer is done: the rest is a backlog
        _, st = os.waitpid(pid, 0)
        pid = None
        assert os.waitstatus_to_exitcode(st) == 0
        assert q.stats()["areas"] >= 2 or q.stats()["file_size"] > 256 * 1024
        backlog = [struct.unpack_from("<II", take()) for _ in range(n - len(got))]
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    allgot = got + backlog
    assert sorted(s for s, _ in allgot) == list(range(n))          # none lost, none twice
    for lvl in range(levels):
        seqs = [s for s, l in allgot if l == lvl]
        assert seqs == sorted(seqs), f"level {lvl} out of FIFO order"
    assert [l for _, l in backlog] == sorted((l for _, l in backlog), reverse=True)
    assert q.qsize() == 0


# -- hostile level heads --------------------------------------------------------------------

def _region(path):
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


@pytest.mark.shm_only(SHM_ONLY)
@pytest.mark.parametrize("past", [1, 40, None])
def test_garbage_level_heads_never_hang_or_strand(make_gpq, qname, past):
    """A level head (region + 256 + 4 * level) past the tail area (by 1, by 40, or 0xFFFFFFFF):
    read as area_head and written back so, never out of bounds; every message is still
    delivered once and puts still work."""
    q = make_gpq(levels=4)
    for i in range(3000):
        q.put(i, priority=i % 4)
    path = os.path.join(SHM, "shmq." + qname)
    with open(path, "rb") as f:
        tail = struct.unpack_from("<I", f.read(4096), 140)[0]   # header: area_tail
    assert tail >= 1
    off, _ = _region(path)
    bad = 0xFFFFFFFF if past is None else tail + past
    for lvl in range(4):
        _poke(path, off + 256 + 4 * lvl, struct.pack("<I", bad))
    got = []
    while True:
        try:
            got.append(q.get(timeout=0.05))
        except shmq.Empty:
            break
    assert sorted(got) == list(range(3000))     # nothing stranded, nothing twice
    q.put("after", priority=3)
    assert q.get(timeout=1) == "after"


@pytest.mark.shm_only(SHM_ONLY)
def test_area_rings_must_match_the_levels(make_gpq, qname):
    """The header's rings-per-area word (offset 96) disagreeing with the levels: refused at open."""
    q = make_gpq(levels=4)
    q.put(1, priority=1)
    path = os.path.join(SHM, "shmq." + qname)
    for bad in (3, 65):
        _poke(path, 96, struct.pack("<I", bad))
        with pytest.raises(shmq.CorruptQueueError):
            shmq.PriorityQueue(qname)
    _poke(path, 96, struct.pack("<I", 4))
    q2 = shmq.PriorityQueue(qname)
    assert q2.get(timeout=1) == 1
    q2.close()
