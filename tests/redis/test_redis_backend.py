"""The Redis backend (DESIGN §11) against a real redis-server: URLs, gaps, a killed consumer, a
network drop (CLIENT KILL), a server restart with appendonly, stamps, reply lists, pickling."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmq
from _redisfix import RedisServer

redis = pytest.importorskip("redis")


@pytest.fixture
def rq(redis_url, qname):
    """Factory of queues on the test's server (closed afterwards; the server is emptied per test)."""
    made = []

    def make(suffix="", **kw):
        q = shmq.Queue(qname + suffix, create=True, backend=redis_url, **kw)
        made.append(q)
        return q
    yield make
    for q in made:
        q.close()


def admin(url):
    return redis.Redis.from_url(url)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("url, words", [
    ("http://localhost:6379/0", "unknown scheme"),
    ("redis://", "no host"),
    ("redis://localhost:99999/0", "port"),
    ("redis://localhost:6379/zero", "database number"),
    ("unix://", "socket's path"),
    ("redis://[::1/0", "not a valid URL"),
])
def test_bad_urls_are_clear_errors(qname, url, words):
    with pytest.raises(ValueError, match=words) as e:
        shmq.Queue(qname, create=True, backend=url)
    assert isinstance(e.value, shmq.ShmqError)


def test_a_bad_url_in_the_environment_names_the_variable(qname, monkeypatch):
    monkeypatch.setenv("SHMQ_BACKEND", "redis:/nohost")
    with pytest.raises(ValueError, match=r"\$SHMQ_BACKEND"):
        shmq.Queue(qname, create=True)
    q = shmq.Queue()                    # anonymous queues stay in shared memory
    q.put(1)
    assert q.get(timeout=1) == 1
    q.close()


def test_unreachable_server_and_anonymous_queue(qname, tmp_path):
    with pytest.raises(ConnectionError, match="cannot reach") as e:
        shmq.Queue(qname, create=True, backend=f"unix://{tmp_path}/nothing.sock")
    assert isinstance(e.value, shmq.ShmqError)
    with pytest.raises(ValueError, match="named queue"):
        shmq.Queue(backend="redis://localhost:6379/0")
    with pytest.raises(TypeError, match="URL"):
        shmq.Queue(qname, backend=6379)


def test_unsupported_options_name_themselves(rq, redis_url, qname):
    for kw, word in ((dict(mode=0o644), "mode="), (dict(max_participants=4), "max_participants="),
                     (dict(ack=True, dedup_capacity=64), "dedup_capacity=")):
        with pytest.raises(shmq.UnsupportedError, match=word) as e:
            shmq.Queue(qname, create=True, backend=redis_url, **kw)
        assert isinstance(e.value, ValueError) and isinstance(e.value, shmq.ShmqError)
    with pytest.raises(shmq.UnsupportedError, match="JoinableQueue"):
        shmq.JoinableQueue(qname, create=True, backend=redis_url)
    q = rq(ack=True)
    with pytest.raises(shmq.UnsupportedError, match="_peek"):
        q._peek(1)


def test_loopback_tcp_url_and_the_same_stats_keys(qname, make_queue):
    srv = RedisServer(tcp=True)
    try:
        assert srv.url.startswith("redis://127.0.0.1:")
        q = shmq.Queue(qname, create=True, ack=True, backend=srv.url)
        q.send({"n": 1})
        m = q.receive(timeout=5)
        assert m.body == {"n": 1} and m.ack() is True
        local = make_queue("-local", ack=True, capacity="1MiB")
        assert set(local.stats()) <= set(q.stats())
        assert q.stats()["acked"] == 1 and q.stats()["backend"] == srv.url
        q.close()
        shmq.unlink(qname, backend=srv.url)
        with pytest.raises(shmq.QueueNotFound):
            shmq.Queue(qname, backend=srv.url)
    finally:
        srv.stop()


def test_create_open_and_conflicting_options(rq, redis_url, qname):
    rq(ack=True, visibility_timeout=5)
    with pytest.raises(FileExistsError):
        shmq.Queue(qname, create=True, backend=redis_url)
    with pytest.raises(ValueError, match="visibility_timeout"):
        shmq.Queue(qname, ack=True, visibility_timeout=9, backend=redis_url)
    with pytest.raises(shmq.QueueNotFound):
        shmq.Queue(qname + "-none", backend=redis_url)
    with shmq.Queue(qname, backend=redis_url) as q:
        assert isinstance(q, shmq.Queue) and q.stats()["visibility_timeout"] == 5


# ---------------------------------------------------------------- stamps and deaths


def test_forged_stamps_are_refused(rq):
    q = rq(ack=True)
    q.send(b"x")
    m = q.receive(timeout=5)
    sid, count = m._token
    for token in ((sid, count + 1), (sid, count - 1), (b"1-1", count)):
        with pytest.raises(shmq.LeaseExpiredError):
            q._ack(token, m.id)
    assert m.ack() is True


def test_a_foreign_stream_entry_is_a_clear_error(rq, redis_url):
    q = rq(ack=True)
    r = admin(redis_url)
    r.xadd(q._stream, {"i": "7", "m": b"\x01"})                    # too short
    r.xadd(q._stream, {"junk": "1"})                                # not ours at all
    r.xadd(q._stream, {"i": "8", "m": b"\x01\x00" + b"\0" * 8 + b"\xff\xff\x00\x00"})   # header past the end
    for _ in range(3):
        with pytest.raises(shmq.CorruptQueueError):
            q.receive(timeout=5)
    q.send(b"fine")
    assert q.receive(timeout=5).body == b"fine"
    r.close()


def _take_and_die(url, name, ready):
    q = shmq.Queue(name, backend=url)
    m = q.receive(timeout=10)
    ready.put(m.id)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_consumer_is_redelivered_at_once(rq, redis_url, qname):
    q = rq(ack=True, visibility_timeout=3600)       # an hour: only the death can bring it back
    mid = q.send(b"job")
    ctx = mp.get_context("fork")
    ready = ctx.SimpleQueue()        # written at once (a Queue's feeder thread would die with the child)
    p = ctx.Process(target=_take_and_die, args=(redis_url, qname, ready))
    p.start()
    p.join(60)
    assert ready.get() == mid
    assert p.exitcode == -signal.SIGKILL
    m = q.receive(timeout=20)
    assert (m.id, m.body, m.delivery_count) == (mid, b"job", 2)     # the death counted
    assert m.ack() is True
    st = q.stats()
    assert st["redelivered"] == 1 and st["in_flight"] == 0 and st["depth"] == 0
    ready.close()


def test_a_network_drop_hands_the_lease_over(rq, redis_url, qname):
    a = rq(ack=True, visibility_timeout=3600)
    b = shmq.Queue(qname, backend=redis_url)
    try:
        a.send(b"m")
        ma = a.receive(timeout=5)
        r = admin(redis_url)
        killed = r.client_kill_filter(_id=next(c["id"] for c in r.client_list() if c["name"] == a._consumer))
        assert killed == 1
        mb = b.receive(timeout=20)           # a's connection is gone: its lease ends at once
        assert mb.id == ma.id and mb.delivery_count == 2
        with pytest.raises(shmq.LeaseExpiredError):
            ma.ack()                         # a reconnected; its delivery is over
        assert mb.ack() is True
        a.send(b"after")                     # a works again
        assert a.receive(timeout=5).body == b"after"
        r.close()
    finally:
        b.close()


def test_a_server_restart_mid_workload_loses_nothing_acked_or_not(qname):
    srv = RedisServer(appendonly=True)
    n = 300
    try:
        url = srv.url
        q = shmq.Queue(qname, create=True, ack=True, backend=url, visibility_timeout=2)
        acked, seen_after_ack, uncertain = set(), [], set()
        sent = set()
        stop = threading.Event()

        def retrying(fn):
            for _ in range(400):
                try:
                    return fn()
                except shmq.BackendConnectionError:
                    time.sleep(0.05)
            raise AssertionError("the server did not come back")

        def produce():
            with shmq.Queue(qname, backend=url) as p:
                for i in range(n):
                    retrying(lambda: p.send(i, dedup_id=str(i)))   # a retried send is not doubled
                    sent.add(i)
                    if stop.is_set():
                        return

        t = threading.Thread(target=produce)
        t.start()
        restarted = False
        deadline = time.monotonic() + 120
        while len(acked | uncertain) < n and time.monotonic() < deadline:
            if not restarted and len(acked) >= n // 3:
                srv.kill()                    # SIGKILL: only the append-only file is left
                srv.start()
                restarted = True
            try:
                m = q.receive(timeout=0.5)
            except shmq.Empty:
                continue
            except shmq.BackendConnectionError:
                time.sleep(0.05)
                continue
            if m.body in acked:
                seen_after_ack.append(m.body)
            try:
                m.ack()
                acked.add(m.body)
            except (shmq.BackendConnectionError, shmq.LeaseExpiredError):
                uncertain.add(m.body)         # the ack may or may not have landed
        stop.set()
        t.join(60)
        assert restarted
        assert seen_after_ack == []                          # no acked message delivered again
        assert acked | uncertain == set(range(n)) == sent    # no message lost
        assert len(acked) >= n - 5
        q.close()
    finally:
        srv.stop()


# ---------------------------------------------------------------- request-reply and handles


def test_a_dead_requesters_reply_list_expires(redis_url, qname):
    srv = shmq.Responder(qname, create=True, backend=redis_url)
    try:
        code = (f"import os, shmq, signal\n"
                f"cli = shmq.Requester({qname!r}, backend={redis_url!r})\n"
                f"cli.submit('x', timeout=30)\n"
                f"print(cli._path, flush=True)\n"
                f"os.kill(os.getpid(), signal.SIGKILL)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == -9, r.stderr
        key = r.stdout.strip()
        req = srv.receive(timeout=20)
        req.reply("into nothing")
        ttl = admin(redis_url).pttl(key)
        assert 0 < ttl <= 300_000
    finally:
        srv.close()


def _put_from_child(q):
    q.put(("child", os.getpid()))
    q.close()


def test_a_handle_pickles_to_a_child(rq):
    q = rq()
    p = mp.get_context("spawn").Process(target=_put_from_child, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.get(timeout=5) == ("child", p.pid)
