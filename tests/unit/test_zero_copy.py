"""get(copy=False): read-only views into shared memory, pinned until the last view is released
(DESIGN 3); a process that dies holding views releases them through repair; a forked child's
copy of a view releases nothing; close() with views alive never unmaps under them."""
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shmq


def _mapped(path):
    """Is the file mapped in this process? (by inode: a queue is created unnamed and then linked,
    so its mappings do not show the name)"""
    ino = os.stat(path).st_ino
    with open("/proc/self/maps") as f:
        return any(len(p) >= 5 and p[4] == str(ino) for p in (line.split() for line in f))


def test_a_numpy_array_is_a_read_only_view_pinned_until_released(make_queue):
    q = make_queue(capacity="64MiB")
    a = np.arange(1 << 17, dtype=np.float64)          # 1 MiB, out of band
    q.put(a)
    b = q.get(copy=False)
    assert isinstance(b, np.ndarray) and np.array_equal(a, b) and not b.flags.writeable
    with pytest.raises(ValueError):
        b[0] = 1.0
    used = q.stats()["bytes_used"]
    assert used >= a.nbytes                            # still taken: its chunk is not reused
    view = b[1000:2000]                                # a view of the view keeps the pin too
    del b
    gc.collect()
    assert q.stats()["bytes_used"] == used and view[0] == 1000.0
    del view
    gc.collect()
    assert q.stats()["bytes_used"] == 0               # released with the last view
    q.put(a)
    c = q.get()                                        # the default copies, writable
    assert c.flags.writeable and q.stats()["bytes_used"] == 0


def test_bytes_pickle_and_picklebuffer_bodies(make_queue):
    q = make_queue(capacity="4MiB")
    q.put(b"x" * 5000)
    v = q.get(copy=False)
    assert isinstance(v, memoryview) and v.readonly and bytes(v) == b"x" * 5000
    with pytest.raises(TypeError):
        v[0] = 1
    v.release()
    q.put({"a": 1})                                    # nothing out of band: an ordinary object
    assert q.get(copy=False) == {"a": 1} and q.stats()["bytes_used"] == 0
    buf = bytearray(b"y" * 100000)
    q.put(pickle.PickleBuffer(buf))
    got = q.get(copy=False)
    assert bytes(got) == bytes(buf)
    del got
    gc.collect()
    assert q.stats()["bytes_used"] == 0
    with pytest.raises(shmq.Empty):
        q.get(copy=False, timeout=0.01)


def test_close_with_views_alive_keeps_the_memory_mapped_until_the_last_is_released(qname):
    q = shmq.Queue(qname, create=True, capacity="4MiB")
    try:
        q.put(np.ones(100000))
        b = q.get(copy=False)
        q.close()
        assert _mapped(q.path)                          # not unmapped under the view
        assert float(b.sum()) == 100000.0               # still readable: never a segfault
        with pytest.raises(shmq.QueueClosedError):
            q.get(copy=False)
        del b
        gc.collect()
        assert not _mapped(q.path)                      # the deferred unmap ran at the release
    finally:
        q.close()
        shmq.unlink(qname)


def test_a_process_killed_holding_views_releases_them_through_repair(make_queue):
    q = make_queue(capacity="16MiB")
    q.put(np.zeros(1 << 18))
    code = textwrap.dedent(f"""
        import os, signal, shmq
        q = shmq.Queue({q.name!r})
        a = q.get(copy=False, timeout=10)
        print(a.nbytes, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL and r.stdout.strip() == str(1 << 21)
    assert q.stats()["bytes_used"] > 0                 # taken by the dead one
    q._repair()
    assert q.stats()["bytes_used"] == 0 and q.qsize() == 0   # at-most-once: its message is gone
    ck = q._consistency()
    assert ck["dead_owned"] == 0 and ck["bad_chunks"] == 0, ck


def test_a_forked_childs_copy_of_a_view_releases_nothing(make_queue):
    q = make_queue(capacity="8MiB")
    q.put(np.arange(50000))
    b = q.get(copy=False)
    used = q.stats()["bytes_used"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = int(b[49999]) == 49999
            del_b = b                                   # drop every reference the child has
            del del_b
            gc.collect()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert q.stats()["bytes_used"] == used and int(b[123]) == 123   # still the parent's
    del b
    gc.collect()
    assert q.stats()["bytes_used"] == 0


def test_raw_queues_give_views_of_bytes(make_queue):
    q = make_queue(capacity="1MiB", raw=True)
    q.put(b"raw body")
    v = q.get(copy=False)
    assert bytes(v) == b"raw body" and v.readonly


def test_get_many_copy_false_pins_each_message(make_queue):
    q = make_queue(capacity="16MiB")
    for i in range(5):
        q.put(np.full(50000, i, dtype=np.int64))
    views = q.get_many(10, timeout=5, copy=False)
    assert [int(v[0]) for v in views] == [0, 1, 2, 3, 4] and not any(v.flags.writeable for v in views)
    assert q.stats()["bytes_used"] > 0
    del views[:4]
    gc.collect()
    used_one = q.stats()["bytes_used"]
    assert 0 < used_one
    del views
    gc.collect()
    assert q.stats()["bytes_used"] == 0
    with pytest.raises(shmq.Empty):
        q.get_many(3, timeout=0.01, copy=False)
