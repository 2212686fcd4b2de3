"""The journal (DESIGN §7): options, recovery after the segment is gone, at-least-once state,
dedup, errors, stats and `shmq journal`."""
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest

import shmq
from shmq import journal as J

SEG = "64KiB"   # small segments: rotation and retention happen within a few hundred messages


@pytest.fixture
def jdir(tmp_path):
    return str(tmp_path / "journal")


def reopen(qname, jdir, **kw):
    """Remove the segment (as a reboot or `shmq rm` would) and create it again from the journal."""
    try:
        shmq.unlink(qname)
    except shmq.QueueNotFound:
        pass
    return shmq.Queue(qname, create=True, journal=jdir, **kw)


def drain(q):
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except shmq.Empty:
            return out


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_sent_minus_removed_in_order(make_queue, qname, jdir, mode):
    q = make_queue(journal=jdir, fsync=mode, journal_segment_size=SEG)
    q.put_many(range(300))
    assert [q.get() for _ in range(120)] == list(range(120))
    q.sync()
    q.close()
    q = reopen(qname, jdir, fsync=mode, journal_segment_size=SEG)
    try:
        assert drain(q) == list(range(120, 300))
        q.put("after")                      # ids continue: nothing collides with recovered ids
        assert q.get() == "after"
    finally:
        q.close()
        shmq.unlink(qname)


def test_bodies_headers_and_options_survive(make_queue, qname, jdir):
    q = make_queue(journal=jdir, ack=True, dead_letter=None, journal_segment_size=SEG)
    ids = [q.send({"n": i, "blob": b"x" * (i * 50)}, headers={"k": str(i), "b": b"\x00\x01"}, priority=i % 10)
           for i in range(20)]
    later = q.send("later", delay=3600)     # delayed: comes back delayed, not ready
    q.close()
    q = reopen(qname, jdir, ack=True, dead_letter=None)
    try:
        got = q.receive_many(64, timeout=1)
        assert [m.id for m in got] == ids
        for i, m in enumerate(got):
            assert m.body == {"n": i, "blob": b"x" * (i * 50)}
            assert m.headers == {"k": str(i), "b": b"\x00\x01"}
            assert m.priority == i % 10
            m.ack()
        assert q.stats()["delayed"] == 1
        with pytest.raises(shmq.Empty):
            q.receive(timeout=0)
        assert q.send("next") > later
    finally:
        q.close()
        shmq.unlink(qname)


def test_in_flight_ready_again_with_count_plus_one(make_queue, qname, jdir):
    q = make_queue(journal=jdir, ack=True, dead_letter=None)
    a, b, c = q.send("a"), q.send("b"), q.send("c")
    ma = q.receive(timeout=1)               # in flight at the "crash"
    mb = q.receive(timeout=1)
    mb.ack()                                # acked: never again
    mb2 = q.receive(timeout=1)
    mb2.nack(requeue=True)                  # c: delivered once, back
    assert (ma.id, mb.id, mb2.id) == (a, b, c)
    q.close()
    q = reopen(qname, jdir, ack=True, dead_letter=None)
    try:
        got = {m.id: m for m in q.receive_many(10, timeout=1)}
        assert sorted(got) == [a, c]
        assert got[a].delivery_count == 2
        assert got[c].delivery_count == 2
        assert b not in got
    finally:
        q.close()
        shmq.unlink(qname)


def test_dedup_survives_recovery(make_queue, qname, jdir):
    q = make_queue(journal=jdir, ack=True, dead_letter=None, dedup_window=600)
    first = q.send("once", dedup_id="order-1")
    m = q.receive(timeout=1)
    m.ack()                                 # acked: the dedup id is still remembered (window from first send)
    q.close()
    q = reopen(qname, jdir, ack=True, dead_letter=None, dedup_window=600)
    try:
        assert q.send("again", dedup_id="order-1") == first
        with pytest.raises(shmq.Empty):
            q.receive(timeout=0)
    finally:
        q.close()
        shmq.unlink(qname)


def test_dead_letters_are_journaled_beside(make_queue, qname, jdir):
    q = make_queue(journal=jdir, ack=True, max_deliveries=1)
    mid = q.send("poison")
    q.receive(timeout=1).nack(requeue=True)  # over max_deliveries: moved to the DLQ
    dlq = q.dead_letter_queue
    assert os.path.isdir(jdir + ".dlq")
    q.close()
    shmq.unlink(dlq)
    q = reopen(qname, jdir, ack=True, max_deliveries=1)
    try:
        with pytest.raises(shmq.Empty):
            q.receive(timeout=0)
        d = shmq.Queue(dlq)
        try:
            m = d.receive(timeout=1)
            assert m.body == "poison" and m.headers["x-original-id"] == str(mid)
        finally:
            d.close()
    finally:
        q.close()
        shmq.unlink(qname)
        shmq.unlink(dlq)


def test_retention_recycles_consumed_segments(make_queue, qname, jdir):
    q = make_queue(journal=jdir, fsync="never", journal_segment_size=SEG, raw=True)
    for r in range(30):
        q.put_many([b"m" * 500] * 40)
        assert len(q.get_many(40)) == 40
    st = q.stats()
    files = [f for f in os.listdir(jdir) if f.endswith(".wal")]
    assert len(files) <= 3 and st["journal_segments"] <= 3
    # consumers gate retention: unconsumed messages keep their segments
    q.put_many([b"k" * 500] * 400)
    assert len([f for f in os.listdir(jdir) if f.endswith(".wal")]) >= 4


def test_stats_keys(make_queue, qname, jdir):
    plain = make_queue("-plain")
    for k in J.STATS_KEYS:
        assert k in plain.stats()
    assert plain.stats()["journal_bytes"] == 0
    q = make_queue(journal=jdir, fsync="always")
    q.put(b"x")
    st = q.stats()
    assert st["journal_mode"] == "always"
    assert st["journal_syncs"] >= 1
    assert st["journal_durable_position"] == st["journal_position"]
    assert st["journal_fsync_errors"] == 0
    assert st["journal_last_sync_age_s"] is not None and st["journal_last_sync_age_s"] >= 0
    assert st["journal_segments"] == 1 and st["journal_bytes"] > 0


def test_batch_mode_syncs_in_the_background(make_queue, jdir):
    q = make_queue(journal=jdir, fsync="batch", fsync_interval=0.005)
    q.put(b"x")
    st = q.stats()
    import time
    deadline = time.monotonic() + 10
    while st["journal_durable_position"] < st["journal_position"] and time.monotonic() < deadline:
        time.sleep(0.01)
        st = q.stats()
    assert st["journal_durable_position"] >= st["journal_position"]


def test_option_errors(make_queue, qname, jdir):
    with pytest.raises(ValueError, match="fsync"):
        shmq.Queue(qname, create=True, journal=jdir, fsync="sometimes")
    with pytest.raises(ValueError, match="journal_recovery"):
        shmq.Queue(qname, create=True, journal=jdir, journal_recovery="maybe")
    with pytest.raises(ValueError, match="needs journal"):
        shmq.Queue(qname, create=True, fsync="always")
    with pytest.raises(ValueError, match="named queue"):
        shmq.Queue(journal=jdir)
    with pytest.raises(TypeError):
        shmq.Queue(qname, create=True, journal=3)
    with pytest.raises(ValueError, match="fsync_interval"):
        shmq.Queue(qname, create=True, journal=jdir, fsync="batch", fsync_interval=-1)
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")


def test_other_journal_on_a_live_queue_is_refused(make_queue, qname, jdir, tmp_path):
    q = make_queue(journal=jdir)
    with pytest.raises(ValueError, match="journal"):
        shmq.Queue(qname, create=True, exist_ok=True, journal=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="fsync"):
        shmq.Queue(qname, journal=jdir, fsync="never")
    same = shmq.Queue(qname, journal=jdir)
    same.put(1)
    assert q.get() == 1
    same.close()
    plain = make_queue("-plain")
    with pytest.raises(ValueError, match="without a journal"):
        shmq.Queue(plain.name, create=True, exist_ok=True, journal=jdir)


def test_one_journal_per_live_queue(make_queue, qname, jdir):
    make_queue(journal=jdir)
    with pytest.raises(shmq.JournalError, match="another live queue"):
        shmq.Queue(qname + "-b", create=True, journal=jdir)
    assert not os.path.exists(f"/dev/shm/shmq.{qname}-b")   # a failed recovery leaves no queue behind


def test_unlink_keeps_the_journal(make_queue, qname, jdir):
    q = make_queue(journal=jdir)
    q.put("kept")
    q.close()
    shmq.unlink(qname)
    assert os.path.isdir(jdir) and os.listdir(jdir)
    r = subprocess.run([sys.executable, "-m", "shmq", "rm", qname], capture_output=True, text=True)
    assert os.path.isdir(jdir)
    q = shmq.Queue(qname, create=True, journal=jdir)
    try:
        assert q.get(timeout=1) == "kept"
    finally:
        q.close()
        shmq.unlink(qname)
    assert r.returncode in (0, 1)


def test_recovery_into_wrong_kind_is_refused(make_queue, qname, jdir):
    q = make_queue(journal=jdir, ack=True, dead_letter=None)
    q.send("x")
    q.close()
    shmq.unlink(qname)
    with pytest.raises(ValueError, match="ack"):
        shmq.Queue(qname, create=True, journal=jdir)
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")


def test_too_small_to_recover_leaves_no_queue(make_queue, qname, jdir):
    q = make_queue(journal=jdir, fsync="never", raw=True, capacity="8MiB")
    q.put_many([b"z" * 1000] * 3000)
    q.close()
    shmq.unlink(qname)
    with pytest.raises(shmq.JournalError, match="too small"):
        shmq.Queue(qname, create=True, journal=jdir, raw=True, capacity="1MiB")
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")
    q = shmq.Queue(qname, create=True, journal=jdir, raw=True, capacity="8MiB")
    try:
        assert len(drain(q)) == 3000
    finally:
        q.close()
        shmq.unlink(qname)


def test_tmpfs_journal_warns(make_queue, qname):
    d = f"/dev/shm/shmq-test-journal-{os.getpid()}"
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            make_queue(journal=d)
        assert any("tmpfs" in str(x.message) for x in w)
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_cli_stat_and_verify(make_queue, qname, jdir):
    q = make_queue(journal=jdir, fsync="never", journal_segment_size=SEG)
    q.put_many(range(10))
    q.get()
    q.sync()
    run = lambda *a: subprocess.run([sys.executable, "-m", "shmq", "journal", *a], capture_output=True, text=True)
    r = run("stat", jdir, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["live_messages"] == 9 and st["first_id"] == 2 and st["last_id"] == 10
    r = run("verify", jdir)
    assert r.returncode == 0 and r.stdout.startswith("ok")
    q.close()
    # flip a bit in the first put record: verify fails with exit code 1 and names file and offset
    seg = sorted(f for f in os.listdir(jdir) if f.endswith(".wal"))[0]
    path = os.path.join(jdir, seg)
    with open(path, "r+b") as f:
        f.seek(4096 + 64)
        b = f.read(1)
        f.seek(4096 + 64)
        f.write(bytes([b[0] ^ 0x40]))
    r = run("verify", jdir)
    assert r.returncode == 1 and seg in r.stderr and "offset" in r.stderr
    assert run("stat", jdir).returncode == 0
    assert run("verify", jdir + "-missing").returncode == 1


def test_corruption_before_tail_and_skip(make_queue, qname, jdir):
    q = make_queue(journal=jdir, fsync="never")
    q.put_many([f"m{i}" for i in range(50)])
    q.close()
    shmq.unlink(qname)
    seg = sorted(f for f in os.listdir(jdir) if f.endswith(".wal"))[0]
    path = os.path.join(jdir, seg)
    with open(path, "r+b") as f:
        f.seek(4096 + 400)
        b = f.read(1)
        f.seek(4096 + 400)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(shmq.CorruptJournalError) as ei:
        shmq.Queue(qname, create=True, journal=jdir)
    assert isinstance(ei.value, OSError) and ei.value.filename == path and ei.value.offset > 4096
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")
    q = shmq.Queue(qname, create=True, journal=jdir, journal_recovery="skip")
    try:
        depth = q.stats()["depth"]
        assert 45 <= depth < 50
    finally:
        q.close()
        shmq.unlink(qname)
    q = shmq.Queue(qname, create=True, journal=jdir)   # the skipped range was padded: strict recovery works now
    try:
        got = drain(q)
        assert len(got) == depth and got == sorted(got, key=lambda s: int(s[1:]))
    finally:
        q.close()
        shmq.unlink(qname)


def _record_starts(path):
    """Offsets of the records of a segment file, from its first (after the 4096-byte header)."""
    import struct
    out, off = [], 4096
    with open(path, "rb") as f:
        data = f.read()
    while off + 24 <= len(data):
        (ln,) = struct.unpack_from("<I", data, off)
        if ln == 0:
            break
        out.append(off)
        off += (ln + 7) & ~7
    return out


def test_a_zeroed_hole_before_the_last_record_is_corruption_at_every_alignment(make_queue, qname, jdir):
    """Recovery's search for valid records after a bad one skips zero runs 64 bytes at a time:
    a single record after a hole must be found wherever it starts within those 64 bytes (missed,
    the hole would pass for a torn tail and the record would be dropped without an error)."""
    def write(n):
        shutil.rmtree(jdir, ignore_errors=True)
        q = make_queue(journal=jdir, fsync="never", raw=True)
        q.put_many([b"h" * (100 + (k * 7) % 23) for k in range(n)])   # uneven frames
        q.close()
        shmq.unlink(qname)
        path = os.path.join(jdir, sorted(f for f in os.listdir(jdir) if f.endswith(".wal"))[0])
        return path, _record_starts(path)

    seen = {}
    for n in range(20, 80):
        _, starts = write(n)
        seen.setdefault(starts[-1] % 64, n)
        if len(seen) == 8:
            break
    assert sorted(seen) == list(range(0, 64, 8))
    for n in seen.values():
        path, starts = write(n)
        lo, hi = starts[2], starts[-1]       # zeros from the second put up to the last record
        with open(path, "r+b") as f:
            f.seek(lo)
            f.write(b"\0" * (hi - lo))
        with pytest.raises(shmq.CorruptJournalError) as ei:
            shmq.Queue(qname, create=True, journal=jdir)
        assert ei.value.offset == lo, (n, lo, hi)


def test_torn_tail_is_cut_and_reported(make_queue, qname, jdir, caplog):
    q = make_queue(journal=jdir, fsync="never")
    q.put_many([b"t" * 300] * 5)
    pos = q.stats()["journal_position"]
    seg_size = q.stats()["journal_bytes"]
    q.close()
    shmq.unlink(qname)
    path = os.path.join(jdir, f"{pos // seg_size:016x}.wal")
    with open(path, "r+b") as f:        # the last record loses its second half
        f.seek(pos % seg_size - 200)
        f.write(b"\0" * 200)
    import logging
    with caplog.at_level(logging.WARNING, logger="shmq.journal"):
        q = shmq.Queue(qname, create=True, journal=jdir)
    try:
        assert len(drain(q)) == 4
        assert any("torn tail" in r.message for r in caplog.records)
    finally:
        q.close()
        shmq.unlink(qname)


def test_group_commit_put_many_and_async_in_flight(make_queue, jdir):
    import asyncio
    q = make_queue(journal=jdir, fsync="always", ack=True, dead_letter=None, raw=True)
    before = q.stats()["journal_syncs"]
    q.put_many([b"b"] * 100)                # one commit for the batch
    assert q.stats()["journal_syncs"] - before <= 2
    assert q.stats()["journal_durable_position"] >= q.stats()["journal_position"]

    async def burst():
        return await asyncio.gather(*(q.send_async(b"a%d" % i) for i in range(64)))

    before = q.stats()["journal_syncs"]
    ids = asyncio.run(burst())
    st = q.stats()
    assert len(set(ids)) == 64
    assert st["journal_syncs"] - before < 64      # 64 in flight share syncs
    assert st["journal_durable_position"] >= st["journal_position"]


def test_put_async_returns_once_durable(make_queue, qname, jdir):
    import asyncio
    q = make_queue(journal=jdir, fsync="always")
    assert asyncio.run(q.put_async(b"y")) is None
    st = q.stats()
    assert st["journal_durable_position"] >= st["journal_position"]
    assert q.get(timeout=1) == b"y"


def test_recovery_progress_and_summary(make_queue, qname, jdir, caplog, monkeypatch):
    import logging
    q = make_queue(journal=jdir, fsync="never")
    q.put_many(range(50))
    q.close()
    shmq.unlink(qname)
    monkeypatch.setattr(J, "PROGRESS_BYTES", 0)        # show progress for this small journal too
    with caplog.at_level(logging.INFO, logger="shmq.journal"):
        q = shmq.Queue(qname, create=True, journal=jdir, fsync="never")
    try:
        msgs = [r.getMessage() for r in caplog.records]
        assert any("recovering queue" in m and "100%" in m for m in msgs), msgs   # not a terminal: log lines
        assert any("50 live messages" in m and "records" in m for m in msgs), msgs  # the summary
        assert len(drain(q)) == 50
    finally:
        q.close()
        shmq.unlink(qname)


def test_next_segment_built_ahead_of_need(make_queue, jdir):
    import time
    q = make_queue(journal=jdir, fsync="never", journal_segment_size=SEG, raw=True)
    q.put_many([b"s" * 300] * 130)           # past half of the first segment
    deadline = time.monotonic() + 30
    while not [f for f in os.listdir(jdir) if f.endswith(".spare")] and time.monotonic() < deadline:
        time.sleep(0.02)
    spares = [f for f in os.listdir(jdir) if f.endswith(".spare")]
    assert spares, os.listdir(jdir)
    created = len([f for f in os.listdir(jdir) if f.endswith(".wal")])
    q.put_many([b"s" * 300] * 150)           # the rotation takes the spare: renamed, not built
    assert not (set(spares) & set(os.listdir(jdir)))
    assert len([f for f in os.listdir(jdir) if f.endswith(".wal")]) == created + 1


def test_a_cli_purge_is_journaled(qname, jdir):
    """`shmq purge` opens the queue with a bare handle: its removals must be recorded too, or
    the purged messages come back at the next recovery."""
    q = shmq.Queue(qname, create=True, journal=jdir, fsync="never", journal_segment_size=SEG)
    try:
        for i in range(5):
            q.put(i)
        r = subprocess.run([sys.executable, "-m", "shmq", "purge", qname], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "purged 5" in r.stdout
        q.put("after")
    finally:
        q.close()
    q = reopen(qname, jdir, fsync="never", journal_segment_size=SEG)
    try:
        assert drain(q) == ["after"]
    finally:
        q.close()
        shmq.unlink(qname)


def test_a_fork_while_the_sync_thread_holds_its_lock_does_not_hang_the_child(qname, jdir):
    """The batch-sync thread takes the module's lock every round: a fork at that instant must not
    leave the child (or its own children) with a lock nobody will release."""
    q = shmq.Queue(qname, create=True, journal=jdir, fsync="batch", journal_segment_size=SEG)
    try:
        with J._lock:                             # the instant of a fork during the thread's round
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ok = J._lock.acquire(timeout=5)   # the child's lock is free
                    if ok:
                        J._lock.release()
                        q.put("from the child")       # and the child's journal still works
                        code = 0
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 20
        done, status = 0, 0
        while not done and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.01)
        if not done:                              # hung in its fork hook on the inherited lock
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done, "the forked child hung on the journal's lock"
        assert os.waitstatus_to_exitcode(status) == 0
        assert q.get(timeout=5) == "from the child"
    finally:
        q.close()
        shmq.unlink(qname)


def test_the_sync_thread_ends_when_no_journaled_queue_is_open(qname, jdir):
    q = shmq.Queue(qname, create=True, journal=jdir, fsync="batch", journal_segment_size=SEG)
    t = J._thread
    assert t is not None and t.is_alive()
    q.close()
    shmq.unlink(qname)
    t.join(5)
    assert not t.is_alive()
