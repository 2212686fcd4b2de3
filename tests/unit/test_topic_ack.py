"""ack=True topic subscriptions: leases, redelivery with delivery counts, max_deliveries and
dead letters, stale acks, extend, groups, the block gate held by unacked messages."""
import time

import pytest

import shmq

BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


@pytest.fixture
def topic(qname):
    t = shmq.Topic(qname, create=True, capacity="1MiB")
    yield t
    t.close()
    for n in (qname, qname + ".work.dlq", qname + "-dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


def test_ack_nack_expiry_and_counts(topic):
    s = topic.subscribe("work", start="earliest", ack=True, visibility_timeout=0.2, max_deliveries=5)
    topic.publish_many([b"a", b"b"])
    a = s.get(timeout=1)
    assert (a.seq, a.body, a.delivery_count) == (1, b"a", 1)
    assert a.ack() is True and a.ack() is False
    b = s.get(timeout=1)
    b.nack()
    b2 = s.get(timeout=1)
    assert (b2.seq, b2.delivery_count) == (2, 2)
    time.sleep(0.3)                                     # the lease runs out
    b3 = s.get(timeout=2)
    assert (b3.seq, b3.delivery_count) == (2, 3)
    with pytest.raises(shmq.LeaseExpiredError):
        b2.ack()                                        # delivered again: the old ack changes nothing
    b3.ack()
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.3)
    info = topic.stats()["subscriptions"]["work"]
    assert info["acked"] == 2 and info["redelivered"] == 2 and info["in_flight"] == 0 and info["lag"] == 0


def test_an_expired_lease_not_yet_redelivered_can_still_be_acked(topic):
    s = topic.subscribe("work", start="earliest", ack=True, visibility_timeout=0.05)
    topic.publish(b"x")
    m = s.get(timeout=1)
    time.sleep(0.1)
    assert m.ack() is True
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.2)


def test_extend_keeps_it_in_flight(topic):
    s = topic.subscribe("work", start="earliest", ack=True, visibility_timeout=0.1)
    topic.publish(b"x")
    m = s.get(timeout=1)
    m.extend(5)
    time.sleep(0.2)
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.1)
    assert m.ack() is True


def test_max_deliveries_dead_letters(topic, qname):
    s = topic.subscribe("work", start="earliest", ack=True, max_deliveries=2)
    topic.publish(b"poison", headers={"k": "v"})
    topic.publish(b"fine")
    s.get(timeout=1).nack()
    m = s.get(timeout=1)
    assert m.delivery_count == 2 and m.body == b"poison"
    m.nack()
    ok = s.get(timeout=1)                 # the poison one went to the dead-letter queue instead
    assert ok.body == b"fine"
    ok.ack()
    dlq = shmq.Queue(qname + ".work.dlq")
    try:
        d = dlq.receive(timeout=1)
        assert d.body == b"poison"
        assert d.headers["x-dead-letter-reason"] == "max-deliveries"
        assert d.headers["x-delivery-count"] == "2" and d.headers["x-original-seq"] == "1"
        d.ack()
    finally:
        dlq.close()
    assert topic.stats()["subscriptions"]["work"]["dead_lettered"] == 1


def test_nack_without_requeue_rejects(topic, qname):
    s = topic.subscribe("work", start="earliest", ack=True, dead_letter=qname + "-dlq")
    topic.publish(b"bad")
    s.get(timeout=1).nack(requeue=False)
    dlq = shmq.Queue(qname + "-dlq")
    try:
        d = dlq.receive(timeout=1)
        assert d.body == b"bad" and d.headers["x-dead-letter-reason"] == "rejected"
        d.ack()
    finally:
        dlq.close()


def test_group_members_share_and_unacked_gate_block_publishers(qname):
    t = shmq.Topic(qname, create=True, capacity="256KiB")   # 256 leases; about 100 messages of 2000 B fit
    other = shmq.Topic(qname)
    try:
        a = t.subscribe("g", start="earliest", ack=True)
        b = other.subscribe("g", ack=True)
        n = 0
        with pytest.raises(shmq.Full):
            while True:
                t.publish(b"x" * 2000, block=False)
                n += 1
        held = []
        for i in range(n):
            held.append((a if i % 2 else b).get(timeout=1))
        assert sorted(m.seq for m in held) == list(range(1, n + 1))
        with pytest.raises(shmq.Full):       # delivered but unacked: still not consumed
            t.publish(b"x" * 2000, block=False)
        for m in held:
            m.ack()
        t.publish(b"x" * 2000, block=False)
    finally:
        other.close()
        t.close()
        shmq.unlink(qname)


def test_unsubscribe_ends_deliveries(topic):
    s = topic.subscribe("work", start="earliest", ack=True)
    topic.publish(b"x")
    m = s.get(timeout=1)
    topic.unsubscribe("work")
    with pytest.raises(shmq.LeaseExpiredError):
        m.ack()
    with pytest.raises(shmq.SubscriptionNotFound):
        s.get(timeout=0.1)


def test_ack_arguments(topic):
    with pytest.raises(ValueError):
        topic.subscribe(ack=True)
    with pytest.raises(ValueError):
        topic.subscribe("w", ack=True, visibility_timeout=0)
    with pytest.raises(ValueError):
        topic.subscribe("w", ack=True, max_deliveries=0)
    topic.subscribe("plain")
    with pytest.raises(ValueError, match="other options"):
        topic.subscribe("plain", ack=True)
