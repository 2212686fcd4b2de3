"""Topics across processes: ordering and completeness checkers with several publishers and
subscribers of every kind, groups of processes, durable positions across process restarts."""
import os
import subprocess
import sys
import time

import pytest

import shmq

BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py; the workers inherit $SHMQ_BACKEND)
WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crash", "_topic_worker.py")


_started = []


@pytest.fixture(autouse=True)
def _reap():
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
        p.communicate()


def spawn(*args, env=None):
    e = dict(os.environ)
    e.pop("SHMQ_CRASH_AT", None)
    e.update(env or {})
    p = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=e, stdout=subprocess.PIPE,
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


def finish(procs, timeout=120):
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def reads(path):
    rs = records(path)
    assert not [r for r in rs if r[0] == "BAD"], "torn message delivered"
    got = [(int(r[1]), int(r[2]), int(r[3])) for r in rs if r[0] == "R"]
    missed = [int(r[1]) for r in rs if r[0] == "M"]
    return got, (missed[0] if missed else None)


def check_order(got):
    seqs = [g[0] for g in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "publish order broken"
    last = {}
    for _, pub, i in got:
        assert i > last.get(pub, -1), "per-publisher order broken"
        last[pub] = i


@pytest.fixture
def topic_name(qname):
    yield qname
    try:
        shmq.unlink(qname)
    except shmq.QueueNotFound:
        pass


def test_publishers_and_every_kind_of_subscription(topic_name, tmp_path):
    t = shmq.Topic(topic_name, create=True, capacity="4MiB")
    try:
        n_pub, per = 2, 1500
        total = n_pub * per
        t.subscribe("solo", start="earliest").close()
        t.subscribe("group", start="earliest").close()
        t.subscribe("lossy", start="earliest", on_slow="drop_oldest").close()
        files = {k: str(tmp_path / k) for k in ("private", "solo", "g1", "g2", "lossy")}
        # readers wait up to 60 s for their first message (the publishers start after them, and
        # a loaded machine takes seconds to start Python), then 3 s of quiet ends them
        readers = [spawn("read", topic_name, files["private"], "-", 3, total, "latest", "-", 0, 60),
                   spawn("read", topic_name, files["solo"], "solo", 3, total, "latest", "-", 0, 60),
                   spawn("read", topic_name, files["g1"], "group", 3, total, "latest", "-", 0, 60),
                   spawn("read", topic_name, files["g2"], "group", 3, total, "latest", "-", 0, 60),
                   spawn("read", topic_name, files["lossy"], "lossy", 3, total, "latest", "drop_oldest", 0, 60)]
        for f in files.values():
            wait_for(f, "READY")
        pubs = [spawn("publish", topic_name, str(tmp_path / f"p{i}"), per, i, 1 + 7 * i) for i in range(n_pub)]
        finish(pubs + readers)
        published = sorted(int(r[1]) for i in range(n_pub) for r in records(str(tmp_path / f"p{i}")))
        assert published == list(range(1, total + 1))     # 1, 2, 3 ... never reused
        for k in ("private", "solo"):
            got, missed = reads(files[k])
            check_order(got)
            assert [g[0] for g in got] == published, k   # complete: every message after its start
            assert missed == 0
        g1, _ = reads(files["g1"])
        g2, _ = reads(files["g2"])
        check_order(g1)
        check_order(g2)
        assert sorted(g[0] for g in g1 + g2) == published  # each message to exactly one member
        lossy, missed = reads(files["lossy"])
        check_order(lossy)
        assert len(lossy) == total                          # big enough: nothing was overrun
        info = {i.name: i for i in t.subscriptions()}
        assert info["solo"].lag == 0 and info["group"].lag == 0 and info["group"].consumers == 0
    finally:
        t.close()


def test_overrun_counted_exactly_across_processes(topic_name, tmp_path):
    t = shmq.Topic(topic_name, create=True, capacity="64KiB")
    try:
        total = 3000
        t.subscribe("lossy", start="earliest", on_slow="drop_oldest").close()
        f_lossy, f_priv = str(tmp_path / "lossy"), str(tmp_path / "priv")
        readers = [spawn("read", topic_name, f_lossy, "lossy", 2, total, "earliest", "drop_oldest", 0.0005),
                   spawn("read", topic_name, f_priv, "-", 2, total, "latest", "-", 0.0005)]
        wait_for(f_lossy, "READY")
        wait_for(f_priv, "READY")
        finish([spawn("publish", topic_name, str(tmp_path / "p"), total, 0, 16)] + readers)
        overrun = 0
        for f in (f_lossy, f_priv):
            got, missed = reads(f)
            check_order(got)
            assert len(got) + missed == total
            overrun += missed
        assert overrun > 0   # readers 0.5 ms per message behind a 128-entry log: they were overrun
        info = [i for i in t.subscriptions() if i.name == "lossy"][0]
        got, missed = reads(f_lossy)
        assert info.missed == missed and info.delivered == len(got)
    finally:
        t.close()


def test_durable_position_across_process_restarts(topic_name, tmp_path):
    t = shmq.Topic(topic_name, create=True, capacity="1MiB")
    try:
        t.subscribe("audit", start="earliest").close()
        for i in range(100):
            t.publish(b"%d" % i)
        seen = []
        for run in range(3):
            f = str(tmp_path / f"r{run}")
            finish([spawn("read", topic_name, f, "audit", 0.3, 30)])
            seen += [int(r[1]) for r in records(f) if r[0] in ("R", "BAD")]
        assert seen == list(range(1, 91))
        assert [i.lag for i in t.subscriptions() if i.name == "audit"] == [10]
    finally:
        t.close()
