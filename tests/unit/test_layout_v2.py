"""Segment layout v2: the region table is checked by the segment, each region by its feature;
a version-1 segment is refused naming both versions (docs/internals/segment-layout.md)."""
import os
import struct

import pytest

import shmq

REGIONS = 896 + 32 * 64          # the region table's offset in the header page
ACK_REGION = 1
HIST_REGION = 6     # csrc/hist.h: latency histograms, in every queue


def _read(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def _write(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _regions(path):
    raw = _read(path, REGIONS, 32 * 8)
    return [struct.unpack_from("<IIQQ", raw, 32 * i)[0:1] + struct.unpack_from("<IIQQ", raw, 32 * i)[2:4]
            for i in range(8)]


@pytest.fixture
def ackq(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    path = q.path
    q.close()
    yield qname, path
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


def test_version_1_segment_names_both_versions(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    q.close()
    try:
        _write(q.path, 8, (1).to_bytes(4, "little"))
        with pytest.raises(shmq.IncompatibleQueueError) as ei:
            shmq.Queue(qname)
        assert "layout version 1" in str(ei.value) and "layout version 3" in str(ei.value)  # 3: parked chunks
    finally:
        shmq.unlink(qname)


def test_ack_queue_has_one_ack_region_between_slots_and_area0(ackq):
    name, path = ackq
    regs = [r for r in _regions(path) if r[0] and r[0] != HIST_REGION]   # every queue has histograms too
    # the ACK region, then the message-group table (kind 3, csrc/group.h) of every ack queue
    assert len(regs) == 2 and regs[0][0] == ACK_REGION and regs[1][0] == 3
    assert regs[1][1] >= regs[0][1] + regs[0][2] and regs[1][2] == 128 + 4096 * 64
    kind, off, size = regs[0]
    slots_end = 4096 + 128 * 64
    area0_off = struct.unpack_from("<Q", _read(path, 896, 8))[0]
    assert off >= slots_end and off % 64 == 0 and off + size <= area0_off
    assert size == 640 + 16384 * 48                      # block + default dedup table


def test_plain_queue_has_no_region(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        # none but the latency histograms every queue has (csrc/hist.h, issue 18 item 3)
        assert all(r == (0, 0, 0) for r in _regions(q.path) if r[0] != HIST_REGION)
        assert [r[0] for r in _regions(q.path) if r[0]] == [HIST_REGION]
    finally:
        q.close()
        shmq.unlink(qname)


@pytest.mark.parametrize("entry,field,value", [
    (0, 8, 0),                 # the ACK region's offset inside the header
    (0, 16, 1 << 40),          # its size past area 0
    (0, 0, 99),                # an unknown region kind
    (1, 0, ACK_REGION),        # a second ACK region
    (2, 8, 4096),              # an unused entry with an offset
])
def test_malformed_region_table_is_refused(ackq, entry, field, value):
    name, path = ackq
    off = REGIONS + 32 * entry + field
    _write(path, off, value.to_bytes(4 if field == 0 else 8, "little"))
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Queue(name)


@pytest.mark.parametrize("field,value", [
    (40, 3),        # dedup_slots not a power of two
    (40, 1 << 30),  # dedup_slots beyond the region
    (44, 0),        # max_deliveries 0
    (0, 0),         # a zero lease
])
def test_ack_region_content_is_checked_by_its_owner(ackq, field, value):
    name, path = ackq
    off = [r for r in _regions(path) if r[0] == ACK_REGION][0][1]
    _write(path, off + field, value.to_bytes(8 if field == 0 else 4, "little"))
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Queue(name)


def test_unterminated_dead_letter_name_is_refused(ackq):
    name, path = ackq
    off = [r for r in _regions(path) if r[0] == ACK_REGION][0][1]
    _write(path, off + 48, b"x" * 208)   # dead_letter[208] at offset 48 of the block, no NUL left
    with pytest.raises(shmq.CorruptQueueError):
        shmq.Queue(name)
