"""The one wire format (shmq._codec, docs/internals/codec.md) and the one schema (shmq._options):
round trips, hostile frames, and that the core agrees with the Python definitions."""
import struct

import numpy as np
import pytest

import shmq
from shmq import _codec, _options


def _payload(obj, raw=False):
    kind, parts = _codec.encode(obj, raw)
    return kind, b"".join(bytes(memoryview(p)) for p in parts)


@pytest.mark.parametrize("obj,kind", [
    (b"abc", _codec.KIND_BYTES), (bytearray(b"ab"), _codec.KIND_BYTEARRAY), (memoryview(b"mv"), _codec.KIND_BYTES),
    ({"k": [1, 2]}, _codec.KIND_PICKLE), (np.arange(1000, dtype=np.int64), _codec.KIND_PICKLE_OOB),
])
def test_round_trip_and_kind(obj, kind):
    k, body = _payload(obj)
    assert k == kind
    out = _codec.decode(k, memoryview(body), False, 1)
    if isinstance(obj, np.ndarray):
        assert np.array_equal(out, obj) and out.flags.writeable
    else:
        assert out == (bytes(obj) if isinstance(obj, memoryview) else obj)


def test_out_of_band_pieces_are_aligned():
    arrays = [np.arange(n, dtype=np.uint8) for n in (3, 100, 4097)]
    kind, body = _payload(arrays)
    assert kind == _codec.KIND_PICKLE_OOB
    n = struct.unpack_from("<Q", body, 0)[0]
    lens = struct.unpack_from(f"<{n + 1}Q", body, 8)
    off = 8 * (n + 2)
    for ln in lens:
        off += (-off) % _codec.OOB_ALIGN
        assert off % _codec.OOB_ALIGN == 0
        off += ln
    assert off == len(body)                 # no padding after the last piece


@pytest.mark.parametrize("tamper", ["count", "length", "short", "stream-length"])
def test_hostile_out_of_band_frame_is_corrupt_not_a_crash(tamper):
    kind, body = _payload([np.arange(100, dtype=np.uint8), np.arange(50, dtype=np.uint8)])
    b = bytearray(body)
    if tamper == "count":
        struct.pack_into("<Q", b, 0, 1 << 60)
    elif tamper == "length":
        struct.pack_into("<Q", b, 16, 1 << 40)
    elif tamper == "stream-length":
        struct.pack_into("<Q", b, 8, len(b))
    else:
        b = b[:12]
    with pytest.raises(shmq.CorruptQueueError):
        _codec.decode(kind, memoryview(bytes(b)), False, 7)


def test_raw_refuses_objects_and_pickles():
    with pytest.raises(TypeError, match="raw"):
        _codec.encode({"a": 1}, True)
    assert _codec.encode(bytearray(b"x"), True)[0] == _codec.KIND_BYTEARRAY
    _, body = _payload(1)
    with pytest.raises(shmq.CorruptQueueError, match="refusing to unpickle"):
        _codec.decode(_codec.KIND_PICKLE, memoryview(body), True, 3)
    with pytest.raises(shmq.CorruptQueueError, match="unknown payload kind"):
        _codec.decode(99, memoryview(b""), False, 3)


def test_header_block_round_trip_and_hostile_blocks():
    h = {"a": "1", "b": b"\x00\xff", "ü": ""}
    assert _codec.decode_headers(_codec.encode_headers(h)) == h
    block = _codec.encode_headers({"key": "value"})
    for bad in (block[:5], block[:-1], block[:2] + b"\x07" + block[3:]):
        with pytest.raises(shmq.CorruptQueueError):
            _codec.decode_headers(bad)


def test_the_core_writes_the_dead_letter_headers_we_name(make_queue):
    q = make_queue(ack=True, capacity="1MiB")
    q.send(b"x", headers={"mine": "1"})
    q.receive(timeout=5).nack(requeue=False)
    with shmq.Queue(q.dead_letter_queue) as d:
        m = d.receive(timeout=5)
        assert set(m.headers) == set(_options.DLQ_HEADERS) | {"mine"}
        m.ack()


@pytest.mark.parametrize("ack", [False, True])
def test_stats_report_every_key_of_the_schema(make_queue, ack):
    q = make_queue(ack=ack, capacity="1MiB") if ack else make_queue(capacity="1MiB")
    st = q.stats()
    assert set(_options.STATS_KEYS) <= set(st)
    assert all(st[k] == 0 for k in _options.ACK_COUNTERS)


def test_one_time_rule():
    assert _options.seconds_ns(1.5, "x") == 1_500_000_000
    assert _options.timeout_ns(2e9) is None                 # a timeout that long: no deadline
    assert _options.timeout_ns(True) == 1_000_000_000       # multiprocessing accepts a bool timeout
    with pytest.raises(ValueError, match="too large"):
        _options.seconds_ns(2e9, "delay")                    # any other duration: refused
    with pytest.raises(TypeError):
        _options.seconds_ns(True, "delay")
    q = shmq.Queue()
    try:
        with pytest.raises(shmq.Empty):
            q.get(timeout=0.01)
        q.put(1, timeout=2e9)                               # the binding uses the same rule
        assert q.get(timeout=10 ** 12) == 1
    finally:
        q.close()
