"""At-least-once priority queues: send(priority=)/receive/ack/nack/extend, and a message keeps
its priority through nack, lease expiry, a consumer's death and the dead-letter copy."""
import os
import signal
import time

import pytest

import shmq

VIS = 0.3
BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


@pytest.fixture
def ackpq(qname):
    made = []

    def make(suffix="", **kw):
        kw.setdefault("visibility_timeout", VIS)
        kw.setdefault("capacity", "1MiB")
        kw.setdefault("levels", 5)
        q = shmq.PriorityQueue(qname + suffix, create=True, ack=True, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        names = (q.name, q.dead_letter_queue)
        q.close()
        for n in names:
            if n:
                try:
                    shmq.unlink(n)
                except shmq.QueueNotFound:
                    pass


@pytest.mark.shm_only("the class is named RedisReliablePriorityQueue there; tests/redis/test_redis_priority.py checks the DLQ's kind and levels")
def test_class_and_dlq_kind(ackpq, qname):
    q = ackpq(levels=7)
    assert isinstance(q, shmq.PriorityQueue) and isinstance(q, shmq.Queue)
    assert type(q).__name__ == "ReliablePriorityQueue"
    assert q.dead_letter_queue == qname + ".dlq"
    d = shmq.open(q.dead_letter_queue)
    try:
        assert isinstance(d, shmq.PriorityQueue) and d.levels == 7 and d.dead_letter_queue is None
    finally:
        d.close()
    r = shmq.PriorityQueue(qname)            # opened by name: the at-least-once class again
    try:
        assert type(r) is type(q) and r.levels == 7
    finally:
        r.close()


def test_send_receive_order_and_fields(ackpq):
    q = ackpq()
    ids = {p: q.send(f"p{p}".encode(), priority=p, headers={"k": str(p)}) for p in (0, 4, 2)}
    q.send(b"default")                        # priority None: 0
    got = [q.receive(timeout=1) for _ in range(4)]
    assert [m.body for m in got] == [b"p4", b"p2", b"p0", b"default"]
    assert [m.priority for m in got] == [4, 2, 0, 0]
    assert got[0].id == ids[4] and got[0].headers == {"k": "4"} and got[0].delivery_count == 1
    for m in got:
        assert m.ack() is not False
    assert q.stats()["levels"] == [0] * 5


@pytest.mark.parametrize("bad", [-1, 5, 1.5, True, "2"])
def test_bad_priority(ackpq, bad):
    q = ackpq()
    with pytest.raises(ValueError, match="priority"):
        q.send(b"x", priority=bad)
    with pytest.raises(ValueError, match="priority"):
        q.put(b"x", priority=bad)
    assert q.stats()["depth"] == 0


def test_priority_kept_through_nack(ackpq):
    q = ackpq()
    q.send(b"low", priority=1)
    q.send(b"high", priority=4)
    m = q.receive(timeout=1)
    assert m.body == b"high"
    q.send(b"mid", priority=3)
    m.nack()                                  # back at level 4: before mid and low
    m2 = q.receive(timeout=1)
    assert (m2.body, m2.priority, m2.delivery_count) == (b"high", 4, 2)
    m2.ack()
    assert [q.receive(timeout=1).body for _ in range(2)] == [b"mid", b"low"]


def test_priority_kept_through_nack_with_delay(ackpq):
    q = ackpq()
    q.send(b"high", priority=4)
    m = q.receive(timeout=1)
    m.nack(delay=0.1)
    q.send(b"low", priority=0)
    first = q.receive(timeout=1)
    assert first.body == b"low"               # high is delayed: not deliverable yet
    again = q.receive(timeout=5)
    assert (again.body, again.priority) == (b"high", 4)


def test_priority_kept_through_lease_expiry(ackpq):
    q = ackpq()
    q.send(b"high", priority=4)
    m = q.receive(timeout=1)
    q.send(b"low", priority=0)
    time.sleep(VIS * 1.5)                     # the lease ends: high is ready again, at level 4
    m2 = q.receive(timeout=VIS * 5)
    assert (m2.body, m2.priority, m2.delivery_count) == (b"high", 4, 2)
    with pytest.raises(shmq.LeaseExpiredError):
        m.ack()
    m2.ack()
    assert q.receive(timeout=1).body == b"low"


def test_extend(ackpq):
    q = ackpq()
    q.send(b"x", priority=2)
    m = q.receive(timeout=1)
    m.extend(5)
    time.sleep(VIS * 1.5)
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.05)
    m.ack()


def test_priority_kept_through_consumer_death(ackpq, qname):
    q = ackpq()
    q.send(b"low", priority=0)
    q.send(b"high", priority=3)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            c = shmq.PriorityQueue(qname)
            m = c.receive(timeout=5)
            os.write(w, m.body + b"\n")
            time.sleep(60)                    # holds the lease until killed
        finally:
            os._exit(code)
    try:
        assert os.read(r, 100) == b"high\n"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    q._repair()
    m = q.receive(timeout=VIS * 5)
    assert (m.body, m.priority, m.delivery_count) == (b"high", 3, 2)
    m.ack()
    assert q.receive(timeout=1).body == b"low"


def test_dead_letter_copy_keeps_priority(ackpq):
    q = ackpq(max_deliveries=2)
    q.send(b"poison", priority=3)
    q.send(b"bad", priority=1)
    q.receive(timeout=1).nack()               # poison, first failure
    q.receive(timeout=1).nack()               # poison again: its next delivery would exceed 2
    b = q.receive(timeout=1)
    assert b.body == b"bad"
    b.nack(requeue=False)                     # rejected: dead-lettered at once
    with shmq.open(q.dead_letter_queue) as d:
        assert d.stats()["levels"] == [0, 1, 0, 1, 0]
        first, second = d.receive(timeout=1), d.receive(timeout=1)
        assert (first.body, first.priority) == (b"poison", 3)
        assert (second.body, second.priority) == (b"bad", 1)
        assert first.headers["x-dead-letter-reason"] == "max_deliveries"
        first.ack()
        second.ack()


def test_ttl_and_delay_and_dedup(ackpq):
    q = ackpq()
    q.send(b"late", priority=4, delay=0.2)
    q.send(b"gone", priority=4, ttl=0.05)
    q.send(b"now", priority=1)
    a = q.send(b"once", priority=2, dedup_id="k")
    assert q.send(b"once-again", priority=3, dedup_id="k") == a
    time.sleep(0.1)
    got = [q.receive(timeout=1) for _ in range(2)]
    assert [m.body for m in got] == [b"once", b"now"]      # gone expired, late not due yet
    m = q.receive(timeout=5)
    assert (m.body, m.priority) == (b"late", 4)
    for x in got + [m]:
        x.ack()
    st = q.stats()
    assert st["expired"] == 1 and st["dedup_hits"] >= 1


def test_put_get_at_most_once_on_an_ack_priority_queue(ackpq):
    q = ackpq()
    q.put(b"a", priority=1)
    q.put_nowait(b"b", 4)
    assert q.put_many([b"c", b"d"], priority=2) == 2
    assert [q.get(timeout=1) for _ in range(4)] == [b"b", b"c", b"d", b"a"]


def test_put_many_timeout_is_for_the_batch(ackpq):
    q = ackpq(maxsize=2)
    with pytest.raises(shmq.Full) as ei:
        q.put_many([b"a", b"b", b"c"], priority=1, timeout=0.05)
    assert ei.value.items_put == 2
    with pytest.raises(shmq.Full):
        q.put_many([b"d"], priority=1, block=False)
    assert [q.get(timeout=1) for _ in range(2)] == [b"a", b"b"]


def test_aging_serves_an_old_message_first(ackpq):
    """max_wait on an at-least-once priority queue: a message ready for longer than max_wait is
    received before younger ones of any level; without it, strict priority."""
    q = ackpq(max_wait=0.05)
    q.send("old-low", priority=0)
    time.sleep(0.15)
    for i in range(3):
        q.send(f"high{i}", priority=4)
    m = q.receive(timeout=1)
    assert (m.body, m.priority) == ("old-low", 0)
    m.ack()
    got = []
    for _ in range(3):
        x = q.receive(timeout=1)
        got.append(x.body)
        x.ack()
    assert got == ["high0", "high1", "high2"]
    strict = ackpq("-strict")
    strict.send("old-low", priority=0)
    time.sleep(0.15)
    strict.send("high", priority=4)
    assert strict.receive(timeout=1).body == "high"


def test_aging_keeps_a_redelivery_old(ackpq):
    """A nacked old message is still old: it goes before a fresh higher one."""
    q = ackpq(max_wait=0.05)
    q.send("low", priority=1)
    time.sleep(0.15)
    q.receive(timeout=1).nack()
    q.send("high", priority=4)
    m = q.receive(timeout=1)
    assert (m.body, m.delivery_count) == ("low", 2)
