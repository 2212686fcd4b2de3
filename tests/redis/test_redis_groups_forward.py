"""Message groups with a killed consumer on Redis, and Message.forward across backends (shared
memory -> Redis, Redis -> shared memory, Redis -> Redis) with a SIGKILL between the send to the
destination and the ack at the source: the redelivered message's second forward sends nothing
new (the destination's dedup on the source's backend, queue and message id)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq

redis = pytest.importorskip("redis")

CHILD_TAKE = """
import sys, time, shmq
q = shmq.Queue(sys.argv[1], backend=sys.argv[2])
m = q.receive(timeout=10)
print(m.body, flush=True)
time.sleep(60)
"""

CHILD_FORWARD = """
import sys, shmq
src = shmq.Queue(sys.argv[1], backend=sys.argv[2])
dst = shmq.Queue(sys.argv[3], backend=sys.argv[4])
m = src.receive(timeout=10)
m.forward(dst, ("fwd", m.body), headers={"k": "v"}, group="g")
print("not killed", flush=True)
"""


@pytest.fixture
def made(redis_url):
    handles = []
    yield handles
    for h in handles:
        names = (h.name, h.dead_letter_queue)
        be = getattr(h, "backend", None) or "shm"
        h.close()
        for n in names:
            if n:
                try:
                    shmq.unlink(n, backend=be)
                except shmq.QueueNotFound:
                    pass


def _q(made, name, backend, **kw):
    kw.setdefault("visibility_timeout", 30)
    if backend == "shm":
        kw.setdefault("capacity", "1MiB")
    q = shmq.Queue(name, create=True, ack=True, backend=backend, **kw)
    made.append(q)
    return q


def test_a_killed_consumers_group_goes_on(made, redis_url, qname):
    q = _q(made, qname, redis_url)
    for i in range(3):
        q.send(i, group="g")
    q.send("other", group="h")
    child = subprocess.Popen([sys.executable, "-c", CHILD_TAKE, qname, redis_url], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "0"       # the child holds g's head
        assert q.receive(timeout=5).body == "other"        # h is not held up; g's 1 waits for 0
        with pytest.raises(shmq.Empty):
            q.receive(timeout=0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    t0 = time.monotonic()
    m = q.receive(timeout=5)                    # the dead consumer's message, at once (not after 30 s)
    assert (m.body, m.delivery_count, m.group) == (0, 2, "g") and time.monotonic() - t0 < 10
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.2)                  # still one out: 1 waits for 0's ack
    m.ack()
    rest = []
    for _ in range(2):
        x = q.receive(timeout=5)
        rest.append(x.body)
        x.ack()
    assert rest == [1, 2]


PAIRS = [("shm", "redis"), ("redis", "shm"), ("redis", "redis")]


def _backend(which, url):
    return url if which == "redis" else "shm"


@pytest.mark.parametrize("src_be, dst_be", PAIRS)
def test_forward_across_backends(made, redis_url, qname, src_be, dst_be):
    src = _q(made, qname + "-src", _backend(src_be, redis_url))
    dst = _q(made, qname + "-dst", _backend(dst_be, redis_url))
    src.send("in")
    m = src.receive(timeout=5)
    nid = m.forward(dst, "out", headers={"stage": "2"}, priority=3, group="g")
    assert m.ack() is False                          # acked by the forward
    with pytest.raises(shmq.Empty):
        src.receive(timeout=0.1)
    o = dst.receive(timeout=5)
    assert (o.id, o.body, o.headers, o.priority, o.group) == (nid, "out", {"stage": "2"}, 3, "g")
    assert src.stats()["acked"] == 1


@pytest.mark.parametrize("src_be, dst_be", PAIRS)
def test_forward_across_with_a_stale_lease_sends_nothing(made, redis_url, qname, src_be, dst_be):
    src = _q(made, qname + "-src", _backend(src_be, redis_url), visibility_timeout=0.1)
    dst = _q(made, qname + "-dst", _backend(dst_be, redis_url))
    src.send("in")
    m = src.receive(timeout=5)
    time.sleep(0.25)
    again = src.receive(timeout=5)                   # delivered again: m's lease is over
    with pytest.raises(shmq.LeaseExpiredError):
        m.forward(dst, "out")
    with pytest.raises(shmq.Empty):
        dst.receive(timeout=0.1)
    again.forward(dst, "out2")
    assert dst.receive(timeout=5).body == "out2"


@pytest.mark.parametrize("src_be, dst_be", PAIRS)
def test_forward_across_full_dest_keeps_the_delivery(made, redis_url, qname, src_be, dst_be):
    src = _q(made, qname + "-src", _backend(src_be, redis_url))
    dst = _q(made, qname + "-dst", _backend(dst_be, redis_url), maxsize=1)
    dst.send("filler")
    src.send("in")
    m = src.receive(timeout=5)
    with pytest.raises(shmq.Full):
        m.forward(dst, "out", block=False)
    dst.receive(timeout=5).ack()
    m.forward(dst, "out")                            # still ours: forwarded now
    assert dst.receive(timeout=5).body == "out"


@pytest.mark.parametrize("src_be, dst_be", PAIRS)
def test_a_kill_between_send_and_ack_duplicates_nothing(made, redis_url, qname, src_be, dst_be):
    sb, db = _backend(src_be, redis_url), _backend(dst_be, redis_url)
    src = _q(made, qname + "-src", sb, visibility_timeout=1)
    dst = _q(made, qname + "-dst", db)
    src.send("in")
    env = dict(os.environ, SHMQ_CRASH_AT="forward_across_after_send")
    r = subprocess.run([sys.executable, "-c", CHILD_FORWARD, qname + "-src", sb, qname + "-dst", db], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert dst.stats()["depth"] == 1                 # the destination accepted it ...
    m = src.receive(timeout=10)                      # ... the source never saw the ack: delivered again
    assert (m.body, m.delivery_count) == ("in", 2)
    again = m.forward(dst, ("fwd", m.body), headers={"k": "v"}, group="g")   # de-duplicated in dst
    assert dst.stats()["depth"] == 1
    o = dst.receive(timeout=5)
    assert (o.id, o.body, o.group) == (again, ("fwd", "in"), "g")
    o.ack()
    with pytest.raises(shmq.Empty):
        dst.receive(timeout=0.1)
    with pytest.raises(shmq.Empty):
        src.receive(timeout=0.1)                     # acked by the second forward
    assert src.stats()["acked"] == 1


def test_without_the_crash_point_the_child_forwards(made, redis_url, qname):
    """The kill test's child does forward when it is not killed (the test above is not vacuous)."""
    src = _q(made, qname + "-src", redis_url)
    dst = _q(made, qname + "-dst", "shm")
    src.send("in")
    env = {k: v for k, v in os.environ.items() if k != "SHMQ_CRASH_AT"}
    r = subprocess.run([sys.executable, "-c", CHILD_FORWARD, qname + "-src", redis_url, qname + "-dst", "shm"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "not killed" in r.stdout, r.stderr
    assert dst.receive(timeout=5).body == ("fwd", "in")
    with pytest.raises(shmq.Empty):
        src.receive(timeout=0.1)
