"""Issue 11 item 4: a stopped process holding the arena lock must not make another producer's
put_nowait() / put(timeout=) block past its deadline (today: forever, with the GIL held)."""
import pytest

import shmq
from _forge import A_ARENA_LOCK, area0_off, check_child, run_py
from _stopped import stopped_holder

PRODUCER = """
import shmq, sys, time
q = shmq.Queue({name!r})
t0 = time.monotonic()
try:
    q.put_nowait(b"m" * 1000)        # over 72 bytes: needs the arena lock
except shmq.Full:
    pass
t1 = time.monotonic()
try:
    q.put(b"m" * 1000, timeout=0.3)
except shmq.Full:
    pass
t2 = time.monotonic()
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}}")
"""


@pytest.mark.timeout(60)
def test_put_nowait_and_put_timeout_return_while_a_stopped_process_holds_the_arena_lock(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        with stopped_holder(qname, q.path, area0_off(q.path) + A_ARENA_LOCK):
            res = run_py(PRODUCER.format(name=qname), timeout=8)
            out = check_child(res, "put_nowait()/put(timeout=0.3) while a stopped process holds the arena lock")
            nowait_s, timeout_s = map(float, out.split())
            assert nowait_s < 0.1, f"put_nowait() took {nowait_s} s"
            assert timeout_s < 1.3, f"put(timeout=0.3) took {timeout_s} s"
    finally:
        q.close()
