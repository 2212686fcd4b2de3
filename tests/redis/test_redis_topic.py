"""Topic on the Redis backend (DESIGN §11, §5.3) against a real redis-server: what the
both-backends tests in tests/unit/test_topic.py cannot say there (a server restart keeping a
named subscription's position, processes sharing one subscription, a killed member, what
capacity means, hostile entries, the gaps)."""
import multiprocessing as mp
import os
import pickle
import signal
import time

import pytest

import shmq
from _redisfix import RedisServer

redis = pytest.importorskip("redis")


@pytest.fixture
def rtopic(redis_url, qname):
    made = []

    def make(suffix="", **kw):
        t = shmq.Topic(qname + suffix, create=True, backend=redis_url, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def test_a_restart_with_appendonly_keeps_a_named_position(qname):
    srv = RedisServer(appendonly=True)
    try:
        t = shmq.Topic(qname, create=True, backend=srv.url)
        s = t.subscribe("audit", start="earliest")
        assert t.publish_many([b"%d" % i for i in range(10)]) == list(range(1, 11))
        assert [m.body for m in s.get_many(4, timeout=5)] == [b"0", b"1", b"2", b"3"]
        t.close()
        srv.kill()                        # SIGKILL: only the append-only file is left
        srv.start()
        t = shmq.Topic(qname, backend=srv.url)
        try:
            info = [i for i in t.subscriptions() if i.name == "audit"][0]
            assert info.lag == 6 and info.missed == 0 and info.durable
            s = t.subscribe("audit", start="latest")         # exists: keeps its position
            assert [m.body for m in s.get_many(64, timeout=5)] == [b"%d" % i for i in range(4, 10)]
            assert t.publish(b"after") == 11                  # the seq counter survived too
            assert s.get(timeout=5).body == b"after"
        finally:
            t.close()
    finally:
        srv.stop()


def _member(url, name, n_total, out):
    t = shmq.Topic(name, backend=url)
    s = t.subscribe("workers")
    got = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            got += [m.seq for m in s.get_many(16, timeout=0.5)]
        except shmq.Empty:
            if t.subscriptions()[0].lag == 0:
                break
    out.put(got)
    t.close()


def test_processes_under_one_name_get_different_messages(rtopic, redis_url, qname):
    t = rtopic()
    t.subscribe("workers", start="earliest").close()       # created before publishing: nothing is missed
    ctx = mp.get_context("fork")
    out = ctx.SimpleQueue()
    ps = [ctx.Process(target=_member, args=(redis_url, qname, 600, out)) for _ in range(3)]
    for p in ps:
        p.start()
    t.publish_many([i.to_bytes(2, "little") for i in range(600)])
    results = [out.get() for _ in ps]
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    everything = sorted(x for r in results for x in r)
    assert everything == list(range(1, 601))                  # each message to exactly one member
    out.close()


def _join_and_die(url, name, ready):
    t = shmq.Topic(name, backend=url)
    t.subscribe("g")
    ready.put(1)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_member_stops_counting_and_the_position_stays(rtopic, redis_url, qname):
    t = rtopic()
    s = t.subscribe("g", start="earliest")
    t.publish_many([b"a", b"b"])
    assert s.get(timeout=5).body == b"a"
    ctx = mp.get_context("fork")
    ready = ctx.SimpleQueue()
    p = ctx.Process(target=_join_and_die, args=(redis_url, qname, ready))
    p.start()
    p.join(60)
    assert ready.get() == 1 and p.exitcode == -signal.SIGKILL
    assert [i.consumers for i in t.subscriptions() if i.name == "g"] == [1]   # the dead one is not counted
    assert s.get(timeout=5).body == b"b"
    ready.close()


def test_capacity_counts_messages_and_the_gate(rtopic):
    t = rtopic(capacity=64 * 1024)                    # 64 messages of any size
    assert t.stats()["log_entries"] == 64
    s = t.subscribe("careful")
    n = 0
    with pytest.raises(shmq.Full) as ei:
        while True:
            t.publish(b"x" * 5000, block=False)
            n += 1
    assert n == 64 and "on_slow='block'" in str(ei.value)
    assert len(s.get_many(64, timeout=5)) == 64
    lossy = t.subscribe("lossy", on_slow="drop_oldest")
    t.unsubscribe("careful")
    t.publish_many([b"y"] * 100)
    assert t.stats()["depth"] == 64 and t.stats()["dropped"] == 100
    got = []
    while True:
        try:
            got += lossy.get_many(64, timeout=0.05)
        except shmq.Empty:
            break
    assert len(got) == 64 and lossy.missed == 36


def test_kinds_gaps_and_pickling(rtopic, redis_url, qname):
    t = rtopic()
    with pytest.raises(shmq.IncompatibleQueueError, match="topic"):
        shmq.Queue(qname, backend=redis_url)
    with pytest.raises(shmq.IncompatibleQueueError, match="topic"):
        shmq.PriorityQueue(qname, backend=redis_url)
    q = shmq.Queue(qname + "-q", create=True, backend=redis_url)
    try:
        with pytest.raises(shmq.IncompatibleQueueError, match="not a topic"):
            shmq.Topic(qname + "-q", backend=redis_url)
    finally:
        q.close()
    with shmq.open(qname, backend=redis_url) as o:
        assert isinstance(o, shmq.Topic)
    with pytest.raises(shmq.UnsupportedError, match="mode="):
        shmq.Topic(qname + "-m", create=True, mode=0o640, backend=redis_url)
    t2 = pickle.loads(pickle.dumps(t))
    try:
        s = t.subscribe()
        assert t2.publish(b"via pickle") == 1
        assert s.get(timeout=5).body == b"via pickle" and t.peek(1).body == b"via pickle"
    finally:
        t2.close()
    shmq.unlink(qname, backend=redis_url)
    with pytest.raises(shmq.QueueNotFound):
        shmq.Topic(qname, backend=redis_url)


def test_a_foreign_entry_is_a_clear_error(rtopic, redis_url):
    t = rtopic()
    s = t.subscribe()
    r = redis.Redis.from_url(redis_url)
    r.xadd(t._stream, {"m": b"\x01"}, id="1-0")              # too short
    with pytest.raises(shmq.CorruptQueueError):
        s.get(timeout=5)
    r.close()


def _take_and_die(url, name, ready):
    t = shmq.Topic(name, backend=url)
    s = t.subscribe("jobs", ack=True, visibility_timeout=3600)
    m = s.get(timeout=10)
    ready.put(m.seq)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_members_ack_deliveries_come_back_at_once(rtopic, redis_url, qname):
    t = rtopic()
    s = t.subscribe("jobs", start="earliest", ack=True, visibility_timeout=3600)   # only the death brings it back
    other = t.subscribe("audit", start="earliest")                                   # sees everything, unaffected
    t.publish_many([b"first", b"second"])
    ctx = mp.get_context("fork")
    ready = ctx.SimpleQueue()
    p = ctx.Process(target=_take_and_die, args=(redis_url, qname, ready))
    p.start()
    p.join(60)
    assert ready.get() == 1 and p.exitcode == -signal.SIGKILL
    got = sorted((m.seq, m.delivery_count) for m in s.get_many(2, timeout=20) + s.get_many(2, timeout=20))
    assert got == [(1, 2), (2, 1)]                          # the dead member's delivery, counted
    info = t.stats()["subscriptions"]["jobs"]
    assert info["redelivered"] == 1 and info["in_flight"] == 2
    assert [m.body for m in other.get_many(8, timeout=5)] == [b"first", b"second"]
    ready.close()


def test_ack_subscription_dead_letters_to_a_redis_queue(rtopic, redis_url, qname):
    t = rtopic()
    s = t.subscribe("w", start="earliest", ack=True, max_deliveries=1)
    t.publish(b"poison", headers={"k": "v"})
    s.get(timeout=5).nack()                                  # its next delivery would exceed 1
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.2)
    with shmq.Queue(qname + ".w.dlq", backend=redis_url) as d:
        m = d.receive(timeout=5)
        assert (m.body, m.headers["k"], m.headers["x-original-seq"]) == (b"poison", "v", "1")
        assert m.headers["x-dead-letter-reason"] == "max-deliveries" and m.headers["x-dead-letter-source"] == qname
        m.ack()
    assert t.peek(1).body == b"poison"                       # the log keeps it for the other subscriptions


def test_the_same_stats_keys_as_a_shared_memory_topic(rtopic, qname):
    t = rtopic()
    rsubs = [t.subscribe("a", ack=True), t.subscribe("b"), t.subscribe()]
    local = shmq.Topic(qname + "-local", create=True, capacity="1MiB", backend="shm")
    try:
        lsubs = [local.subscribe("a", ack=True), local.subscribe("b"), local.subscribe()]
        ls, rs = local.stats(), t.stats()
        assert set(ls) <= set(rs) and rs["backend"] == t.backend
        for name in ("a", "b"):
            assert set(ls["subscriptions"][name]) == set(rs["subscriptions"][name])
        for lsub, rsub in zip(lsubs, rsubs):      # Subscription.stats(): the same keys and kind
            lst, rst = lsub.stats(), rsub.stats()
            assert set(lst) == set(rst) and lst["kind"] == rst["kind"], (lst, rst)
            assert rst["wait_p50_s"] is None
    finally:
        local.close()
        for n in (qname + "-local", qname + "-local.a.dlq"):
            try:
                shmq.unlink(n, backend="shm")
            except shmq.QueueNotFound:
                pass


def test_asyncio_gets(rtopic):
    import asyncio
    t = rtopic()
    p = t.subscribe()
    a = t.subscribe("acked", ack=True)

    async def main():
        with pytest.raises(shmq.Empty):
            await p.get_async(timeout=0.05)
        t.publish_many([b"x", b"y"])
        got = [(await p.get_async(timeout=5)).body, [m.body for m in await p.get_many_async(8, timeout=5)]]
        d = await a.get_async(timeout=5)
        assert d.ack() is True
        got.append([m.body for m in await a.get_many_async(8, timeout=5)])
        return got

    assert asyncio.run(main()) == [b"x", [b"y"], [b"y"]]
