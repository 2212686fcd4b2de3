"""Topic crash safety: a process SIGKILLed at each topic crash point leaves no torn or half-visible
message, never wedges the log and loses no named position; SIGKILLed group members hand the rest
to the group; SIGSTOPped subscribers stall no publisher unless their subscription is on_slow=block."""
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _topic_worker import check, payload  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_topic_worker.py")

# crash point -> (what the dying process does, hit number to die at)
TOPIC_SCENARIOS = {
    "topic_mid_publish": ("publish", 5),
    "topic_before_commit": ("publish", 5),
    "topic_after_commit": ("publish", 5),
    "topic_before_advance": ("read", 3),
    "topic_mid_subscribe": ("subscribe", 1),
    "topic_ack_claimed": ("receive", 3),
}

_started = []


@pytest.fixture(autouse=True)
def _reap():
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
        p.communicate()


def spawn(*args, crash_at=None):
    env = dict(os.environ)
    env.pop("SHMQ_CRASH_AT", None)
    if crash_at:
        env["SHMQ_CRASH_AT"] = crash_at
    p = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _started.append(p)
    return p


def records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f]


def wait_for(path, word, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(r and r[0] == word for r in records(path)):
            return
        time.sleep(0.01)
    raise AssertionError(f"{path}: no {word} in {timeout} s")


@pytest.fixture
def topic(qname):
    t = shmq.Topic(qname, create=True, capacity="1MiB")
    yield t
    t.close()
    try:
        shmq.unlink(qname)
    except shmq.QueueNotFound:
        pass


def drain(sub, timeout=0.2):
    out = []
    while True:
        try:
            out.extend(sub.get_many(64, timeout=timeout))
        except shmq.Empty:
            return out


def test_every_topic_crash_point_has_a_test():
    points = {n for n, _ in shmq.crash_points() if n.startswith("topic_")}
    assert points == set(TOPIC_SCENARIOS)


@pytest.mark.parametrize("point", sorted(p for p, (role, _) in TOPIC_SCENARIOS.items() if role == "publish"))
def test_publisher_killed_mid_publish(point, topic, tmp_path):
    _, hit = TOPIC_SCENARIOS[point]
    check_sub = topic.subscribe("check", start="earliest")
    rec = str(tmp_path / "rec")
    p = spawn("publish", topic.name, rec, 50, 1, 1, crash_at=f"{point}:{hit}")
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    returned = [int(r[1]) for r in records(rec) if r[0] == "P"]
    assert returned == list(range(1, hit))
    # the log is not wedged: the dead publisher's lock is taken over at once
    t0 = time.monotonic()
    seq = topic.publish(payload(2, 0), timeout=10)
    assert time.monotonic() - t0 < 5
    got = drain(check_sub)
    assert all(check(m.body) for m in got), "torn message visible"
    seqs = [m.seq for m in got]
    assert seqs == sorted(seqs) and seqs[-1] == seq
    if point == "topic_after_commit":
        # committed before the kill: visible (its publish never returned), never torn
        assert seqs == list(range(1, hit + 2)) and [check(m.body) for m in got][hit - 1] == (1, hit - 1)
    else:
        # the unfinished publish left nothing visible and its seq was never given out
        assert seqs == list(range(1, hit + 1)) and check(got[-1].body) == (2, 0)


def test_reader_killed_before_advance_loses_no_position(topic, tmp_path):
    _, hit = TOPIC_SCENARIOS["topic_before_advance"]
    topic.subscribe("durable", start="earliest").close()
    topic.publish_many([payload(0, i) for i in range(10)])
    rec = str(tmp_path / "rec")
    p = spawn("read", topic.name, rec, "durable", 2, 10, crash_at=f"topic_before_advance:{hit}")
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    delivered = [int(r[1]) for r in records(rec) if r[0] == "R"]
    assert delivered == list(range(1, hit))
    again = topic.subscribe("durable")
    assert [m.seq for m in drain(again)] == list(range(hit, 11))   # the copied-not-claimed one included


def test_killed_mid_subscribe_leaves_no_half_entry(topic, tmp_path):
    rec = str(tmp_path / "rec")
    p = spawn("subscribe", topic.name, rec, "half", crash_at="topic_mid_subscribe:1")
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert [i.name for i in topic.subscriptions()] == []          # its state was never LIVE
    t0 = time.monotonic()
    s = topic.subscribe("half", start="earliest")                  # both locks taken over
    topic.publish(b"x", timeout=10)
    assert time.monotonic() - t0 < 5
    assert s.get(timeout=5).body == b"x"


def test_group_member_sigkilled_rest_goes_to_the_group(topic, tmp_path):
    topic.subscribe("workers", start="earliest").close()
    total = 400
    topic.publish_many([payload(0, i) for i in range(total)])
    ra, rb = str(tmp_path / "a"), str(tmp_path / "b")
    a = spawn("read", topic.name, ra, "workers", 2, total, "latest", "-", 0.002)
    b = spawn("read", topic.name, rb, "workers", 2, total, "latest", "-", 0.002)
    wait_for(ra, "READY")
    time.sleep(0.2)
    a.kill()
    a.communicate(timeout=30)
    b.communicate(timeout=120)
    assert b.returncode == 0
    got_a = [int(r[1]) for r in records(ra) if r[0] == "R"]
    got_b = [int(r[1]) for r in records(rb) if r[0] == "R"]
    assert not set(got_a) & set(got_b)
    # read, then claim: at most the one message the killed member had claimed and not recorded
    assert total - 1 <= len(set(got_a) | set(got_b)) <= total
    assert got_b and got_b[-1] == total
    info = [i for i in topic.subscriptions() if i.name == "workers"][0]
    assert info.consumers == 0 and info.lag == 0


def _stopped(p):
    os.kill(p.pid, signal.SIGSTOP)
    return p


def test_sigstopped_lossy_subscribers_never_stall_publishers(topic, tmp_path):
    topic.subscribe("lossy", on_slow="drop_oldest").close()
    procs = []
    for name, slow in (("-", "-"), ("lossy", "drop_oldest")):
        f = str(tmp_path / name)
        procs.append(spawn("read", topic.name, f, name, 30, 10 ** 6, "latest", slow))
        wait_for(f, "READY")
    try:
        for p in procs:
            _stopped(p)
        n_entries = topic.stats()["log_entries"]
        for i in range(n_entries * 3):
            topic.publish(b"x" * 64, block=False)      # never Full
        assert [i.missed for i in topic.subscriptions() if i.name == "lossy"] == [0]   # counted when read
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()


def test_sigstopped_block_subscriber_stalls_only_as_documented(qname, tmp_path):
    t = shmq.Topic(qname, create=True, capacity="64KiB")
    f = str(tmp_path / "r")
    try:
        t.subscribe("careful").close()
        p = spawn("read", qname, f, "careful", 30, 10 ** 6)
        wait_for(f, "READY")
        _stopped(p)
        with pytest.raises(shmq.Full):
            for _ in range(100000):
                t.publish(b"x", timeout=0.05)
        os.kill(p.pid, signal.SIGCONT)
        t.publish(b"after", timeout=10)                # the resumed reader opened the gate
        p.kill()
    finally:
        t.close()
        shmq.unlink(qname)


def test_ack_member_killed_while_claiming(topic, tmp_path):
    _, hit = TOPIC_SCENARIOS["topic_ack_claimed"]
    topic.subscribe("acks", start="earliest", ack=True).close()
    topic.publish_many([payload(0, i) for i in range(10)])
    rec = str(tmp_path / "rec")
    p = spawn("receive", topic.name, rec, "acks", 2, 0, crash_at=f"topic_ack_claimed:{hit}")
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert [int(r[1]) for r in records(rec) if r[0] == "A"] == list(range(1, hit))
    topic._repair()                                   # what a sleeper's liveness slice does
    s = topic.subscribe("acks", ack=True)
    got = []
    while True:
        try:
            m = s.get(timeout=0.3)
        except shmq.Empty:
            break
        got.append((m.seq, m.delivery_count))
        m.ack()
    # the claim had not advanced the group's cursor: its message comes once, as a first delivery
    assert got == [(seq, 1) for seq in range(hit, 11)]
    info = topic.stats()["subscriptions"]["acks"]
    assert info["in_flight"] == 0 and info["lag"] == 0


def test_ack_member_sigkilled_its_leases_go_back_to_the_group(topic, tmp_path):
    topic.subscribe("acks", start="earliest", ack=True).close()
    topic.publish_many([payload(0, i) for i in range(6)])
    rec = str(tmp_path / "rec")
    p = spawn("receive", topic.name, rec, "acks", 2, 3)
    wait_for(rec, "HOLDING")
    p.kill()
    p.communicate(timeout=30)
    s = topic.subscribe("acks", ack=True)               # visibility_timeout is 60 s: only repair returns them
    t0 = time.monotonic()
    got = {}
    while len(got) < 6 and time.monotonic() - t0 < 20:
        try:
            m = s.get(timeout=1)
        except shmq.Empty:
            continue
        got[m.seq] = m.delivery_count
        m.ack()
    assert time.monotonic() - t0 < 10                    # the repair bound, with a loaded machine's margin
    assert got == {1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
