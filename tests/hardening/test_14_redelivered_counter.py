"""Issue 11 item 14: stats()["redelivered"] must match the redeliveries that really happen (today it
runs far ahead under a kill storm).

Why it runs ahead (found here): a message put back while its ring has no room (stale cells, left
by leases taken back by extend() or acked after they were put back, fill a bounded ring) is
parked as an expired lease owned by nobody; every timer scan (one per millisecond at most) then
counts a redelivery, fails to publish and parks it again, until the ring has room. The first test
makes that state deterministically; the second checks the counter against a checker under
SIGKILLed consumers."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import shmq

KILLS = int(os.environ.get("SHMQ_REDELIVERY_KILLS", "60"))
N = 300

CONSUMER = """
import shmq, sys, time
q = shmq.Queue(sys.argv[1])
print("up", flush=True)
while True:
    try:
        q.receive_many(int(sys.argv[2]), timeout=1)   # never acked: the kill takes them
    except shmq.Empty:
        pass
"""


@pytest.mark.timeout(180)
def test_redelivered_counter_matches_the_redeliveries_a_checker_sees(qname):
    rng = random.Random(1411)
    q = shmq.Queue(qname, create=True, ack=True, capacity="4MiB", visibility_timeout=600, max_deliveries=65535)
    procs = []
    try:
        for i in range(N):
            q.send(i)
        for k in range(KILLS):
            p = subprocess.Popen([sys.executable, "-c", CONSUMER, qname, str(rng.choice([1, 4, 16, 64]))],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "up"
            time.sleep(rng.uniform(0.0, 0.05))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
            procs.remove(p)
            if k % 8 == 0:
                q._repair()
        deadline = time.monotonic() + 30
        counts = {}
        while len(counts) < N and time.monotonic() < deadline:
            q._repair()
            try:
                ms = q.receive_many(64, timeout=0.2)
            except shmq.Empty:
                continue
            for m in ms:
                assert m.body not in counts, f"message {m.body} delivered again after its ack"
                counts[m.body] = m.delivery_count
                m.ack()
        assert len(counts) == N, f"only {len(counts)} of {N} messages came back"
        real = sum(c - 1 for c in counts.values())
        st = q.stats()
        assert st["dead_lettered"] == 0
        assert st["redelivered"] == real, \
            f"stats()['redelivered'] = {st['redelivered']}, but the messages were redelivered {real} times"
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
            p.stdout.close()
        q.close()
        shmq.unlink(qname + ".dlq")


@pytest.mark.timeout(60)
def test_a_message_parked_for_ring_room_is_counted_once(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="64KiB", visibility_timeout=0.1, max_deliveries=65535)
    try:
        n = 0
        try:
            while True:
                q.send(n, block=False)
                n += 1
        except shmq.Full:
            pass
        held = []
        while len(held) < n:
            held += q.receive_many(n, timeout=2)
        time.sleep(0.2)
        q._timers_run()                    # every lease expired: all n put back in the ring
        for m in held:
            m.extend(0.1)                  # taken back: the ring is now full of stale cells
        time.sleep(0.2)
        for _ in range(50):                # the leases expire again; the ring has no room
            q._timers_run()
            time.sleep(0.002)
        seen = {}
        deadline = time.monotonic() + 20
        while len(seen) < n and time.monotonic() < deadline:
            try:
                for m in q.receive_many(64, timeout=0.5):
                    seen[m.body] = m.delivery_count
                    m.ack()
            except shmq.Empty:
                pass
        assert len(seen) == n
        real = sum(c - 1 for c in seen.values())
        expiries = 2 * n                   # each message's lease ran out twice (once taken back)
        counted = q.stats()["redelivered"]
        assert real <= counted <= expiries, \
            f"stats()['redelivered'] = {counted} for {real} redeliveries ({expiries} lease expiries)"
    finally:
        q.close()
        shmq.unlink(qname + ".dlq")
