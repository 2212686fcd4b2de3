"""Message groups (send(group=), Message.group) and Message.forward on at-least-once queues:
the rules of DESIGN §5.2, one by one, in one process."""
import asyncio
import time

import pytest

import shmq

BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


@pytest.fixture
def make_ack(qname):
    made = []

    def make(suffix="", **kw):
        kw.setdefault("capacity", "2MiB")
        q = shmq.Queue(qname + suffix, create=True, ack=True, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        name, dlq = q.name, q.dead_letter_queue
        q.close()
        for n in (name, dlq):
            if n:
                try:
                    shmq.unlink(n)
                except shmq.QueueNotFound:
                    pass


def _take_all(q, timeout=0.05):
    out = []
    while True:
        try:
            out.append(q.receive(timeout=timeout))
        except shmq.Empty:
            return out


def test_send_order_and_one_in_flight_per_group(make_ack):
    q = make_ack()
    for i in range(5):
        q.send(("a", i), group="a")
        q.send(("b", i), group="b")
    q.send(("u", 0))
    seen = {"a": [], "b": []}
    while True:
        batch = _take_all(q)
        if not batch:
            break
        grouped = [m.group for m in batch if m.group is not None]
        assert len(grouped) == len(set(grouped)), grouped   # never two of a group out
        for m in batch:
            if m.group is not None:
                seen[m.group].append(m.body[1])
            m.ack()
    assert seen == {"a": list(range(5)), "b": list(range(5))}


def test_ungrouped_and_other_groups_not_held_up(make_ack):
    q = make_ack()
    q.send("a0", group="a")
    q.send("a1", group="a")
    held = q.receive(timeout=1)
    assert held.body == "a0"
    q.send("u")
    q.send("b0", group="b")
    assert sorted(m.body for m in _take_all(q)) == ["b0", "u"]   # a1 waits for a0
    held.ack()
    assert q.receive(timeout=1).body == "a1"


def test_group_key_types_and_message_group(make_ack):
    q = make_ack()
    q.send(1, group="k")
    q.send(2, group=b"k")      # a different group from "k"
    q.send(3, group="é" * 64)  # 128 UTF-8 bytes: the limit
    q.send(4)
    ms = _take_all(q)
    assert {m.body: m.group for m in ms} == {1: "k", 2: b"k", 3: "é" * 64, 4: None}
    assert isinstance(ms[0].group, str) and isinstance(ms[1].group, bytes)


@pytest.mark.parametrize("bad,exc", [("x" * 129, ValueError), ("é" * 65, ValueError), (b"x" * 129, ValueError),
                                     (12, TypeError), (["a"], TypeError)])
def test_bad_group_keys(make_ack, bad, exc):
    q = make_ack()
    with pytest.raises(exc) as ei:
        q.send("x", group=bad)
    assert isinstance(ei.value, shmq.ShmqError)
    assert q.stats()["depth"] == 0


def test_nack_redelivers_before_later_ones(make_ack):
    q = make_ack()
    for i in range(3):
        q.send(i, group="g")
    m = q.receive(timeout=1)
    m.nack()
    m = q.receive(timeout=1)
    assert (m.body, m.delivery_count) == (0, 2)
    m.ack()
    assert [x.body for x in _take_all(q)] == [1]


def test_nack_with_delay_holds_the_group(make_ack):
    q = make_ack()
    q.send("first", group="g")
    q.send("second", group="g")
    q.receive(timeout=1).nack(delay=0.3)
    t0 = time.monotonic()
    m = q.receive(timeout=5)
    assert m.body == "first" and time.monotonic() - t0 >= 0.25   # not "second" meanwhile
    m.ack()
    assert q.receive(timeout=1).body == "second"


def test_lease_expiry_returns_the_head(make_ack):
    q = make_ack(visibility_timeout=0.2)
    q.send("h", group="g")
    q.send("t", group="g")
    q.receive(timeout=1)               # never acked
    m = q.receive(timeout=5)
    assert (m.body, m.delivery_count) == ("h", 2)


def test_dead_lettering_releases_the_group(make_ack):
    q = make_ack(max_deliveries=2)
    q.send("poison", group="g")
    q.send("next", group="g")
    q.receive(timeout=1).nack()
    q.receive(timeout=1).nack()        # second failure: dead-lettered
    assert q.receive(timeout=1).body == "next"
    with shmq.Queue(q.dead_letter_queue) as dlq:
        d = dlq.receive(timeout=1)
        assert d.body == "poison" and d.group is None
        assert d.headers["x-dead-letter-reason"] == "max_deliveries"
        d.ack()


def test_reject_releases_the_group(make_ack):
    q = make_ack()
    q.send("bad", group="g")
    q.send("good", group="g")
    q.receive(timeout=1).nack(requeue=False)
    assert q.receive(timeout=1).body == "good"


def test_ttl_applies_when_its_turn_comes(make_ack):
    q = make_ack()
    q.send("head", group="g")
    q.send("short", group="g", ttl=0.1)
    q.send("last", group="g")
    h = q.receive(timeout=1)
    time.sleep(0.2)
    h.ack()
    assert q.receive(timeout=1).body == "last"   # "short" expired while it waited
    assert q.stats()["expired"] >= 1


def test_delay_on_a_grouped_send(make_ack):
    q = make_ack()
    q.send("later", group="g", delay=0.3)
    t0 = time.monotonic()
    assert q.receive(timeout=5).body == "later"
    assert time.monotonic() - t0 >= 0.25


def test_dedup_with_groups(make_ack):
    q = make_ack()
    a = q.send("x", group="g", dedup_id="d1")
    assert q.send("x", group="g", dedup_id="d1") == a
    q.send("y", group="g")
    assert [m.body for m in _take_all(q)] == ["x"]


def test_depth_counts_waiting_members(make_ack):
    q = make_ack()
    for i in range(4):
        q.send(i, group="g")
    st = q.stats()
    assert st["depth"] == 4 and st["delayed"] == 0
    q.receive(timeout=1)
    st = q.stats()
    assert st["depth"] == 3 and st["in_flight"] == 1


def test_plain_get_moves_the_group_on(make_ack):
    q = make_ack()
    q.send("a", group="g")
    q.send("b", group="g")
    assert q.get(timeout=1) == "a"
    assert q.get(timeout=1) == "b"


def test_close_with_unacked_head_returns_it_first(make_ack, qname):
    q = make_ack()
    q.send("h", group="g")
    q.send("t", group="g")
    other = shmq.Queue(qname)
    assert other.receive(timeout=1).body == "h"
    other.close()                       # unacked: back at the head at once
    m = q.receive(timeout=1)
    assert (m.body, m.delivery_count) == ("h", 2)


@pytest.mark.shm_only("the group table of a segment: on Redis a group is a key, there is no table to fill")
def test_group_table_full(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="16MiB")
    try:
        n = 0
        with pytest.raises(shmq.Full) as ei:
            for n in range(5000):
                q.send(n, group=f"g{n}")
        assert ei.value.reason == "groups" and 4000 <= n < 4096
        q.send("existing group still works", group="g1")
        q.send("ungrouped still works")
        m = q.receive(timeout=1)
        m.ack()                          # the first group empties: its entry frees
        q.send("a new group fits again", group="new")
    finally:
        q.close()
        shmq.unlink(qname)
        shmq.unlink(qname + ".dlq")


def test_send_async_with_group(make_ack):
    q = make_ack()

    async def main():
        await q.send_async("a", group="g")
        await q.send_async("b", group="g")

    asyncio.run(main())
    m = q.receive(timeout=1)
    assert (m.body, m.group) == ("a", "g")


# ---------------------------------------------------------------- forward

def test_forward_acks_and_sends(make_ack):
    src, dst = make_ack("-src"), make_ack("-dst")
    src.send("in", headers={"k": "v"})
    m = src.receive(timeout=1)
    nid = m.forward(dst, "out", headers={"stage": "2"}, priority=3, group="g")
    assert m.ack() is False              # already acked by the forward
    with pytest.raises(shmq.Empty):
        src.receive(timeout=0.05)
    o = dst.receive(timeout=1)
    assert (o.id, o.body, o.headers, o.priority, o.group) == (nid, "out", {"stage": "2"}, 3, "g")
    assert src.stats()["acked"] == 1


def test_forward_to_the_same_queue(make_ack):
    q = make_ack()
    q.send(1)
    m = q.receive(timeout=1)
    m.forward(q, 2)
    assert q.receive(timeout=1).body == 2


def test_forward_stale_lease_sends_nothing(make_ack):
    src, dst = make_ack("-src", visibility_timeout=0.1), make_ack("-dst")
    src.send("in")
    m = src.receive(timeout=1)
    time.sleep(0.2)
    again = src.receive(timeout=1)       # delivered to someone else
    with pytest.raises(shmq.LeaseExpiredError):
        m.forward(dst, "out")
    with pytest.raises(shmq.Empty):
        dst.receive(timeout=0.05)
    assert again.forward(dst, "out2") > 0
    assert dst.receive(timeout=1).body == "out2"


def test_forward_full_sends_nothing_and_keeps_the_delivery(make_ack):
    src, dst = make_ack("-src"), make_ack("-dst", maxsize=1)
    dst.send("filler")
    src.send("in")
    m = src.receive(timeout=1)
    with pytest.raises(shmq.Full):
        m.forward(dst, "out", block=False)
    assert dst.stats()["depth"] == 1
    dst.receive(timeout=1).ack()
    m.forward(dst, "out")                # still ours: forwarded now
    assert dst.receive(timeout=1).body == "out"


def test_forward_of_a_grouped_message_releases_its_group(make_ack):
    src, dst = make_ack("-src"), make_ack("-dst")
    src.send("a0", group="a")
    src.send("a1", group="a")
    src.receive(timeout=1).forward(dst, "x")
    assert src.receive(timeout=1).body == "a1"


def test_forward_bad_arguments(make_ack, qname):
    src, dst = make_ack("-src"), make_ack("-dst")
    src.send("in")
    m = src.receive(timeout=1)
    plain = shmq.Queue(qname + "-plain", create=True, capacity="1MiB")
    try:
        with pytest.raises(TypeError):
            m.forward(plain, "x")
        with pytest.raises(ValueError):
            m.forward(dst, "x", dedup_id="no")
        with pytest.raises(TypeError):
            m.forward(dst, "x", colour="red")
        with pytest.raises(ValueError):
            m.forward(dst, "x", group="k" * 200)
    finally:
        plain.close()
        shmq.unlink(qname + "-plain")
    m.forward(dst, "ok")                  # none of those touched the delivery
    with pytest.raises(ValueError):
        m.forward(dst, "twice")           # this delivery is over


@pytest.mark.shm_only("dedup_capacity= sizes a segment's dedup table; on Redis a dedup id is a key with a TTL")
def test_forwards_do_not_fill_the_destination_dedup_table(make_ack):
    src, dst = make_ack("-src"), make_ack("-dst", dedup_capacity=64)
    for i in range(500):                 # far more than dst's 64 dedup entries, inside its window
        src.send(i)
        src.receive(timeout=1).forward(dst, i)
        m = dst.receive(timeout=1)
        assert m.body == i
        m.ack()
    assert dst.stats()["dedup_hits"] == 0


def test_priority_is_carried_and_group_order_wins_on_a_plain_queue(make_ack):
    q = make_ack()
    q.send("low first", group="g", priority=1)
    q.send("high second", group="g", priority=9)
    m = q.receive(timeout=1)
    assert (m.body, m.priority) == ("low first", 1)      # send order within the group, not priority
    m.nack()
    m = q.receive(timeout=1)
    assert (m.body, m.priority, m.delivery_count) == ("low first", 1, 2)
    m.ack()
    m = q.receive(timeout=1)
    assert (m.body, m.priority) == ("high second", 9)    # kept through its wait in the group


@pytest.mark.shm_only("_purge is not mapped to Redis (docs/guide/redis.md, gaps)")
def test_purge_of_held_messages_leaves_working_groups(make_ack):
    q = make_ack()
    for i in range(4):
        q.send(i, group="g")
        q.send(i, group="h")
    q.receive(timeout=1)                 # one head out, the rest parked
    assert q._core._purge(True) == 8
    assert q.stats()["depth"] == 0 and q.stats()["in_flight"] == 0
    q.send("a", group="g")
    q.send("b", group="g")
    assert [m.body for m in _take_all(q)] == ["a"]   # a fresh group, one out at a time
