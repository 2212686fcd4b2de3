"""The journal under faults (issue 17 item 5): SIGKILL of every process at random points, a
simulated power loss (with its negative control), a crash at every journal crash point, an
fdatasync that fails with EIO, ENOSPC during a burst. After each: recovery, then every send that
returned is there (or was received), every acked message is gone, nothing is doubled or garbled."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmq

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_journal_worker.py")
sys.path.insert(0, HERE)
from _journal_worker import well_formed  # noqa: E402

SEG = 64 * 1024
ROUNDS = int(os.environ.get("SHMQ_JOURNAL_SOAK_ROUNDS", "1"))   # soak: more random kill rounds

# crash point -> hit number at which the cycling worker dies (the lint in test_crash_points.py)
JOURNAL_SCENARIOS = {
    "journal_mid_append": 37,
    "journal_mid_sync": 23,
    "journal_rotate_prepared": 2,
    "journal_rotate_ended": 2,
    "journal_rotate_switched": 2,
    "journal_mid_recycle": 1,
    "journal_spare_built": 1,
}


@pytest.fixture(autouse=True)
def _no_dlq_left(qname):
    yield
    try:
        shmq.unlink(qname + ".dlq")
    except shmq.QueueNotFound:
        pass


def _env(**extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("SHMQ_JOURNAL_") or k == "SHMQ_CRASH_AT":
            env.pop(k)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, WORKER, *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _spawn(*args, env=None):
    return subprocess.Popen([sys.executable, WORKER, *args], env=env or _env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _log(path):
    out = {b"s": [], b"r": set(), b"a": set()}
    if os.path.exists(path):
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n") and len(line) > 3:
                    kind, b = line[:1], line[2:-1]
                    if kind == b"s":
                        out[kind].append(b)
                    elif kind in out:
                        out[kind].add(b)
    return out


def _recover(qname, jdir):
    """Create the queue again from its journal (the segment is gone) and take everything."""
    try:
        shmq.unlink(qname)
    except shmq.QueueNotFound:
        pass
    q = shmq.Queue(qname, create=True, ack=True, dead_letter=None, journal=jdir, visibility_timeout=3600, raw=True)
    got = []
    try:
        while True:
            try:
                m = q.receive(timeout=0.05)
            except shmq.Empty:
                break
            got.append(bytes(m.body))
            m.ack()
    finally:
        q.close()
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass
    return got


def _check(got, logs):
    sent = [b for lg in logs for b in lg[b"s"]]
    received = set().union(*(lg[b"r"] for lg in logs))
    acked = set().union(*(lg[b"a"] for lg in logs))
    assert all(well_formed(b) for b in got), "garbled message recovered"
    gotset = set(got)
    assert len(got) == len(gotset), "a message was recovered twice"
    missing = [b for b in sent if b not in gotset and b not in received]
    assert not missing, f"{len(missing)} sends that returned are gone, e.g. {missing[:3]}"
    back = acked & gotset
    assert not back, f"{len(back)} acked messages came back, e.g. {sorted(back)[:3]}"
    return len(sent)


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_sigkill_everyone_at_random_points(qname, tmp_path, mode):
    jdir = str(tmp_path / "j")
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    total = 0
    for rnd in range(ROUNDS):
        r = _run("create", qname, jdir, mode, str(SEG))
        assert r.returncode == 0, r.stderr
        logs = [str(tmp_path / f"log{rnd}-{i}") for i in range(3)]
        procs = [_spawn("produce", qname, jdir, mode, logs[0], f"p{rnd}a"),
                 _spawn("produce", qname, jdir, mode, logs[1], f"p{rnd}b"),
                 _spawn("consume", qname, jdir, mode, logs[2])]
        try:
            # every process at work first (a loaded machine takes seconds to start Python), then
            # a random instant
            deadline = time.monotonic() + 60
            while not all(os.path.exists(lg) and os.path.getsize(lg) for lg in logs) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.1, 0.9))
        finally:
            _kill_all(procs)
        total += _check(_recover(qname, jdir), [_log(p) for p in logs])
        # what came back was taken above: the next round starts from a journal with nothing live
    assert total > 0


def _wait_stopped(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return True
        time.sleep(0.01)
    return False


def test_a_spare_is_put_in_place_only_under_the_append_lock(qname, tmp_path):
    """The cause of the lost run in the SIGKILL-everyone test: a spare segment file, built slowly
    (zero fill, fdatasync) outside the append lock, was renamed to NNN.spare outside it too. When
    NNN.spare already was the spare and a rotation (under the lock) held it open to rewrite its
    header, the rotation's rename then moved the new file, still marked spare, into place as the
    live segment, and recovery ignored every record in it. Here a rotation is held at
    journal_rotate_prepared (append lock held, the spare just used up) while this process builds
    a spare: nothing may appear under a .spare name until the lock is free."""
    jdir = str(tmp_path / "j")
    r = _run("create", qname, jdir, "never", str(SEG))
    assert r.returncode == 0, r.stderr
    logs = [str(tmp_path / "log0"), str(tmp_path / "log1")]
    p = _spawn("produce", qname, jdir, "never", logs[0], "st",
               env=_env(SHMQ_CRASH_AT="journal_rotate_prepared:1:stop"))
    q = t = None
    try:
        assert _wait_stopped(p.pid), "the producer never reached its first rotation"
        before = {f for f in os.listdir(jdir) if f.endswith(".spare")}
        q = shmq.Queue(qname, journal=jdir)
        t = threading.Thread(target=q._core._journal_prepare_spare, daemon=True)
        t.start()
        time.sleep(0.5)       # the old code renamed its spare in place at once
        appeared = {f for f in os.listdir(jdir) if f.endswith(".spare")} - before
    finally:
        _kill_all([p])        # the lock holder dies: the builder takes the lock over
        if t is not None:
            t.join(timeout=30)
    assert not t.is_alive()
    assert not appeared, f"{appeared} renamed into place while a rotation held the append lock"
    r = _run("cycle", qname, jdir, "never", logs[1], "c1", "600")   # the queue goes on
    assert r.returncode == 0, r.stderr[-2000:]
    q.close()
    assert _check(_recover(qname, jdir), [_log(p) for p in logs]) > 600


def _power_loss(qname, tmp_path, nosync):
    jdir, shadow = str(tmp_path / "j"), str(tmp_path / "disk")
    os.makedirs(shadow)
    env = _env(SHMQ_JOURNAL_SHADOW=shadow, **({"SHMQ_JOURNAL_SHADOW_NOSYNC": 1} if nosync else {}))
    r = _run("create", qname, jdir, "always", str(SEG), env=env)
    assert r.returncode == 0, r.stderr
    logs = [str(tmp_path / f"log{i}") for i in range(2)]
    procs = [_spawn("produce", qname, jdir, "always", logs[i], f"w{i}", env=env) for i in range(2)]
    try:
        deadline = time.monotonic() + 20
        while len(_log(logs[0])[b"s"]) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _kill_all(procs)
    # the power goes: the disk holds what completed syncs covered, nothing else
    for f in os.listdir(jdir):
        os.unlink(os.path.join(jdir, f))
    for f in os.listdir(shadow):
        if not f.startswith("."):
            shutil.copyfile(os.path.join(shadow, f), os.path.join(jdir, f))
    return _recover(qname, jdir), [_log(p) for p in logs]


def test_power_loss_keeps_every_confirmed_send(qname, tmp_path):
    got, logs = _power_loss(qname, tmp_path, nosync=False)
    assert _check(got, logs) >= 200


def test_power_loss_negative_control_sees_the_loss(qname, tmp_path):
    """The same run with syncs that sync nothing: the checker must report lost sends."""
    got, logs = _power_loss(qname, tmp_path, nosync=True)
    with pytest.raises(AssertionError, match="sends that returned are gone"):
        _check(got, logs)


@pytest.mark.parametrize("point", sorted(JOURNAL_SCENARIOS))
def test_crash_at_every_journal_point(qname, tmp_path, point):
    jdir = str(tmp_path / "j")
    mode = "always" if point == "journal_mid_sync" else "batch"
    r = _run("create", qname, jdir, mode, str(SEG))
    assert r.returncode == 0, r.stderr
    logs = [str(tmp_path / "log0"), str(tmp_path / "log1")]
    r = _run("cycle", qname, jdir, mode, logs[0], "c0", "3000",
             env=_env(SHMQ_CRASH_AT=f"{point}:{JOURNAL_SCENARIOS[point]}"))
    assert r.returncode == -signal.SIGKILL, f"{point} was not hit: {r.returncode} {r.stderr[-2000:]}"
    # the survivors go on (a dead append or sync lock holder is taken over), then everyone dies
    r = _run("cycle", qname, jdir, mode, logs[1], "c1", "400")
    assert r.returncode == 0, r.stderr[-2000:]
    n = _check(_recover(qname, jdir), [_log(p) for p in logs])
    assert n > 0
    ok = subprocess.run([sys.executable, "-m", "shmq", "journal", "verify", jdir], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_fdatasync_eio_is_never_followed_by_success(qname, tmp_path):
    jdir = str(tmp_path / "j")
    r = _run("create", qname, jdir, "always", str(SEG))
    assert r.returncode == 0, r.stderr
    r = _run("eio", qname, jdir, env=_env(SHMQ_JOURNAL_EIO_AT=50))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 0 < out["ok"] < 60
    assert out["errors"] and set(out["errors"]) == {5}     # EIO, as an OSError (JournalError)
    assert out["later_ok"] == 0, "a send was confirmed after a failed fdatasync"
    assert out["sync"] == 5 and out["fsync_errors"] == 1
    got = _recover(qname, jdir)
    assert len(got) >= out["ok"]


def test_enospc_fails_sends_cleanly_and_recovers(qname, tmp_path):
    jdir, flag = str(tmp_path / "j"), str(tmp_path / "disk-full")
    r = _run("create", qname, jdir, "batch", str(SEG))
    assert r.returncode == 0, r.stderr
    r = _run("enospc", qname, jdir, flag, env=_env(SHMQ_JOURNAL_ENOSPC_FILE=flag))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["failed"] == 20 and out["after"] == 50
    got = _recover(qname, jdir)
    from _journal_worker import body
    assert got == [body("n", i) for i in out["sent"]]
