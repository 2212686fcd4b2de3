"""Issue 11 item 1: close() while a get() of the same handle is still decoding its message (the
payload copy, unpickling, get_end) must neither crash the interpreter nor leak the message's
descriptor and space."""
import pytest

import shmq
from _forge import check_child, run_py

# The child closes its handle from another thread while unpickling a message it just took: the
# object's reduce function runs inside get(), after the take returned, exactly the window of a
# close() racing a get() of a worker thread, but deterministic.
CHILD = """
import sys, threading
import shmq
q = shmq.Queue(sys.argv[1] if len(sys.argv) > 1 else {name!r})

def close_from_another_thread():
    t = threading.Thread(target=q.close)
    t.start()
    t.join(10)
    return "closed"

class CloseWhileDecoding:
    def __reduce__(self):
        return (close_from_another_thread, ())

q.put([CloseWhileDecoding(), b"x" * 200_000, list(range(1000))], timeout=5)
try:
    got = q.get(timeout=5)
    assert got[0] == "closed" and got[1] == b"x" * 200_000, "message corrupted"
except shmq.QueueClosedError:
    pass   # also acceptable: the close won
print("child-ok")
"""


@pytest.mark.timeout(60)
def test_close_in_another_thread_during_get_neither_crashes_nor_leaks(qname):
    q = shmq.Queue(qname, create=True, capacity="4MiB")
    try:
        res = run_py(CHILD.format(name=qname), timeout=30)
        out = check_child(res, "close() during get() of the same handle")
        assert "child-ok" in out
        q._repair()
        ck = q._consistency()
        assert ck["owned_desc"] == 0 and ck["dead_owned"] == 0, f"the taken message's descriptor leaked: {ck}"
        assert q.stats()["bytes_used"] == 0, q.stats()
    finally:
        q.close()
