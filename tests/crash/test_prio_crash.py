"""Priority queues under SIGKILL: at the priority crash points (prio_before_bit, prio_mid_clear),
at the ring and descriptor points inside a level's ring, at the at-least-once points (a message
keeps its priority), and a random-SIGKILL soak. Never wedged, nothing whose put returned lost,
nothing leaked (the consistency walker)."""
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

import shmq

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_prio_worker.py")
LEVELS = 4

# the priority points (the lint in test_crash_points.py wants a test of each)
PRIO_SCENARIOS = {
    "prio_before_bit": ("produce", 3),
    "prio_mid_clear": ("consume", 1),
    "prio_after_seal": ("consume", 1),    # growable: tests/crash/test_prio_crash.py::test_growth_points
    "prio_before_head": ("consume", 1),
}


def _run(args, crash_at=None, timeout=60):
    env = dict(os.environ)
    env.pop("SHMQ_CRASH_AT", None)
    if crash_at:
        env["SHMQ_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, WORKER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _records(path, tag):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [[int(x) for x in line.split()[1:]] for line in f if line.startswith(tag + " ")]


def _seq(data):
    return struct.unpack_from("<Q", data)[0]


def _drain(q):
    out = []
    while True:
        try:
            out.append(_seq(q.get(timeout=0.2)))
        except shmq.Empty:
            return out


def _consistent(q):
    q._repair()
    ck = q._consistency()
    assert ck["dead_owned"] == 0 and ck["orphan_ready"] == 0, ck
    assert ck["bad_chunks"] == 0 and ck["arena_mismatch"] == 0 and ck["bad_areas"] == 0, ck
    return ck


@pytest.fixture
def pq(qname):
    q = shmq.PriorityQueue(qname, create=True, levels=LEVELS, capacity="2MiB")
    yield q
    q.close()
    shmq.unlink(qname)


def _still_usable(q, qname, tmp_path):
    r = _run(["produce", qname, "40", str(tmp_path / "again"), str(LEVELS)])
    assert r.returncode == 0, r.stderr
    got = _drain(q)
    assert sorted(got) == list(range(40))
    assert got == sorted(range(40), key=lambda s: (-(s % LEVELS), s))   # priority order, FIFO in a level
    assert q.stats()["bytes_used"] == 0


def test_producer_killed_before_its_bit(pq, qname, tmp_path):
    """prio_before_bit: the third message (level 2, alone there) is in its ring with its bit
    maybe clear. Its put never returned; it is still delivered, and the returned ones in order."""
    rec = str(tmp_path / "rec")
    r = _run(["produce", qname, "40", rec, str(LEVELS)], crash_at="prio_before_bit:3")
    assert r.returncode == -9, r.stderr
    returned = [s for (s,) in _records(rec, "p")]
    assert returned == [0, 1]
    got = _drain(pq)                          # no repair first: a consumer rescues the bit itself
    assert sorted(got) == [0, 1, 2]
    assert [s for s in got if s in returned] == [1, 0]
    _consistent(pq)
    _still_usable(pq, qname, tmp_path)


def test_consumer_killed_before_its_clear(pq, qname, tmp_path):
    """prio_mid_clear: a consumer found level 3 empty and died before clearing its bit. Nothing
    is lost (it held nothing), the stale bit costs nothing, later gets keep the order."""
    for s in range(10):
        pq.put(struct.pack("<Q", s), priority=3 if s < 5 else 1)
    rec = str(tmp_path / "rec")
    r = _run(["consume", qname, "10", rec], crash_at="prio_mid_clear:1")
    assert r.returncode == -9, r.stderr
    taken = [s for (s,) in _records(rec, "c")]
    assert taken == [0, 1, 2, 3, 4]
    pq.put(struct.pack("<Q", 100), priority=3)
    assert _drain(pq) == [100, 5, 6, 7, 8, 9]
    _consistent(pq)
    _still_usable(pq, qname, tmp_path)


@pytest.mark.parametrize("point", ["prio_after_seal", "prio_before_head"])
def test_growth_points(point, qname, tmp_path):
    """A growable queue grown over several areas; a consumer killed after sealing a drained
    level ring (its level not moved on) or after moving every level on (area_head not): it held
    nothing, so what it did not take is all delivered once, in priority then FIFO order; the
    heads move on and drained areas are given back at the next growth."""
    q = shmq.PriorityQueue(qname, create=True, levels=LEVELS, capacity=None)
    try:
        n = 3000
        for seq in range(n):
            q.put(struct.pack("<Q", seq) + bytes((seq * 37) % 500), priority=seq % LEVELS)
        peak = q.stats()["areas"]
        assert peak >= 3
        rec = str(tmp_path / "rec")
        r = _run(["consume", qname, str(n), rec], crash_at=f"{point}:1")
        assert r.returncode == -9, r.stderr
        taken = [s for (s,) in _records(rec, "c")]
        assert taken, "the consumer took messages before the point"
        got = _drain(q)
        assert sorted(taken + got) == list(range(n))          # none lost, none twice
        assert got == sorted(got, key=lambda s: (-(s % LEVELS), s))
        _consistent(q)
        for seq in range(n):                                   # grows again: drained areas retire
            q.put(struct.pack("<Q", seq) + bytes((seq * 37) % 500), priority=seq % LEVELS)
        assert q.stats()["areas"] < peak + 3
        assert _drain(q) == sorted(range(n), key=lambda s: (-(s % LEVELS), s))
        assert q.stats()["bytes_used"] == 0
    finally:
        q.close()
        shmq.unlink(qname)


# The queue's points, met inside a level's ring or around it: (role, hit)
RING_POINTS = {
    "after_desc_claim": ("produce", 9), "mid_copy": ("produce", 5), "after_claim": ("produce", 9),
    "before_commit": ("produce", 9), "after_commit": ("produce", 9), "mid_get": ("consume", 9),
    "after_take": ("consume", 9), "before_free": ("consume", 9),
}


@pytest.mark.parametrize("point", sorted(RING_POINTS))
def test_queue_points_on_a_priority_queue(point, pq, qname, tmp_path):
    role, hit = RING_POINTS[point]
    rec = str(tmp_path / "rec")
    n = 40
    if role == "consume":
        for s in range(n):
            pq.put(struct.pack("<Q", s) + bytes((s * 37) % 2000), priority=s % LEVELS)
        r = _run(["consume", qname, str(n), rec], crash_at=f"{point}:{hit}")
    else:
        r = _run(["produce", qname, str(n), rec, str(LEVELS)], crash_at=f"{point}:{hit}")
    assert r.returncode == -9, f"not killed at {point}: {r.returncode}\n{r.stderr}"
    assert pq._repair() == 1
    got = _drain(pq)
    assert len(got) == len(set(got)), "duplicated"
    if role == "produce":
        returned = {s for (s,) in _records(rec, "p")}
        assert returned <= set(got), f"lost: {returned - set(got)}"
        assert set(got) - returned <= {len(returned)}
        ordered = [s for s in got if s in returned]
        assert ordered == sorted(returned, key=lambda s: (-(s % LEVELS), s))
    else:
        taken = [s for (s,) in _records(rec, "c")]
        assert not set(taken) & set(got)
        missing = set(range(n)) - set(taken) - set(got)
        assert len(missing) <= 1 and (point != "mid_get" or len(missing) == 1)
        assert got == sorted(got, key=lambda s: (-(s % LEVELS), s))
    ck = _consistent(pq)
    assert ck["owned_desc"] == 0 and ck["ready_desc"] == 0 and ck["queued"] == 0, ck
    _still_usable(pq, qname, tmp_path)


@pytest.fixture
def ackpq(qname):
    q = shmq.PriorityQueue(qname, create=True, ack=True, levels=LEVELS, capacity="1MiB", visibility_timeout=60)
    yield q
    q.close()
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


def _receive_all(q):
    out = []
    while True:
        try:
            m = q.receive(timeout=0.3)
        except shmq.Empty:
            return out
        out.append((_seq(m.body), m.priority, m.delivery_count))
        m.ack()


@pytest.mark.parametrize("point", ["mid_nack", "after_lease", "mid_ack"])
def test_ack_points_keep_the_priority(point, ackpq, qname, tmp_path):
    for s in range(8):
        ackpq.send(struct.pack("<Q", s), priority=s % LEVELS)
    rec = str(tmp_path / "rec")
    op = {"mid_nack": "nack", "after_lease": "hold", "mid_ack": "ack"}[point]
    r = _run([op, qname, "8", rec], crash_at=f"{point}:3")
    assert r.returncode == -9, r.stderr
    ackpq._repair()
    left = _receive_all(ackpq)
    seqs = [s for s, _p, _d in left]
    assert len(seqs) == len(set(seqs))
    assert all(p == s % LEVELS for s, p, _d in left), left           # every priority kept
    prios = [p for _s, p, _d in left]
    assert prios == sorted(prios, reverse=True)   # higher first (a requeued one goes to its level's end)
    if point != "mid_ack":
        assert set(seqs) == set(range(8))                              # nothing lost
    _consistent(ackpq)


@pytest.mark.parametrize("point", ["before_move", "mid_move"])
def test_dead_letter_move_keeps_the_priority(point, ackpq, qname, tmp_path):
    for s in range(6):
        ackpq.send(struct.pack("<Q", s), priority=3 if s < 3 else 1)
    rec = str(tmp_path / "rec")
    r = _run(["reject", qname, "6", rec], crash_at=f"{point}:2")
    assert r.returncode == -9, r.stderr
    ackpq._repair()
    ackpq._timers_run()
    with shmq.open(qname + ".dlq") as d:
        dead = _receive_all(d)
    here = _receive_all(ackpq)
    seqs = [s for s, _p, _d in dead + here]
    assert sorted(seqs) == list(range(6)), (dead, here)               # each in exactly one queue
    assert all(p == (3 if s < 3 else 1) for s, p, _d in dead + here)


SOAK_KILLS = int(os.environ.get("SHMQ_SOAK_KILLS", "40"))


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


def _reap(pid, sig=None):
    if sig:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)


def test_random_sigkill_soak_on_a_priority_queue(qname, tmp_path):
    """Producers (random priorities) and consumers SIGKILLed at random: nothing whose put
    returned is lost (beyond one per killed consumer: at most once), nothing twice, nothing
    unexpected, and the segment is consistent."""
    q = shmq.PriorityQueue(qname, create=True, levels=8, capacity="4MiB", maxsize=2000)
    rng = random.Random(4321)
    live, kills, consumer_kills, nprod, ctag = {}, 0, 0, 0, 0

    def producer(tag):
        r = random.Random(tag)
        fd = os.open(str(tmp_path / f"p{tag}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for seq in range(10**9):
            os.write(fd, b"a %d\n" % seq)
            q.put(struct.pack("<II", tag, seq) + bytes(r.choice((0, 50, 3000))), priority=r.randrange(8), timeout=30)
            os.write(fd, b"r %d\n" % seq)

    def consumer(tag):
        fd = os.open(str(tmp_path / f"c{tag}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        while True:
            p, s = struct.unpack_from("<II", q.get(timeout=30))
            os.write(fd, b"%d %d\n" % (p, s))

    try:
        deadline = time.monotonic() + 120
        while kills < SOAK_KILLS and time.monotonic() < deadline:
            while sum(1 for k in live.values() if k == "p") < 2:
                live[_child(lambda t=nprod: producer(t))] = "p"
                nprod += 1
            while sum(1 for k in live.values() if k == "c") < 2:
                ctag += 1
                live[_child(lambda t=ctag: consumer(t))] = "c"
            time.sleep(rng.uniform(0.001, 0.03))
            victim = rng.choice(list(live))
            consumer_kills += live.pop(victim) == "c"
            _reap(victim, signal.SIGKILL)
            kills += 1
        for pid in [p for p, k in live.items() if k == "p"]:
            live.pop(pid)
            _reap(pid, signal.SIGKILL)
        t_end = time.monotonic() + 60
        while q.qsize() and time.monotonic() < t_end:
            time.sleep(0.05)
        for pid in list(live):
            live.pop(pid)
            _reap(pid, signal.SIGKILL)
            consumer_kills += 1
    finally:
        for pid in live:
            _reap(pid, signal.SIGKILL)
    delivered = []
    while True:
        try:
            delivered.append(struct.unpack_from("<II", q.get(timeout=0.1)))
        except shmq.Empty:
            break
    attempted, returned = set(), set()
    for tag in range(nprod):
        path = tmp_path / f"p{tag}"
        if path.exists():
            for line in open(path):
                k, s = line.split()
                (attempted if k == "a" else returned).add((tag, int(s)))
    for name in os.listdir(tmp_path):
        if name.startswith("c"):
            for line in open(tmp_path / name):
                parts = line.split()
                if len(parts) == 2:
                    delivered.append((int(parts[0]), int(parts[1])))
    seen = set()
    dup = [m for m in delivered if m in seen or seen.add(m)]
    q._repair()
    ck = q._consistency()
    q.close()
    shmq.unlink(qname)
    assert kills >= min(SOAK_KILLS, 20)
    assert not dup, dup[:10]
    assert not seen - attempted
    assert len(returned - seen) <= consumer_kills, sorted(returned - seen)[:10]
    assert ck["dead_owned"] == 0 and ck["orphan_ready"] == 0 and ck["arena_mismatch"] == 0, ck
