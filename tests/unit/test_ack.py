"""At-least-once queues: one test per rule of DESIGN §5.1 (leases, ack/nack/extend, dead
letters, delays, TTL, dedup, capacity, stats), with short visibility timeouts."""
import os
import random
import subprocess
import sys
import time

import pytest

import shmq

VIS = 0.3   # visibility timeout of most tests (seconds)
BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


@pytest.fixture
def ackq(make_queue):
    """Factory of at-least-once queues named after the test (make_queue: every segment and its
    DLQ is closed and unlinked afterwards)."""
    def make(suffix="", **kw):
        kw.setdefault("visibility_timeout", VIS)
        kw.setdefault("capacity", "1MiB")
        return make_queue(suffix, ack=True, **kw)
    return make


def counters(q):
    st = q.stats()
    return {k: st[k] for k in ("depth", "in_flight", "delayed", "acked", "redelivered", "dead_lettered", "expired")}


def dlq_of(q):
    return shmq.Queue(q.dead_letter_queue)


# ---------------------------------------------------------------- send / receive / ack

def test_message_fields(ackq):
    q = ackq()
    t0 = time.time()
    i1 = q.send(b"one", headers={"k": "v", "b": b"\x00\xff"}, priority=7)
    i2 = q.send({"two": 2})
    assert i2 > i1
    m = q.receive(timeout=1)
    assert (m.id, m.body, m.headers, m.delivery_count, m.priority) == (i1, b"one", {"k": "v", "b": b"\x00\xff"}, 1, 7)
    assert t0 - 0.1 <= m.timestamp <= time.time() + 0.1
    m2 = q.receive(timeout=1)
    assert m2.headers == {} and m2.body == {"two": 2} and m2.priority == 0
    assert m.ack() is True and m2.ack() is True


def test_ack_deletes_and_second_ack_reports(ackq):
    q = ackq()
    q.send(b"x")
    m = q.receive(timeout=1)
    assert counters(q)["in_flight"] == 1
    assert m.ack() is True
    assert m.ack() is False              # harmless, reported
    time.sleep(VIS * 1.5)
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.1)           # never redelivered after a successful ack
    c = counters(q)
    assert (c["acked"], c["in_flight"], c["depth"], c["redelivered"]) == (1, 0, 0, 0)


def test_lease_expiry_redelivers_and_stale_ack_fails(ackq):
    q = ackq()
    q.send(b"job")
    m1 = q.receive(timeout=1)
    with pytest.raises(shmq.Empty):
        q.receive(timeout=VIS / 3)       # in flight: not delivered to anyone else
    m2 = q.receive(timeout=VIS * 5)      # the lease ran out
    assert m2.id == m1.id and m2.delivery_count == 2
    before = counters(q)
    with pytest.raises(shmq.LeaseExpiredError):
        m1.ack()
    with pytest.raises(shmq.LeaseExpiredError):
        m1.nack()
    with pytest.raises(shmq.LeaseExpiredError):
        m1.extend(10)
    assert counters(q) == before         # the stale calls changed nothing
    assert m2.ack() is True
    assert counters(q)["acked"] == 1 and counters(q)["redelivered"] == 1


def test_expired_lease_not_yet_redelivered_can_still_be_acked(ackq):
    q = ackq()
    q.send(b"job")
    m = q.receive(timeout=1)
    time.sleep(VIS * 1.5)
    q._timers_run()                      # the expiry is applied: the message is ready again
    assert counters(q)["depth"] == 1
    assert m.ack() is True               # nobody else had it yet
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.1)
    assert counters(q)["acked"] == 1


def test_extend_pushes_the_deadline(ackq):
    q = ackq()
    q.send(b"slow")
    m = q.receive(timeout=1)
    m.extend(VIS * 4)
    with pytest.raises(shmq.Empty):
        q.receive(timeout=VIS * 2)       # past the original deadline, still ours
    assert m.ack() is True
    with pytest.raises(ValueError):
        m.extend(1)                      # settled
    with pytest.raises(ValueError):
        q.send(b"x") and q.receive(timeout=1).extend(-1)


def test_nack_requeue_and_delay(ackq):
    q = ackq(visibility_timeout=30)
    q.send(b"a")
    m = q.receive(timeout=1)
    m.nack()
    m2 = q.receive(timeout=1)
    assert m2.id == m.id and m2.delivery_count == 2
    with pytest.raises(ValueError):
        m.ack()                          # this delivery was nacked
    t0 = time.monotonic()
    m2.nack(delay=0.3)
    assert counters(q)["delayed"] == 1
    m3 = q.receive(timeout=3)
    assert time.monotonic() - t0 >= 0.29 and m3.delivery_count == 3
    m3.ack()
    c = counters(q)
    assert (c["redelivered"], c["acked"], c["delayed"]) == (2, 1, 0)


def test_nack_without_requeue_dead_letters_at_once(ackq):
    q = ackq()
    mid = q.send(b"bad", headers={"trace": "t1"})
    m = q.receive(timeout=1)
    m.nack(requeue=False)
    with dlq_of(q) as d:
        dm = d.receive(timeout=1)
        assert dm.body == b"bad"
        h = dm.headers
        assert h["trace"] == "t1"
        assert h["x-dead-letter-source"] == q.name and h["x-dead-letter-reason"] == "rejected"
        assert h["x-delivery-count"] == "1" and h["x-original-id"] == str(mid)
        assert float(h["x-first-delivery"]) > 0 and float(h["x-last-delivery"]) >= float(h["x-first-delivery"])
        dm.ack()
    assert counters(q)["dead_lettered"] == 1


def test_max_deliveries_dead_letters(ackq):
    q = ackq(max_deliveries=3)
    q.send(b"poison")
    counts = []
    for _ in range(3):
        m = q.receive(timeout=VIS * 5)
        counts.append(m.delivery_count)
        if len(counts) < 3:
            m.nack()                     # failure by nack ...
        # ... and the third by lease expiry
    assert counts == [1, 2, 3]
    with pytest.raises(shmq.Empty):
        q.receive(timeout=VIS * 3)       # a consumer of the queue applies the expiry: to the DLQ
    with dlq_of(q) as d:
        dm = d.receive(timeout=1)
        assert dm.headers["x-dead-letter-reason"] == "max_deliveries"
        assert dm.headers["x-delivery-count"] == "3"
        dm.ack()
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.1)
    assert counters(q)["dead_lettered"] == 1


def test_dead_letter_queue_is_created_with_our_options(ackq, qname):
    q = ackq()
    assert q.dead_letter_queue == qname + ".dlq"
    st = shmq.Queue(q.dead_letter_queue).stats()
    assert st["visibility_timeout"] == pytest.approx(VIS) and st["dead_letter"] == "" and st["flags"] & 0x10
    named = ackq("-b", dead_letter=qname + "-graveyard")
    assert named.dead_letter_queue == qname + "-graveyard"
    named.send(b"z")
    named.receive(timeout=1).nack(requeue=False)
    with shmq.Queue(qname + "-graveyard") as g:
        assert g.receive(timeout=1).body == b"z"


def test_dead_letter_queue_without_ack_is_refused(make_queue, qname):
    make_queue("-plain", capacity="256KiB")
    try:
        with pytest.raises(ValueError, match="without ack"):
            shmq.Queue(qname, create=True, ack=True, dead_letter=qname + "-plain", capacity="256KiB")
    finally:
        try:
            shmq.unlink(qname)      # created before its dead-letter queue was refused
        except shmq.QueueNotFound:
            pass


def test_full_dead_letter_queue_keeps_the_message_counted(ackq, qname):
    small = ackq("-dlq", maxsize=1)
    q = ackq(dead_letter=qname + "-dlq")
    small.send(b"occupant")
    q.send(b"victim")
    q.receive(timeout=1).nack(requeue=False)
    c = q.stats()
    assert c["dead_letter_failed"] == 1 and c["delayed"] == 1     # still here, to be retried
    small.receive(timeout=1).ack()                                # room again
    q._timers_run()
    deadline = time.monotonic() + 5
    while q.stats()["dead_lettered"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        q._timers_run()
    assert small.receive(timeout=1).body == b"victim"


# ---------------------------------------------------------------- delays and TTL

def test_delay(ackq):
    q = ackq()
    t0 = time.monotonic()
    q.send(b"later", delay=0.4)
    q.send(b"now")
    first = q.receive(timeout=1)
    assert first.body == b"now"
    first.ack()
    assert counters(q)["delayed"] == 1
    m = q.receive(timeout=3)
    assert m.body == b"later" and time.monotonic() - t0 >= 0.39
    m.ack()


def test_queue_default_delay_and_ttl(ackq):
    q = ackq(delay=0.3, ttl=0.6)
    q.send(b"a")
    q.put(b"b")                          # put uses the defaults too
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.1)
    time.sleep(0.8)                      # past the TTL (from send), before anyone took them
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.2)
    assert counters(q)["expired"] == 2


def test_ttl_expires_ready_message_to_dlq(ackq):
    q = ackq()
    q.send(b"stale", ttl=0.2)
    q.send(b"fresh", ttl=30)
    time.sleep(0.3)
    m = q.receive(timeout=1)
    assert m.body == b"fresh"
    m.ack()
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.1)
    with dlq_of(q) as d:
        dm = d.receive(timeout=1)
        assert dm.body == b"stale" and dm.headers["x-dead-letter-reason"] == "expired"
        dm.ack()
    c = counters(q)
    assert c["expired"] == 1 and c["dead_lettered"] == 1


def test_ttl_expires_unconsumed_message_without_a_consumer(ackq):
    q = ackq()
    q.send(b"x", ttl=0.1)
    q.send(b"y", delay=0.5, ttl=0.2)     # expires while still delayed
    time.sleep(0.6)
    q._timers_run()
    assert counters(q)["expired"] == 2
    with dlq_of(q) as d:
        assert sorted(d.receive(timeout=1).body for _ in range(2)) == [b"x", b"y"]


# ---------------------------------------------------------------- dedup

def test_dedup_returns_original_id(ackq):
    q = ackq()
    a = q.send(b"1", dedup_id="order-17")
    b = q.send(b"2", dedup_id="order-17")
    c = q.send(b"3", dedup_id=b"order-17")     # bytes and str ids are different ids
    assert a == b and c != a
    assert counters(q)["depth"] == 2
    m = q.receive(timeout=1)
    assert m.body == b"1"
    m.ack()
    assert q.send(b"4", dedup_id="order-17") == a  # remembered after the ack, within the window
    assert q.stats()["dedup_hits"] == 2


def test_dedup_window_ends(ackq):
    q = ackq(dedup_window=0.3)
    a = q.send(b"1", dedup_id="k")
    time.sleep(0.4)
    b = q.send(b"2", dedup_id="k")
    assert b != a and counters(q)["depth"] == 2


@pytest.mark.shm_only("Redis keeps each dedup id as a key with a TTL: there is no table to fill, and "
                      "dedup_capacity= raises UnsupportedError there")
def test_dedup_table_full_raises(ackq):
    q = ackq(dedup_capacity=16)
    for i in range(12):
        q.send(b"x", dedup_id=f"id{i}")
    with pytest.raises(shmq.Full, match="dedup"):
        for i in range(12, 20):
            q.send(b"x", dedup_id=f"id{i}")


# ---------------------------------------------------------------- batches, at-most-once use

def test_receive_many_and_ack_many(ackq):
    q = ackq()
    for i in range(100):
        q.send(i)
    got = q.receive_many(64, timeout=1)
    assert [m.body for m in got] == list(range(64))
    assert q.ack_many(got) == 64
    assert q.ack_many(got) == 0              # acked already: skipped
    rest = q.receive_many(64, timeout=1)
    assert len(rest) == 36
    time.sleep(VIS * 1.5)
    again = q.receive_many(64, timeout=1)    # the 36 expired and came back
    with pytest.raises(shmq.LeaseExpiredError) as ei:
        q.ack_many(rest)
    assert sorted(ei.value.ids) == sorted(m.id for m in rest)
    assert q.ack_many(again) == 36
    assert counters(q)["acked"] == 100


def test_put_get_work_at_most_once(ackq):
    q = ackq()
    q.put({"plain": True})
    q.send(b"sent", headers={"h": "1"})
    assert q.get(timeout=1) == {"plain": True}
    assert q.get(timeout=1) == b"sent"       # headers are not part of get's result
    time.sleep(VIS * 1.5)
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.1)                   # taken by get: gone, no lease


def test_capacity_reused_behind_a_slow_message(ackq):
    q = ackq(capacity="256KiB", visibility_timeout=60)
    q.send(b"slow" * 100)
    slow = q.receive(timeout=1)
    body = bytes(2000)
    for i in range(2000):                    # ~4 MB through a 256 KiB queue
        q.send(body, timeout=1)
        q.receive(timeout=1).ack()
    assert slow.ack() is True


# ---------------------------------------------------------------- stats against a checker

def test_stats_match_a_model(ackq):
    rnd = random.Random(5)
    q = ackq(visibility_timeout=60, max_deliveries=3)
    model = dict(depth=0, in_flight=0, delayed=0, acked=0, redelivered=0, dead_lettered=0, expired=0)
    held = []
    for step in range(400):
        op = rnd.choice("ssssrraann")
        if op == "s":
            q.send(step)
            model["depth"] += 1
        elif op == "r" and model["depth"]:
            held.append(q.receive(timeout=1))
            model["depth"] -= 1
            model["in_flight"] += 1
        elif op == "a" and held:
            held.pop(rnd.randrange(len(held))).ack()
            model["in_flight"] -= 1
            model["acked"] += 1
        elif op == "n" and held:
            m = held.pop(rnd.randrange(len(held)))
            model["in_flight"] -= 1
            if rnd.random() < 0.3:
                m.nack(requeue=False)
                model["dead_lettered"] += 1
            elif m.delivery_count >= 3:
                m.nack()
                model["dead_lettered"] += 1
            else:
                m.nack()
                model["depth"] += 1
                model["redelivered"] += 1
    assert counters(q) == model


# ---------------------------------------------------------------- bad input

def test_bad_input(ackq, make_queue, qname):
    q = ackq()
    with pytest.raises(ValueError, match="priority"):
        q.send(b"x", priority=10)
    with pytest.raises(ValueError, match="delay"):
        q.send(b"x", delay=-1)
    with pytest.raises(ValueError, match="ttl"):
        q.send(b"x", ttl=0)
    with pytest.raises(TypeError, match="header"):
        q.send(b"x", headers={"k": 1})
    with pytest.raises(TypeError, match="dedup_id"):
        q.send(b"x", dedup_id=3)
    with pytest.raises(ValueError, match="max_items"):
        q.receive_many(0)
    with pytest.raises(ValueError, match="timeout"):
        q.receive(timeout=-1)
    with pytest.raises(ValueError, match="ack=True"):
        shmq.Queue(qname + "-x", create=True, visibility_timeout=3)
    with pytest.raises(ValueError, match="max_deliveries"):
        shmq.Queue(qname + "-x", create=True, ack=True, max_deliveries=0)
    with pytest.raises(ValueError, match="named queue"):
        shmq.Queue(ack=True)
    with pytest.raises(ValueError, match="visibility_timeout"):
        shmq.Queue(q.name, ack=True, visibility_timeout=99)       # contradicts the creator
    with pytest.raises(ValueError, match="ack=False"):
        shmq.Queue(q.name, ack=False)
    plain = make_queue("-plain", capacity="256KiB")
    with pytest.raises(ValueError, match="ack=True"):
        plain.send(b"x")
    with pytest.raises(ValueError, match="ack=True"):
        plain.receive(timeout=0)
    with pytest.raises(ValueError, match="ack=True"):
        shmq.Queue(qname + "-plain", ack=True)
    q.send(b"x")
    m = q.receive(timeout=1)
    with pytest.raises(TypeError):
        q.ack_many([m, "not a message"])
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(m)
    m.ack()
    with pytest.raises(ValueError):
        m.nack()


@pytest.mark.shm_only("the token is a shared-memory descriptor stamp (an int); Redis stamps a delivery with "
                      "(stream id, delivery count), forged in tests/redis/test_redis_backend.py")
def test_forged_token_is_refused(ackq):
    q = ackq()
    q.send(b"x")
    m = q.receive(timeout=1)
    for token in (m._token ^ (1 << 40), m._token ^ 0xFF000000_00000000, m._token + 1):
        with pytest.raises(shmq.LeaseExpiredError):
            q._ack(token, m.id)
    with pytest.raises(shmq.LeaseExpiredError):
        q._ack(m._token, m.id + 1)
    assert m.ack() is True


# ---------------------------------------------------------------- redrive

def test_redrive(ackq):
    q = ackq()
    for i in range(5):
        q.send(i, headers={"n": str(i)})
    for _ in range(5):
        q.receive(timeout=1).nack(requeue=False)
    assert shmq.redrive(q.dead_letter_queue, max_messages=2) == 2
    assert shmq.redrive(q.dead_letter_queue) == 3
    got = sorted((m.body, tuple(sorted(m.headers.items()))) for m in q.receive_many(10, timeout=1))
    assert got == [(i, (("n", str(i)),)) for i in range(5)]      # x-dead-letter-* headers dropped


def test_redrive_cli(ackq, qname):
    q = ackq()
    other = ackq("-other")
    q.send(b"m")
    q.receive(timeout=1).nack(requeue=False)
    r = subprocess.run([sys.executable, "-m", "shmq", "redrive", q.dead_letter_queue, "--to", other.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1" in r.stdout
    assert other.receive(timeout=1).body == b"m"
    r = subprocess.run([sys.executable, "-m", "shmq", "redrive", qname + "-missing"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "no such queue" in r.stderr


def test_maxsize_counts_in_flight_and_delayed(ackq):
    q = ackq(maxsize=2, visibility_timeout=60)
    q.send(b"a")
    q.send(b"b", delay=60)
    m = q.receive(timeout=1)                 # in flight: still held
    with pytest.raises(shmq.Full):
        q.send(b"c", block=False)
    m.ack()
    q.send(b"c", block=False)


def test_redriven_message_is_new(ackq):
    q = ackq()
    first = q.send(b"r")
    q.receive(timeout=1).nack(requeue=False)
    shmq.redrive(q.dead_letter_queue)
    m = q.receive(timeout=1)
    assert m.body == b"r" and m.id != first and m.delivery_count == 1
    m.ack()
