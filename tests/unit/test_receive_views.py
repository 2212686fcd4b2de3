"""receive(copy=False) on at-least-once queues (issue 18 item 2): views into shared memory, the
lease held open while a view lives, settles that never free storage under a view, a killed
holder's deliveries returned by repair, use after close."""
import gc
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import shmq

MiB = 1 << 20


def ackq(make_queue, qname, **kw):
    kw.setdefault("capacity", "8MiB")
    return make_queue(ack=True, dead_letter=qname + ".dlq", **kw)


def test_numpy_body_is_a_read_only_view_pinned_until_released(make_queue, qname):
    q = ackq(make_queue, qname)
    q.send(np.arange(MiB // 8, dtype=np.float64))
    m = q.receive(timeout=5, copy=False)
    arr = m.body
    assert isinstance(arr, np.ndarray) and not arr.flags.writeable and arr[12345] == 12345.0
    with pytest.raises(ValueError):
        arr[0] = 1.0
    held = q.stats()["bytes_used"]
    assert held >= MiB
    assert m.ack() is True and m.ack() is False
    st = q.stats()
    assert st["acked"] == 1 and st["in_flight"] == 0 and st["bytes_used"] == held   # storage kept
    # new messages of the same size cannot take the viewed chunk
    for i in range(5):
        q.send(np.full(MiB // 8, -1.0))
        q.receive(timeout=5).ack()
    assert arr[12345] == 12345.0 and arr[-1] == MiB // 8 - 1
    del m, arr
    gc.collect()
    assert q.stats()["bytes_used"] == 0


def test_bytes_body_and_receive_many(make_queue, qname):
    q = ackq(make_queue, qname)
    q.send(b"hello")
    q.send(bytearray(b"world"))
    q.send({"plain": "object"})
    ms = q.receive_many(10, timeout=5, copy=False)
    assert [type(m.body) for m in ms] == [memoryview, memoryview, dict]
    assert bytes(ms[0].body) == b"hello" and ms[0].body.readonly and bytes(ms[1].body) == b"world"
    assert q.ack_many(ms) == 3
    del ms
    gc.collect()
    st = q.stats()
    assert st["acked"] == 3 and st["in_flight"] == 0 and st["bytes_used"] == 0


def test_the_lease_does_not_run_out_while_viewed_and_resumes_at_release(make_queue, qname):
    q = ackq(make_queue, qname, visibility_timeout=0.1)
    q.send(b"payload")
    m = q.receive(timeout=5, copy=False)
    time.sleep(0.3)                    # three leases long
    q._timers_run()
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.2)         # not redelivered: a view lives
    assert bytes(m.body) == b"payload"
    del m                              # released unsettled: the lease ended long ago
    gc.collect()
    time.sleep(0.05)
    q._timers_run()
    m2 = q.receive(timeout=5)
    assert m2.body == b"payload" and m2.delivery_count == 2
    m2.ack()


def test_extend_while_viewed_sets_where_the_lease_resumes(make_queue, qname):
    q = ackq(make_queue, qname, visibility_timeout=0.1)
    q.send(b"payload")
    m = q.receive(timeout=5, copy=False)
    m.extend(30)
    time.sleep(0.2)
    del m
    gc.collect()
    q._timers_run()
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.3)         # the lease runs until now + 30 s
    assert q.stats()["in_flight"] == 1


def test_nack_while_viewed_is_applied_at_release(make_queue, qname):
    q = ackq(make_queue, qname)
    q.send(b"again")
    q.send(b"reject")
    m = q.receive(timeout=5, copy=False)
    v = m.body
    m.nack()
    assert q.stats()["depth"] == 1     # not back yet: the view still reads it
    with pytest.raises(ValueError):
        m.ack()                        # the delivery is over for its receiver
    del m, v
    gc.collect()
    assert q.stats()["depth"] == 2 and q.stats()["redelivered"] == 1
    got = {}
    for _ in range(2):
        r = q.receive(timeout=5, copy=False)
        got[bytes(r.body)] = r
    got[b"reject"].nack(requeue=False)
    got[b"again"].ack()
    assert got[b"again"].delivery_count == 2
    del got, r
    gc.collect()
    dlq = shmq.Queue(qname + ".dlq")
    try:
        d = dlq.receive(timeout=5)
        assert d.body == b"reject" and d.headers["x-dead-letter-reason"] == "rejected"
        d.ack()
    finally:
        dlq.close()


def test_close_with_views_alive(make_queue, qname):
    q = ackq(make_queue, qname)
    q.send(np.arange(1000))
    m = q.receive(timeout=5, copy=False)
    arr = m.body
    q.close()
    assert int(arr.sum()) == 999 * 1000 // 2       # still mapped: reading is safe
    with pytest.raises(shmq.QueueClosedError):
        m.ack()                                    # a clear error, never a crash
    with pytest.raises(shmq.QueueClosedError):
        q.receive(timeout=0, copy=False)
    del m, arr
    gc.collect()
    other = shmq.Queue(qname)
    try:
        st = other.stats()
        assert st["attached"] == 1                 # the closed handle detached at release,
        assert st["in_flight"] + st["depth"] == 1  # giving back its unsettled delivery
        assert int(other.receive(timeout=5).body.sum()) == 999 * 1000 // 2
    finally:
        other.close()


CHILD = """
import os, signal, sys, shmq
q = shmq.Queue({name!r})
m = q.receive(timeout=10, copy=False)
view = m.body
if {ack!r}:
    m.ack()
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("ack", [False, True])
def test_a_killed_holder_releases_through_repair(make_queue, qname, ack):
    q = ackq(make_queue, qname, visibility_timeout=3600)
    q.send(np.arange(MiB // 8, dtype=np.float64))
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD.format(name=qname, ack=ack))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -9 and "holding" in p.stdout, p.stderr
    if ack:
        # acked before the kill: never delivered again; repair frees the held storage
        with pytest.raises(shmq.Empty):
            q.receive(timeout=0.5)
        deadline = time.monotonic() + 10
        while q.stats()["bytes_used"] and time.monotonic() < deadline:
            shmq.Queue(qname).close()              # an attacher repairs the dead slot
            time.sleep(0.05)
        st = q.stats()
        assert st["acked"] == 1 and st["bytes_used"] == 0 and st["in_flight"] == 0
    else:
        # held open by the dead process's view: repair gives it back (a failed delivery)
        m = q.receive(timeout=10)
        assert m.delivery_count == 2 and m.body[-1] == MiB // 8 - 1
        m.ack()


def test_asyncio_calls_take_copy_false(make_queue, qname):
    import asyncio
    q = ackq(make_queue, qname)
    p = make_queue(".plain", capacity="1MiB")

    async def main():
        q.send(np.arange(10))
        p.put(np.arange(5))
        p.put(b"raw")
        m = await q.receive_async(timeout=5, copy=False)
        a = await p.get_async(timeout=5, copy=False)
        (b,) = await p.get_many_async(10, timeout=5, copy=False)
        return m, a, b
    m, a, b = asyncio.run(main())
    assert not m.body.flags.writeable and int(m.body.sum()) == 45
    assert not a.flags.writeable and int(a.sum()) == 10 and isinstance(b, memoryview) and bytes(b) == b"raw"
    m.ack()
    del m, a, b
    gc.collect()
    assert q.stats()["bytes_used"] == 0 and p.stats()["bytes_used"] == 0
