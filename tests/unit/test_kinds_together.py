"""The kinds built side by side, used together: message groups on an at-least-once priority
queue (docs/guide/groups.md, "groups and priorities"), forward into a priority queue, and
shmq.open on every kind."""
import threading

import pytest

import shmq


@pytest.fixture
def made(qname):
    handles = []
    yield handles
    for h in handles:
        names = (h.name, getattr(h, "dead_letter_queue", None))
        h.close()
        for n in names:
            if n:
                try:
                    shmq.unlink(n)
                except shmq.QueueNotFound:
                    pass


def _drain(q, timeout=0.05):
    out = []
    while True:
        try:
            out.append(q.receive(timeout=timeout))
        except shmq.Empty:
            return out


def test_groups_on_a_priority_queue_keep_send_order_within_a_group(made, qname):
    q = shmq.PriorityQueue(qname, create=True, ack=True, levels=5, capacity="1MiB")
    made.append(q)
    q.send("g-low", priority=0, group="g")
    q.send("g-high", priority=4, group="g")      # same group, sent later: waits for g-low
    q.send("u-mid", priority=2)
    q.send("h-high", priority=3, group="h")
    first = _drain(q)
    # deliverable now: the head of g (priority 0), u-mid (2), the head of h (3), by priority
    assert [m.body for m in first] == ["h-high", "u-mid", "g-low"]
    assert [m.priority for m in first] == [3, 2, 0]
    assert {m.group for m in first} == {"g", "h", None}
    for m in first:
        m.ack()
    second = _drain(q)
    assert [(m.body, m.priority, m.group) for m in second] == [("g-high", 4, "g")]
    second[0].ack()
    assert q.qsize() == 0


def test_a_nacked_group_head_comes_back_with_its_priority_before_the_group_later_ones(made, qname):
    q = shmq.PriorityQueue(qname, create=True, ack=True, levels=3, capacity="1MiB")
    made.append(q)
    q.send("a1", priority=1, group="a")
    q.send("a2", priority=2, group="a")
    m = q.receive(timeout=1)
    assert m.body == "a1"
    m.nack()
    again = q.receive(timeout=1)
    assert (again.body, again.priority, again.delivery_count) == ("a1", 1, 2)
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.05)                  # a2 waits for its head
    again.ack()
    last = q.receive(timeout=1)
    assert (last.body, last.priority) == ("a2", 2)
    last.ack()


def test_forward_into_a_priority_queue_uses_its_levels(made, qname):
    src = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    dest = shmq.PriorityQueue(qname + "-d", create=True, ack=True, levels=20, capacity="1MiB")
    made += [src, dest]
    src.send("one")
    src.send("two")
    a, b = src.receive(timeout=1), src.receive(timeout=1)
    a.forward(dest, "low", priority=3)
    b.forward(dest, "high", priority=15)         # above a plain queue's 0..9: the dest's levels apply
    got = [dest.receive(timeout=1) for _ in range(2)]
    assert [(m.body, m.priority) for m in got] == [("high", 15), ("low", 3)]
    for m in got:
        m.ack()
    c = src.send("three")
    m = src.receive(timeout=1)
    assert m.id == c
    with pytest.raises(ValueError):
        m.forward(dest, "bad", priority=20)      # out of the dest's range: nothing sent, still ours
    assert dest.qsize() == 0
    m.ack()


def test_open_returns_the_class_of_each_kind(made, qname):
    q = shmq.Queue(qname + "-q", create=True, capacity="1MiB")
    pq = shmq.PriorityQueue(qname + "-p", create=True, levels=4, capacity="1MiB")
    t = shmq.Topic(qname + "-t", create=True, capacity="1MiB")
    made += [q, pq, t]
    for h, cls in ((q, shmq.Queue), (pq, shmq.PriorityQueue), (t, shmq.Topic)):
        o = shmq.open(h.name)
        try:
            assert type(o) is cls, (h.name, type(o))
        finally:
            o.close()
    with pytest.raises(shmq.IncompatibleQueueError, match="topic"):
        shmq.PriorityQueue(t.name)
    with pytest.raises(shmq.IncompatibleQueueError, match="priority"):
        shmq.Topic(pq.name, create=False)


def test_a_zero_copy_receive_carries_its_group_and_its_ack_releases_the_group(made, qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    made.append(q)
    q.send(b"first" * 20, group=b"k")
    q.send(b"second" * 20, group=b"k")
    m = q.receive(timeout=1, copy=False)
    assert m.group == b"k" and bytes(m.body) == b"first" * 20
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.05)              # one of a group out at a time, views alive or not
    m.ack()                                  # the ack counts at once; the storage waits for the views
    n = q.receive(timeout=1)
    assert n.group == b"k" and n.body == b"second" * 20
    n.ack()
    del m


def test_latency_figures_on_a_priority_queue(made, qname):
    pq = shmq.PriorityQueue(qname, create=True, ack=True, levels=3, capacity="1MiB")
    made.append(pq)
    for p in (0, 2, 1):
        pq.send(p, priority=p)
    for _ in range(3):
        pq.receive(timeout=1).ack()
    st = pq.stats()
    assert st["wait_p50_s"] is not None and st["wait_p50_s"] >= 0
    assert st["process_p50_s"] is not None and st["process_p99_s"] >= st["process_p50_s"]


class _SendsWhilePickled:
    """A body whose pickling (inside forward, while the destination handle is forwarding) has
    another thread send to the same destination and waits for that send to finish."""

    def __init__(self, dest):
        self.dest = dest
        self.other_id = None

    def __reduce__(self):
        t = threading.Thread(target=lambda: setattr(self, "other_id", self.dest.send("plain")))
        t.start()
        t.join(10)
        return (str, ("forwarded",))


def test_a_send_from_another_thread_during_a_forward_stays_a_plain_send(made, qname):
    src = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    dest = shmq.Queue(qname + "-d", create=True, ack=True, capacity="1MiB")
    made += [src, dest]
    src.send("in")
    m = src.receive(timeout=1)
    body = _SendsWhilePickled(dest)
    fid = m.forward(dest, body)
    assert body.other_id is not None and body.other_id != fid
    got = sorted((x.body for x in [dest.receive(timeout=1), dest.receive(timeout=1)]))
    assert got == ["forwarded", "plain"]
    assert src.stats()["acked"] == 1 and src.qsize() == 0


def test_forward_of_a_zero_copy_delivery_is_refused_while_its_views_live(made, qname):
    src = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    dest = shmq.Queue(qname + "-d", create=True, ack=True, capacity="1MiB")
    made += [src, dest]
    src.send(b"x" * 4096)
    m = src.receive(timeout=1, copy=False)
    with pytest.raises(ValueError, match="zero-copy views"):
        m.forward(dest, b"y")
    assert dest.qsize() == 0 and bytes(m.body) == b"x" * 4096   # nothing sent, storage intact
    m.ack()


def test_groups_are_refused_on_a_journaled_queue(made, qname, tmp_path):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", journal=str(tmp_path / "j"), fsync="never")
    made.append(q)
    with pytest.raises(shmq.UnsupportedError, match="journal"):
        q.send("a", group="g")
    assert q.qsize() == 0
    q.send("b")                                   # ungrouped sends work as before
    assert q.receive(timeout=1).body == "b"


def test_the_bridge_moves_a_grouped_message_between_shared_memory_queues(made, qname):
    import subprocess
    import sys
    src = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    dest = shmq.Queue(qname + "-d", create=True, ack=True, capacity="1MiB")
    made += [src, dest]
    src.send("one", group="g")
    src.send("two", group="g")
    src.send("free")
    r = subprocess.run([sys.executable, "-m", "shmq", "bridge", src.name, dest.name, "--idle-exit", "0.3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first = []
    while True:
        try:
            first.append(dest.receive(timeout=0.2))
        except shmq.Empty:
            break
    assert sorted((m.body, m.group) for m in first) == [("free", None), ("one", "g")]   # two waits for one
    for m in first:
        m.ack()
    last = dest.receive(timeout=1)
    assert (last.body, last.group) == ("two", "g")
    last.ack()
