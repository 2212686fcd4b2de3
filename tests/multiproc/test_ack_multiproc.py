"""At-least-once across processes: consumers SIGKILLed while holding messages, and a stopped
consumer (a zombie) whose lease ran out. Every message is acked exactly once in the end;
duplicates happen only after a death or an expiry, with delivery_count > 1."""
import multiprocessing as mp
import os
import random
import signal
import struct
import time

import pytest

import shmq

CTX = mp.get_context("fork")
BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


def _cleanup(*names):
    for n in names:
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


def _consumer(name, log_path, hold_s):
    """Receive and ack forever; sometimes hold a message a while first (so kills catch leases)."""
    q = shmq.Queue(name)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rnd = random.Random(os.getpid())
    while True:
        try:
            ms = q.receive_many(8, timeout=5)
        except shmq.Empty:
            os._exit(0)
        for m in ms:
            seq = struct.unpack_from("<Q", m.body)[0]
            os.write(fd, b"r %d %d\n" % (seq, m.delivery_count))
            if rnd.random() < 0.2:
                time.sleep(hold_s)
            m.ack()
            os.write(fd, b"a %d\n" % seq)


def _producer(name, start, count):
    q = shmq.Queue(name)
    for seq in range(start, start + count):
        q.send(struct.pack("<Q", seq) + bytes(seq % 200), timeout=30)
    q.close()
    os._exit(0)


def test_sigkilled_consumers_every_message_acked_once(qname, tmp_path):
    total, producers = 3000, 2
    # a 60 s lease: anything a dead consumer held must come back through repair, not expiry
    q = shmq.Queue(qname, create=True, ack=True, capacity="4MiB", visibility_timeout=60)
    log = str(tmp_path / "log")
    procs, consumers = [], []
    t0 = time.monotonic()
    try:
        for i in range(producers):
            p = CTX.Process(target=_producer, args=(qname, i * (total // producers), total // producers))
            p.start()
            procs.append(p)
        rnd = random.Random(1)
        kills = 0
        while time.monotonic() - t0 < 50:
            consumers = [c for c in consumers if c.is_alive()]
            while len(consumers) < 2:
                c = CTX.Process(target=_consumer, args=(qname, log, 0.01))
                c.start()
                consumers.append(c)
            st = q.stats()
            if st["acked"] >= total and st["depth"] == 0 and st["in_flight"] == 0:
                break
            time.sleep(rnd.uniform(0.02, 0.08))
            if kills < 15:
                victim = rnd.choice(consumers)
                victim.kill()
                victim.join(5)            # dead and reaped before the list is looked at again
                kills += 1
        elapsed = time.monotonic() - t0
        st = q.stats()
        assert st["acked"] == total, st          # exactly once: every ack removes a distinct message
        assert st["depth"] == 0 and st["in_flight"] == 0 and st["dead_lettered"] == 0, st
        assert elapsed < 55                      # well before any 60 s lease could have expired
        assert kills >= 5
        with open(log) as f:
            recs = [line.split() for line in f]
        seen = {}
        for r in recs:
            if r[0] == "r":
                seen.setdefault(int(r[1]), []).append(int(r[2]))
        assert set(seen) == set(range(total))
        for seq, counts in seen.items():
            # each delivery of a message has its own count (a killed consumer may have died
            # before logging its delivery, so the first logged one can be > 1)
            assert len(set(counts)) == len(counts), (seq, counts)
        # redeliveries only after deaths: at most one batch (8) in flight per killed consumer
        again = [seq for seq, counts in seen.items() if max(counts) > 1]
        assert len(again) <= kills * 8 and st["redelivered"] <= kills * 8, (len(again), st["redelivered"], kills)
        assert st["redelivered"] >= 1            # some kill caught a message in flight
    finally:
        for p in procs + consumers:
            if p.is_alive():
                p.kill()
            p.join(5)
        q.close()
        _cleanup(qname, qname + ".dlq")


def _zombie(name, conn):
    q = shmq.Queue(name)
    m = q.receive(timeout=5)
    conn.send(("got", m.id, m.delivery_count))
    conn.recv()                               # parent: SIGSTOP ... SIGCONT, then "go"
    try:
        m.ack()
        conn.send(("acked",))
    except shmq.LeaseExpiredError as e:
        conn.send(("expired", str(e)))
    os._exit(0)


def test_zombie_consumer_ack_fails_after_redelivery(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=0.3)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_zombie, args=(qname, child))
    try:
        q.send(b"job")
        p.start()
        assert parent.poll(10)
        tag, mid, count = parent.recv()
        assert count == 1
        os.kill(p.pid, signal.SIGSTOP)
        m2 = q.receive(timeout=5)             # the zombie's lease ran out
        assert m2.id == mid and m2.delivery_count == 2
        assert m2.ack() is True
        os.kill(p.pid, signal.SIGCONT)
        parent.send("go")
        assert parent.poll(10)
        res = parent.recv()
        assert res[0] == "expired", res
        st = q.stats()
        assert st["acked"] == 1 and st["depth"] == 0 and st["in_flight"] == 0
    finally:
        try:
            os.kill(p.pid, signal.SIGCONT)
        except (ProcessLookupError, TypeError):
            pass
        if p.is_alive():
            p.kill()
        p.join(5)
        q.close()
        _cleanup(qname, qname + ".dlq")
