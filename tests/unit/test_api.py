"""Unit tests of the API surface: arguments, errors, lifecycle, corruption, signals."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shmq
from shmq import _core

SHM = "/dev/shm"


def test_public_surface_is_explicit():
    assert set(shmq.__all__) <= set(dir(shmq))
    for n in ("Queue", "SimpleQueue", "JoinableQueue", "Empty", "Full", "QueueClosedError", "QueueNotFound"):
        assert n in shmq.__all__


def test_exception_hierarchy():
    import queue
    assert issubclass(shmq.Empty, queue.Empty) and issubclass(shmq.Empty, shmq.ShmqError)
    assert issubclass(shmq.Full, queue.Full)
    assert issubclass(shmq.QueueClosedError, ValueError) and issubclass(shmq.QueueClosedError, OSError)
    assert issubclass(shmq.QueueNotFound, FileNotFoundError)
    assert issubclass(shmq.MessageTooLargeError, ValueError)


def test_int_is_maxsize_str_is_name(qname):
    q = shmq.Queue(2)
    try:
        q.put(1)
        q.put(2)
        with pytest.raises(shmq.Full):
            q.put_nowait(3)
        assert q.full()
    finally:
        q.close()
    with pytest.raises(shmq.QueueNotFound):
        shmq.Queue(qname)


@pytest.mark.parametrize("bad", [1.5, None, b"x", [1]])
def test_wrong_constructor_argument_types(bad):
    with pytest.raises(TypeError):
        shmq.Queue(bad)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 201, "sp ace", "é", "a~b", "@x"])
def test_invalid_names_quote_the_rule(name):
    with pytest.raises(ValueError, match=r"\[A-Za-z0-9\._-\]"):
        shmq.Queue(name, create=True)


@pytest.mark.parametrize("cap", ["12 parsecs", -1, 0, "0MiB", True])
def test_invalid_capacity(qname, cap):
    with pytest.raises((ValueError, TypeError)):
        shmq.Queue(qname, create=True, capacity=cap)


def test_negative_and_bad_timeouts():
    q = shmq.Queue()
    try:
        with pytest.raises(ValueError, match="non-negative"):
            q.get(timeout=-1)
        with pytest.raises(ValueError):
            q.put(1, timeout=-0.5)
        with pytest.raises(ValueError):
            q.get(timeout=float("nan"))
        with pytest.raises(TypeError):
            q.get(timeout="soon")
        with pytest.raises(shmq.Empty):
            q.get(timeout=0)
        with pytest.raises(ValueError):
            q.get_many(0)
    finally:
        q.close()


def test_use_after_close_raises_closed_error():
    q = shmq.Queue()
    q.put(1)
    q.close()
    q.close()  # idempotent
    for call in (lambda: q.put(1), q.get, q.get_nowait, q.qsize, q.empty, lambda: q.put_many([1]), q.get_many):
        with pytest.raises(shmq.QueueClosedError):
            call()


def test_message_larger_than_capacity_raises_before_writing(make_queue):
    q = make_queue(capacity="256KiB")
    mm = q.stats()["max_message"]
    assert mm == 64 * 1024  # capacity / 4
    with pytest.raises(shmq.MessageTooLargeError, match="max_message"):
        q.put(b"x" * (mm + 1))
    assert q.qsize() == 0 and q.stats()["bytes_used"] == 0
    q.put(b"y" * (mm - 100))
    assert q.get(timeout=5) == b"y" * (mm - 100)


def test_bounded_bytes_block_then_full(make_queue):
    q = make_queue(capacity="256KiB")
    n = 0
    with pytest.raises(shmq.Full):
        for n in range(1000):
            q.put(b"z" * 30000, timeout=0.05)
    assert n > 2
    q.get(timeout=1)
    q.put(b"z" * 30000, timeout=1)


def test_unpicklable_raises_at_put():
    q = shmq.Queue()
    try:
        with pytest.raises((TypeError, AttributeError, pickle_error())):
            q.put(lambda: 1)
        with pytest.raises(TypeError):
            q.put(threading.Lock())
        assert q.qsize() == 0
    finally:
        q.close()


def pickle_error():
    import pickle
    return pickle.PicklingError


def test_raw_queue_rejects_objects(make_queue):
    q = make_queue(capacity="1MiB", raw=True)
    q.put(b"ok")
    q.put(bytearray(b"ba"))
    q.put(memoryview(b"mv"))
    with pytest.raises(TypeError, match="raw"):
        q.put({"a": 1})
    assert q.get_many(10, timeout=1) == [b"ok", bytearray(b"ba"), b"mv"]


def test_get_many_returns_without_filling_the_batch():
    q = shmq.Queue()
    try:
        q.put_many([1, 2])
        t0 = time.monotonic()
        assert q.get_many(64, timeout=10) == [1, 2]
        assert time.monotonic() - t0 < 5  # it did not wait for 64 items or the timeout
        with pytest.raises(shmq.Empty):
            q.get_many(64, timeout=0.01)
    finally:
        q.close()


def test_anonymous_queue_grows_and_carries_10mib():
    q = shmq.Queue()
    try:
        big = os.urandom(10 * 1024 * 1024)
        for i in range(3):
            q.put(big)
        for i in range(20000):
            q.put(i)
        st = q.stats()
        assert st["areas"] > 1 and st["depth"] == 20003
        for i in range(3):
            assert q.get(timeout=5) == big
        assert q.get_many(100000, timeout=5) == list(range(20000))
    finally:
        q.close()


def test_anonymous_segment_removed_by_creator_close():
    before = {f for f in os.listdir(SHM) if f.startswith("shmq.@")}
    q = shmq.Queue()
    path = q.path
    assert os.path.exists(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    q.close()
    assert not os.path.exists(path)
    assert {f for f in os.listdir(SHM) if f.startswith("shmq.@")} == before


def test_named_mode_exact_on_disk(qname):
    old = os.umask(0o077)
    try:
        q = shmq.Queue(qname, create=True, capacity="1MiB", mode=0o640)
    finally:
        os.umask(old)
    try:
        assert os.stat(q.path).st_mode & 0o777 == 0o640
        with pytest.raises(FileExistsError):
            shmq.Queue(qname, create=True)
        q2 = shmq.Queue(qname, create=True, exist_ok=True)
        q2.put("shared")
        assert q.get(timeout=1) == "shared"
        q2.close()
    finally:
        q.close()
        shmq.unlink(qname)
    with pytest.raises(shmq.QueueNotFound):
        shmq.unlink(qname)


def _corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("offset,data,exc", [
    (0, b"\0" * 8, shmq.CorruptQueueError),                       # magic
    (8, (99).to_bytes(4, "little"), shmq.IncompatibleQueueError),  # version
    (12, (77).to_bytes(4, "little"), shmq.CorruptQueueError),      # kind
    (28, (5000).to_bytes(4, "little"), shmq.CorruptQueueError),    # max_slots
    (896, (1 << 50).to_bytes(8, "little"), shmq.CorruptQueueError),  # area 0 offset
    (904, (1 << 50).to_bytes(8, "little"), shmq.CorruptQueueError),  # area 0 size
])
def test_corrupt_header_raises_clean_error(qname, offset, data, exc):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    q.close()
    _corrupt(q.path, offset, data)
    try:
        with pytest.raises(exc):
            shmq.Queue(qname)
    finally:
        shmq.unlink(qname)


def test_truncated_segment_refused(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    q.close()
    for size in (0, 100, 4096, 200000):
        os.truncate(q.path, size)
        with pytest.raises(shmq.CorruptQueueError):
            shmq.Queue(qname)
    shmq.unlink(qname)


def test_not_a_queue_file_refused(qname):
    with open(os.path.join(SHM, "shmq." + qname), "wb") as f:
        f.write(os.urandom(1 << 20))
    try:
        with pytest.raises(shmq.CorruptQueueError):
            shmq.Queue(qname)
    finally:
        shmq.unlink(qname)


def test_ctrl_c_interrupts_blocked_get(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent("""
        import sys, shmq
        q = shmq.Queue()
        print("ready", flush=True)
        try:
            q.get()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            q.close()
            sys.exit(0)
        sys.exit(3)
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0 and "interrupted" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_close_wakes_a_thread_blocked_on_the_same_handle():
    q = shmq.Queue()
    result = []

    def blocked():
        try:
            q.get(timeout=30)
        except shmq.QueueClosedError:
            result.append("closed")
        except shmq.Empty:
            result.append("empty")

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.2)
    q.close()
    t.join(10)
    assert not t.is_alive() and result == ["closed"]


def test_threads_share_one_handle():
    q = shmq.Queue()
    got = []
    lock = threading.Lock()

    def consume():
        while True:
            try:
                v = q.get(timeout=5)
            except shmq.Empty:
                return
            if v is None:
                return
            with lock:
                got.append(v)

    ts = [threading.Thread(target=consume) for _ in range(3)]
    for t in ts:
        t.start()
    for i in range(3000):
        q.put(i)
    for _ in ts:
        q.put(None)
    for t in ts:
        t.join(30)
    q.close()
    assert sorted(got) == list(range(3000))


def test_crash_points_table():
    names = [n for n, _ in shmq.crash_points()]
    assert len(names) == len(set(names)) >= 10
    assert {"after_claim", "before_commit", "mid_get", "after_alloc"} <= set(names)


DESIGN_STATS_KEYS = ("depth", "bytes_used", "capacity", "in_flight", "delayed", "producers", "consumers", "enqueued",
                     "dequeued", "acked", "redelivered", "dead_lettered", "expired", "oldest_age_s", "repairs",
                     "skipped_cells", "last_repair_ms")


def test_stats_keys_and_counts():
    q = shmq.Queue()
    try:
        assert q.stats()["oldest_age_s"] == 0.0
        q.put_many(range(10))
        q.get()
        time.sleep(0.02)
        st = q.stats()
        for k in DESIGN_STATS_KEYS:
            assert k in st, k
        assert st["oldest_age_s"] >= 0.01 and st["in_flight"] == 0
        assert st["depth"] == 9 and st["enqueued"] == 10 and st["dequeued"] == 1
        assert st["attached"] == 1 and st["producers"] == 1 and st["consumers"] == 1
    finally:
        q.close()


def test_spin_setting():
    old = shmq.get_spin_us()
    try:
        shmq.set_spin_us(0)
        assert shmq.get_spin_us() == 0
        with pytest.raises(ValueError):
            shmq.set_spin_us(-1)
    finally:
        shmq.set_spin_us(old)


def test_os_errors_are_shmq_errors_too(make_queue, qname):
    q = make_queue(capacity="1MiB")
    with pytest.raises(shmq.QueueExistsError) as ei:
        shmq.Queue(qname, create=True)
    assert isinstance(ei.value, FileExistsError) and isinstance(ei.value, shmq.ShmqError)
    assert repr(qname) in str(ei.value)
    assert issubclass(shmq.QueuePermissionError, PermissionError)
    assert issubclass(shmq.NoSpaceError, OSError) and issubclass(shmq.NoSpaceError, shmq.ShmqError)


def test_joinable_over_a_plain_queue_is_refused(make_queue, qname):
    q = make_queue(capacity="1MiB")
    with pytest.raises(ValueError, match="JoinableQueue"):
        shmq.JoinableQueue(qname)


def test_raw_queue_consumer_never_unpickles(make_queue, qname):
    import struct
    raw = make_queue(capacity="1MiB", raw=True)
    other = shmq.Queue(qname)  # any handle on a raw queue enforces it at put
    try:
        with pytest.raises(TypeError, match="raw"):
            other.put({"evil": 1})
        raw.put(b"\x80\x05N.")  # bytes that happen to be a pickle
        # a hostile writer flips the descriptor's kind byte to "pickle": the consumer refuses
        with open(raw.path, "r+b") as f:
            f.seek(896)
            a0off = struct.unpack("<Q", f.read(8))[0]
            f.seek(a0off + 40)
            desc_off = struct.unpack("<Q", f.read(8))[0]
            f.seek(a0off + desc_off + 41)
            f.write(bytes([3]))
        with pytest.raises(shmq.CorruptQueueError, match="refusing to unpickle"):
            raw.get(timeout=1)
    finally:
        other.close()


def test_get_many_keeps_items_taken_before_a_bad_one():
    class Bad:
        def __reduce__(self):
            return (int, ("not a number",))

    q = shmq.Queue()
    try:
        q.put_many(["a", "b", Bad(), "c"])
        assert q.get_many(10, timeout=1) == ["a", "b"]
        with pytest.raises(ValueError):
            q.get(timeout=1)  # the bad item's error comes with the next call
        assert q.get(timeout=1) == "c"
    finally:
        q.close()


def test_qsize_counts_a_message_published_by_a_producer_killed_before_its_tail_advance(make_queue, qname, tmp_path):
    import subprocess, sys
    worker = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crash", "_worker.py")
    q = make_queue(capacity="1MiB")
    env = dict(os.environ, SHMQ_CRASH_AT="before_commit:1")
    r = subprocess.run([sys.executable, worker, "produce", qname, "5", str(tmp_path / "r"), "small"],
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == -9
    assert q.qsize() == 1 and not q.empty()
    q.get(timeout=1)
    assert q.qsize() == 0


def test_put_many_reports_how_many_went_in():
    q = shmq.Queue(3)
    try:
        with pytest.raises(shmq.Full) as ei:
            q.put_many(range(10), block=False)
        assert ei.value.items_put == 3 and q.qsize() == 3
    finally:
        q.close()
