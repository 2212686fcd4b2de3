"""shmq.Topic in one process: sequence numbers, subscription kinds, overrun accounting, durable
positions, groups, unsubscribe, retention, stats and argument errors (DESIGN §5.3)."""
import os
import pickle
import time

import pytest

import shmq

SMALL = 64 * 1024   # the smallest topic: 64 log entries
BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


@pytest.fixture
def topic(qname):
    made = []

    def make(suffix="", **options):
        options.setdefault("capacity", "1MiB")
        t = shmq.Topic(qname + suffix, create=True, **options)
        made.append(t)
        return t

    yield make
    for t in made:
        name = t.name
        t.close()
        try:
            shmq.unlink(name)
        except shmq.QueueNotFound:
            pass


def drain(sub, timeout=0.05):
    out = []
    while True:
        try:
            out.extend(sub.get_many(64, timeout=timeout))
        except shmq.Empty:
            return out


def test_seq_numbers_and_private_subscription_starts_at_latest(topic):
    t = topic()
    assert t.publish(b"before") == 1
    s = t.subscribe()
    assert [t.publish(b"m%d" % i) for i in range(3)] == [2, 3, 4]
    assert t.publish_many([b"x", {"k": 1}, 7]) == [5, 6, 7]
    got = drain(s)
    assert [m.seq for m in got] == [2, 3, 4, 5, 6, 7]
    assert [m.id for m in got] == [m.seq for m in got]
    assert [m.body for m in got] == [b"m0", b"m1", b"m2", b"x", {"k": 1}, 7]
    assert s.lag == 0 and s.missed == 0
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.01)
    with pytest.raises(shmq.Empty):
        s.get_nowait()


@pytest.mark.shm_only("bytes_used counts the segment's log; on Redis the message is one stream entry too, but its memory is the server's (no bytes_used)")
def test_every_subscription_sees_every_message_once_stored(topic):
    t = topic()
    subs = [t.subscribe() for _ in range(5)] + [t.subscribe(f"n{i}") for i in range(3)]
    before = t.stats()["bytes_used"]
    t.publish(b"z" * 1000)
    # stored once: the log grew by one message's bytes, whatever the number of subscribers
    assert 1000 <= t.stats()["bytes_used"] - before < 1100
    for s in subs:
        assert s.get(timeout=1).body == b"z" * 1000


def test_headers_timestamp_and_types(topic):
    t = topic()
    s = t.subscribe()
    t0 = time.time()
    t.publish(bytearray(b"ba"), headers={"a": "1", "b": b"\x00"})
    t.publish(b"")
    m = s.get(timeout=1)
    assert m.body == bytearray(b"ba") and type(m.body) is bytearray
    assert m.headers == {"a": "1", "b": b"\x00"}
    assert abs(m.timestamp - t0) < 5
    m2 = s.get(timeout=1)
    assert m2.body == b"" and m2.headers == {}
    assert pickle.loads(pickle.dumps(m)).headers == m.headers


def test_private_overrun_counted_exactly(topic):
    t = topic(capacity=SMALL)
    n_entries = t.stats()["log_entries"]
    s = t.subscribe()
    total = n_entries * 5 + 3
    for i in range(total):
        t.publish(i.to_bytes(4, "little"))
    got = [int.from_bytes(m.body, "little") for m in drain(s)]
    assert got == sorted(got) and len(set(got)) == len(got)
    assert s.missed + len(got) == total
    assert s.missed >= total - n_entries
    assert got[-1] == total - 1


def test_drop_oldest_named_overrun_counted_exactly(topic):
    t = topic(capacity=SMALL)
    s = t.subscribe("slowpoke", on_slow="drop_oldest")
    total = 1000
    t.publish_many([i.to_bytes(4, "little") for i in range(total)])
    got = [int.from_bytes(m.body, "little") for m in drain(s)]
    assert got == list(range(total - len(got), total))
    assert s.missed == total - len(got) > 0
    assert t.stats()["subscriptions"]["slowpoke"]["missed"] == s.missed


def test_block_subscription_gates_publishers(topic):
    t = topic(capacity=SMALL)
    s = t.subscribe("careful")              # on_slow="block" is the default for named ones
    published = 0
    with pytest.raises(shmq.Full) as ei:
        while True:
            t.publish(b"x" * 100, block=False)
            published += 1
    assert published > 0
    with pytest.raises(shmq.Full):
        t.publish(b"y", timeout=0.05)
    with pytest.raises(shmq.Full) as ei:
        t.publish_many([b"a"] * 10, timeout=0.01)
    assert ei.value.items_put == 0
    assert len(drain(s)) == published and s.missed == 0
    assert t.publish(b"after", timeout=1) == published + 1
    assert s.get(timeout=1).body == b"after"


def test_private_and_drop_oldest_never_gate(topic):
    t = topic(capacity=SMALL)
    t.subscribe()
    t.subscribe("lossy", on_slow="drop_oldest")
    for i in range(2000):
        t.publish(b"p", block=False)   # never Full


def test_start_positions(topic):
    t = topic()
    t.publish_many([b"a", b"b", b"c"])
    mid = time.time()
    time.sleep(0.02)
    t.publish_many([b"d", b"e"])
    assert [m.body for m in drain(t.subscribe("e1", start="earliest"))] == [b"a", b"b", b"c", b"d", b"e"]
    assert [m.body for m in drain(t.subscribe("s3", start=3))] == [b"c", b"d", b"e"]
    assert [m.body for m in drain(t.subscribe("tm", start=mid))] == [b"d", b"e"]
    assert drain(t.subscribe("lt", start="latest")) == []
    assert [m.body for m in drain(t.subscribe(start="earliest"))] == [b"a", b"b", b"c", b"d", b"e"]
    assert [m.body for m in drain(t.subscribe(start=mid))] == [b"d", b"e"]
    fut = t.subscribe("future", start=7)
    t.publish_many([b"f", b"g", b"h"])
    assert [m.seq for m in drain(fut)] == [7, 8]


def test_start_applies_only_at_creation(topic):
    t = topic()
    t.publish_many([b"1", b"2"])
    s = t.subscribe("once", start="earliest")
    assert s.get(timeout=1).body == b"1"
    s.close()
    again = t.subscribe("once", start="latest")   # exists: keeps its position
    assert again.get(timeout=1).body == b"2"


def test_named_position_is_durable_across_handles(topic, qname):
    t = topic()
    s = t.subscribe("audit", start="earliest")
    t.publish_many([b"%d" % i for i in range(10)])
    assert [m.body for m in s.get_many(4, timeout=1)] == [b"0", b"1", b"2", b"3"]
    s.close()
    assert [i for i in t.subscriptions() if i.name == "audit"][0].consumers == 0
    other = shmq.Topic(qname)
    try:
        info = [i for i in other.subscriptions() if i.name == "audit"][0]
        assert info.lag == 6 and info.durable and info.consumers == 0
        s2 = other.subscribe("audit")
        assert [m.body for m in drain(s2)] == [b"%d" % i for i in range(4, 10)]
    finally:
        other.close()


def test_group_in_one_process_splits_messages(topic, qname):
    t = topic()
    other = shmq.Topic(qname)
    try:
        a = t.subscribe("workers", start="earliest")
        b = other.subscribe("workers")
        t.publish_many([i.to_bytes(2, "little") for i in range(300)])
        got_a, got_b = [], []
        for _ in range(200):
            try:
                got_a += [m.seq for m in a.get_many(7, timeout=0)]
            except shmq.Empty:
                pass
            try:
                got_b += [m.seq for m in b.get_many(5, timeout=0)]
            except shmq.Empty:
                pass
        assert sorted(got_a + got_b) == list(range(1, 301))
        assert got_a and got_b and not set(got_a) & set(got_b)
        assert [i.consumers for i in t.subscriptions() if i.name == "workers"] == [2]
    finally:
        other.close()


def test_unsubscribe(topic):
    t = topic()
    s = t.subscribe("gone")
    t.unsubscribe("gone")
    with pytest.raises(shmq.SubscriptionNotFound):
        s.get(timeout=1)
    with pytest.raises(shmq.SubscriptionNotFound):
        t.unsubscribe("gone")
    with pytest.raises(LookupError):
        t.unsubscribe("never")
    assert [i.name for i in t.subscriptions()] == []
    fresh = t.subscribe("gone", start="latest", on_slow="drop_oldest")   # a new one, new options
    t.publish(b"x")
    assert fresh.get(timeout=1).body == b"x"


def test_unsubscribe_releases_the_gate(topic):
    t = topic(capacity=SMALL)
    t.subscribe("blocker")
    with pytest.raises(shmq.Full):
        for _ in range(10000):
            t.publish(b"x", block=False)
    t.unsubscribe("blocker")
    t.publish(b"x", block=False)


def test_other_on_slow_is_refused(topic):
    t = topic()
    t.subscribe("x", on_slow="block")
    with pytest.raises(ValueError, match="other options"):
        t.subscribe("x", on_slow="drop_oldest")


def test_retention_drops_old_messages_counted_in_missed(topic):
    t = topic(retention=0.2)
    s = t.subscribe("r", start="earliest")
    p = t.subscribe()
    t.publish_many([b"old"] * 5)
    time.sleep(0.3)
    with pytest.raises(shmq.Empty):
        s.get(timeout=0.01)
    with pytest.raises(shmq.Empty):
        p.get(timeout=0.01)
    assert s.missed == 5 and p.missed == 5
    t.publish(b"new")
    assert s.get(timeout=1).body == b"new"
    assert t.stats()["retention"] == pytest.approx(0.2)
    assert t.stats()["depth"] <= 1


def test_retention_overrides_block_gate(topic):
    t = topic(capacity=SMALL, retention=0.1)
    s = t.subscribe("stuck")
    with pytest.raises(shmq.Full):
        for _ in range(10000):
            t.publish(b"x", block=False)
    time.sleep(0.2)
    t.publish(b"x", block=False)     # the expired ones were dropped, even unread
    assert s.get(timeout=1).body == b"x" and s.missed > 0


def test_iteration_ends_when_closed(topic):
    t = topic()
    s = t.subscribe()
    t.publish_many([b"1", b"2"])
    seen = []
    for m in s:
        seen.append(m.body)
        if len(seen) == 2:
            s.close()
    assert seen == [b"1", b"2"]
    with pytest.raises(shmq.QueueClosedError):
        s.get(timeout=0)


def test_topic_close_ends_its_subscriptions(topic, qname):
    other = topic()
    t = shmq.Topic(qname)
    s = t.subscribe()
    t.close()
    assert s.closed
    with pytest.raises(shmq.QueueClosedError):
        s.get(timeout=0)
    with pytest.raises(shmq.QueueClosedError):
        t.publish(b"x")
    other.publish(b"still works")


def test_stats_and_peek(topic):
    t = topic()
    t.subscribe("s1", start="earliest")
    t.publish_many([b"a", {"b": 2}])
    st = t.stats()
    for k in ("depth", "bytes_used", "capacity", "in_flight", "delayed", "producers", "consumers", "enqueued",
              "dequeued", "acked", "redelivered", "dead_lettered", "expired", "oldest_age_s", "repairs",
              "skipped_cells", "last_repair_ms"):
        assert k in st
    assert shmq.stats.kind_name(st) == "topic" and st["depth"] == 2 and st["published"] == 2 and st["next_seq"] == 3
    s1 = dict(st["subscriptions"]["s1"])
    latency = {k: s1.pop(k) for k in ("wait_p50_s", "wait_p99_s", "process_p50_s", "process_p99_s") if k in s1}
    assert list(st["subscriptions"]) == ["s1"]
    assert s1 == {"lag": 2, "missed": 0, "consumers": 1, "durable": True, "on_slow": "block", "delivered": 0}
    assert all(v is None for v in latency.values())   # nothing delivered yet: no sample
    assert t.peek(2).body == {"b": 2} and t.peek(1).seq == 1
    assert t.peek(3) is None
    assert t.stats()["depth"] == 2   # peek moved nothing


def test_message_too_large(topic):
    t = topic(max_message=1000)
    with pytest.raises(shmq.MessageTooLargeError):
        t.publish(b"x" * 1001)
    with pytest.raises(ValueError):
        t.publish(b"x" * 1001)
    t.publish(b"x" * 990)


def test_kinds_do_not_mix(topic, qname, make_queue):
    topic()
    with pytest.raises(shmq.IncompatibleQueueError, match="topic.*queue"):
        shmq.Queue(qname)
    make_queue("-q")
    with pytest.raises(shmq.IncompatibleQueueError, match="queue.*topic"):
        shmq.Topic(qname + "-q")
    with pytest.raises(shmq.IncompatibleQueueError):
        shmq.Topic(qname + "-q", create=True, exist_ok=True)
    with pytest.raises(FileExistsError):
        shmq.Topic(qname, create=True)
    t2 = shmq.Topic(qname, create=True, exist_ok=True)
    t2.close()


def test_open_missing_and_bad_arguments(qname, topic):
    with pytest.raises(shmq.QueueNotFound):
        shmq.Topic(qname + "-none")
    for bad in (dict(capacity=100), dict(capacity="x"), dict(retention=-1), dict(retention="1"),
                dict(max_message=0), dict(mode=0o1000)):
        with pytest.raises((ValueError, TypeError)) as ei:
            shmq.Topic(qname + "-bad", create=True, **bad)
        assert isinstance(ei.value, shmq.ShmqError)
    with pytest.raises(ValueError):
        shmq.Topic("bad/name", create=True)
    t = topic()
    for kwargs in (dict(start="middle"), dict(start=0), dict(start=True), dict(start=[1]),
                   dict(on_slow="sometimes"), dict(on_slow="block")):
        with pytest.raises((ValueError, TypeError)) as ei:
            t.subscribe(**kwargs) if "on_slow" not in kwargs or kwargs["on_slow"] == "block" \
                else t.subscribe("n", **kwargs)
        assert isinstance(ei.value, shmq.ShmqError)
    for name in ("", "a/b", "x" * 101, 5):
        with pytest.raises((ValueError, TypeError)):
            t.subscribe(name)
    with pytest.raises(ValueError):
        t.subscribe(ack=True)           # ack=True needs a name
    s = t.subscribe()
    with pytest.raises(ValueError):
        s.get_many(0)
    with pytest.raises(ValueError):
        s.get(timeout=-1)
    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.shm_only("a segment has a table of 64 subscriptions; on Redis a subscription is a consumer group, without a limit")
def test_subscription_table_full(topic):
    t = topic()
    for i in range(64):
        t.subscribe(f"s{i}", on_slow="drop_oldest")
    with pytest.raises(shmq.ShmqError, match="full"):
        t.subscribe("one-too-many")


@pytest.mark.shm_only("mode= and list_queues() are shared memory's (mode= raises UnsupportedError on Redis)")
def test_mode_and_list_queues(topic, qname):
    t = topic(mode=0o640)
    assert os.stat(t.path).st_mode & 0o777 == 0o640
    info = [q for q in shmq.list_queues() if q.name == qname]
    assert info and info[0].kind == "topic"


@pytest.mark.shm_only("shmq top reads shared memory only (ls, stat and peek of a topic on Redis: tests/redis/test_redis_cli.py)")
def test_cli_shows_topics_subscriptions_and_peeks_by_seq(topic, qname):
    import json
    import subprocess
    import sys
    t = topic()
    t.subscribe("alpha", start="earliest")
    t.subscribe("beta", on_slow="drop_oldest").close()
    t.publish_many([b"hello", {"x": 1}], headers={"h": "v"})

    def shmq_cli(*args):
        r = subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    ls = json.loads(shmq_cli("ls", "--json"))
    row = [r for r in ls if r["name"] == qname][0]
    assert row["kind"] == "topic" and row["depth"] == 2
    assert row["subscriptions"]["alpha"]["lag"] == 2 and row["subscriptions"]["beta"]["consumers"] == 0
    text = shmq_cli("ls")
    assert "sub:block" in text and "sub:drop_oldest" in text
    st = json.loads(shmq_cli("stat", qname, "--json"))
    assert st["kind"] == "topic" and st["next_seq"] == 3 and set(st["subscriptions"]) == {"alpha", "beta"}
    peek = json.loads(shmq_cli("peek", qname, "--json", "--seq", "2"))
    assert [p["seq"] for p in peek] == [2] and peek[0]["type"] == "pickle"
    assert "seq=1" in shmq_cli("peek", qname) and "text=hello" in shmq_cli("peek", qname)
    top = shmq_cli("top", "--iterations", "1", "--json")
    assert any(q["NAME"].strip() == "alpha" for q in json.loads(top.splitlines()[0])["queues"])


def test_publish_many_split_by_the_gate_returns_its_own_seqs(topic, qname):
    # A batch a block subscription splits across lock holds is not contiguous when another
    # publisher runs meanwhile: each publisher gets exactly the seqs of its own messages.
    import threading
    t = topic(capacity=SMALL)
    other = shmq.Topic(qname)
    try:
        s = t.subscribe("gate")
        got = {}

        def batch():
            got["a"] = t.publish_many([b"A%d" % i for i in range(400)], timeout=30)

        th = threading.Thread(target=batch)
        th.start()
        mine, seen = [], {}
        deadline = time.monotonic() + 30
        while (th.is_alive() or len(seen) < 400 + len(mine)) and time.monotonic() < deadline:
            try:
                mine.append(other.publish(b"B", block=False))
            except shmq.Full:
                pass
            try:
                for m in s.get_many(64, timeout=0.01):
                    seen[m.seq] = m.body
            except shmq.Empty:
                pass
        th.join(30)
        assert len(got["a"]) == 400 and not set(got["a"]) & set(mine)
        assert all(seen[q].startswith(b"A") for q in got["a"]) and all(seen[q] == b"B" for q in mine)
    finally:
        other.close()
