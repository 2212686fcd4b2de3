"""Issue 13 item 8: errors say why and what to do, arguments the core would change are refused,
signatures show real defaults, and a closed anonymous queue's error names it as its repr does."""
import inspect
import os
import re
import sys

import pytest

import shmq
from shmq import _core, _options
from shmq.errors import ShmqError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hardening"))


def fill(q, body):
    """put_nowait body until Full; returns (items put, the Full raised)."""
    n = 0
    while True:
        try:
            q.put_nowait(body)
        except shmq.Full as e:
            return n, e
        n += 1
        assert n < 10 ** 6, "the queue never filled up"


# -- Full says why and what to do ----------------------------------------------------------

def test_full_at_maxsize_names_maxsize_and_the_remedy():
    with shmq.Queue(2) as q:
        n, e = fill(q, b"x")
        assert n == 2
        assert e.reason == "maxsize"
        assert "maxsize=2" in str(e) and "larger maxsize" in str(e) and "consume" in str(e)
        with pytest.raises(shmq.Full) as ei:
            q.put(b"x", timeout=0.05)     # a waiting put that times out says the same
        assert ei.value.reason == "maxsize" and "maxsize=2" in str(ei.value)


def test_full_with_every_message_slot_taken_names_slots_and_capacity(make_queue):
    q = make_queue(capacity="64KiB")
    n, e = fill(q, b"x")                 # tiny messages: the slots run out long before the bytes
    assert n == q.stats()["depth"] == 64
    assert e.reason == "slots"
    assert "message slot" in str(e) and "larger capacity" in str(e) and "capacity=None" in str(e)
    assert repr(q.name) in str(e)


def test_full_with_no_arena_block_names_bytes_and_capacity(make_queue):
    q = make_queue(capacity="64KiB")
    n, e = fill(q, b"x" * 4000)          # 4000-byte messages: the arena runs out first
    assert 0 < n < 64
    assert e.reason == "bytes"
    assert "4000-byte message" in str(e) and "larger capacity" in str(e)


def test_full_of_an_anonymous_fixed_queue_names_it():
    q = shmq.Queue(capacity="64KiB")
    try:
        _n, e = fill(q, b"x")
        ident = os.path.basename(q.path)[len("shmq."):]
        assert f"anonymous queue {ident}" in str(e) and e.reason == "slots"
    finally:
        q.close()


def test_full_of_a_send_counts_in_flight_messages_as_holding_slots(make_queue):
    q = make_queue(capacity="64KiB", ack=True)
    held = []
    while True:
        try:
            q.send(b"x", timeout=0)
        except shmq.Full as e:
            err = e
            break
        held.append(q.receive(timeout=5))     # in flight: its slot stays taken
        assert len(held) < 1000
    assert err.reason == "slots" and "in flight" in str(err)
    for m in held:
        m.ack()


def test_full_while_a_stopped_process_holds_the_arena_lock_names_the_lock(qname):
    from _forge import A_ARENA_LOCK, area0_off, check_child, run_py
    from _stopped import stopped_holder
    producer = (f"import shmq\nq = shmq.Queue({qname!r})\n"
                "try:\n    q.put_nowait(b'm' * 1000)\nexcept shmq.Full as e:\n    print(e.reason, '|', e)\n")
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        with stopped_holder(qname, q.path, area0_off(q.path) + A_ARENA_LOCK):
            out = check_child(run_py(producer, timeout=8), "put_nowait while a stopped process holds the lock")
        reason, msg = out.split(" | ", 1)
        assert reason == "busy"
        assert "allocation lock" in msg and "try again" in msg
    finally:
        q.close()


def test_full_of_a_full_dedup_table_says_dedup(make_queue):
    q = make_queue(ack=True, dedup_capacity=16)
    with pytest.raises(shmq.Full) as ei:
        for i in range(1000):
            q.send(b"x", dedup_id=f"id-{i}")
    assert ei.value.reason == "dedup" and "dedup_capacity" in str(ei.value)


def test_full_is_still_queue_full_and_shmq_error():
    import queue
    with shmq.Queue(1) as q:
        q.put(1)
        with pytest.raises(queue.Full) as ei:
            q.put_nowait(2)
        assert isinstance(ei.value, ShmqError)


# -- values the core would change are refused, naming the limit --------------------------

@pytest.mark.parametrize("capacity", [1, 100, 4096, 65535, "60KiB"])
def test_capacity_below_the_minimum_is_refused(qname, capacity):
    for make in (lambda: shmq.Queue(capacity=capacity), lambda: shmq.Queue(qname, create=True, capacity=capacity),
                 lambda: shmq.SimpleQueue(capacity=capacity)):
        with pytest.raises(ValueError) as ei:
            make()
        assert isinstance(ei.value, ShmqError)
        assert str(_core.MIN_CAPACITY) in str(ei.value) and "64 KiB" in str(ei.value)
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")


def test_capacity_at_the_minimum_is_accepted(make_queue):
    q = make_queue(capacity=_core.MIN_CAPACITY)
    assert q.stats()["capacity"] == 65536


def test_maxsize_beyond_the_cores_counter_is_refused():
    with pytest.raises(ValueError, match=str(_options.MAX_MAXSIZE)) as ei:
        shmq.Queue(2 ** 32)
    assert isinstance(ei.value, ShmqError)
    with shmq.Queue(_options.MAX_MAXSIZE) as q:   # the largest bound is kept as given
        assert q.stats()["maxsize"] == _options.MAX_MAXSIZE


def test_max_message_beyond_4_gib_is_refused_instead_of_clamped(make_queue):
    with pytest.raises(ValueError, match="max_message must be at most 4294967295") as ei:
        make_queue(capacity=None, max_message=2 ** 33)
    assert isinstance(ei.value, ShmqError)
    q = make_queue("-ok", capacity=None, max_message=2 ** 32 - 1)
    assert q.stats()["max_message"] == 2 ** 32 - 1


def test_a_positive_duration_below_a_nanosecond_is_kept_positive(make_queue):
    # 1e-10 s used to become 0 ns: "invalid argument" for visibility_timeout, and no TTL at all for ttl
    q = make_queue(capacity="1MiB", ack=True, visibility_timeout=1e-10, ttl=1e-10, dedup_window=1e-10)
    st = q.stats()
    assert st["visibility_timeout"] > 0 and st["default_ttl"] > 0 and st["dedup_window"] > 0


# -- signatures show real defaults ----------------------------------------------------------

@pytest.mark.parametrize("cls", [shmq.Queue, shmq.SimpleQueue, shmq.JoinableQueue])
def test_signatures_show_real_defaults_and_no_private_keyword(cls):
    sig = inspect.signature(cls)
    for p in sig.parameters.values():
        assert not p.name.startswith("_"), f"{cls.__name__}: private parameter {p.name}"
        d = p.default
        assert d is inspect.Parameter.empty or d is None or isinstance(d, (bool, int, float, str)), \
            f"{cls.__name__}({p.name}=...) shows {d!r}"
        assert "object at 0x" not in repr(d)
    assert sig.parameters["capacity"].default == "default"
    assert sig.parameters["mode"].default == 0o600
    assert "mode=0o600" in (cls.__new__.__doc__ or "") + (cls.__doc__ or "")


def test_capacity_default_is_a_value_one_can_pass(make_queue):
    q = make_queue(capacity="default")                 # the same as not passing it: 64 MiB
    assert q.stats()["capacity"] >= 64 * 1024 * 1024
    with shmq.Queue(capacity="default") as a:          # anonymous: grows
        assert a.stats()["flags"] & _core.F_GROWABLE


def test_a_dead_letter_queue_is_still_made_without_a_public_keyword(make_queue, qname):
    q = make_queue(ack=True)
    assert q.dead_letter_queue == qname + ".dlq"
    with shmq.Queue(q.dead_letter_queue) as d:
        assert d.dead_letter_queue is None              # a DLQ has no DLQ of its own
    with pytest.raises(TypeError):
        shmq.Queue(qname + "-x", create=True, ack=True, _is_dlq=True)


# -- a closed queue's error names it as its repr does -------------------------------------

def test_a_closed_anonymous_queue_error_names_it_as_its_repr_does():
    q = shmq.Queue()
    ident = os.path.basename(q.path)[len("shmq."):]
    q.close()
    assert "anonymous" in repr(q)
    for call in (lambda: q.put(1), lambda: q.get(timeout=0), q.qsize, q.empty, q.stats,
                 lambda: q.put_many([1]), lambda: q.get_many(1)):
        with pytest.raises(shmq.QueueClosedError) as ei:
            call()
        msg = str(ei.value)
        assert msg == f"anonymous queue {ident} is closed", msg
        assert "/dev/shm" not in msg


def test_a_closed_named_queue_error_names_it_by_name(make_queue, qname):
    q = make_queue()
    q.close()
    with pytest.raises(shmq.QueueClosedError, match=re.escape(f"queue {qname!r} is closed")) as ei:
        q.put(1)
    assert "/dev/shm" not in str(ei.value)


def test_an_at_most_once_queue_refusing_send_names_the_queue():
    with shmq.Queue() as q:
        with pytest.raises(ValueError, match="anonymous queue @") as ei:
            q.send(b"x")
        assert isinstance(ei.value, ShmqError)


def test_a_handle_of_a_removed_anonymous_queue_is_named_as_anonymous():
    # what a child unpickling an anonymous queue's handle meets when its creator already removed it
    from shmq._handle import _rebuild
    with pytest.raises(shmq.QueueNotFound) as ei:
        _rebuild(shmq.Queue, None, "/dev/shm/shmq.@1-0123456789ab", None)
    assert "anonymous queue @1-0123456789ab no longer exists" in str(ei.value)
    assert "/dev/shm" not in str(ei.value).split("(")[0]
