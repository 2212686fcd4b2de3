"""The §5.2 ordering rule across processes: 2 producers and 2 consumers on one PriorityQueue;
a checker reads every put and every delivery (CLOCK_MONOTONIC is one clock for all
processes) and proves that no get returned a lower level while a higher one held a message
whose put had returned before the get began, and that FIFO per producer holds within a level."""
import bisect
import os
import random
import struct
import time

import pytest

import shmq

LEVELS = 4
PER_PRODUCER = 1500


def check(puts, gets):
    """puts: {msg: (put_returned_ns, level)}; gets: [(begin_ns, end_ns, level, msg)]. Returns the
    violations (sound: a message only counts as waiting if its own get began after ours ended)."""
    deliv = {msg: (b, e) for b, e, _lvl, msg in gets}
    by_level = {}
    for msg, (ret, lvl) in puts.items():
        if msg in deliv:
            by_level.setdefault(lvl, []).append((ret, deliv[msg][0], msg))
    index = {}
    for lvl, rows in by_level.items():
        rows.sort()
        rets = [r[0] for r in rows]
        prefix_max, best = [], (-1, None)
        for _ret, gb, msg in rows:
            if gb > best[0]:
                best = (gb, msg)
            prefix_max.append(best)
        index[lvl] = (rets, prefix_max)
    bad = []
    for b, e, lvl, msg in gets:
        for higher, (rets, prefix_max) in index.items():
            if higher <= lvl:
                continue
            k = bisect.bisect_left(rets, b)    # messages of that level whose put returned before b
            if k and prefix_max[k - 1][0] > e:
                bad.append(("priority", msg, lvl, prefix_max[k - 1][1], higher))
    # FIFO per producer within a level: a later message never delivered wholly before an earlier one
    seqs = {}
    for msg, (_ret, lvl) in puts.items():
        if msg in deliv:
            seqs.setdefault((msg[0], lvl), []).append(msg)
    for (_p, _lvl), msgs in seqs.items():
        msgs.sort(key=lambda m: m[1])
        latest_begin = -1
        for m in msgs:
            b, e = deliv[m]
            if e < latest_begin:
                bad.append(("fifo", m))
            latest_begin = max(latest_begin, b)
    return bad


def test_checker_finds_violations():
    """The checker can fail: a FIFO trace of a higher message stuck behind a lower one."""
    puts = {(0, 0): (10, 0), (0, 1): (20, 3)}
    gets = [(30, 31, 0, (0, 0)), (40, 41, 3, (0, 1))]
    assert [v[0] for v in check(puts, gets)] == ["priority"]
    puts = {(0, 0): (10, 1), (0, 1): (11, 1)}
    gets = [(30, 31, 1, (0, 1)), (40, 41, 1, (0, 0))]
    assert [v[0] for v in check(puts, gets)] == ["fifo"]
    gets = [(30, 31, 1, (0, 0)), (40, 41, 1, (0, 1))]
    assert check(puts, gets) == []


def _child(fn):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("capacity", ["4MiB", None])   # None: grows (level rings in each new area)
@pytest.mark.parametrize("ack", [False, True])
def test_two_producers_two_consumers_obey_the_rule(qname, tmp_path, ack, capacity):
    opts = dict(ack=True, visibility_timeout=30) if ack else {}
    q = shmq.PriorityQueue(qname, create=True, levels=LEVELS, capacity=capacity, **opts)

    def producer(tag):
        rng = random.Random(tag)
        with open(tmp_path / f"p{tag}", "w") as f:
            for seq in range(PER_PRODUCER):
                lvl = rng.randrange(LEVELS)
                body = struct.pack("<III", tag, seq, lvl)
                if ack:
                    q.send(body, priority=lvl, timeout=30)
                else:
                    q.put(body, priority=lvl, timeout=30)
                f.write(f"{time.monotonic_ns()} {tag} {seq} {lvl}\n")
                if seq % 64 == 0:
                    time.sleep(0.001)   # bursts: the consumers catch up, then fall behind again

    def consumer(tag):
        with open(tmp_path / f"c{tag}", "w") as f:
            while True:
                b = time.monotonic_ns()
                if ack:
                    m = q.receive(timeout=30)
                    body = m.body
                else:
                    body = q.get(timeout=30)
                e = time.monotonic_ns()
                if body == b"stop":
                    if ack:
                        m.ack()
                    return
                p, s, lvl = struct.unpack("<III", body)
                if ack:
                    assert m.priority == lvl
                    m.ack()
                f.write(f"{b} {e} {lvl} {p} {s}\n")

    pids = []
    try:
        pids = [_child(lambda t=t: consumer(t)) for t in range(2)]
        prods = [_child(lambda t=t: producer(t)) for t in range(2)]
        pids += prods
        for pid in prods:
            _, st = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(st) == 0
        for _ in range(2):
            (q.send if ack else q.put)(b"stop", priority=0)
        for pid in pids[:2]:
            _, st = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(st) == 0
        pids = []
    finally:
        for pid in pids:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        q.close()
        shmq.unlink(qname)
        if ack:
            shmq.unlink(qname + ".dlq")
    puts, gets = {}, []
    for t in range(2):
        for line in open(tmp_path / f"p{t}"):
            ret, tag, seq, lvl = map(int, line.split())
            puts[(tag, seq)] = (ret, lvl)
        for line in open(tmp_path / f"c{t}"):
            b, e, lvl, p, s = map(int, line.split())
            gets.append((b, e, lvl, (p, s)))
    delivered = [g[3] for g in gets]
    assert len(delivered) == len(set(delivered)) == 2 * PER_PRODUCER   # none lost, none twice
    assert set(delivered) == set(puts)
    assert all(puts[g[3]][1] == g[2] for g in gets)
    bad = check(puts, gets)
    assert not bad, f"{len(bad)} violations of the ordering rule, e.g. {bad[:5]}"
