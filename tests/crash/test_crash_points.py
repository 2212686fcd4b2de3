"""A process SIGKILLed at every named crash point never wedges the queue, loses no message whose
put returned, and leaks no descriptor or chunk (checked by the consistency walker)."""
import os
import struct
import subprocess
import sys
import time

import pytest

import shmq

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")

# crash point -> (role, queue kind, payload mode, hit number to die at)
SCENARIOS = {
    "after_desc_claim": ("produce", "bounded", "mixed", 9),
    "after_alloc": ("produce", "bounded", "large", 5),
    "mid_copy": ("produce", "bounded", "large", 5),
    "after_claim": ("produce", "bounded", "mixed", 9),
    "before_commit": ("produce", "bounded", "mixed", 9),
    "after_commit": ("produce", "bounded", "mixed", 9),
    "arena_locked": ("produce", "bounded", "large", 4),
    "grow_locked": ("produce", "growable", "huge", 2),
    "mid_get": ("consume", "bounded", "mixed", 9),
    "after_take": ("consume", "bounded", "large", 9),
    "before_free": ("consume", "bounded", "mixed", 9),
    "attach_locked": ("attach", "bounded", "mixed", 1),
    "mid_repair": ("repair", "bounded", "large", 1),
    # parked chunks (docs/internals/arena.md): the parent parks chunks first (_warm)
    "chunk_reused": ("produce", "bounded", "large", 5),
    "chunk_mid_swap": ("produce", "bounded", "large", 3),
    "chunk_mid_unpark": ("produce", "bounded", "large", 1),
}


def _warm(q, point):
    """Leave chunks parked in FREE descriptors, as a worker's puts will find them: of the sizes
    it puts (chunk_reused), of another size (chunk_mid_swap), or the whole arena in 1000-byte
    chunks, so its first put must take parked chunks back (chunk_mid_unpark)."""
    if point == "chunk_reused":
        for seq in range(60):
            q.put(struct.pack("<Q", seq) + bytes(3000 + (seq % 7) * 1000))
    elif point == "chunk_mid_swap":
        for seq in range(60):
            q.put(bytes(1000))
    elif point == "chunk_mid_unpark":
        n = 0
        while True:
            try:
                q.put_nowait(bytes(1000))
                n += 1
            except shmq.Full:
                break
        assert n > 500
    else:
        return
    while q.qsize():
        q.get(timeout=1)
    ck = q._consistency()
    assert ck["parked_chunks"] >= 60 and ck["arena_mismatch"] == 0, ck
    assert q.stats()["bytes_used"] == 0  # parked chunks are free room


def test_every_crash_point_has_a_crash_test():
    from test_ack_crash import ACK_SCENARIOS
    from test_group_crash import GROUP_SCENARIOS
    from test_topic_crash import TOPIC_SCENARIOS
    from test_prio_crash import PRIO_SCENARIOS
    from test_journal_faults import JOURNAL_SCENARIOS
    tested = set(SCENARIOS) | set(ACK_SCENARIOS) | set(GROUP_SCENARIOS) | set(TOPIC_SCENARIOS) | set(PRIO_SCENARIOS) | set(JOURNAL_SCENARIOS)
    points = {n for n, _ in shmq.crash_points()}
    assert points == tested, f"crash points without a test: {points - tested}; stale: {tested - points}"


def _run_worker(args, crash_at=None, timeout=60):
    env = dict(os.environ)
    env.pop("SHMQ_CRASH_AT", None)
    if crash_at:
        env["SHMQ_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, WORKER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _records(path, tag):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line.split()[1]) for line in f if line.startswith(tag + " ")]


def _drain(q):
    out = []
    while True:
        try:
            out.append(struct.unpack_from("<Q", q.get(timeout=0.2))[0])
        except shmq.Empty:
            return out


def _assert_consistent(q):
    q._repair()
    ck = q._consistency()
    assert ck["dead_owned"] == 0, ck
    assert ck["orphan_ready"] == 0, ck
    assert ck["bad_chunks"] == 0 and ck["arena_mismatch"] == 0 and ck["bad_areas"] == 0, ck
    return ck


@pytest.mark.parametrize("point", sorted(p for p in SCENARIOS if SCENARIOS[p][0] != "repair"))
def test_kill_at_crash_point(point, qname, tmp_path):
    role, kind, mode, hit = SCENARIOS[point]
    capacity = None if kind == "growable" else "2MiB"
    q = shmq.Queue(qname, create=True, capacity=capacity)
    record = str(tmp_path / "record")
    try:
        n = 60
        _warm(q, point)
        if role == "consume":
            for seq in range(n):
                q.put(struct.pack("<Q", seq) + bytes(3000 if mode == "large" else (seq * 37) % 2000))
        args = {"produce": ["produce", qname, str(n), record, mode],
                "consume": ["consume", qname, str(n), record],
                "attach": ["attach", qname]}[role]
        r = _run_worker(args, crash_at=f"{point}:{hit}")
        assert r.returncode == -9, f"worker was not killed at {point}: rc={r.returncode}\n{r.stderr}"
        # the queue keeps working: repair, then a clean producer and consumer run to completion
        # (killed mid-attach, the slot was never marked attached: nothing to repair)
        assert q._repair() == (0 if point == "attach_locked" else 1)
        drained = _drain(q)
        if role == "produce":
            returned = _records(record, "p")
            assert len(returned) == hit - 1 or point in ("grow_locked", "arena_locked") or len(returned) < n
            assert len(drained) == len(set(drained)), "duplicated messages"
            assert set(returned) <= set(drained), f"lost messages whose put returned: {set(returned) - set(drained)}"
            unexpected = set(drained) - set(returned)
            assert len(unexpected) <= 1 and all(s == len(returned) for s in unexpected), unexpected
        elif role == "consume":
            taken = _records(record, "c")
            assert not set(taken) & set(drained), "a message was delivered twice"
            missing = set(range(n)) - set(taken) - set(drained)
            assert len(missing) <= 1, f"more than the one in-flight message lost: {missing}"
            if point == "mid_get":
                assert len(missing) == 1  # taken and then killed: at-most-once loses exactly it
        ck = _assert_consistent(q)
        assert ck["owned_desc"] == 0 and ck["ready_desc"] == 0 and ck["queued"] == 0, ck
        # still fully usable by other processes
        r = _run_worker(["produce", qname, "50", record + "2", mode])
        assert r.returncode == 0, r.stderr
        assert sorted(_drain(q)) == list(range(50))
        assert q.stats()["bytes_used"] == 0
    finally:
        q.close()
        shmq.unlink(qname)


def test_attacher_repairs_a_slot_whose_owner_died_holding_the_arena_lock(qname, tmp_path):
    """Regression: the next process to attach takes the dead process's slot; its repair must
    steal the arena lock from the dead owner (not wait on itself) and free the dead put."""
    q = shmq.Queue(qname, create=True, capacity="2MiB", max_participants=2)
    try:
        r = _run_worker(["produce", qname, "20", str(tmp_path / "rec"), "large"], crash_at="arena_locked:3")
        assert r.returncode == -9
        # the only free slot is the dead one: this attacher must repair it, promptly
        r = _run_worker(["produce", qname, "5", str(tmp_path / "rec2"), "large"], timeout=30)
        assert r.returncode == 0, r.stderr
        got = _drain(q)
        assert got[-5:] == list(range(5))
        ck = _assert_consistent(q)
        assert ck["owned_desc"] == 0 and ck["ready_desc"] == 0, ck
        assert q.stats()["bytes_used"] == 0
    finally:
        q.close()
        shmq.unlink(qname)


def test_repairer_killed_mid_repair_another_finishes(qname, tmp_path):
    """Crash point mid_repair: a consumer dies holding a taken message (after_take); the process
    that repairs it is itself killed halfway; the next repairer finishes both jobs and the
    segment is consistent with nothing leaked."""
    q = shmq.Queue(qname, create=True, capacity="2MiB")
    try:
        for seq in range(10):
            q.put(struct.pack("<Q", seq) + bytes(3000))
        r = _run_worker(["consume", qname, "10", str(tmp_path / "rec")], crash_at="after_take:3")
        assert r.returncode == -9
        assert q._consistency()["dead_owned"] == 1
        r = _run_worker(["repair", qname], crash_at="mid_repair:1")
        assert r.returncode == -9, r.stdout + r.stderr   # the repairer died with the job half done
        ck = q._consistency()
        assert ck["dead_owned"] == 1, ck                  # now held by the dead repairer's id
        assert q._repair() == 2                            # the dead consumer's slot and the repairer's
        ck = _assert_consistent(q)
        assert ck["owned_desc"] == 0, ck
        taken = _records(str(tmp_path / "rec"), "c")
        left = _drain(q)
        assert sorted(taken + left) == [s for s in range(10) if s not in (set(range(10)) - set(taken) - set(left))]
        assert len(set(range(10)) - set(taken) - set(left)) == 1  # only the message the consumer held
        assert q.stats()["bytes_used"] == 0
    finally:
        q.close()
        shmq.unlink(qname)


def test_sigstopped_producer_never_stalls_consumers(qname):
    """A producer stopped at any instant holds no ring cell (publishing is one 16-byte CAS):
    consumers keep receiving other producers' messages; when it resumes, its put completes."""
    import signal
    q = shmq.Queue(qname, create=True, capacity="4MiB")
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(10**9):
                    q.put(struct.pack("<Q", 1 << 40 | i) + bytes(i % 200))
            finally:
                os._exit(code)
        stalls = 0
        for round_ in range(20):
            time.sleep(0.002)
            os.kill(pid, signal.SIGSTOP)          # stopped wherever it was, maybe mid-put
            _drain(q)
            q.put(struct.pack("<Q", round_))      # another producer's message gets through at once
            got = [struct.unpack_from("<Q", q.get(timeout=5))[0]]
            while got[-1] != round_:
                got.append(struct.unpack_from("<Q", q.get(timeout=5))[0])
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ck = _assert_consistent(q)
        assert ck["dead_owned"] == 0 and ck["bad_chunks"] == 0
    finally:
        q.close()
        shmq.unlink(qname)
