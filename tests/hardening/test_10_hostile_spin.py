"""Issue 11 item 10: a hostile word in the segment must not make put() spin at 100 % CPU past its
timeout: every loop over shared state is bounded and honours the deadline; garbage raises
CorruptQueueError (or the timeout's Full)."""
import os

import pytest

from _forge import check_child, run_py

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import sys, time
sys.path.insert(0, {here!r})
import shmq
from _forge import *
q = shmq.Queue({name!r})
{forge}
t0 = time.monotonic()
try:
    for i in range(64):
        q.put(b"g" * 20000, timeout=0.5)
except shmq.ShmqError:   # Full at the deadline, CorruptQueueError, QueueMemoryError: all clean
    pass
dt = time.monotonic() - t0
print(f"{{dt:.2f}}")
assert dt < 3, f"put took {{dt:.2f}} s with timeout=0.5"
"""

ZERO_AREA_SIZE = 'write(q.path, H_AREAS + 8, "<Q", 0)   # area 0 says it has 0 bytes: growth doubles 0'
CELLS_FAR_AHEAD = """
a0 = area0_off(q.path)
lg = read(q.path, a0 + A_CELLS_LOG2, "<I")[0]
cells = a0 + read(q.path, a0 + A_CELLS_OFF, "<Q")[0]
for k in range(1 << lg):                 # every cell FULL at a lap far ahead of the ring's
    write(q.path, cells + 16 * k, "<Q", (0x7FFFFFF0 << 32) | (2 << 30))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forge,growable", [(ZERO_AREA_SIZE, True), (CELLS_FAR_AHEAD, False)],
                         ids=["area-size-0", "cells-far-ahead"])
def test_put_honours_its_timeout_on_a_hostile_segment(qname, forge, growable):
    import shmq
    q = shmq.Queue(qname, create=True, capacity=None if growable else "1MiB")
    try:
        res = run_py(CHILD.format(here=HERE, name=qname, forge=forge), timeout=10)
        check_child(res, "put(timeout=0.5) on a segment with a hostile word")
    finally:
        q.close()
