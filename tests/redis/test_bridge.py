"""`shmq bridge SRC DEST` between shared memory and Redis: a round trip, no duplicate after a
crash between forward and ack (dedup at the destination), a clean stop on SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq
from shmq.bridge import Bridge, parse_endpoint

pytest.importorskip("redis")


def shmq_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=timeout)


def test_endpoints():
    assert parse_endpoint("jobs") == ("jobs", None)
    assert parse_endpoint("jobs@shm") == ("jobs", "shm")
    assert parse_endpoint("jobs@redis://h:1/0") == ("jobs", "redis://h:1/0")
    with pytest.raises(ValueError, match="scheme"):
        parse_endpoint("jobs@http://h")
    with pytest.raises(ValueError):
        parse_endpoint("bad name@shm")


def test_local_to_redis_and_back(make_queue, qname, redis_url):
    src = make_queue("-src", ack=True, capacity="1MiB", backend="shm")
    back = make_queue("-back", ack=True, capacity="1MiB", backend="shm")
    for i in range(300):
        src.send({"i": i}, headers={"n": str(i)}, priority=i % 10)
    r = shmq_cli("bridge", f"{qname}-src@shm", f"{qname}-mid@{redis_url}", "--create", "--batch", "64",
                 "--idle-exit", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert counts["forwarded"] == 300 and counts["batches"] >= 5
    r = shmq_cli("bridge", f"{qname}-mid@{redis_url}", f"{qname}-back@shm", "--idle-exit", "0.5", "--max", "300")
    assert r.returncode == 0 and "forwarded 300" in r.stdout, r.stderr
    got = back.receive_many(500, timeout=5)
    while len(got) < 300:
        got += back.receive_many(500, timeout=5)
    assert sorted(m.body["i"] for m in got) == list(range(300))
    assert all(m.headers["n"] == str(m.body["i"]) and m.priority == m.body["i"] % 10 for m in got)
    back.ack_many(got)
    st = src.stats()
    assert st["depth"] == st["in_flight"] == 0 and st["acked"] == 300
    with shmq.Queue(qname + "-mid", backend=redis_url) as mid:
        assert mid.stats()["acked"] == 300
        mid.unlink()


def test_a_crash_between_forward_and_ack_doubles_nothing(make_queue, qname, redis_url):
    src = make_queue("-src", ack=True, capacity="1MiB", visibility_timeout=0.3, backend="shm")
    for i in range(50):
        src.send(i)
    dest = shmq.Queue(qname + "-dst", create=True, ack=True, backend=redis_url)
    try:
        b = Bridge(src, dest, batch=20)
        recs = b._take()
        b._forward(recs)                 # accepted by the destination, never acked: the "crash"
        time.sleep(0.5)                  # the source's lease ends: those 20 come back
        assert Bridge(src, dest, batch=20).run(idle_exit=0.5)["forwarded"] == 50
        st = dest.stats()
        assert st["depth"] == 50 and st["dedup_hits"] == 20 and st["enqueued"] == 50
        assert sorted(m.body for m in dest.receive_many(100, timeout=5)) == list(range(50))
    finally:
        dest.close()


def test_sigterm_stops_cleanly_and_counts(make_queue, qname, redis_url):
    src = shmq.Queue(qname + "-src", create=True, ack=True, backend=redis_url)
    dest = make_queue("-dst", ack=True, capacity="4MiB", backend="shm")
    try:
        n = 2000
        src.send_many(range(n))
        p = subprocess.Popen([sys.executable, "-m", "shmq", "bridge", f"{qname}-src@{redis_url}",
                              f"{qname}-dst@shm", "--batch", "50", "--progress", "0.05", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while dest.stats()["depth"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        counts = json.loads(out)
        assert "forwarded" in err                       # progress lines
        st_src, st_dst = src.stats(), dest.stats()
        assert st_dst["depth"] == counts["forwarded"] == st_src["acked"]
        assert st_src["depth"] + st_src["in_flight"] + st_src["acked"] == n   # nothing lost, nothing held
        assert st_src["in_flight"] == 0                                      # the batch in hand was settled
    finally:
        src.close()
