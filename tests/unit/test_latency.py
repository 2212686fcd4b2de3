"""Latency histograms and error counters (issue 18 item 3, csrc/hist.h): stats() keys, the
figures of a killed participant kept, the Prometheus histograms, hostile histogram regions."""
import mmap
import os
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmq
from shmq import _core, _latency, metrics

SHM = "/dev/shm"
REGION_TABLE = 896 + 32 * 64      # shmq_header_t.regions (csrc/segment.h)
REGION_HIST = 6


def hist_region(path):
    """(offset, size) of the histogram region of the segment file at path."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for i in range(8):
        kind, _pad, off, size, _ = struct.unpack_from("<IIQQQ", head, REGION_TABLE + 32 * i)
        if kind == REGION_HIST:
            return off, size
    raise AssertionError("no histogram region")


def test_quantile_interpolates_inside_the_bucket():
    counts = [0] * _latency.N_BUCKETS
    assert _latency.quantile(counts, 0.5) is None
    counts[11] = 100                  # [2**20, 2**21) ns
    assert 2 ** 20 / 1e9 <= _latency.quantile(counts, 0.5) <= 2 ** 21 / 1e9
    assert _latency.quantile(counts, 0.5) < _latency.quantile(counts, 0.99)
    counts[-1] = 10 ** 6              # the open last bucket: its lower bound
    assert _latency.quantile(counts, 0.99) == 2 ** 40 / 1e9


def test_plain_queue_wait_figures(make_queue):
    q = make_queue(capacity="1MiB")
    st = q.stats()
    assert all(st[k] is None for k in _latency.LATENCY_KEYS)
    assert st["nacked"] == 0 and st["late_replies"] == 0
    for i in range(20):
        q.put(i)
        q.get()
    q.put("slow")
    time.sleep(0.2)
    q.get()
    st = q.stats()
    h = q._core._hist()
    assert sum(h["wait"]) == 21 and sum(h["process"]) == 0
    assert st["wait_p50_s"] is not None and st["wait_p50_s"] < 0.1     # 20 of 21 did not wait
    assert st["wait_p99_s"] >= 0.1                                      # the one that waited 0.2 s
    assert st["process_p50_s"] is None and st["process_p99_s"] is None  # nothing acked on a plain queue
    # get_many and get(copy=False) are deliveries too
    q.put_many([1, 2, 3])
    assert len(q.get_many(10, timeout=5)) == 3
    q.put(b"view")
    v = q.get(copy=False)
    del v
    assert sum(q._core._hist()["wait"]) == 25


def test_ack_queue_process_time_nacks_and_redeliveries(make_queue, qname):
    q = make_queue(capacity="1MiB", ack=True, dead_letter=qname + ".dlq")
    q.send("a")
    m = q.receive(timeout=5)
    time.sleep(0.05)
    m.ack()
    q.send("b")
    m = q.receive(timeout=5)
    m.nack()
    m = q.receive(timeout=5)          # the redelivery: no second wait sample
    assert m.delivery_count == 2
    m.nack(requeue=False)             # rejected: dead-lettered, a nack too
    st = q.stats()
    h = q._core._hist()
    assert sum(h["wait"]) == 2 and sum(h["process"]) == 1
    assert st["process_p50_s"] >= 0.04 and st["process_p99_s"] >= st["process_p50_s"]
    assert st["nacked"] == 2 and st["redelivered"] == 1 and st["dead_lettered"] == 1


def test_a_killed_consumers_samples_stay_counted(make_queue):
    q = make_queue(capacity="1MiB")
    q.put_many(range(5))
    child = textwrap.dedent(f"""
        import os, signal, shmq
        q = shmq.Queue({q.name!r})
        for _ in range(3):
            q.get(timeout=10)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert p.returncode == -9
    assert sum(q._core._hist()["wait"]) == 3
    q.get(timeout=5)
    # a new participant (repairing the dead slot or not) adds to them
    other = shmq.Queue(q.name)
    try:
        other.get(timeout=5)
        assert sum(q._core._hist()["wait"]) == 5
        assert sum(shmq.stats.inspect_path(q.path)["histograms"]["wait"]) == 5   # read without attaching
    finally:
        other.close()


def test_late_replies_reach_shared_memory(make_queue):
    q = make_queue(capacity="1MiB")
    q.put(1)
    q.get()                           # attached: it has a block
    q._core._hist_count_late(2)
    assert q.stats()["late_replies"] == 2


def parse(text):
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return fams


def test_render_exports_histograms_with_fixed_buckets(make_queue, qname):
    q = make_queue(capacity="1MiB", ack=True, dead_letter=qname + ".dlq")
    idle = make_queue(".idle", capacity="64KiB")
    for i in range(10):
        q.send(i)
        q.receive(timeout=5).ack()
    text = metrics.render()
    fams = parse(text)
    for name in ("shmq_wait_seconds", "shmq_process_seconds"):
        fam = fams[name]
        assert fam.type == "histogram"
        mine = [s for s in fam.samples if s.labels.get("queue") == q.name]
        buckets = [s for s in mine if s.name.endswith("_bucket")]
        les = [s.labels["le"] for s in buckets]
        assert les[-1] == "+Inf" and len(les) == 17
        assert [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])
        values = [s.value for s in buckets]
        assert values == sorted(values) and values[-1] == 10          # cumulative, +Inf = count
        count = [s.value for s in mine if s.name.endswith("_count")]
        total = [s.value for s in mine if s.name.endswith("_sum")]
        assert count == [10] and total[0] > 0
        assert not [s for s in fam.samples if s.labels.get("queue") == idle.name]   # no sample, no lines
    # the bucket edges are powers of two in ns: the same on every scrape, every host
    assert f'le="{2 ** 10 / 1e9!r}"' in text
    st = q.stats()
    quant = fams["shmq_wait_quantile_seconds"]
    got = {s.labels["quantile"]: s.value for s in quant.samples if s.labels["queue"] == q.name}
    assert got["0.5"] == pytest.approx(st["wait_p50_s"], rel=0.5)
    nacked = fams["shmq_nacked"]
    assert [s.value for s in nacked.samples if s.labels["queue"] == q.name] == [0]


def test_collector_exports_the_histograms(make_queue):
    from prometheus_client import CollectorRegistry, generate_latest
    q = make_queue(capacity="1MiB")
    for i in range(4):
        q.put(i)
        q.get()
    reg = CollectorRegistry()
    reg.register(metrics.Collector())
    fams = parse(generate_latest(reg).decode())
    fam = fams["shmq_wait_seconds"]
    mine = [s for s in fam.samples if s.labels.get("queue") == q.name]
    assert [s.value for s in mine if s.name == "shmq_wait_seconds_count"] == [4]
    assert [s.value for s in mine if s.name == "shmq_wait_seconds_bucket" and s.labels["le"] == "+Inf"] == [4]


@pytest.mark.parametrize("damage", ["header", "blocks", "count"])
def test_hostile_histogram_region_never_crashes_a_reader(make_queue, damage):
    q = make_queue(capacity="1MiB")
    q.put(1)
    q.get()
    off, size = hist_region(q.path)
    fd = os.open(q.path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, off + size)
        try:
            if damage == "header":
                m[off:off + 64] = os.urandom(64)
            elif damage == "blocks":
                m[off + 64:off + size] = b"\xff" * (size - 64)
            else:
                struct.pack_into("<I", m, off + 8, 1 << 30)       # n_blocks past the region
        finally:
            m.close()
    finally:
        os.close(fd)
    st = q.stats()                                               # never a crash
    if damage == "blocks":
        assert st["wait_p50_s"] is not None and st["process_p99_s"] is not None   # garbage in, figures out
    else:
        assert st["wait_p50_s"] is None and q._core._hist() is None
    q.put(2)                                                     # traffic goes on
    assert q.get(timeout=5) == 2
    other = shmq.Queue(q.name)                                   # a new participant binds no bad block
    try:
        other.put(3)
        assert other.get(timeout=5) == 3
    finally:
        other.close()
    fams = parse(metrics.render())                               # the scrape goes on
    assert "shmq_depth" in fams
    assert _core.F_HIST & q.stats()["flags"]
