"""Issue 13 item 2: a worker that leaves without acking (an uncaught exception, sys.exit, close())
gives its unacked deliveries back at once, each counted as a failed delivery, as a SIGKILLed one
does; before, they waited out the visibility timeout (60 s here)."""
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import pytest

import shmq

EXITS = {
    "exception": "raise RuntimeError('worker bug')",
    "sys.exit": "sys.exit(3)",
    "close": "q.close(); time.sleep(30)",     # the process stays alive: only the handle closed
}


@pytest.fixture
def ackq(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=60)
    yield q
    q.close()
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", sorted(EXITS))
def test_a_worker_leaving_without_ack_gives_its_deliveries_back_at_once(ackq, how):
    for i in range(3):
        ackq.send(b"job %d" % i)
    code = textwrap.dedent(f"""
        import sys, time, shmq
        q = shmq.Queue({ackq.name!r})
        ms = [q.receive(timeout=10), q.receive(timeout=10)]
        print("held", flush=True)
        {EXITS[how]}
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"held\n"
        got = sorted((ackq.receive(timeout=10) for _ in range(3)), key=lambda m: m.body)
        assert [(m.body, m.delivery_count) for m in got] == [(b"job 0", 2), (b"job 1", 2), (b"job 2", 1)]
        for m in got:
            m.ack()
        st = ackq.stats()
        assert st["redelivered"] == 2 and st["in_flight"] == 0 and st["depth"] == 0, st
    finally:
        child.kill()
        child.communicate(timeout=10)


def _pool_task(name):
    q = shmq.Queue(name)
    q.receive(timeout=10)
    raise ValueError("the task failed")


@pytest.mark.timeout(60)
def test_a_multiprocessing_worker_dying_of_an_exception_gives_back(ackq):
    ackq.send(b"only")
    p = mp.get_context("fork").Process(target=_pool_task, args=(ackq.name,))
    p.start()
    p.join(30)
    assert p.exitcode == 1
    m = ackq.receive(timeout=5)
    assert (m.body, m.delivery_count) == (b"only", 2)
    m.ack()


@pytest.mark.timeout(60)
def test_closing_gives_back_only_its_own_deliveries_and_past_max_deliveries_dead_letters(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=60, max_deliveries=1)
    other = shmq.Queue(qname)
    try:
        q.send(b"a")
        q.send(b"b")
        mine = other.receive(timeout=5)
        kept = q.receive(timeout=5)
        other.close()                       # its delivery was the first and last allowed one
        with shmq.Queue(q.dead_letter_queue) as dlq:
            d = dlq.receive(timeout=5)
            assert d.body == mine.body and d.headers["x-dead-letter-reason"] == "max_deliveries"
            d.ack()
        assert kept.ack()                   # our handle's delivery was left alone
        assert q.stats()["in_flight"] == 0
    finally:
        other.close()
        q.close()
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass
