"""Issue 11 item 7: a segment truncated under live processes must not kill them with SIGBUS: the
access that hits the missing pages raises CorruptQueueError and the handle is closed; the
interpreter goes on (docs/guide/hostile-hosts.md states what is promised)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq
from _forge import check_child, run_py

CHILD = """
import os, shmq
q = shmq.Queue({name!r})
q.put(b"before" * 100, timeout=5)
q.put(7, timeout=5)
os.truncate(q.path, {size})            # what a hostile or careless process can do at any time
try:
    {call}
except shmq.CorruptQueueError as e:
    print("corrupt:", e)
else:
    raise AssertionError("no error from a truncated segment")
try:
    q.put(1, timeout=1)
except shmq.CorruptQueueError:
    pass                               # still refused, never SIGBUS
except shmq.QueueClosedError:
    pass                               # or closed by the error above
else:
    raise AssertionError("a put on the truncated segment succeeded")
q.close()
print("child-ok")
"""

CALLS = {
    "stats": "q.stats()",
    "get": "q.get(timeout=1)",
    "put": "q.put(b'x' * 5000, timeout=1)",
    "qsize": "q.qsize()",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [0, 4096], ids=["to-0", "to-header"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_an_access_to_a_truncated_segment_raises_corrupt_queue_error(qname, call, size):
    shmq.Queue(qname, create=True, capacity="1MiB").close()   # no handle here: only the child's
    out = check_child(run_py(CHILD.format(name=qname, size=size, call=CALLS[call]), timeout=30),
                      f"{call} on a segment truncated to {size} bytes")
    assert "corrupt:" in out and "child-ok" in out, out


BLOCKED = """
import shmq, sys, time
q = shmq.Queue(sys.argv[1])
print("blocking", flush=True)
t0 = time.monotonic()
try:
    q.get(timeout=10)
except shmq.CorruptQueueError:
    print(f"corrupt after {time.monotonic() - t0:.2f}", flush=True)
"""


@pytest.mark.timeout(60)
def test_a_consumer_blocked_in_get_when_another_process_truncates_survives(qname):
    shmq.Queue(qname, create=True, capacity="1MiB").close()   # no handle here: only the child's
    p = subprocess.Popen([sys.executable, "-c", BLOCKED, qname], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "blocking"
        time.sleep(0.3)
        os.truncate(os.path.join("/dev/shm", "shmq." + qname), 0)
        out, _ = p.communicate(timeout=20)
        assert p.returncode == 0, f"the blocked consumer ended with {p.returncode} ({signal.Signals(-p.returncode).name if p.returncode < 0 else ''})"
        assert "corrupt after" in out, out
        assert float(out.split()[-1]) < 5, out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()


FOREIGN = """
import faulthandler, mmap, os, sys, tempfile
{enable}
import shmq
q = shmq.Queue({name!r})
q.put(1, timeout=5)
fd, path = tempfile.mkstemp(dir="/dev/shm", prefix="guard-test-")
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192)
os.ftruncate(fd, 0)
os.unlink(path)
print("reading", flush=True)
m[4096]                                # not shmq's mapping: must still be a SIGBUS
print("survived", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("faulthandler_first", [False, True], ids=["plain", "faulthandler"])
def test_a_sigbus_outside_shmq_mappings_is_not_swallowed(qname, faulthandler_first):
    shmq.Queue(qname, create=True, capacity="1MiB").close()
    enable = "faulthandler.enable()" if faulthandler_first else ""
    rc, out, err = run_py(FOREIGN.format(name=qname, enable=enable), timeout=30)
    assert "reading" in out and "survived" not in out, (rc, out, err)
    assert rc == -signal.SIGBUS, (rc, out, err[-1000:])
    if faulthandler_first:
        assert "Bus error" in err, err[-1000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [0, 4096, 100000], ids=["to-0", "to-header", "mid-area"])
def test_opening_a_truncated_segment_is_refused(qname, size):
    shmq.Queue(qname, create=True, capacity="1MiB").close()
    os.truncate(os.path.join("/dev/shm", "shmq." + qname), size)
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Queue(qname)


THREADS = """
import shmq, sys, threading, time
q = shmq.Queue(sys.argv[1])
seen = []
def blocked_get():
    try:
        q.get(timeout=10)
        seen.append("got")
    except shmq.CorruptQueueError:
        seen.append("corrupt")
    except shmq.ShmqError as e:
        seen.append(type(e).__name__)
t = threading.Thread(target=blocked_get)
t.start()
print("blocking", flush=True)
sys.stdin.readline()                  # the parent truncated the file
try:
    for i in range(100):
        q.put(b"z" * 3000, timeout=1)
    seen.append("put ok")
except (shmq.CorruptQueueError, shmq.QueueClosedError):
    seen.append("put refused")
t.join(15)
print(seen, flush=True)
assert not t.is_alive() and len(seen) == 2 and "put refused" in seen, seen
assert "corrupt" in seen or "QueueClosedError" in seen, seen   # whichever thread met it first
"""


@pytest.mark.timeout(60)
def test_threads_of_one_handle_survive_a_truncation(qname):
    shmq.Queue(qname, create=True, capacity="1MiB").close()
    p = subprocess.Popen([sys.executable, "-c", THREADS, qname], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "blocking"
        time.sleep(0.3)
        os.truncate(os.path.join("/dev/shm", "shmq." + qname), 0)
        out, err = p.communicate("go\n", timeout=30)
        assert p.returncode == 0, (p.returncode, out, err[-2000:])
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
