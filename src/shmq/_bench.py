"""Benchmark harness behind ``shmq bench``: shmq against its peers, measured in the same run."""
import argparse
import array
import atexit
import json
import os
import pickle
import platform
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

import multiprocessing as mp
from multiprocessing.reduction import ForkingPickler as _ForkingPickler

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
BATCH = 64                  # put_many / get_many batch size (shmq's get_many default)
CHILD_TIMEOUT = 5.0         # every blocking call inside a child gives up after this
RUN_TIMEOUT = 60.0          # a whole run (all its children) gives up after this
STOP = b""                  # ping-pong stop message (every payload used is non-empty)
MPMC_POLL = 0.02            # several consumers: how long one waits on a dry channel before
                            # publishing its count and checking whether all messages are in
_recv_timeout = CHILD_TIMEOUT   # per process: what recv()/recv_many() wait before TimeoutError

_ctx = mp.get_context("fork")


class Skip(Exception):
    """This peer cannot run this workload (the reason is printed)."""


def _pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _cpus():
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# --------------------------------------------------------------------------------------
# Peers. A peer makes a Channel in the parent (before fork); each child then opens the
# ends it uses: receiver() before sender() (children are synchronised between the two, so a
# socket-based peer has its listener bound before anyone connects). Ends expose
#   send(obj), send_many(list), recv() -> obj, recv_many() -> list
# and raise TimeoutError after CHILD_TIMEOUT. `kind` is "bytes" (payloads are bytes, sent as
# such where the peer allows) or "obj" (any picklable object).
# --------------------------------------------------------------------------------------

class Peer:
    name = "?"
    family = "?"            # row group: the peer, whatever its API variant
    batched = False
    bytes_only = False      # the peer moves bytes: objects are pickled by the adapter
    mpmc = True             # safe with several producers and consumers
    max_message = None

    def available(self):
        return None         # None = available, else the reason it is skipped

    def version(self):
        return ""

    def channel(self, kind, size, depth):
        raise NotImplementedError


def _encode(kind):
    if kind == "bytes":
        return None, None
    return (lambda o: pickle.dumps(o, pickle.HIGHEST_PROTOCOL)), pickle.loads


class _MPQueue(Peer):
    name = "multiprocessing.Queue"
    family = "multiprocessing.Queue"

    def version(self):
        return "stdlib"

    def channel(self, kind, size, depth):
        return _MPQueueChan(_ctx.Queue(depth or 0))


class _QueueChan:
    """A channel over a queue object with put/put_many/get (faster-fifo, shmq)."""
    label = "queue"

    def __init__(self, q):
        self.q = q

    def receiver(self):
        return self

    def sender(self):
        return self

    def send(self, obj):
        self.q.put(obj, timeout=CHILD_TIMEOUT)

    def send_many(self, objs):
        self.q.put_many(objs, timeout=CHILD_TIMEOUT)

    def recv(self):
        try:
            return self.q.get(timeout=_recv_timeout)
        except Exception as e:
            raise TimeoutError(f"{self.label} get timed out") from e


class _MPQueueChan(_QueueChan):
    label = "multiprocessing.Queue"

    def close_end(self):
        pass

    def close(self):
        self.q.close()
        self.q.join_thread()


class _MPSimple(Peer):
    name = "multiprocessing.SimpleQueue"
    family = name

    def version(self):
        return "stdlib"

    def channel(self, kind, size, depth):
        return _MPSimpleChan(_ctx.SimpleQueue())


class _MPSimpleChan(_QueueChan):
    # SimpleQueue.get has no timeout: poll its reader first (one extra select per message,
    # the price of never hanging). _reader and _rlock are private attributes of SimpleQueue.
    label = "multiprocessing.SimpleQueue"

    def send(self, obj):
        self.q.put(obj)

    def recv(self):
        # as SimpleQueue.get, with a timeout on both its read lock and the poll (a poll outside
        # the lock could see data another consumer then takes, and block for ever)
        q = self.q
        if not q._rlock.acquire(timeout=_recv_timeout):
            raise TimeoutError("SimpleQueue.get timed out")
        try:
            if not q._reader.poll(_recv_timeout):
                raise TimeoutError("SimpleQueue.get timed out")
            data = q._reader.recv_bytes()
        finally:
            q._rlock.release()
        return _ForkingPickler.loads(data)

    def close_end(self):
        pass

    def close(self):
        self.q.close()


class _FasterFifo(Peer):
    name = "faster-fifo"
    family = "faster-fifo"

    def __init__(self, batched=False):
        self.batched = batched
        if batched:
            self.name = "faster-fifo (put_many/get_many)"

    def available(self):
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            return "not installed (pip install faster-fifo)"
        return None

    def version(self):
        from importlib.metadata import version
        try:
            return version("faster-fifo")
        except Exception:
            return "?"

    def channel(self, kind, size, depth):
        import faster_fifo
        # its capacity is in bytes: room for `depth` messages (at least 64 MiB, as shmq's ring)
        cap = max(64 * MiB, (depth or 1024) * (size + 256))
        return _FFChan(faster_fifo.Queue(max_size_bytes=cap))


class _FFChan(_QueueChan):
    label = "faster-fifo"

    def recv_many(self):
        try:
            return self.q.get_many(timeout=_recv_timeout, max_messages_to_get=BATCH)
        except Exception as e:
            raise TimeoutError("faster-fifo get_many timed out") from e

    def close_end(self):
        pass

    def close(self):
        self.q.close()


class _Zmq(Peer):
    name = "pyzmq PUSH/PULL ipc://"
    family = "pyzmq"
    bytes_only = True

    def available(self):
        try:
            import zmq  # noqa: F401
        except ImportError:
            return "not installed (pip install pyzmq)"
        return None

    def version(self):
        import zmq
        return f"{zmq.__version__} (libzmq {zmq.zmq_version()})"

    def channel(self, kind, size, depth):
        return _ZmqChan(kind, depth)


class _ZmqChan:
    # Every consumer binds its own ipc:// endpoint (opened first); every producer connects
    # to all of them (PUSH round-robins, PULL fair-queues), so N->M needs no broker.
    _tmp = None

    def __init__(self, kind, depth):
        if _ZmqChan._tmp is None:
            _ZmqChan._tmp = tempfile.mkdtemp(prefix="shmq-bench-zmq-")
            atexit.register(_remove_zmq_tmp, os.getpid())
        self.dir = tempfile.mkdtemp(dir=_ZmqChan._tmp)
        self.kind = kind
        self.hwm = depth or 1000
        self.enc, self.dec = _encode(kind)
        self.ctx = self.sock = None

    def _addr(self, i):
        return f"ipc://{self.dir}/c{i}"

    def _context(self):
        import zmq
        if self.ctx is None:
            self.ctx = zmq.Context()
        return self.ctx

    def receiver(self, index=0):
        import zmq
        s = self._context().socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.RCVTIMEO, int(CHILD_TIMEOUT * 1000))
        s.bind(self._addr(index))
        self.rsock = s
        return _ZmqRecv(s, self.dec)

    def sender(self, consumers=1):
        import zmq
        s = self._context().socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, self.hwm)
        s.setsockopt(zmq.SNDTIMEO, int(CHILD_TIMEOUT * 1000))
        s.setsockopt(zmq.LINGER, int(CHILD_TIMEOUT * 1000))   # deliver what is queued at close
        s.setsockopt(zmq.IMMEDIATE, 1)    # queue only on completed connections (see docs/benchmarks.md)
        for i in range(consumers):
            s.connect(self._addr(i))
        return _ZmqSend(s, self.enc)

    def close_end(self):
        if self.ctx is not None:
            self.ctx.destroy(linger=int(CHILD_TIMEOUT * 1000))
            self.ctx = None

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_zmq_tmp(pid=None):
    # forked children leave through os._exit (no atexit), but check the pid all the same
    if _ZmqChan._tmp is not None and (pid is None or pid == os.getpid()):
        shutil.rmtree(_ZmqChan._tmp, ignore_errors=True)
        _ZmqChan._tmp = None


class _ZmqSend:
    def __init__(self, s, enc):
        self.s, self.enc = s, enc

    def send(self, obj):
        import zmq
        try:
            self.s.send(obj if self.enc is None else self.enc(obj))
        except zmq.Again as e:
            raise TimeoutError("zmq send timed out") from e


class _ZmqRecv:
    def __init__(self, s, dec):
        self.s, self.dec = s, dec
        self.tmo = CHILD_TIMEOUT

    def recv(self):
        import zmq
        if self.tmo != _recv_timeout:
            self.tmo = _recv_timeout
            self.s.setsockopt(zmq.RCVTIMEO, int(self.tmo * 1000))
        try:
            b = self.s.recv()
        except zmq.Again as e:
            raise TimeoutError("zmq recv timed out") from e
        return b if self.dec is None else self.dec(b)


class _Pipe(Peer):
    name = "os.pipe (length-prefixed)"
    family = "os.pipe"
    bytes_only = True
    mpmc = False            # frames of several writers/readers would interleave without locks

    def version(self):
        return "stdlib"

    def channel(self, kind, size, depth):
        return _PipeChan(kind)


class _PipeChan:
    """A length-prefixed stream over a pipe: writev(header, payload); buffered reads."""
    HDR = struct.Struct("<Q")

    def __init__(self, kind):
        self.r, self.w = os.pipe()
        self.enc, self.dec = _encode(kind)
        self.buf = bytearray()
        self.pos = 0

    def receiver(self):
        os.set_blocking(self.r, False)
        return self

    def sender(self):
        os.set_blocking(self.w, False)
        return self

    def send(self, obj):
        data = obj if self.enc is None else self.enc(obj)
        hdr = self.HDR.pack(len(data))
        total = len(hdr) + len(data)
        done = 0
        deadline = None
        views = [memoryview(hdr), memoryview(data)]
        while done < total:
            try:
                n = os.writev(self.w, views)
            except BlockingIOError:
                if deadline is None:
                    deadline = time.monotonic() + CHILD_TIMEOUT
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self.w], [], left)[1]:
                    raise TimeoutError("pipe write timed out") from None
                continue
            done += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _need(self, n):
        # make buf[pos:pos+n] available, reading in large chunks
        deadline = None
        while len(self.buf) - self.pos < n:
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            try:
                chunk = os.read(self.r, max(1 << 20, n - len(self.buf)))
            except BlockingIOError:
                if deadline is None:
                    deadline = time.monotonic() + _recv_timeout
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.r], [], [], left)[0]:
                    raise TimeoutError("pipe read timed out") from None
                continue
            if not chunk:
                raise EOFError("pipe closed")
            self.buf += chunk

    def recv(self):
        self._need(8)
        (n,) = self.HDR.unpack_from(self.buf, self.pos)
        self.pos += 8
        self._need(n)
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data if self.dec is None else self.dec(data)

    def close_end(self):
        pass

    def close(self):
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class _PosixMQ(Peer):
    name = "posix_ipc.MessageQueue"
    family = "posix_ipc.MessageQueue"
    bytes_only = True

    def available(self):
        try:
            import posix_ipc
        except ImportError:
            return "not installed (pip install posix-ipc)"
        if not posix_ipc.MESSAGE_QUEUES_SUPPORTED:
            return "POSIX message queues not supported here"
        return None

    def version(self):
        import posix_ipc
        return f"{posix_ipc.VERSION} (system defaults: {self.limits()[0]} messages of <= {self.limits()[1]} B)"

    @staticmethod
    def limits():
        def rd(p, dflt):
            try:
                with open(p) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return dflt
        return rd("/proc/sys/fs/mqueue/msg_default", 10), rd("/proc/sys/fs/mqueue/msgsize_default", 8192)

    @property
    def max_message(self):
        return self.limits()[1]

    def channel(self, kind, size, depth):
        import posix_ipc
        enc, _ = _encode(kind)
        if kind != "bytes":
            probe = len(enc({"id": 1})) if size is None else size
        else:
            probe = size
        if probe and probe > self.max_message:
            raise Skip(f"message of {probe} B exceeds the default limit {self.max_message} B")
        # the system defaults (msg_default, msgsize_default), as an unprivileged user gets them
        q = posix_ipc.MessageQueue(f"/shmq-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}", posix_ipc.O_CREX)
        return _PMQChan(q, kind)


class _PMQChan:
    def __init__(self, q, kind):
        self.q = q
        self.enc, self.dec = _encode(kind)

    def receiver(self):
        return self

    def sender(self):
        return self

    def send(self, obj):
        import posix_ipc
        try:
            self.q.send(obj if self.enc is None else self.enc(obj), timeout=CHILD_TIMEOUT)
        except posix_ipc.BusyError as e:
            raise TimeoutError("mq_send timed out") from e

    def recv(self):
        import posix_ipc
        try:
            b, _ = self.q.receive(timeout=_recv_timeout)
        except posix_ipc.BusyError as e:
            raise TimeoutError("mq_receive timed out") from e
        return b if self.dec is None else self.dec(b)

    def close_end(self):
        pass

    def close(self):
        try:
            self.q.close()
        finally:
            try:
                self.q.unlink()
            except Exception:
                pass


class _Shmq(Peer):
    family = "shmq"

    def __init__(self, batched=False, raw=False):
        self.batched, self.raw = batched, raw
        self.name = "shmq" + (" raw" if raw else "") + (" (put_many/get_many)" if batched else "")

    def version(self):
        import shmq
        return shmq.__version__

    def channel(self, kind, size, depth):
        import shmq
        if self.raw and kind != "bytes":
            raise Skip("raw queues carry bytes only")
        return _ShmqChan(shmq.Queue(depth or 0, raw=self.raw))


class _ShmqChan(_QueueChan):
    label = "shmq"

    def recv_many(self):
        import shmq
        try:
            return self.q.get_many(BATCH, timeout=_recv_timeout)
        except shmq.Empty as e:
            raise TimeoutError("shmq get_many timed out") from e

    def close_end(self):
        self.q.close()

    def close(self):
        self.q.close()


def all_peers():
    return [_MPQueue(), _MPSimple(), _FasterFifo(), _FasterFifo(batched=True), _Zmq(), _Pipe(),
            _PosixMQ(), _Shmq(), _Shmq(batched=True), _Shmq(raw=True), _Shmq(batched=True, raw=True)]


BASELINE = "multiprocessing.Queue"


# --------------------------------------------------------------------------------------
# Running children: open receivers, barrier, open senders, barrier, work, report.
# --------------------------------------------------------------------------------------

def _open_recv(chan, index):
    return chan.receiver(index) if isinstance(chan, _ZmqChan) else chan.receiver()


def _open_send(chan, consumers):
    return chan.sender(consumers) if isinstance(chan, _ZmqChan) else chan.sender()


def _child(fn, chans, recv_spec, send_spec, cpu, b1, b2, b3, resq, idx, args):
    # returns normally (no os._exit): multiprocessing's exit path flushes Queue feeder threads
    try:
        _pin(cpu)
        rx = [_open_recv(chans[c], i) for c, i in recv_spec]
        b1.wait(CHILD_TIMEOUT * 2)
        tx = [_open_send(chans[c], n) for c, n in send_spec]
        b2.wait(CHILD_TIMEOUT * 2)
        out = fn(rx, tx, *args)
        resq.put((idx, "ok", out))
        # Nobody closes an end before every role is done: a pyzmq PUSH connected to several
        # PULLs and closed with messages still queued was seen to drop some, despite LINGER.
        try:
            b3.wait(CHILD_TIMEOUT * 2)
        except Exception:
            pass
    except BaseException:
        try:
            resq.put((idx, "err", traceback.format_exc()))
        except Exception:
            pass
        raise
    finally:
        for c in chans:
            try:
                c.close_end()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()


def _run(chans, roles, timeout=RUN_TIMEOUT):
    """roles: [(fn, recv_spec, send_spec, cpu, args)]; returns each role's result, in order."""
    n = len(roles)
    b1, b2, b3 = _ctx.Barrier(n), _ctx.Barrier(n), _ctx.Barrier(n)
    resq = _ctx.Queue()
    procs = []
    results = [None] * n
    try:
        for i, (fn, rs, ss, cpu, args) in enumerate(roles):
            p = _ctx.Process(target=_child, args=(fn, chans, rs, ss, cpu, b1, b2, b3, resq, i, args), daemon=True)
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"benchmark run did not finish in {timeout:.0f} s")
            try:
                idx, status, out = resq.get(timeout=min(left, 1.0))
            except Exception:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and resq.empty():
                    time.sleep(0.2)
                    if resq.empty():
                        raise RuntimeError(f"a benchmark child exited with code {dead[0].exitcode}") from None
                continue
            if status == "err":
                raise RuntimeError("benchmark child failed:\n" + out)
            results[idx] = out
            got += 1
        return results
    finally:
        for p in procs:
            p.join(CHILD_TIMEOUT * 2)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        resq.close()
        resq.join_thread()


# -- roles -------------------------------------------------------------------------------

def _make_payload(spec):
    kind, size = spec
    if kind == "bytes":
        return os.urandom(size)
    if kind == "dict":
        return {"id": 12345, "name": "sensor-7", "values": [1.5, 2.5, 3.5], "ok": True, "tags": ("a", "b")}
    if kind == "numpy":
        import numpy as np
        return np.arange(size // 8, dtype=np.float64)
    raise ValueError(kind)


def _producer(rx, tx, spec, n, batched):
    payload = _make_payload(spec)
    s = tx[0]
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


def _consumer(rx, tx, total, batched, counts, idx, check_size):
    # With one consumer it knows its total. With several, each publishes its count when its
    # channel runs dry and stops once all counts add up (no sentinels: an MPMC queue gives no
    # guarantee of which consumer takes which message).
    global _recv_timeout
    r = rx[0]
    n = 0
    t_last = None
    first = None
    solo = counts is None
    if not solo:
        _recv_timeout = MPMC_POLL
    t_begin = time.perf_counter()
    get = r.recv_many if batched else r.recv
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
        else:
            if first is None:
                first = got
            n += 1
        t_last = time.perf_counter()
        if not solo and n and not (n & 4095):
            counts[idx] = n
            if sum(counts) >= total:
                break
    if not solo:
        counts[idx] = n
    if check_size is not None and first is not None and len(first) != check_size:
        raise AssertionError(f"consumer got a {len(first)} B payload, expected {check_size} B")
    return (n, t_last)


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


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------

def _depth_for(size):
    # small messages: unbounded, as multiprocessing.Queue() is used; large: bounded to ~64 MiB
    # in flight so no peer buffers gigabytes (pyzmq gets the same bound as its HWM)
    if size <= 4 * KiB:
        return 0
    return max(16, (64 * MiB) // size)


def throughput(peer, spec, n, producers=1, consumers=1):
    """One run: msgs/s and bytes/s from the first producer start to the last consumer message."""
    kind, size = spec
    ckind = "bytes" if kind == "bytes" else "obj"
    nbytes = size if kind in ("bytes", "numpy") else len(pickle.dumps(_make_payload(spec), 5))
    chan = peer.channel(ckind, nbytes, _depth_for(nbytes))
    try:
        counts = _ctx.RawArray("q", consumers) if consumers > 1 else None
        total = n * producers
        check = size if kind == "bytes" else None
        roles = []
        for i in range(consumers):
            roles.append((_consumer, [(0, i)], [], None, (total, peer.batched, counts, i, check)))
        for _ in range(producers):
            roles.append((_producer, [], [(0, consumers)], None, (spec, n, peer.batched)))
        res = _run([chan], roles)
    finally:
        chan.close()
    cons, prods = res[:consumers], res[consumers:]
    got = sum(c[0] for c in cons)
    if got != total:
        raise RuntimeError(f"{peer.name}: consumers got {got} of {total} messages")
    t0 = min(p[0] for p in prods)
    t1 = max(c[1] for c in cons if c[1] is not None)
    dt = max(t1 - t0, 1e-9)
    return {"msgs": total, "seconds": dt, "msgs_per_s": total / dt, "bytes_per_s": total * nbytes / dt,
            "payload_bytes": nbytes}


def ping_pong(peer, n, duration, cpus):
    a = peer.channel("bytes", 64, 0)
    b = peer.channel("bytes", 64, 0)
    try:
        roles = [(_pinger, [(1, 0)], [(0, 1)], cpus[0], (n, duration)),
                 (_ponger, [(0, 0)], [(1, 1)], cpus[1], ())]
        lat = _run([a, b], roles)[0]
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
        cpu, wall = _run([chan], roles)[0]
    finally:
        chan.close()
    return {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100.0 * cpu / wall if wall else 0.0}


# --------------------------------------------------------------------------------------
# C kernel benchmark (csrc/tests/bench_ring.c), needs the source tree and gcc
# --------------------------------------------------------------------------------------

def find_source_tree():
    cands = [os.environ.get("SHMQ_SRC"), os.getcwd(),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for c in cands:
        d = c
        while d:
            if os.path.exists(os.path.join(d, "csrc", "tests", "bench_ring.c")):
                return d
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return None


def ckernel(messages, repeats, log=print):
    root = find_source_tree()
    if root is None:
        raise Skip("csrc/tests/bench_ring.c not found (run from the source tree or set SHMQ_SRC)")
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Skip("gcc not found")
    import glob
    with tempfile.TemporaryDirectory(prefix="shmq-bench-c-") as tmp:
        exe = os.path.join(tmp, "bench_ring")
        cmd = [gcc, "-std=gnu11", "-O2", "-mcx16", "-o", exe, os.path.join(root, "csrc", "tests", "bench_ring.c")]
        cmd += sorted(glob.glob(os.path.join(root, "csrc", "*.c")))
        cmd += ["-lpthread"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("bench_ring.c failed to compile:\n" + r.stderr)
        out = []
        for mode in ("any", "pinned", "same"):
            if mode != "any" and len(_cpus()) < 2 and mode == "pinned":
                continue
            args = [exe, str(messages), str(repeats), mode]
            r = subprocess.run(args, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"bench_ring failed ({r.returncode}):\n{r.stdout}{r.stderr}")
            for line in r.stdout.splitlines():
                if line.startswith("RESULT "):
                    kv = dict(x.split("=", 1) for x in line.split()[1:])
                    out.append({"mode": mode, "msgs": int(kv["msgs"]), "best_msgs_per_s": float(kv["best"]),
                                "median_msgs_per_s": float(kv["median"]), "command": " ".join(args)})
        return {"compile": " ".join(cmd), "runs": out}


# --------------------------------------------------------------------------------------
# Suite, report, CLI
# --------------------------------------------------------------------------------------

GROUPS = ("throughput", "numpy", "mpmc", "latency", "idle", "ckernel")

SIZES = [("64 B", ("bytes", 64)), ("1 KiB", ("bytes", KiB)), ("64 KiB", ("bytes", 64 * KiB)),
         ("1 MiB", ("bytes", MiB))]
DICT = ("small dict (pickled)", ("dict", 0))
NUMPY = ("1 MiB numpy float64", ("numpy", MiB))


def host_info():
    """CPU model, cores, load, Python and kernel of this machine (every benchmark reports them)."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": cpu, "cores": os.cpu_count(), "usable_cpus": _cpus(), "loadavg_at_start": load,
            "python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "kernel": platform.release()}


def machine_info():
    info = host_info()
    peers = {}
    for p in all_peers():
        if p.family in peers:
            continue
        why = p.available()
        peers[p.family] = ("skipped: " + why) if why else p.version()
    try:
        import numpy
        peers["numpy"] = numpy.__version__
    except ImportError:
        peers["numpy"] = "skipped: not installed"
    info["peers"] = peers
    return info


def _fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f} "


def _fmt_bytes(x):
    if x >= 1e9:
        return f"{x / 1e9:.2f} GB/s"
    return f"{x / 1e6:.1f} MB/s"


class Suite:
    def __init__(self, quick=False, only=None, log=print, peers=None):
        self.quick = quick
        self.only = set(only or GROUPS)
        self.explicit = only is not None     # --only given: --quick shortens, never drops, a group
        t0 = time.monotonic()
        self.log = lambda msg: log(f"[{time.monotonic() - t0:6.1f}s] {msg}")
        self.peers = peers or all_peers()
        self.results = {"machine": machine_info(), "quick": quick, "throughput": [], "latency": [],
                        "idle": [], "ckernel": None, "skipped": []}
        # per-run duration target and repeats (median reported)
        self.target = 0.15 if quick else 0.5
        self.repeats = 1 if quick else 3

    def _skip(self, peer, what, why):
        self.results["skipped"].append({"peer": peer.name, "workload": what, "reason": why})

    def _peers_for(self, what, *, mpmc=False, single_only=False, quick_set=None):
        out = []
        for p in self.peers:
            why = p.available()
            if why:
                self._skip(p, what, why)
                continue
            if mpmc and not p.mpmc:
                self._skip(p, what, "not multi-producer/multi-consumer safe")
                continue
            if single_only and p.batched:
                continue
            if quick_set is not None and p.name not in quick_set:
                continue
            out.append(p)
        return out

    def _tp(self, label, spec, producers=1, consumers=1, quick_set=None):
        mpmc = producers > 1 or consumers > 1
        what = f"{label} {producers}->{consumers}"
        trial = {64: 20000, KiB: 20000, 64 * KiB: 2000, MiB: 200}.get(spec[1], 20000)
        if self.quick:
            trial //= 4
        # small messages go through unbounded queues: keep what may pile up under ~1 GiB
        cap = trial * 200 if spec[1] > 4 * KiB else max(trial, GiB // (256 * producers))
        rows = []
        for p in self._peers_for(what, mpmc=mpmc, quick_set=quick_set):
            try:
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
                self._skip(p, what, f"FAILED: {str(e).strip().splitlines()[-1]}")
                self.log(f"  ! {p.name} {what}: {e}")
                continue
            runs.sort(key=lambda r: r["msgs_per_s"])
            med = runs[len(runs) // 2]
            row = {"workload": label, "producers": producers, "consumers": consumers, "peer": p.name,
                   "family": p.family, "msgs": med["msgs"], "msgs_per_s": med["msgs_per_s"],
                   "bytes_per_s": med["bytes_per_s"], "payload_bytes": med["payload_bytes"],
                   "runs_msgs_per_s": [r["msgs_per_s"] for r in runs]}
            rows.append(row)
            self.log(f"  {what:<28} {p.name:<36} {_fmt_rate(row['msgs_per_s']):>9}msg/s")
        base = next((r["msgs_per_s"] for r in rows if r["peer"] == BASELINE), None)
        best = max((r["msgs_per_s"] for r in rows if r["family"] != "shmq"), default=None)
        best_name = next((r["peer"] for r in rows if r["family"] != "shmq" and r["msgs_per_s"] == best), None)
        for r in rows:
            r["vs_mp_queue"] = r["msgs_per_s"] / base if base else None
            r["vs_best_peer"] = r["msgs_per_s"] / best if best else None
            r["best_peer"] = best_name
        self.results["throughput"].extend(rows)

    def run(self):
        t_start = time.monotonic()
        quick_set = {BASELINE, "shmq", "shmq (put_many/get_many)"} if self.quick else None
        if "throughput" in self.only:
            self.log("throughput 1->1")
            sizes = SIZES[:1] if self.quick else SIZES
            for label, spec in sizes:
                self._tp(label, spec)
            if not self.quick:
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
            cpus = _cpus()
            modes = []
            if len(cpus) >= 2:
                modes.append(("different CPUs", (cpus[0], cpus[1])))
            modes.append(("same CPU", (cpus[0], cpus[0])))
            n = 3000 if self.quick else 100000
            dur = 0.3 if self.quick else 1.5
            for mode, pair in modes:
                for p in self._peers_for(f"ping-pong {mode}", single_only=True, quick_set=quick_set):
                    try:
                        r = ping_pong(p, n, dur, pair)
                    except Skip as e:
                        self._skip(p, f"ping-pong {mode}", str(e))
                        continue
                    except Exception as e:
                        self._skip(p, f"ping-pong {mode}", f"FAILED: {str(e).strip().splitlines()[-1]}")
                        self.log(f"  ! {p.name} ping-pong: {e}")
                        continue
                    r.update({"peer": p.name, "family": p.family, "cpus": mode, "cpu_pair": list(pair)})
                    self.results["latency"].append(r)
                    self.log(f"  {mode:<16} {p.name:<36} p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us")
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
                    self._skip(p, "idle", f"FAILED: {str(e).strip().splitlines()[-1]}")
                    continue
                r.update({"peer": p.name, "family": p.family})
                self.results["idle"].append(r)
                self.log(f"  {p.name:<36} {r['cpu_pct']:6.2f} % CPU over {r['wall_s']:.2f} s")
        if "ckernel" in self.only:
            self.log("C core alone (csrc/tests/bench_ring.c)")
            try:
                self.results["ckernel"] = ckernel(2_000_000 if self.quick else 5_000_000, 1 if self.quick else 3)
            except Skip as e:
                self.results["skipped"].append({"peer": "C core", "workload": "ckernel", "reason": str(e)})
            except Exception as e:
                self.results["skipped"].append({"peer": "C core", "workload": "ckernel",
                                                "reason": f"FAILED: {str(e).strip().splitlines()[-1]}"})
        self.results["elapsed_s"] = time.monotonic() - t_start
        try:
            self.results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        return self.results


def goals(res):
    """[(goal, measured, met)] for the DESIGN section 9 goals this run measured."""
    tp = res["throughput"]

    def row(workload, peer, p=1):
        return next((r for r in tp if r["workload"] == workload and r["peer"] == peer and r["producers"] == p), None)

    def rate(workload, peer, p=1):
        r = row(workload, peer, p)
        return r["msgs_per_s"] if r else None

    out = []
    s, mq, zq = rate("64 B", "shmq"), rate("64 B", BASELINE), rate("64 B", _Zmq.name)
    if s and mq:
        m = f"{_fmt_rate(s)}msg/s, {s / mq:.1f}x mp.Queue" + (f", {s / zq:.1f}x pyzmq" if zq else "")
        out.append(("64 B bytes 1->1, one call per message: >= 3 M msg/s, >= 15x mp.Queue, >= 2x pyzmq", m,
                    s >= 3e6 and s >= 15 * mq and (zq is None or s >= 2 * zq)))
    b = rate("64 B", "shmq raw (put_many/get_many)")
    if b:
        out.append(("64 B raw put_many/get_many: >= 10 M msg/s", f"{_fmt_rate(b)}msg/s", b >= 10e6))
    d, dm = rate(DICT[0], "shmq"), rate(DICT[0], BASELINE)
    if d and dm:
        best = max((r["msgs_per_s"] for r in tp if r["workload"] == DICT[0] and r["family"] != "shmq"), default=0)
        out.append(("small dict 1->1: >= 3x mp.Queue and >= the best peer",
                    f"{d / dm:.1f}x mp.Queue, {d / best:.2f}x best peer", d >= 3 * dm and d >= best))
    m2, z2 = rate("64 B", "shmq", 2), rate("64 B", _Zmq.name, 2)
    if m2 and z2:
        out.append(("2->2 processes, 64 B: >= 2x pyzmq", f"{m2 / z2:.1f}x pyzmq", m2 >= 2 * z2))
    lat = res["latency"]
    diff = [r for r in lat if r["cpus"] == "different CPUs"]
    sd = next((r for r in diff if r["peer"] == "shmq"), None)
    if sd:
        others = [r["p50_us"] for r in diff if r["family"] != "shmq"]
        ratio = min(others) / sd["p50_us"] if others else None
        out.append(("ping-pong p50, different CPUs: <= 4 us and >= 10x lower than every peer",
                    f"{sd['p50_us']:.1f} us" + (f", {ratio:.1f}x lower than the best peer" if ratio else ""),
                    sd["p50_us"] <= 4 and (ratio is None or ratio >= 10)))
    same = [r for r in lat if r["cpus"] == "same CPU"]
    ss = next((r for r in same if r["peer"] == "shmq"), None)
    sp = next((r for r in same if r["family"] == "os.pipe"), None)
    if ss and sp:
        out.append(("ping-pong, same CPU: no worse than a pipe",
                    f"p50 {ss['p50_us']:.1f} us vs pipe {sp['p50_us']:.1f} us", ss["p50_us"] <= sp["p50_us"]))
    for wl in ("1 MiB", NUMPY[0]):
        r = row(wl, "shmq")
        if r:
            mqr, ff = rate(wl, BASELINE), rate(wl, "faster-fifo")
            m = f"{_fmt_bytes(r['bytes_per_s'])}" + (f", {r['msgs_per_s'] / mqr:.1f}x mp.Queue" if mqr else "") + \
                (f", {r['msgs_per_s'] / ff:.2f}x faster-fifo" if ff else "")
            out.append((f"{wl} 1->1: >= 10 GB/s, >= 10x mp.Queue, >= faster-fifo", m,
                        r["bytes_per_s"] >= 10e9 and (not mqr or r["msgs_per_s"] >= 10 * mqr)
                        and (not ff or r["msgs_per_s"] >= ff)))
    idle = next((r for r in res["idle"] if r["peer"] == "shmq"), None)
    if idle:
        out.append(("idle blocked consumer: 0% CPU after the spin budget", f"{idle['cpu_pct']:.2f} % over "
                    f"{idle['wall_s']:.1f} s", idle["cpu_pct"] < 1.0))
    ck = res.get("ckernel")
    if ck and ck["runs"]:
        best = max(r["best_msgs_per_s"] for r in ck["runs"])
        out.append(("C core alone, 64 B, 1->1 processes, MPMC: >= 20 M msg/s",
                    f"best {_fmt_rate(best)}msg/s (" + ", ".join(f"{r['mode']} {_fmt_rate(r['median_msgs_per_s'])}"
                                                           for r in ck["runs"]) + " median)", best >= 20e6))
    return out


def report(res):
    """The results as text tables (Markdown)."""
    m = res["machine"]
    out = []
    out.append("# shmq bench" + (" (--quick)" if res.get("quick") else ""))
    out.append("")
    out.append(f"- CPU: {m['cpu_model']}, {m['cores']} cores (usable: {m['usable_cpus']})")
    out.append(f"- Python: {m['implementation']} {m['python']} on {m['platform']}")
    out.append(f"- load average (1/5/15 min) at start {m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}")
    out.append("- peers: " + "; ".join(f"{k} {v}" for k, v in m["peers"].items()))
    out.append("- figures: median of the runs; x-ratios are against multiprocessing.Queue and against the "
               "fastest non-shmq peer of the same workload, measured in the same run")
    out.append("")
    groups = []
    for r in res["throughput"]:
        key = (r["workload"], r["producers"], r["consumers"])
        if key not in groups:
            groups.append(key)
    if groups:
        out.append("## Throughput")
        out.append("")
        out.append("| workload | peer | msg/s | MB/s | x mp.Queue | x best peer |")
        out.append("|---|---|---:|---:|---:|---:|")
        for key in groups:
            for r in [x for x in res["throughput"] if (x["workload"], x["producers"], x["consumers"]) == key]:
                vm = f"{r['vs_mp_queue']:.2f}" if r["vs_mp_queue"] else "-"
                vb = f"{r['vs_best_peer']:.2f}" if r["vs_best_peer"] else "-"
                out.append(f"| {key[0]} {key[1]}->{key[2]} | {r['peer']} | {_fmt_rate(r['msgs_per_s'])} | "
                           f"{_fmt_bytes(r['bytes_per_s'])} | {vm} | {vb} |")
        out.append("")
        bests = {}
        for r in res["throughput"]:
            if r.get("best_peer"):
                bests[f"{r['workload']} {r['producers']}->{r['consumers']}"] = r["best_peer"]
        if bests:
            out.append("best non-shmq peer per workload: " + "; ".join(f"{k}: {v}" for k, v in bests.items()))
            out.append("")
    if res["latency"]:
        out.append("## Ping-pong round trip, 64 B (microseconds)")
        out.append("")
        out.append("| CPUs | peer | round trips | p50 | p99 | p99.9 | mp.Queue p50 / p50 |")
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for mode in dict.fromkeys(r["cpus"] for r in res["latency"]):
            rows = [r for r in res["latency"] if r["cpus"] == mode]
            base = next((r["p50_us"] for r in rows if r["peer"] == BASELINE), None)
            for r in rows:
                ratio = f"{base / r['p50_us']:.1f}" if base else "-"
                out.append(f"| {mode} {r['cpu_pair']} | {r['peer']} | {r['round_trips']} | {r['p50_us']:.1f} | "
                           f"{r['p99_us']:.1f} | {r['p999_us']:.1f} | {ratio} |")
        out.append("")
    if res["idle"]:
        out.append("## CPU used by a consumer blocked in get() on an empty queue")
        out.append("")
        out.append("| peer | wall s | CPU s | CPU % |")
        out.append("|---|---:|---:|---:|")
        for r in res["idle"]:
            out.append(f"| {r['peer']} | {r['wall_s']:.2f} | {r['cpu_s']:.3f} | {r['cpu_pct']:.2f} |")
        out.append("")
    g = goals(res)
    if g:
        out.append("## Against the goals of DESIGN.md section 9 (this run)")
        out.append("")
        out.append("| goal | measured | met |")
        out.append("|---|---|---|")
        for goal, measured, ok in g:
            out.append(f"| {goal} | {measured} | {'yes' if ok else 'NO'} |")
        out.append("")
    ck = res.get("ckernel")
    if ck:
        out.append("## C core alone (csrc/tests/bench_ring.c), 64 B, 1 producer process -> 1 consumer process")
        out.append("")
        out.append("| placement | msgs per run | best msg/s | median msg/s |")
        out.append("|---|---:|---:|---:|")
        for r in ck["runs"]:
            out.append(f"| {r['mode']} | {r['msgs']} | {_fmt_rate(r['best_msgs_per_s'])} | "
                       f"{_fmt_rate(r['median_msgs_per_s'])} |")
        out.append("")
        out.append(f"built with: `{ck['compile']}`")
        out.append("")
    if res["skipped"]:
        out.append("## Skipped")
        out.append("")
        seen = set()
        for s in res["skipped"]:
            key = (s["peer"], s["reason"])
            if key in seen:
                continue
            seen.add(key)
            out.append(f"- {s['peer']}: {s['workload']}: {s['reason']}")
        out.append("")
    out.append(f"total time {res.get('elapsed_s', 0):.1f} s")
    return "\n".join(out)


def plot(res, path):
    """Throughput by message size and the latency CDF as one PNG; False if matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax in (a1, a2):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)   # > 10 series: no repeated colours
    sizes = {label: spec[1] for label, spec in SIZES}
    by_peer = {}
    for r in res["throughput"]:
        if r["workload"] in sizes and r["producers"] == 1:
            by_peer.setdefault(r["peer"], []).append((sizes[r["workload"]], r["bytes_per_s"] / 1e9))
    for peer, pts in by_peer.items():
        pts.sort()
        a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer,
                linewidth=2.5 if peer.startswith("shmq") else 1.2)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("message size (bytes)")
    a1.set_ylabel("GB/s (1 producer -> 1 consumer process)")
    a1.set_title("throughput by message size")
    a1.legend(fontsize=7)
    a1.grid(True, which="both", alpha=0.3)
    mode = "different CPUs" if any(r["cpus"] == "different CPUs" for r in res["latency"]) else "same CPU"
    for r in res["latency"]:
        if r["cpus"] != mode:
            continue
        cdf = r["cdf_us"]
        a2.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=r["peer"],
                linewidth=2.5 if r["family"] == "shmq" else 1.2)
    a2.set_xscale("log")
    a2.set_xlabel("round trip, microseconds")
    a2.set_ylabel("fraction of round trips")
    a2.set_title(f"ping-pong 64 B, {mode}: latency CDF")
    a2.legend(fontsize=7)
    a2.grid(True, which="both", alpha=0.3)
    m = res["machine"]
    fig.suptitle(f"shmq bench - {m['cpu_model']}, {m['cores']} cores, Python {m['python']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(prog="shmq bench", description="Benchmark shmq against its peers "
                                 "(multiprocessing, faster-fifo, pyzmq, os.pipe, posix_ipc) in one run.")
    ap.add_argument("--quick", action="store_true", help="a short run (< 60 s): shmq vs multiprocessing.Queue")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE", help="write a PNG (needs matplotlib)")
    ap.add_argument("--only", metavar="NAMES", help="comma-separated groups: " + ",".join(GROUPS))
    ap.add_argument("--peers", metavar="NAMES", help="comma-separated substrings of peer names to run")
    args = ap.parse_args(argv)
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in GROUPS]
        if bad:
            ap.error(f"unknown group(s) {bad}; choose from {', '.join(GROUPS)}")
    peers = None
    if args.peers:
        keys = [k.strip().lower() for k in args.peers.split(",") if k.strip()]
        peers = [p for p in all_peers() if any(k in p.name.lower() for k in keys)]
    suite = Suite(quick=args.quick, only=only, log=lambda s: print(s, file=sys.stderr, flush=True), peers=peers)
    try:
        res = suite.run()
    finally:
        _remove_zmq_tmp()
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(res, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("--plot: matplotlib is not installed; no plot written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
