"""Issue 11 item 3: a producer SIGKILLed while blocked in put() for bytes must not take a unit of
`maxsize` with it (units are held while sleeping today and never recovered)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq
from _forge import read, H_COUNT

BIG = 16384 - 100   # three of these fill a 64 KiB queue's arena while maxsize=4 still has room

BLOCKED_PRODUCER = """
import shmq, sys
q = shmq.Queue(sys.argv[1])
print("blocking", flush=True)
q.put(b"b" * {big}, timeout=30)
"""


def _takes_exactly_maxsize(q, n):
    """Puts until Full; True if exactly n small puts went in and the next was refused."""
    for i in range(n):
        try:
            q.put_nowait(i)
        except shmq.Full:
            return False, i
    try:
        q.put_nowait("one too many")
    except shmq.Full:
        return True, n
    return False, n + 1


@pytest.mark.timeout(60)
def test_producer_killed_while_blocked_for_bytes_returns_its_unit(qname):
    q = shmq.Queue(qname, create=True, capacity="64KiB", maxsize=4)
    procs = []
    try:
        for _ in range(3):
            q.put_nowait(b"f" * BIG)
        with pytest.raises(shmq.Full):
            q.put_nowait(b"f" * BIG)       # out of bytes, one unit of maxsize left
        for _ in range(3):                 # each kill below took a unit while asleep
            p = subprocess.Popen([sys.executable, "-c", BLOCKED_PRODUCER.format(big=BIG), qname],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "blocking"
            deadline = time.monotonic() + 10
            while read(q.path, H_COUNT, "<Q")[0] < 4 and time.monotonic() < deadline:
                time.sleep(0.01)           # it reserved its unit and sleeps for room
            time.sleep(0.1)
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        for _ in range(3):
            q.get(timeout=5)
        q._repair()
        ok, n = _takes_exactly_maxsize(q, 4)
        assert ok, f"the drained maxsize=4 queue took {n} puts, not 4 (units leaked by killed producers)"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            if p.stdout:
                p.stdout.close()
        q.close()
