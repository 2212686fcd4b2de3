"""Child-process targets for tests/multiproc: module-level so spawn and forkserver can import them.

Every blocking call here has a timeout, so a child never outlives a broken test for long. A child
reports failure through its exit code (a raised exception gives exit code 1); the parent asserts
exit code 0. numpy is never imported here at module level (a spawned child only pays for it when a
message actually carries an array).
"""
import hashlib
import os
import sys
import time

import shmq

T = 30.0   # seconds: the longest any child waits for one item


def put_items(q, items):
    """Put each item of a list, in order."""
    for item in items:
        q.put(item, timeout=T)


def get_items(q, n, out):
    """Get n items from q and put them, as one list, on out."""
    got = [q.get(timeout=T) for _ in range(n)]
    out.put(got, timeout=T)


def echo(q_in, q_out, n=1):
    """Get n items from q_in and put each back on q_out, unchanged and in order."""
    for _ in range(n):
        q_out.put(q_in.get(timeout=T), timeout=T)


def ready_then_get(q_in, q_out):
    """Say "ready", then block in get() until the parent puts; report what arrived."""
    q_out.put("ready", timeout=T)
    item = q_in.get(timeout=T)
    q_out.put(("got", item), timeout=T)


def wait_then_put(q_sync, q, delay, item):
    """Wait for the parent's "go" (sent just before it blocks in get), sleep, then put."""
    assert q_sync.get(timeout=T) == "go"
    time.sleep(delay)
    q.put(item, timeout=T)


def producer(q, producer_id, n):
    for seq in range(n):
        q.put((producer_id, seq), timeout=T)


def consumer(q, results, consumer_id):
    """Get until the None sentinel; report (consumer_id, [items in the order received])."""
    got = []
    while True:
        item = q.get(timeout=T)
        if item is None:
            break
        got.append(item)
    results.put((consumer_id, got), timeout=T)


def get_expect(q, expected):
    """Exit 0 only if the next item equals expected (used where the parent closed q early)."""
    item = q.get(timeout=T)
    if item != expected:
        sys.exit(f"expected {expected!r}, got {item!r}")


def digest(data):
    """A digest of bytes or of a numpy array's dtype, shape and contents."""
    h = hashlib.sha256()
    if hasattr(data, "dtype"):
        h.update(str(data.dtype).encode() + repr(data.shape).encode())
        data = data.tobytes()
    h.update(data)
    return h.hexdigest()


def echo_with_digest(q_in, q_out):
    """Get one (large) item, send back its digest, then the item itself."""
    item = q_in.get(timeout=T)
    q_out.put(digest(item), timeout=T)
    q_out.put(item, timeout=T)


def relay_handle(carrier, n):
    """Receive a queue handle through another queue, then put n items on the received queue."""
    target = carrier.get(timeout=T)
    for i in range(n):
        target.put(("via-carrier", i), timeout=T)
    target.close()


def send_handle_back(carrier, q):
    """Send our own handle to the parent through carrier, and put one item on it."""
    q.put("from-child", timeout=T)
    carrier.put(q, timeout=T)


def pool_task(args):
    """A Pool task receiving a queue handle: put i*i on it and return (i, worker pid)."""
    q, i = args
    q.put((i, i * i), timeout=T)
    return i, os.getpid()


def joinable_worker(jq, n, delay):
    """Take n items from a JoinableQueue and task_done() each after delay seconds."""
    for _ in range(n):
        jq.get(timeout=T)
        time.sleep(delay)
        jq.task_done()


_kept = []


def create_anonymous_and_exit(out, how):
    """Create an anonymous queue, put on it, report its path, and exit: after closing it
    ("close"), dropping it ("drop": refcounting frees it before exit), or still holding it
    ("keep": only the exit hook can remove it, as for a module-level queue)."""
    q = shmq.Queue()
    q.put(b"payload", timeout=T)
    out.put(q.path, timeout=T)
    if how == "close":
        q.close()
    elif how == "keep":
        _kept.append(q)
    # then leave through multiprocessing's normal child exit (os._exit after util._exit_function)


def put_and_close(q, item):
    """Use an inherited/received handle, then close it: this must not remove the creator's queue."""
    q.put(item, timeout=T)
    q.close()


def open_named(name, item):
    """Open a named queue by name in an unrelated process, put item, close."""
    q = shmq.Queue(name)
    try:
        q.put(item, timeout=T)
    finally:
        q.close()


def blob(i, size):
    """Deterministic test data: item i of a series of large messages."""
    return hashlib.shake_256(b"%d" % i).digest(64) * (size // 64)


def put_blobs(q, n, size):
    """Put n large messages (growing an unbounded queue), then exit without waiting."""
    for i in range(n):
        q.put(blob(i, size), timeout=T)


def get_expect_digests(q, digests):
    """Exit 0 only if the next items' digests are exactly these, in order."""
    for i, want in enumerate(digests):
        got = digest(q.get(timeout=T))
        if got != want:
            sys.exit(f"item {i}: digest {got} != {want}")


def get_without_task_done(jq):
    """Take one item from a JoinableQueue and exit without task_done (a consumer that died)."""
    jq.get(timeout=T)


def producer_batches(q, producer_id, n, batch):
    """Like producer, but with put_many in batches."""
    for start in range(0, n, batch):
        q.put_many([(producer_id, s) for s in range(start, min(n, start + batch))], timeout=T)


def consumer_batches(q, results, consumer_id):
    """Like consumer, but with get_many; stops at the first None sentinel (nothing follows it
    in its batch that belongs to this consumer: items after a sentinel are put back)."""
    got = []
    while True:
        batch = q.get_many(16, timeout=T)
        if None in batch:
            k = batch.index(None)
            got.extend(batch[:k])
            rest = batch[k + 1:]
            if rest:
                q.put_many(rest, timeout=T)
            break
        got.extend(batch)
    results.put((consumer_id, got), timeout=T)


def pong(q_in, q_out, n):
    """Answer n pings: get i, put i + 1."""
    for _ in range(n):
        q_out.put(q_in.get(timeout=T) + 1, timeout=T)


_pool_q = None


def pool_init(q):
    """Pool initializer: keep the handle (pickled while the worker is being spawned: DupFd path)."""
    global _pool_q
    _pool_q = q


def pool_task_global(i):
    _pool_q.put((i, os.getpid()), timeout=T)
    return i


def create_send_wait(out, ack):
    """Create an anonymous queue, send its handle to the parent, wait until the parent attached,
    put an item on it, and exit without closing it."""
    q = shmq.Queue()
    out.put(q, timeout=T)
    assert ack.get(timeout=T) == "attached"
    q.put("from the creator", timeout=T)


def put_get_close(q, back, r):
    """Put on a handle whose parent has a thread blocked in get on it; then forward the parent's
    reply from back to r (not from q: our own get would race the parent's thread for our item)."""
    q.put("from child", timeout=T)
    r.put(back.get(timeout=T), timeout=T)
    q.close()


def block_in_get(q, ready):
    """Announce, then block in get until killed."""
    ready.put("blocking", timeout=T)
    q.get(timeout=T)


def relay_to_grandchild(q, expected):
    """Start a grandchild (same start method) with q, close q at once, and exit with its code."""
    import multiprocessing
    p = multiprocessing.get_context().Process(target=get_expect, args=(q, expected))
    p.start()
    q.close()
    try:
        p.join(T)
    finally:
        if p.is_alive():
            p.kill()
            p.join(T)
    sys.exit(p.exitcode)


def put_then_signal(q, r, n):
    """Put n items on q, then say "done" on r."""
    for i in range(n):
        q.put(i, timeout=T)
    r.put("done", timeout=T)
