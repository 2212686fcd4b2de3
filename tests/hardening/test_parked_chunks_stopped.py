"""Issue 12 item 1: payloads over the inline size reuse the chunk parked in a FREE descriptor
(docs/internals/arena.md), so a stopped process never holds room another process cannot reach:

- a process that parked the whole arena (every chunk of one size) and was then stopped at an
  arbitrary instant of its put/get loop does not stall a producer of another size in another
  process: that producer takes the parked chunks back and its puts return within its timeout;
- a stopped process holding the arena lock itself does not stall a producer whose payloads fit
  the parked chunks: reuse takes no lock (before parking, put_nowait raised Full here)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import shmq
from _forge import A_ARENA_LOCK, area0_off, check_child, run_py
from _stopped import stopped_holder

PARKER = textwrap.dedent("""
    import shmq, sys
    q = shmq.Queue(sys.argv[1])
    n = 0
    while True:                      # the whole arena in 1000-byte chunks ...
        try:
            q.put_nowait(b"a" * 1000)
            n += 1
        except shmq.Full:
            break
    for _ in range(n):               # ... all parked in FREE descriptors
        q.get_nowait()
    print(n, flush=True)
    while True:                      # reusing them until stopped, wherever it is then
        q.put(b"b" * 1000, timeout=5)
        q.get(timeout=5)
""")

OTHER_SIZE = """
import shmq, time
q = shmq.Queue({name!r})
t0 = time.monotonic()
for i in range(20):
    q.put(bytes([i]) * 16384, timeout=5)   # another order: needs the parked room back
print(f"{{time.monotonic() - t0:.3f}}")
"""

SAME_SIZE = """
import shmq, time
q = shmq.Queue({name!r})
t0 = time.monotonic()
for i in range(50):
    q.put_nowait(bytes([i]) * 1000)        # fits a parked chunk: no arena lock
print(f"{{time.monotonic() - t0:.3f}}")
"""


@pytest.mark.timeout(90)
def test_a_stopped_process_that_parked_the_arena_does_not_stall_another_producer(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    p = subprocess.Popen([sys.executable, "-c", PARKER, qname], stdout=subprocess.PIPE, text=True)
    try:
        n = int(p.stdout.readline())
        assert n > 300, n
        os.kill(p.pid, signal.SIGSTOP)
        ck = q._consistency()
        assert ck["parked_chunks"] >= n - 1 and ck["arena_mismatch"] == 0, ck
        out = check_child(run_py(OTHER_SIZE.format(name=qname), timeout=30),
                          "16 KiB puts while a stopped process parked the arena")
        assert float(out) < 5.0
        got = []
        while q.qsize():
            got.append(q.get(timeout=1))
        big = [m for m in got if len(m) == 16384]
        assert big == [bytes([i]) * 16384 for i in range(20)]
        assert all(m == b"b" * 1000 for m in got if len(m) != 16384)  # at most the stopped one's own
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait(10)
        p.stdout.close()
        q.close()


@pytest.mark.timeout(60)
def test_reuse_of_parked_chunks_needs_no_arena_lock(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        for _ in range(60):
            q.put(b"x" * 1000)
        for _ in range(60):
            q.get(timeout=1)                  # 60 chunks of this size parked
        with stopped_holder(qname, q.path, area0_off(q.path) + A_ARENA_LOCK):
            out = check_child(run_py(SAME_SIZE.format(name=qname), timeout=30),
                              "put_nowait of parked-size payloads while a stopped process holds the arena lock")
            assert float(out) < 1.0
            assert [q.get(timeout=1) for _ in range(50)] == [bytes([i]) * 1000 for i in range(50)]
    finally:
        q.close()
