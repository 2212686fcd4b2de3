"""Benchmark: asyncio round trip and throughput of shmq's *_async calls against its blocking calls and peers.

    python -m benchmarks.bench_asyncio [--quick] [--json FILE]

Round trip: ping-pong of a 64 B bytes message between two processes over two queues; the
echo side uses blocking calls, the measuring side the variant named. Throughput: a producer
process puts 64 B messages as fast as it can, the measuring side takes them with the variant
named. Variants: shmq blocking get/put; shmq get_async/put_async under asyncio and uvloop;
shmq get_many_async; asyncio.Queue bridged with janus (a thread moves messages from a
multiprocessing.Queue into the janus queue); run_in_executor over multiprocessing.Queue.get;
multiprocessing.Queue blocking, for scale. Reports medians of repeats and ratios; asserts nothing."""
import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import threading
import time

import shmq
from shmq._bench.harness import host_info, write_json

CTX = mp.get_context("fork")
MSG = b"x" * 64


def _echo_shmq(req_name, rep_name):
    req, rep = shmq.Queue(req_name), shmq.Queue(rep_name)
    while True:
        x = req.get()
        if x is None:
            break
        rep.put(x)
    req.close()
    rep.close()


def _echo_mp(req, rep):
    while True:
        x = req.get()
        if x is None:
            break
        rep.put(x)


def _produce_shmq(name, n):
    q = shmq.Queue(name)
    for _ in range(n):
        q.put(MSG)
    q.close()


def _produce_mp(q, n):
    for _ in range(n):
        q.put(MSG)
    q.close()
    q.join_thread()


def _loop(kind):
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run(kind, coro):
    loop = _loop(kind)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class _Janus:
    """asyncio.Queue bridged with janus: a thread reads a multiprocessing.Queue into it."""

    def __init__(self, src):
        import janus
        self.jq = janus.Queue()
        self.src = src
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        while True:
            x = self.src.get()
            self.jq.sync_q.put(x)
            if x is None:
                return

    async def close(self):
        self.jq.close()
        await self.jq.wait_closed()


# -- round trip ----------------------------------------------------------------------------

def rtt_shmq(n, variant, loop_kind="asyncio"):
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    req = shmq.Queue(f"bench-aio-req-{tag}", create=True, capacity="4MiB")
    rep = shmq.Queue(f"bench-aio-rep-{tag}", create=True, capacity="4MiB")
    p = CTX.Process(target=_echo_shmq, args=(req.name, rep.name))
    p.start()
    try:
        req.put(MSG)
        rep.get(timeout=10)   # the echo is up
        if variant == "blocking":
            t0 = time.perf_counter()
            for _ in range(n):
                req.put(MSG)
                rep.get()
            dt = time.perf_counter() - t0
        else:
            async def main():
                t0 = time.perf_counter()
                for _ in range(n):
                    await req.put_async(MSG)
                    await rep.get_async()
                return time.perf_counter() - t0
            dt = _run(loop_kind, main())
        req.put(None)
        p.join(10)
        return dt / n
    finally:
        if p.is_alive():
            p.kill()
        for q in (req, rep):
            q.close()
            shmq.unlink(q.name)


def rtt_mp(n, variant):
    req, rep = CTX.Queue(), CTX.Queue()
    p = CTX.Process(target=_echo_mp, args=(req, rep))
    p.start()
    try:
        req.put(MSG)
        rep.get(timeout=10)
        if variant == "blocking":
            t0 = time.perf_counter()
            for _ in range(n):
                req.put(MSG)
                rep.get()
            dt = time.perf_counter() - t0
        elif variant == "executor":
            async def main():
                loop = asyncio.get_running_loop()
                t0 = time.perf_counter()
                for _ in range(n):
                    req.put(MSG)
                    await loop.run_in_executor(None, rep.get)
                return time.perf_counter() - t0
            dt = _run("asyncio", main())
        else:   # janus
            async def main():
                bridge = _Janus(rep)
                t0 = time.perf_counter()
                for _ in range(n):
                    req.put(MSG)
                    await bridge.jq.async_q.get()
                dt = time.perf_counter() - t0
                req.put(None)
                rep.put(None)       # ends the pump
                bridge.t.join(5)
                await bridge.close()
                return dt
            dt = _run("asyncio", main())
            p.join(10)
            return dt / n
        req.put(None)
        p.join(10)
        return dt / n
    finally:
        if p.is_alive():
            p.kill()


# -- throughput ----------------------------------------------------------------------------

def tp_shmq(n, variant, loop_kind="asyncio"):
    name = f"bench-aio-tp-{os.getpid()}-{time.monotonic_ns()}"
    q = shmq.Queue(name, create=True, capacity="64MiB", maxsize=10_000)
    p = CTX.Process(target=_produce_shmq, args=(name, n))
    try:
        t0 = time.perf_counter()
        p.start()
        if variant == "blocking":
            for _ in range(n):
                q.get()
        elif variant == "get_many_async":
            async def main():
                got = 0
                while got < n:
                    got += len(await q.get_many_async(256))
            _run(loop_kind, main())
        else:
            async def main():
                for _ in range(n):
                    await q.get_async()
            _run(loop_kind, main())
        dt = time.perf_counter() - t0
        p.join(10)
        return n / dt
    finally:
        if p.is_alive():
            p.kill()
        q.close()
        shmq.unlink(name)


def tp_mp(n, variant):
    q = CTX.Queue(10_000)
    p = CTX.Process(target=_produce_mp, args=(q, n))
    try:
        t0 = time.perf_counter()
        p.start()
        if variant == "blocking":
            for _ in range(n):
                q.get()
        elif variant == "executor":
            async def main():
                loop = asyncio.get_running_loop()
                for _ in range(n):
                    await loop.run_in_executor(None, q.get)
            _run("asyncio", main())
        else:
            async def main():
                bridge = _Janus(q)
                for _ in range(n):
                    await bridge.jq.async_q.get()
                q.put(None)
                bridge.t.join(5)
                await bridge.close()
            _run("asyncio", main())
        dt = time.perf_counter() - t0
        p.join(10)
        return n / dt
    finally:
        if p.is_alive():
            p.kill()


def _have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    reps = a.repeats or (1 if a.quick else 3)
    n_rtt = 2000 if a.quick else 10_000
    n_tp = 20_000 if a.quick else 200_000
    n_slow = n_tp // 10     # the thread-hopping peers are ~10x slower: fewer messages, same msgs/s
    uv = _have("uvloop")
    rtt = {"shmq blocking": lambda: rtt_shmq(n_rtt, "blocking"),
           "shmq put_async/get_async (asyncio)": lambda: rtt_shmq(n_rtt, "async")}
    if uv:
        rtt["shmq put_async/get_async (uvloop)"] = lambda: rtt_shmq(n_rtt, "async", "uvloop")
    rtt["multiprocessing.Queue blocking"] = lambda: rtt_mp(n_rtt // 4, "blocking")
    rtt["run_in_executor(mp.Queue.get)"] = lambda: rtt_mp(n_rtt // 4, "executor")
    if _have("janus"):
        rtt["janus bridge over mp.Queue"] = lambda: rtt_mp(n_rtt // 4, "janus")
    tp = {"shmq blocking get": lambda: tp_shmq(n_tp, "blocking"),
          "shmq get_async (asyncio)": lambda: tp_shmq(n_tp, "async")}
    if uv:
        tp["shmq get_async (uvloop)"] = lambda: tp_shmq(n_tp, "async", "uvloop")
    tp["shmq get_many_async(256) (asyncio)"] = lambda: tp_shmq(n_tp, "get_many_async")
    tp["multiprocessing.Queue blocking get"] = lambda: tp_mp(n_slow, "blocking")
    tp["run_in_executor(mp.Queue.get)"] = lambda: tp_mp(n_slow, "executor")
    if _have("janus"):
        tp["janus bridge over mp.Queue"] = lambda: tp_mp(n_slow, "janus")

    m = host_info()
    print(f"[{m['cpu_model']}, {m['cores']} cores, Python {m['python']}]")
    res = {"machine": m, "round_trip_us": {}, "throughput_msgs_per_s": {}}
    print(f"\nround trip, 64 B, two processes (median of {reps})")
    print(f"{'variant':40} {'us':>9} {'x shmq blocking':>16} {'x shmq async':>13}")
    for k, f in rtt.items():
        res["round_trip_us"][k] = statistics.median(f() for _ in range(reps)) * 1e6
    b = res["round_trip_us"]["shmq blocking"]
    s = res["round_trip_us"]["shmq put_async/get_async (asyncio)"]
    for k, v in res["round_trip_us"].items():
        print(f"{k:40} {v:9.1f} {v / b:16.2f} {v / s:13.2f}")
    print(f"\nthroughput, 64 B, a producer process (median of {reps})")
    print(f"{'variant':40} {'msgs/s':>11} {'x shmq blocking':>16} {'shmq async x':>13}")
    for k, f in tp.items():
        res["throughput_msgs_per_s"][k] = statistics.median(f() for _ in range(reps))
    b = res["throughput_msgs_per_s"]["shmq blocking get"]
    s = res["throughput_msgs_per_s"]["shmq get_async (asyncio)"]
    for k, v in res["throughput_msgs_per_s"].items():
        print(f"{k:40} {v:11,.0f} {v / b:16.2f} {s / v:13.2f}")
    if a.json:
        write_json(res, a.json)


if __name__ == "__main__":
    main()
