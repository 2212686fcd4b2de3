"""The workloads of `shmq bench`: what the children do, how a row is measured, and the suite.

Kinds: throughput by message size (64 B, 1, 4, 16, 64 KiB, 1 MiB bytes), batched calls (the put_many/get_many
variants of a peer), large (1 MiB bytes, 1 MiB numpy), a pickled small dict, 2->2 processes,
ping-pong round trips, an idle blocked consumer, and at-least-once send+receive+ack (64 B with a
sequence number, every message checked to arrive exactly once) against Redis Streams. Every one
runs through the same children (harness.run) and lands in the same report.
"""
import array
import os
import pickle
import struct
import time

from . import harness, peers as _peers
from .harness import BATCH, CHILD_TIMEOUT, GiB, KiB, MiB, Mismatch, Skip
from .peers import BASELINE

STOP = b""                  # ping-pong stop message (every payload used is non-empty)
MPMC_POLL = 0.02            # several consumers: how long one waits on a dry channel before
                            # publishing its count and checking whether all messages are in
_SEQ = struct.Struct("<Q")  # at-least-once payloads: a sequence number, then padding to 64 B


def make_payload(spec):
    kind, size = spec
    if kind == "bytes":
        return os.urandom(size)
    if kind == "dict":
        return {"id": 12345, "name": "sensor-7", "values": [1.5, 2.5, 3.5], "ok": True, "tags": ("a", "b")}
    if kind == "numpy":
        import numpy as np
        return np.arange(size // 8, dtype=np.float64)
    if kind == "seq":
        return _SEQ.pack(0) + b"\xab" * (size - _SEQ.size)
    raise ValueError(kind)


def _seq_bodies(lo, hi, size):
    pad = b"\xab" * (size - _SEQ.size)
    pack = _SEQ.pack
    return [pack(i) + pad for i in range(lo, hi)]


# -- roles (run in forked children) ------------------------------------------------------

def _producer(rx, tx, spec, n, batched, lo):
    s = tx[0]
    if spec[0] == "seq":            # distinct messages lo..lo+n-1, made before the clock starts
        bodies = _seq_bodies(lo, lo + n, spec[1])
        t0 = time.perf_counter()
        if batched:
            for i in range(0, n, BATCH):
                s.send_many(bodies[i:i + BATCH])
        else:
            send = s.send
            for b in bodies:
                send(b)
        return (t0, time.perf_counter())
    payload = make_payload(spec)
    t0 = time.perf_counter()
    if batched:
        batch = [payload] * BATCH
        full, rest = divmod(n, BATCH)
        for _ in range(full):
            s.send_many(batch)
        if rest:
            s.send_many(batch[:rest])
    else:
        send = s.send
        for _ in range(n):
            send(payload)
    return (t0, time.perf_counter())


def _consumer(rx, tx, total, batched, counts, idx, check_size, seq):
    # With one consumer it knows its total. With several, each publishes its count when its
    # channel runs dry and stops once all counts add up (no sentinels: an MPMC queue gives no
    # guarantee of which consumer takes which message). With seq, it also sums the sequence
    # numbers it got, so the parent can tell a lost or doubled message from a complete run.
    r = rx[0]
    n = 0
    ssum = 0
    t_last = None
    first = None
    solo = counts is None
    if not solo:
        _peers.set_recv_timeout(MPMC_POLL)
    t_begin = time.perf_counter()
    get = r.recv_many if batched else r.recv
    unpack = _SEQ.unpack_from
    while True:
        if solo and n >= total:
            break
        try:
            got = get()
        except TimeoutError:
            if solo:
                raise
            counts[idx] = n
            if sum(counts) >= total:
                break
            if time.perf_counter() - (t_last or t_begin) > CHILD_TIMEOUT:
                raise TimeoutError(f"consumers got {list(counts)} of {total} messages and nothing more "
                                   f"for {CHILD_TIMEOUT:.0f} s") from None
            continue
        if batched:
            if first is None and got:
                first = got[0]
            n += len(got)
            if seq:
                for b in got:
                    ssum += unpack(b)[0]
        else:
            if first is None:
                first = got
            n += 1
            if seq:
                ssum += unpack(got)[0]
        t_last = time.perf_counter()
        if not solo and n and not (n & 4095):
            counts[idx] = n
            if sum(counts) >= total:
                break
    if not solo:
        counts[idx] = n
    if check_size is not None and first is not None and len(first) != check_size:
        raise AssertionError(f"consumer got a {len(first)} B payload, expected {check_size} B")
    return (n, t_last, ssum)


def _pinger(rx, tx, n, duration):
    r, s = rx[0], tx[0]
    msg = b"p" * 64
    for _ in range(min(1000, n)):                  # warm-up
        s.send(msg)
        r.recv()
    lat = array.array("d")
    clock = time.perf_counter_ns
    end = time.monotonic() + duration
    for i in range(n):
        t0 = clock()
        s.send(msg)
        r.recv()
        lat.append((clock() - t0) / 1000.0)
        if not (i & 255) and time.monotonic() > end:
            break
    s.send(STOP)
    return lat.tolist()


def _ponger(rx, tx):
    r, s = rx[0], tx[0]
    while True:
        m = r.recv()
        if m == STOP:
            return None
        s.send(m)


def _idle_consumer(rx, tx):
    r = rx[0]
    c0, w0 = os.times(), time.monotonic()
    r.recv()
    c1, w1 = os.times(), time.monotonic()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return (cpu, w1 - w0)


def _late_producer(rx, tx, delay):
    time.sleep(delay)
    tx[0].send(b"x" * 64)
    return None


# -- measurements (run in the parent) ----------------------------------------------------

def _depth_for(size):
    # small messages: unbounded, as multiprocessing.Queue() is used; large: bounded to ~64 MiB
    # in flight so no peer buffers gigabytes (pyzmq gets the same bound as its HWM)
    if size <= 4 * KiB:
        return 0
    return max(16, (64 * MiB) // size)


def throughput(peer, spec, n, producers=1, consumers=1):
    """One run: msgs/s and bytes/s from the first producer start to the last consumer message.
    n messages per producer. Raises Mismatch when the consumers did not get exactly what was sent."""
    kind, size = spec
    ckind = "bytes" if kind in ("bytes", "seq") else "obj"
    nbytes = size if kind in ("bytes", "numpy", "seq") else len(pickle.dumps(make_payload(spec), 5))
    seq = kind == "seq"
    chan = peer.channel(ckind, nbytes, _depth_for(nbytes))
    try:
        counts = harness.ctx.RawArray("q", consumers) if consumers > 1 else None
        total = n * producers
        check = size if kind in ("bytes", "seq") else None
        roles = []
        for i in range(consumers):
            roles.append((_consumer, [(0, i)], [], None, (total, peer.batched, counts, i, check, seq)))
        for k in range(producers):
            roles.append((_producer, [], [(0, consumers)], None, (spec, n, peer.batched, k * n)))
        res = harness.run([chan], roles)
        cons, prods = res[:consumers], res[consumers:]
        got = sum(c[0] for c in cons)
        if got != total:
            raise Mismatch(f"{peer.name}: consumers got {got} of {total} messages")
        if seq:
            s, want = sum(c[2] for c in cons), total * (total - 1) // 2
            if s != want:
                raise Mismatch(f"{peer.name}: consumers got {got} messages whose sequence numbers add up to {s}, "
                               f"not {want}: some were lost and others delivered twice")
        verify = getattr(chan, "verify", None)
        if verify is not None:
            verify(total)
    finally:
        chan.close()
    t0 = min(p[0] for p in prods)
    t1 = max(c[1] for c in cons if c[1] is not None)
    dt = max(t1 - t0, 1e-9)
    return {"msgs": total, "seconds": dt, "msgs_per_s": total / dt, "bytes_per_s": total * nbytes / dt,
            "payload_bytes": nbytes, "per_consumer": [c[0] for c in cons]}


def ping_pong(peer, n, duration, cpus):
    a = peer.channel("bytes", 64, 0)
    try:
        b = peer.channel("bytes", 64, 0)
    except BaseException:
        a.close()
        raise
    try:
        roles = [(_pinger, [(1, 0)], [(0, 1)], cpus[0], (n, duration)),
                 (_ponger, [(0, 0)], [(1, 1)], cpus[1], ())]
        lat = harness.run([a, b], roles)[0]
    finally:
        a.close()
        b.close()
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))]
    cdf = [lat[min(len(lat) - 1, int(i / 200.0 * len(lat)))] for i in range(201)]
    return {"round_trips": len(lat), "p50_us": pct(50), "p99_us": pct(99), "p999_us": pct(99.9),
            "min_us": lat[0], "cdf_us": cdf}


def idle_cpu(peer, seconds):
    chan = peer.channel("bytes", 64, 0)
    try:
        roles = [(_idle_consumer, [(0, 0)], [], None, ()),
                 (_late_producer, [], [(0, 1)], None, (seconds,))]
        cpu, wall = harness.run([chan], roles)[0]
    finally:
        chan.close()
    return {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100.0 * cpu / wall if wall else 0.0}


# -- the suite ---------------------------------------------------------------------------

GROUPS = ("throughput", "numpy", "mpmc", "latency", "idle", "ack")

SIZES = [("64 B", ("bytes", 64)), ("1 KiB", ("bytes", KiB)), ("4 KiB", ("bytes", 4 * KiB)),
         ("16 KiB", ("bytes", 16 * KiB)), ("64 KiB", ("bytes", 64 * KiB)), ("1 MiB", ("bytes", MiB))]
DICT = ("small dict (pickled)", ("dict", 0))
NUMPY = ("1 MiB numpy float64", ("numpy", MiB))
ACK = ("64 B at-least-once", ("seq", 64))


def machine_info(peer_list):
    info = harness.host_info()
    vers = {}
    for p in peer_list:
        label = "shmq at-least-once" if p.ack and p.family == "shmq" else p.family
        if label in vers:
            continue
        why = p.available()
        try:
            vers[label] = ("skipped: " + why) if why else p.version()
        except Exception as e:
            vers[label] = f"? ({type(e).__name__}: {e})"
    try:
        import numpy
        vers["numpy"] = numpy.__version__
    except ImportError:
        vers["numpy"] = "skipped: not installed"
    info["peers"] = vers
    return info


def _fmt_rate(x):
    from .report import fmt_rate
    return fmt_rate(x)


class Suite:
    """Runs the chosen groups over the chosen peers; run() returns the results (JSON-ready)."""

    def __init__(self, quick=False, only=None, log=print, peers=None, messages=None, repeats=None):
        self.quick = quick
        self.only = set(only or GROUPS)
        self.explicit = only is not None     # --only given: --quick shortens, never drops, a group
        t0 = time.monotonic()
        self.log = lambda msg: log(f"[{time.monotonic() - t0:6.1f}s] {msg}")
        self.peers = list(peers) if peers is not None else _peers.all_peers() + _peers.ack_peers()
        self.messages = messages             # fixed messages per producer and run: no calibration
        self.results = {"machine": machine_info(self.peers), "quick": quick, "throughput": [], "latency": [],
                        "idle": [], "ack": [], "skipped": [],
                        "config": {"messages": messages or "calibrated", "batch": BATCH,
                                   "groups": [g for g in GROUPS if g in self.only]}}
        # per-run duration target and repeats (median reported)
        self.target = 0.15 if quick else 0.5
        self.repeats = repeats or (1 if quick else 3)
        self.results["config"]["repeats"] = self.repeats

    def _skip(self, peer, what, why):
        if not any(s["peer"] == peer.name and s["reason"] == why for s in self.results["skipped"]):
            self.log(f"  - {peer.name}: skipped: {why}")
        self.results["skipped"].append({"peer": peer.name, "workload": what, "reason": why})

    def _failed(self, peer, what, e):
        lines = str(e).strip().splitlines()
        reason = ("FAILED: " if not isinstance(e, Mismatch) else "FAILED (wrong messages): ") + \
            (lines[-1] if lines else type(e).__name__)
        self._skip(peer, what, reason)
        self.log(f"  ! {peer.name} {what}: {type(e).__name__}: {e}")

    def _peers_for(self, what, *, mpmc=False, single_only=False, quick_set=None, ack=False):
        out = []
        for p in self.peers:
            if ack:
                if not (p.ack or p.name == BASELINE):
                    continue
            elif p.ack:
                continue
            if single_only and p.batched:
                continue
            if quick_set is not None and p.name not in quick_set:
                continue
            why = p.available()
            if why:
                self._skip(p, what, why)
                continue
            if mpmc and not p.mpmc:
                self._skip(p, what, "not multi-producer/multi-consumer safe")
                continue
            out.append(p)
        return out

    def _tp(self, label, spec, producers=1, consumers=1, quick_set=None, ack=False):
        mpmc = producers > 1 or consumers > 1
        what = f"{label} {producers}->{consumers}"
        base_trial = {64: 20000, KiB: 20000, 4 * KiB: 20000, 16 * KiB: 5000, 64 * KiB: 2000,
                      MiB: 200}.get(spec[1], 20000)
        if self.quick:
            base_trial //= 4
        rows = []
        for p in self._peers_for(what, mpmc=mpmc, quick_set=quick_set, ack=ack):
            trial = max(10, int(base_trial * p.trial_scale))
            # small messages go through unbounded queues: keep what may pile up under ~1 GiB
            cap = trial * 200 if spec[1] > 4 * KiB else max(trial, GiB // (256 * producers))
            try:
                if self.messages:
                    n = self.messages
                else:
                    # calibrate (these runs are the warm-up): grow n until one run takes >= target/2
                    n = trial
                    while True:
                        r = throughput(p, spec, n, producers, consumers)
                        if r["seconds"] >= self.target / 2 or n >= cap:
                            break
                        n = min(cap, int(n * min(20.0, max(2.0, 1.2 * self.target / r["seconds"]))))
                runs = [throughput(p, spec, n, producers, consumers) for _ in range(self.repeats)]
            except Skip as e:
                self._skip(p, what, str(e))
                continue
            except Exception as e:
                self._failed(p, what, e)
                continue
            runs.sort(key=lambda r: r["msgs_per_s"])
            med = runs[len(runs) // 2]
            row = {"workload": label, "producers": producers, "consumers": consumers, "peer": p.name,
                   "family": p.family, "batched": p.batched, "at_least_once": p.ack, "msgs": med["msgs"],
                   "msgs_per_s": med["msgs_per_s"], "bytes_per_s": med["bytes_per_s"],
                   "payload_bytes": med["payload_bytes"], "runs_msgs_per_s": [r["msgs_per_s"] for r in runs]}
            rows.append(row)
            self.log(f"  {what:<28} {p.name:<36} {_fmt_rate(row['msgs_per_s']):>9}msg/s")
        _ratios(rows)
        self.results["ack" if ack else "throughput"].extend(rows)

    def run(self):
        """Every chosen group; whatever a peer started (a Redis server) is stopped before it returns."""
        try:
            return self._run()
        finally:
            _peers.shutdown()

    def _run(self):
        t_start = time.monotonic()
        quick_set = {BASELINE, "shmq", "shmq (put_many/get_many)"} if self.quick else None
        if "throughput" in self.only:
            self.log("throughput 1->1")
            sizes = SIZES[:1] if self.quick else SIZES
            for label, spec in sizes:
                self._tp(label, spec)
            if not self.quick or self.explicit:
                self._tp(*DICT)
        if "numpy" in self.only and (self.explicit or not self.quick):
            try:
                import numpy  # noqa: F401
                self.log("numpy 1->1")
                self._tp(*NUMPY)
            except ImportError:
                self.results["skipped"].append({"peer": "*", "workload": NUMPY[0], "reason": "numpy not installed"})
        if "mpmc" in self.only:
            self.log("throughput 2->2")
            self._tp("64 B", ("bytes", 64), 2, 2, quick_set=quick_set)
        if "latency" in self.only:
            self.log("ping-pong 64 B")
            cpus = harness.cpus()
            modes = []
            if len(cpus) >= 2:
                modes.append(("different CPUs", (cpus[0], cpus[1])))
            modes.append(("same CPU", (cpus[0], cpus[0])))
            n = self.messages or (3000 if self.quick else 100000)
            dur = 0.3 if self.quick else 1.5
            for mode, pair in modes:
                for p in self._peers_for(f"ping-pong {mode}", single_only=True, quick_set=quick_set):
                    try:
                        r = ping_pong(p, n, dur, pair)
                    except Skip as e:
                        self._skip(p, f"ping-pong {mode}", str(e))
                        continue
                    except Exception as e:
                        self._failed(p, f"ping-pong {mode}", e)
                        continue
                    r.update({"peer": p.name, "family": p.family, "cpus": mode, "cpu_pair": list(pair)})
                    self.results["latency"].append(r)
                    self.log(f"  {mode:<16} {p.name:<36} p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us")
                base = next((r["p50_us"] for r in self.results["latency"]
                             if r["cpus"] == mode and r["peer"] == BASELINE), None)
                for r in self.results["latency"]:
                    if r["cpus"] == mode:
                        r["vs_mp_queue"] = base / r["p50_us"] if base and r["p50_us"] else None
        if "idle" in self.only:
            self.log("idle blocked consumer")
            secs = 0.3 if self.quick else 1.0
            for p in self._peers_for("idle", single_only=True, quick_set=quick_set):
                if p.name.startswith("shmq raw"):
                    continue
                try:
                    r = idle_cpu(p, secs)
                except Skip as e:
                    self._skip(p, "idle", str(e))
                    continue
                except Exception as e:
                    self._failed(p, "idle", e)
                    continue
                r.update({"peer": p.name, "family": p.family})
                self.results["idle"].append(r)
                self.log(f"  {p.name:<36} {r['cpu_pct']:6.2f} % CPU over {r['wall_s']:.2f} s")
        if "ack" in self.only:
            self.log("at-least-once send + receive + ack, 64 B")
            self._tp(*ACK, ack=True)
            self._tp(*ACK, producers=2, consumers=2, ack=True)
        self.results["elapsed_s"] = time.monotonic() - t_start
        try:
            self.results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        return self.results


def _ratios(rows):
    """Each row against multiprocessing.Queue, the fastest non-shmq peer, and (at-least-once
    rows) Redis Streams in the same mode (one call per message vs unpipelined, batched vs
    pipelined), all measured in this same run."""
    base = next((r["msgs_per_s"] for r in rows if r["peer"] == BASELINE), None)
    others = [r for r in rows if r["family"] != "shmq"]
    best = max(others, key=lambda r: r["msgs_per_s"], default=None)
    for r in rows:
        r["vs_mp_queue"] = r["msgs_per_s"] / base if base else None
        r["vs_best_peer"] = r["msgs_per_s"] / best["msgs_per_s"] if best else None
        r["best_peer"] = best["peer"] if best else None
        if r["at_least_once"]:
            redis = next((x for x in rows if x["family"] == "Redis Streams" and x["batched"] == r["batched"]), None)
            r["vs_redis"] = r["msgs_per_s"] / redis["msgs_per_s"] if redis else None
            r["vs_redis_peer"] = redis["peer"] if redis else None
