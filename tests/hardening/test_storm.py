"""Issue 11 storm test: SIGKILL participants of a bounded maxsize=4 queue many times; afterwards
the drained queue must still take exactly 4 puts and refuse the 5th with Full. The number of
kills is a setting (SHMQ_STORM_KILLS, default 600: about 10 s on a 2-core machine; seed: SHMQ_STORM_SEED)."""
import multiprocessing
import os
import random
import signal
import time

import pytest

import shmq

KILLS = int(os.environ.get("SHMQ_STORM_KILLS", "600"))
BIG = 16384 - 100   # three fill the 64 KiB arena: producers also sleep for bytes, holding a unit


def _producer(q, seed):
    rng = random.Random(seed)
    while True:
        size = rng.choice([8, 200, 5000, BIG])
        try:
            q.put(b"p" * size, timeout=0.5)
        except shmq.Full:
            pass


def _consumer(q, seed):
    rng = random.Random(seed)
    while True:
        try:
            q.get(timeout=0.5)
        except shmq.Empty:
            pass
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.005))


@pytest.mark.timeout(180)
def test_sigkill_storm_leaves_a_maxsize_4_queue_taking_exactly_4(qname):
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(int(os.environ.get("SHMQ_STORM_SEED", "4")))
    q = shmq.Queue(qname, create=True, capacity="64KiB", maxsize=4)
    workers = []

    def spawn(i):
        target = _consumer if i == 0 else _producer   # mostly producers: they often sleep for room
        p = ctx.Process(target=target, args=(q, rng.random()), daemon=True)
        p.start()
        return p

    try:
        workers = [spawn(i) for i in range(4)]
        t0 = time.monotonic()
        for k in range(KILLS):
            time.sleep(rng.uniform(0.0, 0.03))
            i = rng.randrange(len(workers))
            os.kill(workers[i].pid, signal.SIGKILL)
            workers[i].join(10)
            workers[i] = spawn(i)
        storm_s = time.monotonic() - t0
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
        workers = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:        # drain, repairing the dead as we go
            q._repair()
            try:
                q.get(timeout=0.1)
            except shmq.Empty:
                if q.qsize() == 0:
                    break
        assert q.qsize() == 0
        put = 0
        for i in range(4):
            try:
                q.put_nowait(i)
                put += 1
            except shmq.Full:
                break
        assert put == 4, (f"after {KILLS} kills in {storm_s:.1f} s the drained maxsize=4 queue took only {put} "
                          f"puts (stats: {q.stats()})")
        with pytest.raises(shmq.Full):
            q.put_nowait("the fifth")
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
            p.join(10)
        q.close()
