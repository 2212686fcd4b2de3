"""PriorityQueue on the Redis backend (DESIGN §11, §5.2) against a real redis-server: what the
both-backends tests in tests/unit/test_priority*.py cannot say there (the kind on the server, the
classes, a killed consumer, pickling, hostile keys, the gaps)."""
import multiprocessing as mp
import os
import pickle
import signal
import time

import pytest

import shmq

redis = pytest.importorskip("redis")


@pytest.fixture
def rpq(redis_url, qname):
    """Factory of priority queues on the test's server (closed afterwards; the server is emptied per test)."""
    made = []

    def make(suffix="", **kw):
        q = shmq.PriorityQueue(qname + suffix, create=True, backend=redis_url, **kw)
        made.append(q)
        return q
    yield make
    for q in made:
        q.close()


def admin(url):
    return redis.Redis.from_url(url)


def test_at_most_once_api_and_levels(rpq):
    q = rpq(levels=10)
    assert isinstance(q, shmq.PriorityQueue) and q.levels == 10 and q.max_wait is None
    assert q.empty() and q.qsize() == 0 and not q.full()
    q.put("low")
    q.put_nowait("high", 9)
    q.put("mid", priority=5, block=True, timeout=1)
    assert q.put_many(["m1", "m2"], priority=5) == 2
    assert q.qsize() == 5
    st = q.stats()
    assert st["levels"] == [1, 0, 0, 0, 0, 3, 0, 0, 0, 1] and st["kind"] == shmq._core.KIND_PRIORITY
    assert st["depth"] == 5 and st["backend"] == q.backend
    assert q.get() == "high"
    assert q.get_many(3) == ["mid", "m1", "m2"]
    assert q.get(timeout=1) == "low"
    with pytest.raises(shmq.Empty):
        q.get(timeout=0.01)
    for bad in (-1, 10, True, 1.0, None):
        with pytest.raises(ValueError, match="priority"):
            q.put(1, priority=bad)
    assert q.stats()["levels"] == [0] * 10


def test_a_blocked_get_takes_the_highest_level(rpq):
    """BLPOP looks at the level lists highest first: a get that was waiting wakes with the
    highest message of a batch put at once."""
    q = rpq(levels=3)
    q.put_many(["a", "b"], priority=0)
    q.put("top", priority=2)
    assert q.get(timeout=5) == "top"
    assert q.get_many(5, timeout=1) == ["a", "b"]


def test_asyncio(rpq):
    import asyncio

    async def main(q):
        await q.put_async("low", 0)
        await q.put_async("high", priority=2, timeout=1)
        with pytest.raises(ValueError):
            await q.put_async("bad", priority=3)
        return [await q.get_async(timeout=1), await q.get_async(timeout=1)]

    assert asyncio.run(main(rpq(levels=3))) == ["high", "low"]


def test_kind_levels_and_gaps(rpq, redis_url, qname):
    rpq("-p", levels=4)
    f = shmq.Queue(qname + "-q", create=True, backend=redis_url)
    try:
        with pytest.raises(shmq.IncompatibleQueueError) as ei:
            shmq.Queue(qname + "-p", backend=redis_url)
        assert "priority queue" in str(ei.value) and "FIFO queue" in str(ei.value)
        with pytest.raises(shmq.IncompatibleQueueError) as ei:
            shmq.PriorityQueue(qname + "-q", backend=redis_url)
        assert "priority queue" in str(ei.value) and "FIFO queue" in str(ei.value)
        with shmq.open(qname + "-p", backend=redis_url) as p, shmq.open(qname + "-q", backend=redis_url) as g:
            assert isinstance(p, shmq.PriorityQueue) and p.levels == 4
            assert not isinstance(g, shmq.PriorityQueue)
        with pytest.raises(ValueError, match="levels=5"):
            shmq.PriorityQueue(qname + "-p", levels=5, backend=redis_url)
        with pytest.raises(shmq.QueueExistsError):
            shmq.PriorityQueue(qname + "-p", create=True, backend=redis_url)
        with shmq.PriorityQueue(qname + "-x", create=True, max_wait=1, backend=redis_url) as x:
            assert x.max_wait == 1.0
        shmq.unlink(qname + "-x", backend=redis_url)
        with pytest.raises(shmq.UnsupportedError, match="journal"):
            shmq.PriorityQueue(qname + "-x", create=True, journal="/tmp/nope", backend=redis_url)
        with pytest.raises(shmq.QueueNotFound):
            shmq.open(qname + "-none", backend=redis_url)
        a = shmq.PriorityQueue(qname + "-a", create=True, ack=True, levels=2, backend=redis_url)
        try:
            a.send(b"x", priority=0, group="g1")
            a.send(b"y", priority=1, group="g1")        # same group, sent later: waits for x
            assert a.stats()["depth"] == 2
            m = a.receive(timeout=1)
            assert (m.body, m.group) == (b"x", "g1")
            with pytest.raises(shmq.Empty):
                a.receive(timeout=0.1)
            m.ack()
            assert a.receive(timeout=1).body == b"y"
        finally:
            a.close()
    finally:
        f.close()
    shmq.unlink(qname + "-p", backend=redis_url)
    r = admin(redis_url)
    assert not list(r.scan_iter(match=f"shmq:{{{qname}-p}}:*"))     # every level's key went
    r.close()


def test_dead_letter_queue_is_a_priority_queue_with_the_same_levels(rpq, redis_url, qname):
    q = rpq(levels=7, ack=True, visibility_timeout=0.3)
    assert type(q).__name__ == "RedisReliablePriorityQueue" and q.dead_letter_queue == qname + ".dlq"
    with shmq.open(q.dead_letter_queue, backend=redis_url) as d:
        assert isinstance(d, shmq.PriorityQueue) and d.levels == 7 and d.dead_letter_queue is None
    r = shmq.PriorityQueue(qname, backend=redis_url)
    try:
        assert type(r) is type(q) and r.levels == 7
    finally:
        r.close()


def test_a_redelivery_goes_before_a_lower_new_message(rpq):
    """DESIGN §5.2 on Redis: a nacked high message is served before every lower level's new
    ones, in the one receive script."""
    q = rpq(levels=3, ack=True, visibility_timeout=30)
    q.send(b"high", priority=2)
    m = q.receive(timeout=5)
    for i in range(5):
        q.send(b"low%d" % i, priority=0)
    q.send(b"mid", priority=1)
    m.nack()
    got = q.receive_many(10, timeout=5)
    assert [x.body for x in got] == [b"high", b"mid"] + [b"low%d" % i for i in range(5)]
    assert [x.priority for x in got] == [2, 1, 0, 0, 0, 0, 0]
    assert q.ack_many(got) == 7
    st = q.stats()
    assert st["levels"] == [0, 0, 0] and st["in_flight"] == 0 and st["acked"] == 7


def _take_and_die(url, name, ready):
    q = shmq.PriorityQueue(name, backend=url)
    m = q.receive(timeout=10)
    ready.put((m.id, m.priority))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_consumer_is_redelivered_at_once_at_its_level(rpq, redis_url, qname):
    q = rpq(levels=4, ack=True, visibility_timeout=3600)     # an hour: only the death can bring it back
    q.send(b"low", priority=0)
    mid = q.send(b"high", priority=3)
    ctx = mp.get_context("fork")
    ready = ctx.SimpleQueue()
    p = ctx.Process(target=_take_and_die, args=(redis_url, qname, ready))
    p.start()
    p.join(60)
    assert ready.get() == (mid, 3)
    assert p.exitcode == -signal.SIGKILL
    # "at once" means once the server has seen the connection close: under load that can lag
    # the kill, and until then the dead consumer is alive to Redis (it is listed)
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    while any(f"-{p.pid}-" in (c.get("name") or "") for c in r.client_list()) and time.monotonic() < deadline:
        time.sleep(0.01)
    r.close()
    m = q.receive(timeout=20)
    assert (m.id, m.body, m.priority, m.delivery_count) == (mid, b"high", 3, 2)   # before low; counted
    assert m.ack() is True
    assert q.receive(timeout=5).body == b"low"
    ready.close()


def test_pickles(rpq):
    q = rpq(levels=3)
    q2 = pickle.loads(pickle.dumps(q))
    try:
        assert isinstance(q2, shmq.PriorityQueue) and q2.levels == 3 and q2.backend == q.backend
        q2.put("x", priority=2)
        assert q.get(timeout=5) == "x"
    finally:
        q2.close()


def test_forged_level_stamps_are_refused(rpq):
    q = rpq(levels=3, ack=True)
    q.send(b"x", priority=1)
    m = q.receive(timeout=5)
    tag, sid = m._token[0].split("/") if isinstance(m._token[0], str) else m._token[0].decode().split("/")
    assert tag == "1"
    for token in ((f"2/{sid}", m._token[1]), (f"9/{sid}", m._token[1]), (sid, m._token[1])):
        with pytest.raises(shmq.LeaseExpiredError):
            q._ack(token, m.id)
    assert m.ack() is True


def test_hostile_keys_are_clear_errors(rpq, redis_url, qname):
    q = rpq(levels=3, ack=True)
    r = admin(redis_url)
    r.xadd(q._streams[2], {"i": "7", "m": b"\x01"})                 # too short, at the top level
    with pytest.raises(shmq.CorruptQueueError):
        q.receive(timeout=5)
    q.send(b"fine", priority=0)
    assert q.receive(timeout=5).body == b"fine"
    r.hset(f"shmq:{{{qname}}}:meta", "levels", "99")
    with pytest.raises(shmq.CorruptQueueError, match="levels"):
        shmq.PriorityQueue(qname, backend=redis_url)
    r.close()
