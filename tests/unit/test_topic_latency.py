"""Topic latency histograms (issue 18): wait (publish -> delivery) per named subscription and for
private readers, process (receive -> ack) for ack subscriptions; Subscription.stats() and the
topic's stats() keys; the subscription series of metrics.render() and the Collector, read with
prometheus_client's parser; a killed member's samples kept; a recreated subscription starts at
zero; a hostile histogram region never crashes a reader."""
import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmq
from shmq import _core, metrics

REGION_TABLE = 896 + 32 * 64      # shmq_header_t.regions (csrc/segment.h)
REGION_HIST = 6


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


def waits(sub):
    """Samples in the wait histogram of a named subscription."""
    h = _core._topic_sub_hist(sub._topic._core, sub._idx)
    return sum(h["wait"]), sum(h["process"])


def test_every_subscription_kind_records_its_waits(topic):
    t = topic()
    private = t.subscribe()
    named = t.subscribe("blocking")
    lossy = t.subscribe("lossy", on_slow="drop_oldest")
    acked = t.subscribe("acked", ack=True)
    for st in (private.stats(), named.stats(), lossy.stats(), acked.stats()):
        assert st["wait_p50_s"] is None and st["process_p99_s"] is None    # no sample: None, not 0
    for i in range(20):
        t.publish(i)
    assert [private.get(timeout=5).body for _ in range(20)] == list(range(20))
    assert len(named.get_many(64, timeout=5)) == 20
    got = []
    while len(got) < 20:
        got.extend(lossy.get_many(64, timeout=5))
    for _ in range(20):
        acked.get(timeout=5).ack()
    assert waits(named) == (20, 0) and waits(lossy) == (20, 0) and waits(acked) == (20, 20)
    assert sum(t._core._hist()["wait"]) == 20            # the private reader's, in its slot's block
    for sub, kind in ((private, "private"), (named, "block"), (lossy, "drop_oldest"), (acked, "ack")):
        st = sub.stats()
        assert st["kind"] == kind
        assert 0 <= st["wait_p50_s"] <= st["wait_p99_s"] < 60
    st = acked.stats()
    assert 0 <= st["process_p50_s"] <= st["process_p99_s"] < 60
    assert st["acked"] == 20 and st["delivered"] == 20
    assert named.stats()["process_p50_s"] is None        # no acks there
    ts = t.stats()
    assert ts["wait_p50_s"] is not None and ts["process_p50_s"] is not None
    assert ts["subscriptions"]["acked"]["process_p99_s"] == st["process_p99_s"]


def test_redeliveries_are_not_waits_but_each_ack_is_a_processing_time(topic):
    t = topic()
    sub = t.subscribe("s", ack=True, visibility_timeout=30)
    t.publish("m")
    sub.get(timeout=5).nack()
    d = sub.get(timeout=5)
    assert d.delivery_count == 2
    d.ack()
    assert waits(sub) == (1, 1)


def test_a_group_sums_its_members_and_a_dead_members_samples_stay(topic):
    t = topic()
    sub = t.subscribe("g")
    for i in range(10):
        t.publish(i)
    code = textwrap.dedent(f"""
        import os, signal, shmq
        t = shmq.Topic({t.name!r})
        s = t.subscribe("g")
        for _ in range(4):
            s.get(timeout=5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert waits(sub)[0] == 4                             # the killed member's samples are kept
    for _ in range(6):
        sub.get(timeout=5)
    assert waits(sub)[0] == 10
    assert sub.stats()["delivered"] == 10


def test_a_subscription_made_again_starts_at_zero(topic):
    t = topic()
    sub = t.subscribe("s")
    t.publish(1)
    sub.get(timeout=5)
    assert waits(sub)[0] == 1
    sub.close()
    t.unsubscribe("s")
    with pytest.raises(shmq.SubscriptionNotFound):
        sub.stats()
    again = t.subscribe("s")
    assert again._idx == sub._idx and waits(again) == (0, 0)
    assert again.stats()["wait_p50_s"] is None


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sub_samples(fams, name, topic_name):
    return {(s.labels["subscription"], s.labels["kind"], s.name): s.value
            for s in fams[name].samples if s.labels.get("queue") == topic_name and "le" not in s.labels}


def check_subscription_series(fams, t):
    lag = sub_samples(fams, "shmq_subscription_lag", t.name)
    assert lag == {("n", "block", "shmq_subscription_lag"): 2, ("a", "ack", "shmq_subscription_lag"): 0}
    deliv = sub_samples(fams, "shmq_subscription_delivered", t.name)
    assert deliv[("n", "block", "shmq_subscription_delivered_total")] == 3
    assert sub_samples(fams, "shmq_subscription_acked", t.name) == {("a", "ack", "shmq_subscription_acked_total"): 5}
    assert fams["shmq_subscription_wait_seconds"].type == "histogram"
    w = sub_samples(fams, "shmq_subscription_wait_seconds", t.name)
    assert w[("n", "block", "shmq_subscription_wait_seconds_count")] == 3
    assert w[("a", "ack", "shmq_subscription_wait_seconds_count")] == 5
    assert w[("", "private", "shmq_subscription_wait_seconds_count")] == 5
    p = sub_samples(fams, "shmq_subscription_process_seconds", t.name)
    assert p == {("a", "ack", "shmq_subscription_process_seconds_count"): 5,
                 ("a", "ack", "shmq_subscription_process_seconds_sum"): pytest.approx(
                     p[("a", "ack", "shmq_subscription_process_seconds_sum")])}
    inf = [s.value for s in fams["shmq_subscription_wait_seconds"].samples
           if s.labels.get("queue") == t.name and s.labels.get("le") == "+Inf" and s.labels["subscription"] == "a"]
    assert inf == [5]
    # the topic's own histogram: every delivery of every subscription
    tw = [s.value for s in fams["shmq_wait_seconds"].samples
          if s.labels.get("queue") == t.name and s.name == "shmq_wait_seconds_count"]
    assert tw == [13]


def fill(t):
    private = t.subscribe()
    n = t.subscribe("n")
    a = t.subscribe("a", ack=True)
    for i in range(5):
        t.publish(i)
    for _ in range(5):
        private.get(timeout=5)
        a.get(timeout=5).ack()
    for _ in range(3):
        n.get(timeout=5)
    return private, n, a


def test_render_exports_the_subscriptions(topic):
    t = topic()
    fill(t)
    check_subscription_series(families(metrics.render()), t)
    check_subscription_series(families(metrics.render()), t)      # the second scrape (caches) too


def test_collector_exports_the_subscriptions(topic):
    from prometheus_client import CollectorRegistry, generate_latest
    t = topic()
    fill(t)
    reg = CollectorRegistry()
    reg.register(metrics.Collector())
    check_subscription_series(families(generate_latest(reg).decode()), t)


def hist_region(path):
    with open(path, "rb") as f:
        head = f.read(4096)
    for i in range(8):
        kind, _pad, off, size, _ = struct.unpack_from("<IIQQQ", head, REGION_TABLE + 32 * i)
        if kind == REGION_HIST:
            return off, size
    raise AssertionError("no histogram region")


@pytest.mark.parametrize("damage", ["n_subs", "n_ticks", "ticks"])
def test_hostile_topic_histograms_never_crash_a_reader(topic, damage):
    t = topic()
    sub = t.subscribe("s", ack=True)
    off, size = hist_region(t.path)
    n_blocks = struct.unpack_from("<I", open(t.path, "rb").read(off + 64), off + 8)[0]
    fd = os.open(t.path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, off + size)
        try:
            if damage == "n_subs":
                struct.pack_into("<I", m, off + 24, 1 << 30)
            elif damage == "n_ticks":
                struct.pack_into("<I", m, off + 28, 7)
            else:                                          # the tick words: garbage clocks
                ticks = off + 64 + (n_blocks + 64) * 576
                m[ticks:off + size] = os.urandom(off + size - ticks)
        finally:
            m.close()
    finally:
        os.close(fd)
    other = shmq.Topic(t.name)                             # binds the damaged region afresh
    try:
        s2 = other.subscribe("s", ack=True)
        other.publish(1)
        s2.get(timeout=5).ack()                            # traffic goes on
        st = s2.stats()
        if damage == "ticks":
            assert st["wait_p50_s"] is not None            # garbage in, figures out
        else:
            assert st["wait_p50_s"] is None and _core._topic_sub_hist(other._core, s2._idx) is None
        metrics.render()                                   # never raises
        s2.close()
    finally:
        other.close()
    sub.close()


def test_top_shows_each_subscriptions_latency(topic):
    import json
    t = topic()
    private, n, a = fill(t)
    r = subprocess.run([sys.executable, "-m", "shmq", "top", "--json", "--iterations", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["NAME"].strip(): row for row in json.loads(r.stdout.splitlines()[0])["queues"]}
    assert rows[t.name]["KIND"] == "topic" and rows[t.name]["WAIT_P50"] != "-"
    assert rows["a"]["KIND"] == "sub:ack" and rows["a"]["WAIT_P99"] != "-" and rows["a"]["PROC_P50"] != "-"
    assert rows["a"]["IN_FLIGHT"] == "0"
    assert rows["n"]["KIND"] == "sub:block" and rows["n"]["WAIT_P50"] != "-" and rows["n"]["PROC_P50"] == "-"
    assert rows["n"]["DEPTH"] == "2"                   # its lag
