"""Issue 11 item 2: repair must clamp every area loop to the open-time geometry, not to
max_areas / area_tail read live from the segment (a hostile writer sets them after open)."""
import pytest

import shmq
from _forge import H_AREA_TAIL, H_MAX_AREAS, check_child, run_py, write

PRODUCER = """
import shmq
q = shmq.Queue({name!r})
q.put(b"p" * 100, timeout=5)   # killed at after_claim: a READY descriptor that no ring refers to
"""

REPAIRER = """
import shmq, sys
sys.path.insert(0, {here!r})
from _forge import H_AREA_TAIL, H_MAX_AREAS, write
q = shmq.Queue({name!r})
# hostile words written after open (open validated them): far beyond the 64-entry arrays
write(q.path, H_MAX_AREAS, "<I", 0xFFFFFFFF)
write(q.path, H_AREA_TAIL, "<I", 1 << 20)
try:
    q._repair()
except shmq.ShmqError:
    pass   # a clean error is fine; a crash is not
print("repairer-ok")
"""


@pytest.mark.timeout(60)
def test_repair_with_hostile_area_bounds_does_not_read_outside_its_arrays(qname):
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    q = shmq.Queue(qname, create=True, capacity=None)   # growable: max_areas 64
    try:
        rc, _, err = run_py(PRODUCER.format(name=qname), env={"SHMQ_CRASH_AT": "after_claim:1"})
        assert rc == -9, f"the producer should have died at after_claim: {rc} {err[-500:]}"
        res = run_py(REPAIRER.format(name=qname, here=here), timeout=30)
        check_child(res, "repair of a dead producer's orphan with hostile max_areas/area_tail")
    finally:
        write(q.path, H_MAX_AREAS, "<I", 64)
        write(q.path, H_AREA_TAIL, "<I", 0)
        q.close()
