"""The object path reuses picklers (issue 12 item 3): what it must still get right."""
import gc
import pickle
import threading
import weakref
from multiprocessing import reduction

import pytest

import shmq
from shmq import _codec


class Holder:
    def __init__(self, v):
        self.v = v


class PutsWhilePickled:
    """Its pickling puts another object to the same queue (a pickler inside a pickler)."""
    def __init__(self, q, inner):
        self.q, self.inner = q, inner

    def __reduce__(self):
        self.q.put(self.inner)
        return (Holder, ("outer",))


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")


class B(bytes):
    """A bytes subclass: pickled (in band), not sent as plain bytes."""


class Registered:
    def __init__(self, v):
        self.v = v


def _rebuild_registered(v):
    return Registered(v + 1000)


def _reduce_registered(obj):
    return (_rebuild_registered, (obj.v,))


def test_put_keeps_no_reference(make_queue):
    q = make_queue()
    obj = Holder([1, 2, 3])
    ref = weakref.ref(obj)
    q.put({"x": obj})
    del obj
    gc.collect()
    assert ref() is None, "a reused pickler's memo kept the object alive"
    assert q.get(timeout=5)["x"].v == [1, 2, 3]


def test_reentrant_pickling(make_queue):
    q = make_queue()
    q.put([PutsWhilePickled(q, {"inner": 1})])
    first, second = q.get(timeout=5), q.get(timeout=5)
    assert first == {"inner": 1}
    assert isinstance(second[0], Holder) and second[0].v == "outer"


def test_failed_dump_leaves_next_put_intact(make_queue):
    q = make_queue()
    for _ in range(3):
        with pytest.raises(RuntimeError, match="refuses"):
            q.put([1, "a", Unpicklable()])
        q.put({"after": [1, 2]})
        assert q.get(timeout=5) == {"after": [1, 2]}
    assert q.empty()


def test_threads_share_the_pool(make_queue):
    q = make_queue()
    n, k = 4, 300

    def prod(t):
        for i in range(k):
            q.put((t, i, "x" * (i % 50), [t] * (i % 7)))

    ts = [threading.Thread(target=prod, args=(t,)) for t in range(n)]
    for t in ts:
        t.start()
    got = [q.get(timeout=10) for _ in range(n * k)]
    for t in ts:
        t.join(10)
    assert sorted((a, b) for a, b, _, _ in got) == sorted((t, i) for t in range(n) for i in range(k))
    for a, b, s, l in got:
        assert s == "x" * (b % 50) and l == [a] * (b % 7)


def test_reducer_registered_later_is_used(make_queue):
    q = make_queue()
    q.put(Registered(1))              # a pooled pickler exists before the registration
    assert q.get(timeout=5).v == 1
    reduction.ForkingPickler.register(Registered, _reduce_registered)
    try:
        q.put(Registered(2))
        assert q.get(timeout=5).v == 1002
    finally:
        reduction.ForkingPickler._extra_reducers.pop(Registered, None)


def test_large_in_band_object_in_pieces(make_queue):
    q = make_queue()

    big = [B(b"a" * 300_000), b"b" * 200_000, "c" * 100_000, list(range(50_000))]
    q.put(big)
    out = q.get(timeout=5)
    assert out[1:] == big[1:] and out[0] == big[0]
    pieces, bufs = _codec._pickle(big)
    assert len(pieces) > 1 and not bufs   # the pickler wrote large objects as their own pieces
    assert pickle.loads(b"".join(pieces))[1:] == big[1:]


def test_out_of_band_through_pool(make_queue):
    np = pytest.importorskip("numpy")
    q = make_queue()
    for _ in range(3):
        a = np.arange(100_000, dtype=np.float64)
        q.put({"a": a, "tag": "t"})
        out = q.get(timeout=5)
        assert out["tag"] == "t" and out["a"].flags.writeable and (out["a"] == a).all()
        ro = np.arange(10_000)
        ro.flags.writeable = False
        q.put(ro)                      # read-only buffer: the codec's protocol-4 path
        got = q.get(timeout=5)
        assert (got == ro).all() and got.flags.writeable


def test_raw_queue_still_refuses_objects(make_queue):
    q = make_queue(raw=True)
    with pytest.raises(TypeError):
        q.put({"a": 1})
    q.put(bytearray(b"xy"))
    assert q.get(timeout=5) == b"xy"
