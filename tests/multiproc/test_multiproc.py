"""shmq queues shared between processes under fork, spawn and forkserver (DESIGN §2, §5, §6)."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmq

# Children import their targets from _helpers (spawn and forkserver re-import them by name): make
# this directory importable whatever pytest's import mode; children inherit sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import _helpers as h  # noqa: E402

T = 30.0            # timeout of any single blocking call in the parent
JOIN_T = 60.0       # how long the parent waits for its children to finish
SHM = "/dev/shm"


class Kids:
    """Children of one test: started here, joined with a timeout, terminated on failure."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.procs = []

    def start(self, target, *args, daemon=True):
        p = self.ctx.Process(target=target, args=args, daemon=daemon)
        self.procs.append(p)
        p.start()
        return p

    def join_all(self, timeout=JOIN_T):
        """Join every child; fail unless each exited with code 0 in time."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p.pid for p in self.procs if p.is_alive()]
        assert not hung, f"children still running after {timeout} s: {hung}"
        codes = {p.pid: p.exitcode for p in self.procs}
        assert all(c == 0 for c in codes.values()), f"child exit codes: {codes}"

    def reap(self):
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


@pytest.fixture
def env(mpctx):
    """(ctx, kids, queues): children are reaped and queues closed when the test ends, pass or fail."""
    kids = Kids(mpctx)
    queues = []
    try:
        yield mpctx, kids, queues
    finally:
        kids.reap()
        for q in queues:
            q.close()


def _new(queues, factory=shmq.Queue, *args, **kwargs):
    q = factory(*args, **kwargs)
    queues.append(q)
    return q


# -- handles as Process arguments ---------------------------------------------------------

def test_handle_as_process_argument(env):
    ctx, kids, qs = env
    to_child, from_child = _new(qs), _new(qs)
    items = [1, "two", (3, 3.0), {"four": [4]}, b"five", None]
    to_child.put_many(items)   # put before the child exists: it must find them
    kids.start(h.echo, to_child, from_child, len(items))
    assert [from_child.get(timeout=T) for _ in items] == items
    kids.join_all()


def test_child_close_does_not_remove_parent_queue(env):
    # An anonymous queue belongs to the process that created it (by pid): a child that closes its
    # handle (or exits) must leave the queue in place for the creator.
    ctx, kids, qs = env
    q = _new(qs)
    kids.start(h.put_and_close, q, "from-child")
    kids.join_all()
    assert os.path.exists(q.path)
    assert q.get(timeout=T) == "from-child"
    q.put("still works")
    assert q.get_nowait() == "still works"


def test_named_queue_opened_by_name_in_child(env, qname):
    ctx, kids, qs = env
    q = _new(qs, shmq.Queue, qname, create=True, capacity="1MiB")
    try:
        kids.start(h.open_named, qname, ("named", 1))
        assert q.get(timeout=T) == ("named", 1)
        kids.join_all()
    finally:
        shmq.unlink(qname)


# -- blocked get woken across processes ----------------------------------------------------

def test_blocked_get_in_child_woken_by_parent_put(env):
    ctx, kids, qs = env
    to_child, from_child = _new(qs), _new(qs)
    kids.start(h.ready_then_get, to_child, from_child)
    assert from_child.get(timeout=T) == "ready"
    time.sleep(0.2)            # let the child go to sleep in get()
    to_child.put("wake up")
    assert from_child.get(timeout=T) == ("got", "wake up")
    kids.join_all()


def test_blocked_get_in_parent_woken_by_child_put(env):
    ctx, kids, qs = env
    sync, q = _new(qs), _new(qs)
    kids.start(h.wait_then_put, sync, q, 0.2, "wake up")
    sync.put("go")
    t0 = time.monotonic()
    assert q.get(timeout=T) == "wake up"   # blocks ~0.2 s until the child puts
    assert time.monotonic() - t0 < T
    kids.join_all()


def test_blocked_get_in_thread_woken_by_child_put(env):
    # The parent's get blocks in another thread (the GIL is released while sleeping): the main
    # thread keeps running and the child's put wakes the sleeper.
    ctx, kids, qs = env
    sync, q = _new(qs), _new(qs)
    out = []
    t = threading.Thread(target=lambda: out.append(q.get(timeout=T)))
    t.start()
    try:
        kids.start(h.wait_then_put, sync, q, 0.1, "to-thread")
        sync.put("go")
        t.join(T)
        assert not t.is_alive()
        assert out == ["to-thread"]
        kids.join_all()
    finally:
        if t.is_alive():
            q.put("unblock")
            t.join(T)


def test_child_uses_handle_while_parent_thread_blocked_in_get(env):
    # The parent has a consumer thread asleep in get() when the child starts (under fork the child
    # inherits a handle with a call in progress in a thread that does not exist in the child).
    ctx, kids, qs = env
    q, back, r = _new(qs), _new(qs), _new(qs)
    out = []
    t = threading.Thread(target=lambda: out.append(q.get(timeout=T)))
    t.start()
    try:
        time.sleep(0.1)
        kids.start(h.put_get_close, q, back, r)
        t.join(T)
        assert out == ["from child"]
        back.put("reply")
        assert r.get(timeout=T) == "reply"
        kids.join_all()
    finally:
        if t.is_alive():
            q.put("unblock")
            t.join(T)
    q.put("after")
    assert q.get_nowait() == "after"


def test_consumer_killed_while_blocked_in_get_does_not_wedge(env):
    # DESIGN §0/§6: multiprocessing.Queue can wedge when a process dies inside get(); shmq must
    # not: the next put reaches a live consumer.
    ctx, kids, qs = env
    q, ready = _new(qs), _new(qs)
    p = kids.start(h.block_in_get, q, ready)
    assert ready.get(timeout=T) == "blocking"
    time.sleep(0.1)
    p.kill()
    p.join(T)
    assert p.exitcode is not None and p.exitcode < 0
    q.put("after the death")
    assert q.get(timeout=T) == "after the death"
    out = _new(qs)
    kids.start(h.echo, q, out, 1)
    q.put("to a new consumer")
    assert out.get(timeout=T) == "to a new consumer"
    kids.procs.remove(p)       # killed on purpose: join_all checks the others' exit codes
    kids.join_all()


def test_put_in_child_visible_to_get_nowait_once_signalled(env):
    # Intended difference (DESIGN §5.1): a put has landed in shared memory when it returns, so
    # after the child's later "done" arrives, every item is there for get_nowait (with
    # multiprocessing.Queue a feeder thread may still hold them).
    ctx, kids, qs = env
    q, r = _new(qs), _new(qs)
    kids.start(h.put_then_signal, q, r, 500)
    assert r.get(timeout=T) == "done"
    assert q.qsize() == 500
    assert [q.get_nowait() for _ in range(500)] == list(range(500))
    kids.join_all()


# -- many producers x many consumers -------------------------------------------------------

N_PROD, N_CONS, N_MSGS = 3, 3, 2000


@pytest.mark.parametrize("api", ["single", "batch"])
def test_many_producers_many_consumers_exactly_once_fifo(env, api):
    ctx, kids, qs = env
    q, results = _new(qs, shmq.Queue, 64), _new(qs)   # bounded: producers block on a full queue too
    for c in range(N_CONS):
        if api == "single":
            kids.start(h.consumer, q, results, c)
        else:
            kids.start(h.consumer_batches, q, results, c)
    for p in range(N_PROD):
        if api == "single":
            kids.start(h.producer, q, p, N_MSGS)
        else:
            kids.start(h.producer_batches, q, p, N_MSGS, 50)
    # Sentinels go after every producer's last item: wait until each producer has finished.
    for p in kids.procs[N_CONS:]:
        p.join(JOIN_T)
        assert p.exitcode == 0, f"producer exit code {p.exitcode}"
    for _ in range(N_CONS):
        q.put(None, timeout=T)
    per_consumer = dict(results.get(timeout=T) for _ in range(N_CONS))
    kids.join_all()

    everything = [item for got in per_consumer.values() for item in got]
    expected = {(p, s) for p in range(N_PROD) for s in range(N_MSGS)}
    assert len(everything) == len(expected), "a message was lost or delivered twice"
    assert set(everything) == expected
    # Per-producer FIFO as each consumer sees it: the sequence numbers of one producer increase.
    for c, got in per_consumer.items():
        for p in range(N_PROD):
            seqs = [s for (pp, s) in got if pp == p]
            assert seqs == sorted(seqs), f"consumer {c} saw producer {p} out of order"
    assert q.empty() and q.qsize() == 0


def test_ping_pong_between_processes(env):
    # Strict alternation: every get sleeps until the other side's put. A lost wake-up shows up as
    # a timeout (Empty) here.
    ctx, kids, qs = env
    ping, pong = _new(qs), _new(qs)
    n = 2000
    kids.start(h.pong, ping, pong, n)
    x = 0
    for _ in range(n):
        ping.put(x)
        x = pong.get(timeout=T) + 1
    assert x == 2 * n
    kids.join_all()


# -- large messages ------------------------------------------------------------------------

MiB = 1024 * 1024


@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_10mib_message_round_trip(env, kind):
    ctx, kids, qs = env
    if kind == "bytes":
        data = os.urandom(10 * MiB)
    else:
        data = np.random.default_rng(12345).random(10 * MiB // 8).reshape(-1, 1024)
    to_child, from_child = _new(qs), _new(qs)
    to_child.put(data)
    kids.start(h.echo_with_digest, to_child, from_child)
    assert from_child.get(timeout=T) == h.digest(data)   # what the child received is intact
    back = from_child.get(timeout=T)                      # and what it sent back
    kids.join_all()
    assert type(back) is type(data)
    if kind == "bytes":
        assert back == data
    else:
        assert back.dtype == data.dtype and back.shape == data.shape
        assert np.array_equal(back, data)
        assert back.flags.writeable


# -- handles travelling through queues ----------------------------------------------------

def test_handle_through_another_queue(env):
    ctx, kids, qs = env
    carrier, target = _new(qs), _new(qs)
    kids.start(h.relay_handle, carrier, 3)
    carrier.put(target)    # pickled outside of spawning: the handle carries the queue's name
    assert [target.get(timeout=T) for _ in range(3)] == [("via-carrier", i) for i in range(3)]
    kids.join_all()


def test_handle_through_multiprocessing_queue(env):
    # multiprocessing.Queue pickles in its feeder thread with ForkingPickler: handles survive that.
    ctx, kids, qs = env
    carrier = ctx.Queue()
    target = _new(qs)
    try:
        kids.start(h.relay_handle, carrier, 2)
        carrier.put(target)
        assert [target.get(timeout=T) for _ in range(2)] == [("via-carrier", 0), ("via-carrier", 1)]
        kids.join_all()
    finally:
        carrier.close()
        carrier.join_thread()


def test_child_sends_its_handle_back(env):
    ctx, kids, qs = env
    carrier, q = _new(qs), _new(qs)
    kids.start(h.send_handle_back, carrier, q)
    back = carrier.get(timeout=T)
    try:
        assert back.get(timeout=T) == "from-child"
        back.put("same queue")
        assert q.get(timeout=T) == "same queue"
    finally:
        back.close()
    kids.join_all()
    assert os.path.exists(q.path)   # closing a received handle keeps the creator's queue
    q.put("after")
    assert q.get_nowait() == "after"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_tasks_receive_handle(method):
    import multiprocessing
    ctx = multiprocessing.get_context(method)
    q = shmq.Queue()
    pool = ctx.Pool(2)
    try:
        res = pool.map_async(h.pool_task, [(q, i) for i in range(8)])
        got = res.get(T)
        assert sorted(i for i, _pid in got) == list(range(8))
        items = sorted(q.get(timeout=T) for _ in range(8))
        assert items == [(i, i * i) for i in range(8)]
        pool.close()
        _join_pool(pool)
    finally:
        pool.terminate()
        _join_pool(pool)
        q.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_initializer_receives_handle(method):
    # initargs are pickled while each worker is being started (DESIGN §2: the descriptor travels
    # then); maxtasksperchild=2 makes the pool start fresh workers mid-run.
    import multiprocessing
    ctx = multiprocessing.get_context(method)
    q = shmq.Queue()
    pool = ctx.Pool(2, initializer=h.pool_init, initargs=(q,), maxtasksperchild=2)
    try:
        assert sorted(pool.map_async(h.pool_task_global, range(8)).get(T)) == list(range(8))
        got = [q.get(timeout=T) for _ in range(8)]
        assert sorted(i for i, _ in got) == list(range(8))
        assert len({pid for _, pid in got}) >= 4      # at least 4 different workers took part
        pool.close()
        _join_pool(pool)
    finally:
        pool.terminate()
        _join_pool(pool)
        q.close()


def _join_pool(pool):
    """Pool.join() has no timeout: run it in a thread and give up (terminate) after JOIN_T."""
    t = threading.Thread(target=pool.join, daemon=True)
    t.start()
    t.join(JOIN_T)
    if t.is_alive():
        pool.terminate()
        t.join(10)
    assert not t.is_alive(), "Pool.join() hung"


# -- lifecycle of anonymous queues ----------------------------------------------------------

def test_child_started_after_creator_closed_still_attaches(env):
    # DESIGN §2: while spawning, a handle carries the segment's descriptor as well as its name, so
    # a child that starts after the creator closed (and so unlinked) the queue still attaches.
    # Under fork the child inherits the open handle; under forkserver the descriptor is passed too.
    ctx, kids, qs = env
    q = shmq.Queue()
    try:
        q.put(("item", 42))
        path = q.path
        kids.start(h.get_expect, q, ("item", 42))
    finally:
        q.close()      # right after start(): the child has most likely not attached yet
    assert not os.path.exists(path), "closing the creator's handle must remove the anonymous segment"
    kids.join_all()


def test_handle_reaches_grandchild_after_creator_and_child_closed(env):
    # The descriptor travels on: the child passes the handle to its own child and closes it at
    # once, after the creator already closed (and unlinked) the anonymous queue.
    ctx, kids, qs = env
    q = shmq.Queue()
    try:
        q.put("for the grandchild")
        kids.start(h.relay_to_grandchild, q, "for the grandchild", daemon=False)
    finally:
        q.close()
    kids.join_all()


def test_grown_queue_reaches_child_started_after_creator_closed(env):
    # The same with a queue that grew past its first area (DESIGN §5.1: anonymous queues start
    # small and grow): the child, attaching through the descriptor, must reach every area.
    ctx, kids, qs = env
    q = shmq.Queue()
    try:
        sizes = [3 * MiB, 4 * MiB, 64, 5 * MiB]
        blobs = [h.blob(i, n) for i, n in enumerate(sizes)]
        for b in blobs:
            q.put(b)
        assert q.stats()["areas"] > 1, "the queue did not grow: this test no longer tests growth"
        kids.start(h.get_expect_digests, q, [h.digest(b) for b in blobs])
    finally:
        q.close()
    kids.join_all()


def test_queue_grown_by_child_read_after_child_exit(env):
    # A child (not the creator) grows the queue and exits; the creator reads everything later.
    ctx, kids, qs = env
    q = _new(qs)
    kids.start(h.put_blobs, q, 6, 2 * MiB)
    kids.join_all()
    assert q.qsize() == 6
    for i in range(6):
        assert q.get_nowait() == h.blob(i, 2 * MiB)
    with pytest.raises(shmq.Empty):
        q.get_nowait()


def test_anonymous_segment_removed_when_creator_closes(env):
    ctx, kids, qs = env
    q = shmq.Queue()
    path = q.path
    assert os.path.exists(path)
    q.put(b"x")
    q.close()
    assert not os.path.exists(path)


@pytest.mark.parametrize("how", ["close", "drop", "keep"])
def test_anonymous_segment_removed_when_creator_child_exits(env, how, request):
    # A multiprocessing child leaves through os._exit: its Finalize hook must still remove the
    # anonymous queue it created, also one it still references at exit ("keep"). The child got a
    # shmq handle as a Process argument (out), as real programs do.
    ctx, kids, qs = env
    out = _new(qs)
    p = kids.start(h.create_anonymous_and_exit, out, how)
    path = out.get(timeout=T)
    kids.join_all()
    assert f"@{p.pid}-" in path
    leaked = os.path.exists(path)
    if leaked:
        os.unlink(path)      # clean up here so the leak fixture reports this test's own failure
    assert not leaked, f"{path} left behind by its exited creator"
    assert _anon_segments_of(p.pid) == []


def test_attached_process_keeps_working_after_creator_exits(env):
    # DESIGN §2/§5.1: the creator's exit removes the anonymous queue's name; a process already
    # attached keeps using it until it closes.
    ctx, kids, qs = env
    out, ack = _new(qs), _new(qs)
    p = kids.start(h.create_send_wait, out, ack)
    q = out.get(timeout=T)                 # attaches to the child's queue by name
    qs.append(q)
    path = q.path
    ack.put("attached")
    kids.join_all()
    assert not os.path.exists(path), "the creator exited: its anonymous queue must be unlinked"
    assert _anon_segments_of(p.pid) == []
    assert q.get(timeout=T) == "from the creator"
    q.put_many(range(100))
    assert q.get_many(200, timeout=T) == list(range(100))


def _anon_segments_of(pid):
    # Anonymous names are "@<creator pid>-<random>" (outside the name alphabet), so this sees only
    # that process's segments, not those of other tests running on the host at the same time.
    return [n for n in os.listdir(SHM) if n.startswith(f"shmq.@{pid}-")]


@pytest.mark.parametrize("how", ["exit", "del-then-exit", "sys.exit-in-thread"])
def test_anonymous_segment_removed_when_creator_process_exits(how):
    body = {
        "exit": "q = shmq.Queue(); q.put(b'x'); print(q.path, flush=True)",
        "del-then-exit": "q = shmq.Queue(); q.put(b'x'); print(q.path, flush=True); del q",
        "sys.exit-in-thread": textwrap.dedent("""
            import threading
            q = shmq.Queue(4); q.put([1, 2, 3]); print(q.path, flush=True)
            t = threading.Thread(target=lambda: q.put('t')); t.start(); t.join()
            sys.exit(0)"""),
    }[how]
    code = "import sys, shmq\n" + body
    before = {n for n in os.listdir(SHM) if n.startswith("shmq.@")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=T)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert path.startswith(os.path.join(SHM, "shmq.@")), proc.stdout
    assert not os.path.exists(path), f"{path} left behind by its exited creator"
    new = {n for n in os.listdir(SHM) if n.startswith("shmq.@")} - before
    pid_part = os.path.basename(path).split("-")[0]          # "shmq.@<pid>"
    assert not [n for n in new if n.startswith(pid_part + "-")]


# -- JoinableQueue across processes --------------------------------------------------------

def test_joinable_join_waits_for_child_task_done(env):
    ctx, kids, qs = env
    jq = _new(qs, shmq.JoinableQueue)
    for i in range(5):
        jq.put(i)
    assert jq.join(timeout=0.05) is False      # nobody called task_done yet
    kids.start(h.joinable_worker, jq, 5, 0.05)
    t0 = time.monotonic()
    assert jq.join(timeout=T) is True
    assert time.monotonic() - t0 >= 0.2        # it waited for the child's five task_done() calls
    assert jq.qsize() == 0
    kids.join_all()
    with pytest.raises(ValueError, match="task_done"):
        jq.task_done()


def test_joinable_consumer_exits_without_task_done(env):
    # DESIGN §5.1: a JoinableQueue whose consumer dies between get and task_done behaves as
    # multiprocessing does: join keeps waiting.
    ctx, kids, qs = env
    jq = _new(qs, shmq.JoinableQueue)
    jq.put("job")
    kids.start(h.get_without_task_done, jq)
    kids.join_all()
    assert jq.qsize() == 0
    assert jq.join(timeout=0.1) is False
    jq.task_done()     # someone else finishes the task
    assert jq.join(timeout=T) is True
