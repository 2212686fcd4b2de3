"""Message groups and Message.forward under SIGKILL at each of their crash points: a group is
never wedged, never has two messages out at once, keeps its send order; a forward is both or
neither (the redelivered message's second forward sends nothing new)."""
import os
import subprocess
import sys

import pytest

import shmq

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_group_worker.py")

# crash point -> what the killed worker was doing
GROUP_SCENARIOS = {
    "group_after_put": "send",
    "group_mid_link": "send",
    "group_mid_settle": "consume",
    "forward_after_hold": "forward",
    "forward_after_send": "forward",
}


def _run(args, point, hit):
    env = dict(os.environ, SHMQ_CRASH_AT=f"{point}:{hit}")
    r = subprocess.run([sys.executable, WORKER, *args], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, (point, r.returncode, r.stderr[-2000:])
    return r


def _records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f]


def _unlink_all(*names):
    for n in names:
        for x in (n, n + ".dlq"):
            try:
                shmq.unlink(x)
            except shmq.QueueNotFound:
                pass


@pytest.fixture
def gq(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=60)
    yield q
    q.close()
    _unlink_all(qname)


def drain_checked(q, timeout=0.3):
    """Take everything left, in rounds: each round receives all that is deliverable now (at most
    one per group, checked), then acks it. Returns [(group, seq, delivery_count)] in order."""
    out = []
    while True:
        batch = []
        while True:
            try:
                batch.append(q.receive(timeout=timeout if not batch else 0.05))
            except shmq.Empty:
                break
        if not batch:
            return out
        groups = [m.group for m in batch if m.group is not None]
        assert len(groups) == len(set(groups)), f"two messages of one group out at once: {groups}"
        for m in batch:
            g, s = m.body.split()
            assert m.group in (None, g)
            out.append((g, int(s), m.delivery_count))
            m.ack()


def _per_group(items):
    per = {}
    for g, s in items:
        per.setdefault(g, []).append(s)
    return per


def _consistent(q):
    q._repair()
    ck = q._consistency()
    assert ck["dead_owned"] == 0 and ck["orphan_ready"] == 0, ck
    assert ck["bad_chunks"] == 0 and ck["arena_mismatch"] == 0, ck


@pytest.mark.parametrize("point,groups,per,hit", [("group_after_put", 2, 6, 5), ("group_mid_link", 6, 2, 4)])
def test_kill_in_group_send(point, groups, per, hit, gq, tmp_path):
    rec = str(tmp_path / "rec")
    _run(["send", gq.name, str(groups), str(per), rec], point, hit)
    sent = [(g, int(s)) for t, g, s in _records(rec) if t == "s"]
    assert len(sent) == hit - 1
    gq._repair()
    got = drain_checked(gq)
    delivered = [(g, s) for g, s, _c in got]
    assert set(sent) <= set(delivered), "a message whose send returned was lost"
    assert len(delivered) == len(set(delivered)), "delivered twice"
    extra = set(delivered) - set(sent)
    assert len(extra) <= 1   # the send that was killed may or may not have happened
    for g, seqs in _per_group(delivered).items():
        assert seqs == sorted(seqs), f"group {g} out of send order: {seqs}"
    # not wedged: every group (the killed sender's included) takes new messages and delivers them
    for g in range(groups):
        gq.send(f"g{g} 100", group=f"g{g}")
        gq.send(f"g{g} 101", group=f"g{g}")
    again = drain_checked(gq)
    assert sorted((g, s) for g, s, _ in again) == sorted((f"g{g}", s) for g in range(groups) for s in (100, 101))
    _consistent(gq)


def test_kill_in_group_settle(gq, tmp_path):
    for s in range(4):
        for g in range(2):
            gq.send(f"g{g} {s}", group=f"g{g}")
    rec = str(tmp_path / "rec")
    _run(["consume", gq.name, "8", rec], "group_mid_settle", 2)
    recs = _records(rec)
    acked = [(g, int(s)) for t, g, s, *_ in recs if t == "a"]
    taken = [(g, int(s)) for t, g, s, *_ in recs if t == "r"]
    killed = taken[-1]
    assert killed not in acked   # died inside that ack, holding the group table's lock
    gq._repair()
    got = drain_checked(gq)
    rest = [(g, s) for g, s, _ in got]
    assert killed not in rest    # its ack had claimed it: gone, as an ack
    everything = acked + [killed] + rest
    assert sorted(everything) == sorted((f"g{g}", s) for g in range(2) for s in range(4))
    for g, seqs in _per_group(everything).items():
        assert seqs == sorted(seqs), f"group {g} acked out of order: {seqs}"
    _consistent(gq)


@pytest.mark.parametrize("point", ["forward_after_hold", "forward_after_send"])
def test_kill_in_forward_is_both_or_neither(point, gq, qname, tmp_path):
    dst = shmq.Queue(qname + "-dst", create=True, ack=True, capacity="1MiB")
    try:
        for s in range(6):
            gq.send(f"g0 {s}", group="g0")
        rec = str(tmp_path / "rec")
        _run(["forward", gq.name, dst.name, "6", rec], point, 3)
        recs = _records(rec)
        assert [int(r[1]) for r in recs if r[0] == "f"] == [0, 1]
        gq._repair()
        # The third forward was killed: dst holds its new message iff the kill came after the send
        first = [dst.receive(timeout=0.5) for _ in range(2 if point == "forward_after_hold" else 3)]
        with pytest.raises(shmq.Empty):
            dst.receive(timeout=0.1)
        for m in first:
            m.nack()   # put back for the final count
        # ... and the source delivers the killed one's message again (its group waited for it)
        m = gq.receive(timeout=1)
        assert (m.body, m.delivery_count) == ("g0 2", 2)
        ids_before = {x.id for x in first}
        nid = m.forward(dst, "fwd " + m.body)
        if point == "forward_after_send":
            assert nid in ids_before, "a repeated forward sent a second copy"
        else:
            assert nid not in ids_before
        for _ in range(3):
            gq.receive(timeout=1).forward(dst, "fwd x")  # bodies differ: only ids matter below
        with pytest.raises(shmq.Empty):
            gq.receive(timeout=0.1)
        bodies = [x[0] for x in drain_plain(dst)]
        assert len(bodies) == 6
        assert sorted(b for b in bodies if b != "fwd x") == [f"fwd g0 {s}" for s in range(3)]
        _consistent(gq)
        _consistent(dst)
    finally:
        dst.close()
        _unlink_all(qname + "-dst")


def drain_plain(q):
    out = []
    while True:
        try:
            m = q.receive(timeout=0.3)
        except shmq.Empty:
            return out
        out.append((m.body, m.delivery_count))
        m.ack()
