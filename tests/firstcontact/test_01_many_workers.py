"""Issue 13 item 1: a queue inherited by many forked children. Each child used to take a
participant slot at fork, so the 128th failed on its first put although none had used the queue."""
import multiprocessing as mp
import os

import pytest

import shmq

CTX = mp.get_context("fork")


def _put_once(q, i, ev):
    q.put(i, timeout=30)
    ev.wait(120)                 # all 300 are alive together, as a pool's workers are
    os._exit(0)


def _wait_idle(q, ev):
    ev.wait(60)                  # inherits q, never uses it
    os._exit(0)


def _use(q, out):
    q.put("late child", timeout=10)
    out.put(q.stats()["attached"], timeout=10)
    os._exit(0)


@pytest.mark.timeout(240)
def test_300_forked_children_each_put_once():
    q = shmq.Queue()
    ev = CTX.Event()
    procs = []
    try:
        for i in range(300):
            p = CTX.Process(target=_put_once, args=(q, i, ev))
            p.start()
            procs.append(p)
        got = sorted(q.get(timeout=60) for _ in range(300))
        assert got == list(range(300))
        ev.set()
        for p in procs:
            p.join(30)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs if p.exitcode]
    finally:
        ev.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
        q.close()


@pytest.mark.timeout(120)
def test_children_that_never_use_an_inherited_queue_take_no_slot(make_queue):
    # four slots; twenty live children that inherited the queue and never touch it; the parent
    # and a late child still attach and work
    q = make_queue(capacity="1MiB", max_participants=4)
    q.put("parent")
    ev = CTX.Event()
    out = shmq.Queue()
    idle = []
    try:
        for _ in range(20):
            p = CTX.Process(target=_wait_idle, args=(q, ev))
            p.start()
            idle.append(p)
        assert q.stats()["attached"] == 1           # the parent only
        late = CTX.Process(target=_use, args=(q, out))
        late.start()
        assert out.get(timeout=30) == 2              # the parent and the late child
        late.join(30)
        assert late.exitcode == 0
        assert [q.get(timeout=5), q.get(timeout=5)] == ["parent", "late child"]
    finally:
        ev.set()
        for p in idle:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
        out.close()


@pytest.mark.timeout(60)
def test_a_full_table_says_so_and_names_the_option(make_queue):
    q = make_queue(capacity="1MiB", max_participants=1)
    with pytest.raises(shmq.ShmqError) as ei:
        shmq.Queue(q.name)
    msg = str(ei.value)
    assert "participant table is full" in msg and "max_participants" in msg, msg
