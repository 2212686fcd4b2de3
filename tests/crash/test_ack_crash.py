"""At-least-once under SIGKILL at every named point of receive, ack, nack, lease expiry, the
dead-letter move and dedup: the message is never lost, never duplicated except by a redelivery
(delivery_count > 1), and a move leaves it in exactly one of the two queues."""
import os
import struct
import subprocess
import sys

import pytest

import shmq

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ack_worker.py")
N = 12
HIT = 4          # the worker dies at the 4th hit of its point: seqs 0..2 were settled before

# crash point -> worker operation (and its arguments)
ACK_SCENARIOS = {
    "after_lease": ("receive",),
    "mid_ack": ("receive",),
    "mid_nack": ("nack", "1"),
    "before_move": ("nack", "0"),
    "mid_move": ("nack", "0"),
    "mid_expire": ("expire",),
    "mid_dedup": ("dedup",),
    "before_dedup_finish": ("dedup",),
    "mid_close_return": ("close",),
}


def _run(args, point, hit=HIT):
    env = dict(os.environ, SHMQ_CRASH_AT=f"{point}:{hit}")
    return subprocess.run([sys.executable, WORKER, *args], env=env, capture_output=True, text=True, timeout=60)


def _records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f]


def _drain(q):
    """(seq, delivery_count, headers) of everything left, acked."""
    out = []
    while True:
        try:
            m = q.receive(timeout=0.3)
        except shmq.Empty:
            return out
        out.append((struct.unpack_from("<Q", m.body)[0], m.delivery_count, m.headers))
        m.ack()


@pytest.fixture
def ackpair(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=60)
    yield q
    q.close()
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


def _consistent(q):
    q._repair()
    for core in (q, shmq.Queue(q.dead_letter_queue)):
        ck = core._consistency()
        assert ck["dead_owned"] == 0 and ck["orphan_ready"] == 0, ck
        assert ck["bad_chunks"] == 0 and ck["arena_mismatch"] == 0, ck


@pytest.mark.parametrize("point", sorted(set(ACK_SCENARIOS) - {"mid_expire", "mid_close_return"}))  # below
def test_kill_in_at_least_once_path(point, ackpair, tmp_path):
    q = ackpair
    record = str(tmp_path / "rec")
    op = ACK_SCENARIOS[point]
    if point == "before_dedup_finish":
        # the worker's message is in the queue and its entry PENDING(dead); once the message is
        # acked (gone) a retry of the key must still be answered with the worker's id
        r = _run([op[0], q.name, "K"], point, hit=1)
        assert r.returncode == -9, r.stderr
        m = q.receive(timeout=5)
        assert m.body == b"worker"
        assert m.ack()
        q._repair()
        assert q.send(struct.pack("<Q", 98), dedup_id="K") == m.id   # no second copy
        assert _drain(q) == []
        assert q.stats()["dedup_hits"] == 1
        _consistent(q)
        return
    if op[0] == "dedup":
        r = _run([op[0], q.name, "K"], point, hit=1)
        assert r.returncode == -9, r.stderr
        q._repair()
        mid = q.send(struct.pack("<Q", 99), dedup_id="K")   # the worker's send never happened
        assert q.send(struct.pack("<Q", 98), dedup_id="K") == mid
        assert [s for s, _, _ in _drain(q)] == [99]
        _consistent(q)
        return
    for seq in range(N):
        q.send(struct.pack("<Q", seq) + bytes(seq * 40))     # inline and arena payloads
    r = _run([op[0], q.name, str(N), record] + list(op[1:]), point)
    assert r.returncode == -9, (r.returncode, r.stderr)
    settled = [int(x[1]) for x in _records(record) if x[0] in ("a", "n")]
    assert settled == list(range(HIT - 1))
    q._repair()                                   # the repair bound: no waiting for the 60 s lease
    left = _drain(q)
    with shmq.Queue(q.dead_letter_queue) as d:
        dead = _drain(d)
    dying = HIT - 1                               # the seq the worker held when it died
    if point == "after_lease":
        assert sorted(s for s, _, _ in left) == list(range(dying, N))
        assert [c for s, c, _ in left if s == dying] == [2]
        assert dead == []
    elif point == "mid_ack":
        assert sorted(s for s, _, _ in left) == list(range(dying + 1, N))   # the ack was finished by repair
        assert dead == []
    elif point == "mid_nack":
        # the nacked ones and the one being nacked are back, each counted as a failed delivery
        assert sorted((s, c) for s, c, _ in left) == [(s, 2 if s <= dying else 1) for s in range(N)]
        assert dead == []
    else:  # before_move, mid_move: in exactly one queue, once
        assert sorted(s for s, _, _ in dead) == list(range(dying + 1))
        assert sorted(s for s, _, _ in left) == list(range(dying + 1, N))
        assert all(h["x-dead-letter-reason"] == "rejected" for _, _, h in dead)
    _consistent(q)


def test_kill_while_close_returns_the_unacked_deliveries(ackpair, tmp_path):
    # the worker holds all N deliveries and closes: it dies at the HIT-th one it gives back
    # (HIT - 1 are READY again, one SETTLING(dead), the rest INFLIGHT(dead)); repair returns the
    # rest, each once, each counted as one failed delivery
    q = ackpair
    for seq in range(N):
        q.send(struct.pack("<Q", seq) + bytes(seq * 40))
    record = str(tmp_path / "rec")
    r = _run(["close", q.name, str(N), record], "mid_close_return")
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert sorted(int(x[1]) for x in _records(record)) == list(range(N))
    q._repair()
    left = _drain(q)
    assert sorted((s, c) for s, c, _ in left) == [(s, 2) for s in range(N)]
    assert q.stats()["redelivered"] == N
    _consistent(q)


def test_kill_in_timer_scan(qname, tmp_path):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB", visibility_timeout=0.3)
    try:
        for seq in range(3):
            q.send(struct.pack("<Q", seq))
        r = _run(["expire", qname, "0.3", str(tmp_path / "rec")], "mid_expire", hit=1)
        assert r.returncode == -9, r.stderr
        q._repair()
        got = sorted((s, c) for s, c, _ in _drain(q))
        assert got == [(0, 2), (1, 1), (2, 1)]    # the expired lease was put back by repair
        _consistent(q)
    finally:
        q.close()
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass
