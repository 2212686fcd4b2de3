"""Queue and at-least-once queue handles on Redis (the classes Queue() returns for backend=redis://)."""
from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Any, Optional

from .. import _codec, _core, _options
from .._handle import Handle
from ..errors import (ArgumentError, ArgumentTypeError, BackendConnectionError, CorruptQueueError, Empty, Full,
                      IncompatibleQueueError,
                      LeaseExpiredError, MessageTooLargeError, QueueClosedError, QueueExistsError, QueueNotFound,
                      UnsupportedError)
from ..message import Message, _lease_expired_many, dedup_key
from ..queue import Queue
from ..reliable import ReliableQueue, _group_key
from . import REAP_S, client_name, connect, prefix, script_source

__all__ = ["RedisQueue", "RedisReliableQueue", "open_queue", "unlink"]

REDIS_MAX_MESSAGE = 512 * 1024 * 1024 - 1024   # a Redis string holds 512 MiB; room for our fields
_ITEM = struct.Struct("<Bd")                    # at-most-once list item: kind, send time (epoch s), payload
_MHEAD = struct.Struct("<BBdI")                 # a stream entry's m field: kind, priority, send ms, header length
_POLL_S = 0.01                                  # a put on a full bounded queue looks again this often
_SLICE_S = 1.0                                  # a blocking call without timeout wakes this often
_ASYNC_SLICE_S = 0.2                            # an *_async call waits in the executor this long at a time


def _io_errors():
    import redis
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@contextlib.contextmanager
def _io(h):
    """Redis errors as shmq's: a lost server is BackendConnectionError; anything that fails on a
    handle closed meanwhile (by another thread) is QueueClosedError. h: a handle or a URL."""
    try:
        yield
    except QueueClosedError:
        raise
    except Exception as e:
        if getattr(h, "_closed_flag", False):
            raise QueueClosedError(f"queue {h._name!r} was closed") from None
        if isinstance(e, _io_errors()):
            url = getattr(h, "_url", h)
            raise BackendConnectionError(f"lost the Redis server at {url}: {e}; the call may or may not have "
                                         "taken effect (at-least-once: a send may be repeated, use dedup_id)") from None
        raise


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _meta_dict(flat):
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _deadline(timeout, block=True):
    if not block:
        return 0.0
    if timeout is None:
        return None
    ns = _options.timeout_ns(timeout)
    return None if ns is None else time.monotonic() + ns / 1e9


def _left(dl):
    return None if dl is None else max(0.0, dl - time.monotonic())


def _unsupported(option, why):
    raise UnsupportedError(f"{option} is not supported by the Redis backend: {why} (docs/guide/redis.md lists the gaps)")


def open_queue(cls, name, url, options, is_dlq=False):
    """Queue(name, backend=url, **options): validate as the shared-memory Queue does, then
    create or open the queue's keys on the server."""
    if cls._joinable:
        _unsupported("JoinableQueue", "task_done/join need a shared counter of unfinished items; use ack=True")
    spec = _options.resolve(name, **options)
    if spec.mode != 0o600:
        _unsupported("mode=", "access to a Redis server is governed by its ACLs (ACL SETUSER), not file modes")
    if spec.slots:
        _unsupported("max_participants=", "Redis serves any number of clients")
    if options.get("dedup_capacity") is not None:
        _unsupported("dedup_capacity=", "each dedup id is a key with a TTL (dedup_window): there is no table to size")
    ack = bool(spec.flags & _core.F_ACK) or (not spec.create and options.get("ack") is True)
    r = connect(url, client_name("q"))
    try:
        meta = _create(r, url, spec, is_dlq)
    except BaseException:
        r.close()
        raise
    is_ack = meta.get("ack") == "1"
    if cls is Queue or cls is RedisQueue:
        cls = RedisReliableQueue if is_ack else RedisQueue
    else:
        r.close()
        _unsupported(f"{cls.__name__}", "only Queue maps to Redis so far")
    del ack
    self = _core.HandleBase.__new__(cls)
    self._setup(r, url, name, meta)
    problems = _options.problems(spec.explicit, self._settings())
    if problems:
        self.close()
        raise ArgumentError(f"queue {name!r} exists with other options: " + "; ".join(problems))
    return self


def _create(r, url, spec, is_dlq, kind="queue", levels=0, extra=None):
    name = spec.name
    kv = dict(name=name, kind=kind, raw=int(bool(spec.flags & _core.F_RAW)), maxsize=spec.maxsize,
              capacity=0 if spec.flags & _core.F_GROWABLE or not spec.capacity else spec.capacity,
              max_message=spec.max_message or (spec.capacity // 4 if spec.capacity and not spec.flags & _core.F_GROWABLE
                                              else REDIS_MAX_MESSAGE),
              ack=0, is_dlq=int(is_dlq))
    if levels:
        kv["levels"] = levels          # a priority queue (shmq._redis.priority)
    if extra:
        kv.update(extra)               # (a priority queue's max_wait_ms)
    if spec.ack is not None:
        a = spec.ack
        kv.update(ack=1, visibility_ms=max(1, a["visibility_ns"] // 1_000_000), max_deliveries=a["max_deliveries"],
                  delay_ms=a["default_delay_ns"] // 1_000_000, ttl_ms=a["default_ttl_ns"] // 1_000_000,
                  dedup_window_ms=max(1, a["dedup_window_ns"] // 1_000_000), dedup_capacity=a["dedup_slots"],
                  dead_letter=a["dead_letter"], dlq_prefix=prefix(a["dead_letter"]) if a["dead_letter"] else "")
        if a["dead_letter"]:
            # the dead-letter queue first: the queue never exists without it
            dspec = _options.resolve(a["dead_letter"], create=True, exist_ok=True, ack=True,
                                     visibility_timeout=a["visibility_ns"] / 1e9, max_deliveries=a["max_deliveries"],
                                     is_dlq=True)
            _create(r, url, dspec, True, kind, levels)   # a priority queue's: the same levels
    args = [int(spec.create), int(spec.exist_ok), kv["ack"]]
    for k, v in kv.items():
        args += [k, v]
    with _io(url):
        status, flat = r.register_script(script_source("create"))(keys=[prefix(name)], args=args)
    status = _s(status)
    if status == "exists":
        raise QueueExistsError(17, f"queue already exists: {name!r} on {url} (pass exist_ok=True to open it)")
    if status == "missing":
        raise QueueNotFound(2, f"no such queue: {name!r} on {url} (create it with create=True)")
    meta = _meta_dict(flat)
    if meta.get("kind") != kind:
        words = {"queue": ("a FIFO queue", "shmq.Queue"), "priority": ("a priority queue", "shmq.PriorityQueue"),
                 "topic": ("a topic", "shmq.Topic")}
        have, cls = words.get(meta.get("kind"), (f"of kind {meta.get('kind')!r}", "shmq.open"))
        raise IncompatibleQueueError(f"queue {name!r} on {url} is {have}, not {words[kind][0]}: open it with "
                                     f"{cls}({name!r}) or shmq.open(name)")
    if is_dlq and meta.get("ack") != "1":
        raise ArgumentError(f"dead-letter queue {name!r} on {url} exists without ack=True; an at-least-once "
                            "queue's dead letters need an at-least-once queue")
    return meta


def unlink(name, url):
    """Remove every key of queue `name` on the server. Raises QueueNotFound."""
    r = connect(url, client_name("admin"))
    try:
        with _io(url):
            keys = list(r.scan_iter(match=prefix(name).replace("[", "\\[") + "*", count=1000))
            if not any(k.endswith(b":meta") for k in keys):
                raise QueueNotFound(2, f"no such queue: {name!r} on {url}")
            for i in range(0, len(keys), 500):
                r.delete(*keys[i:i + 500])
    finally:
        r.close()


def kind_of(name, url):
    """The kind of queue `name` on the server ("queue", "priority"), for shmq.open(). Raises
    QueueNotFound, IncompatibleQueueError for a kind this shmq cannot open."""
    r = connect(url, client_name("admin"))
    try:
        with _io(url):
            kind = _s(r.hget(prefix(name) + "meta", "kind"))
    finally:
        r.close()
    if kind is None:
        raise QueueNotFound(2, f"no such queue: {name!r} on {url} (create it with create=True)")
    if kind not in ("queue", "priority", "topic"):
        raise IncompatibleQueueError(f"queue {name!r} on {url} is of kind {kind!r}, which this shmq cannot open")
    return kind


def _rebuild(cls, name, url):
    return open_queue(Queue, name, url, {})


class RedisQueue(Queue):
    """An at-most-once named queue on Redis: a list (RPUSH, BLPOP)."""

    _redis = True

    def _setup(self, r, url, name, meta):
        self._r, self._url, self._name, self._p = r, url, name, prefix(name)
        self._meta = meta
        self._raw = meta.get("raw") == "1"
        self._maxsize = int(meta.get("maxsize") or 0)
        self._max_message = int(meta.get("max_message") or REDIS_MAX_MESSAGE)
        self._closed_flag = False
        self._list = self._p + "q"
        self._put_script = r.register_script(script_source("put"))
        self._stash = []        # what a cancelled *_async call had taken: the next take returns it first

    # -- identity and lifecycle ----------------------------------------------------------
    @property
    def path(self) -> Optional[str]:
        return None

    @property
    def backend(self) -> str:
        """The backend URL of this handle."""
        return self._url

    @property
    def closed(self) -> bool:
        return self._closed_flag

    def __repr__(self) -> str:
        return f"<shmq.{Queue.__name__} {self._name} on {self._url} {'closed' if self.closed else 'open'}>"

    def _check(self):
        if self._closed_flag:
            raise QueueClosedError(f"queue {self._name!r} is closed")

    def close(self) -> None:
        if self._closed_flag:
            return
        self._closed_flag = True
        self._r.close()

    def unlink(self) -> None:
        unlink(self._name, self._url)

    def __del__(self):
        pass

    def __reduce__(self):
        if self.closed:
            raise QueueClosedError(f"cannot pickle closed queue {self!r}")
        return (_rebuild, (type(self), self._name, self._url))

    # -- at-most-once ----------------------------------------------------------------------
    def _item(self, obj):
        kind, parts = _codec.encode(obj, self._raw)
        payload = b"".join(parts)
        if len(payload) > self._max_message:
            raise MessageTooLargeError(f"message of {len(payload)} bytes is larger than queue {self._name!r}'s "
                                       f"max_message ({self._max_message} bytes)")
        return _ITEM.pack(kind, time.time()) + payload

    def _decode_item(self, item):
        kind, _ts = _ITEM.unpack_from(item)
        return _codec.decode(kind, memoryview(item)[_ITEM.size:], self._raw, 0)

    def _push(self, items, block, timeout):
        self._check()
        dl = _deadline(timeout, block)
        with _io(self):
            if not self._maxsize:
                self._r.rpush(self._list, *items)
                self._r.hincrby(self._p + "meta", "enqueued", len(items))
                return
            if len(items) > self._maxsize:
                raise ArgumentError(f"{len(items)} items can never fit queue {self._name!r} (maxsize={self._maxsize})")
            while not self._put_script(keys=[self._p], args=items):
                if dl is not None and time.monotonic() >= dl:
                    e = Full(f"queue {self._name!r} is full: it holds maxsize={self._maxsize} items; consume some, "
                             "wait longer (timeout=), or create the queue with a larger maxsize")
                    e.reason = "maxsize"
                    raise e
                time.sleep(_POLL_S)
                self._check()

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        self._push([self._item(obj)], block, timeout)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def put_many(self, iterable, block: bool = True, timeout: Optional[float] = None) -> None:
        items = [self._item(o) for o in iterable]
        if items:
            self._push(items, block, timeout)

    def _pop(self, n, block, timeout):
        self._check()
        if self._stash:
            got, self._stash[:] = self._stash[:n], self._stash[n:]
            return got
        dl = _deadline(timeout, block)
        with _io(self):
            while True:
                got = self._r.lpop(self._list, n) if n > 1 else self._r.lpop(self._list)
                if got:
                    got = got if isinstance(got, list) else [got]
                    break
                left = _left(dl)
                if left is not None and left <= 0:
                    raise Empty()
                wait = _SLICE_S if left is None else min(left, _SLICE_S)
                one = self._r.blpop([self._list], timeout=max(wait, 0.001))
                if one is not None:
                    got = [one[1]]
                    if n > 1:
                        got += self._r.lpop(self._list, n - 1) or []
                    break
                self._check()
            self._r.hincrby(self._p + "meta", "dequeued", len(got))
        return [self._decode_item(x) for x in got]

    # -- asyncio: each call waits in the default executor in short slices, so the loop never
    # blocks; what a cancelled call had already taken goes to the stash, and the next take
    # returns it first (nothing taken is lost on cancellation).
    async def _async(self, take, timeout, stash=True):
        loop = asyncio.get_running_loop()
        dl = _deadline(timeout)
        while True:
            left = _left(dl)
            piece = _ASYNC_SLICE_S if left is None else min(left, _ASYNC_SLICE_S)
            fut = loop.run_in_executor(None, take, piece)
            try:
                return await asyncio.shield(fut)
            except Empty:
                if left is not None and left <= _ASYNC_SLICE_S:
                    raise
            except asyncio.CancelledError:
                if stash:
                    fut.add_done_callback(self._stash_result)
                raise

    def _stash_result(self, fut):
        if not fut.cancelled() and fut.exception() is None:
            self._stash[:0] = fut.result()

    async def get_async(self, timeout=None):
        return (await self._async(lambda t: self._pop(1, True, t), timeout))[0]

    async def get_many_async(self, max_items=64, timeout=None):
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return await self._async(lambda t: self._pop(n, True, t), timeout)

    async def put_async(self, obj, timeout=None):
        item = self._item(obj)
        return await asyncio.get_running_loop().run_in_executor(None, self._push, [item], True, timeout)

    def get(self, block: bool = True, timeout: Optional[float] = None, copy: bool = True) -> Any:
        return self._pop(1, block, timeout)[0]

    def get_nowait(self) -> Any:
        return self.get(False)

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True,
                 copy: bool = True) -> list[Any]:
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return self._pop(n, block, timeout)

    def qsize(self) -> int:
        self._check()
        with _io(self):
            return int(self._r.llen(self._list))

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    # -- monitoring -------------------------------------------------------------------------
    def _settings(self):
        m = self._meta
        ack = m.get("ack") == "1"
        flags = (_core.F_RAW if self._raw else 0) | (_core.F_ACK if ack else 0)
        cap = int(m.get("capacity") or 0)
        if not cap:
            flags |= _core.F_GROWABLE
        st = dict(kind=_core.KIND_QUEUE, flags=flags, maxsize=self._maxsize, capacity=cap or None,
                  max_message=self._max_message, mode=0o600, dead_letter=m.get("dead_letter") or "",
                  visibility_timeout=int(m.get("visibility_ms") or 0) / 1e3,
                  max_deliveries=int(m.get("max_deliveries") or 0),
                  default_delay=int(m.get("delay_ms") or 0) / 1e3, default_ttl=int(m.get("ttl_ms") or 0) / 1e3,
                  dedup_window=int(m.get("dedup_window_ms") or 0) / 1e3,
                  dedup_capacity=int(m.get("dedup_capacity") or 0))
        return st

    def _counts(self, pipe):
        pipe.llen(self._list)
        pipe.lindex(self._list, 0)

    def stats(self) -> dict[str, Any]:
        """The keys of shared-memory queues' stats() (docs/guide/monitoring.md), from the server.
        Figures Redis has no counterpart for (bytes_used, participants, repairs) are 0 or None."""
        self._check()
        with _io(self):
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(self._p + "meta")
            self._counts(pipe)
            res = pipe.execute()
        meta = _meta_dict([x for kv in res[0].items() for x in kv])
        st = self._settings()
        st.update(depth=0, bytes_used=0, file_size=0, enqueued=int(meta.get("enqueued", 0)),
                  dequeued=int(meta.get("dequeued", 0)), repairs=0, corrupt_skipped=0, unfinished=0,
                  creator_pid=None, created_at=int(meta.get("created_at", 0)) / 1e3, attached=None,
                  producers=None, consumers=None, areas=0, max_slots=0, last_repair_ms=0.0, skipped_cells=0,
                  oldest_age_s=0.0, backend=self._url)
        for k in _options.ACK_COUNTERS:
            st[k] = int(meta.get(k, 0))
        # keys of features with no Redis counterpart (the journal: Redis persists itself; the
        # latency figures of shared memory's histograms), so both backends show the same keys
        st.update(nacked=int(meta.get("nacked", 0)), late_replies=int(meta.get("late_replies", 0)), journal_bytes=0,
                  journal_durable_position=0, journal_fsync_errors=0, journal_last_sync_age_s=None, journal_mode=None,
                  journal_position=0, journal_segments=0, journal_syncs=0, process_p50_s=None, process_p99_s=None,
                  wait_p50_s=None, wait_p99_s=None)
        self._fill(st, meta, res[1:])
        st["name"] = self._name
        return st

    def _fill(self, st, meta, res):
        st["depth"] = int(res[0])
        if res[1]:
            st["oldest_age_s"] = max(0.0, time.time() - _ITEM.unpack_from(res[1])[1])


class RedisReliableQueue(RedisQueue, ReliableQueue):
    """An at-least-once named queue on Redis: a stream with a consumer group (the pending-entries
    list holds the leases) and Lua scripts for every step that must be atomic."""

    def _setup(self, r, url, name, meta):
        super()._setup(r, url, name, meta)
        self._consumer = r.connection_pool.connection_kwargs["client_name"]
        self._stream = self._p + "s"
        self._streams = [self._stream]      # every stream of the queue (a priority queue: one per level)
        self._group = "g"                   # (a topic's ack=True subscription: "g:<name>", shmq._redis.topic)
        self._scripts = {n: r.register_script(script_source(n)) for n in ("send", "receive", "settle", "reap", "stats")}
        self._reaped = 0.0

    @property
    def dead_letter_queue(self) -> Optional[str]:
        return self._meta.get("dead_letter") or None

    _prio = staticmethod(lambda p: _priority(p))
    _reap_first = False     # look for dead consumers before taking too, not only before waiting

    def _wait_new(self, last, wait):
        """Sleep until a new entry arrives after `last` (receive.lua's answer) or `wait` s pass."""
        self._r.xread({self._stream: last}, count=1, block=max(1, int(wait * 1000)))

    def _attached(self):
        pass

    def _closing(self):
        pass

    # -- sending -------------------------------------------------------------------------------
    def _send_args(self, body, headers, priority, delay, ttl, dedup_id, kind=None, group=None):
        if kind is None:
            kind, parts = _codec.encode(body, self._raw)
            payload = b"".join(parts)
        else:
            payload = bytes(body)
        if len(payload) > self._max_message:
            raise MessageTooLargeError(f"message of {len(payload)} bytes is larger than queue {self._name!r}'s "
                                       f"max_message ({self._max_message} bytes)")
        hdr = _codec.encode_headers(headers)
        prio = 0 if priority is None else self._prio(priority)
        d = -1 if delay is None else _options.seconds_ns(delay, "delay") // 1_000_000
        t = -1 if ttl is None else max(1, _options.seconds_ns(ttl, "ttl", allow_zero=False) // 1_000_000)
        key = "" if dedup_id is None else dedup_key(dedup_id).hex()
        return pack_args(kind, payload, hdr, prio, d, t, key, group_field(*_group_key(group)))

    def _send_raw(self, args, block, timeout):
        self._check()
        dl = _deadline(timeout, block)
        with _io(self):
            while True:
                mid, status, sid = self._scripts["send"](keys=[self._p], args=[5, *args])[:3]
                if status != 2:
                    return int(mid), sid
                if dl is not None and time.monotonic() >= dl:
                    e = Full(f"queue {self._name!r} is full: it holds maxsize={self._maxsize} messages; consume "
                             "some, wait longer (timeout=), or create the queue with a larger maxsize")
                    e.reason = "maxsize"
                    raise e
                time.sleep(_POLL_S)
                self._check()

    def send(self, body: Any, headers=None, priority=None, delay=None, ttl=None, dedup_id=None, *,
             block: bool = True, timeout: Optional[float] = None, group=None) -> int:
        """As shmq.Queue.send on shared memory: returns the message id. group: a message group
        key (docs/guide/groups.md): one message of the group out at a time, in send order."""
        return self._send_raw(self._send_args(body, headers, priority, delay, ttl, dedup_id, group=group),
                              block, timeout)[0]

    def send_many(self, bodies, headers=None) -> list[int]:
        """Send each body (one round trip and one script for the batch); returns their ids.
        Unbounded queues only (a bounded one: send them one by one)."""
        self._check()
        if self._maxsize:
            _unsupported("send_many on a bounded queue", "a pipeline cannot wait for room")
        if headers is None:
            # the common case: only the packed message per body, the queue's defaults (send.lua mode 1)
            raw, mx, now_ms = self._raw, self._max_message, time.time() * 1e3
            head = _MHEAD.pack
            args = [1]
            for b in bodies:
                kind, parts = _codec.encode(b, raw)
                payload = parts[0] if len(parts) == 1 else b"".join(parts)
                if len(payload) > mx:
                    raise MessageTooLargeError(f"message of {len(payload)} bytes is larger than queue "
                                               f"{self._name!r}'s max_message ({mx} bytes)")
                args.append(head(kind, 0, now_ms, 0) + payload)
        else:
            args = [5]
            for b in bodies:
                args += self._send_args(b, headers, None, None, None, None)
        if len(args) == 1:
            return []
        with _io(self):
            out = self._scripts["send"](keys=[self._p], args=args)    # one script for the batch
        if args[0] == 1:
            first, n = int(out[0]), int(out[1])                       # consecutive ids
            return list(range(first, first + n))
        return [int(out[i]) for i in range(0, len(out), 3)]

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        self.send(obj, block=block, timeout=timeout)

    def put_many(self, iterable, block: bool = True, timeout: Optional[float] = None) -> None:
        for o in iterable:
            self.put(o, block, timeout)

    # -- receiving ----------------------------------------------------------------------------
    def _take(self, n, block, timeout, lease_ms=-1, raw=False):
        self._check()
        if self._stash and not raw:
            got, self._stash[:] = self._stash[:n], self._stash[n:]
            return got
        dl = _deadline(timeout, block)
        with _io(self):
            while True:
                if self._reap_first and time.monotonic() - self._reaped >= REAP_S:
                    self._reap()      # a priority queue: a dead consumer's higher message goes first
                out, nxt, last, now = self._scripts["receive"](keys=[self._p], args=[self._consumer, n, lease_ms])
                if out:
                    return self._records(out, raw)
                if int(nxt) == -2:
                    raise self._gone()          # a topic's subscription was deleted
                left = _left(dl)
                if left is not None and left <= 0:
                    raise Empty()
                if time.monotonic() - self._reaped >= REAP_S:
                    self._reap()
                    continue
                wait = REAP_S if left is None else min(left, REAP_S)
                if int(nxt) >= 0:
                    wait = min(wait, max(0.0, (int(nxt) - int(now)) / 1e3))
                if wait >= 0.001:
                    self._wait_new(last, wait)
                self._check()

    def _reap(self):
        """Consumers of this queue whose connection is gone (their names are not in CLIENT LIST):
        their leases end now, so their messages are delivered again at once."""
        self._reaped = time.monotonic()
        names = {c.get("name") for c in self._r.client_list()}
        pipe = self._r.pipeline(transaction=False)
        for st in self._streams:
            pipe.xinfo_consumers(st, self._group)
        dead = sorted({_s(c["name"]) for cs in pipe.execute() for c in cs if _s(c["name"]) not in names})
        if dead:
            self._scripts["reap"](keys=[self._p], args=dead)

    def _records(self, out, raw):
        """The receive script's deliveries (5 values each, receive.lua's emit) as records."""
        rec = self._record
        return [rec(out[i], out[i + 1], out[i + 2], out[i + 3], out[i + 4], raw) for i in range(0, len(out), 5)]

    def _record(self, sid, count, i, m, g, raw=False):
        try:                                       # untrusted: anyone who can write the stream wrote it
            mid = int(i)
            kind, prio, t, hl = _MHEAD.unpack_from(m)
        except (ValueError, TypeError, struct.error):
            raise CorruptQueueError(f"queue {self._name!r}: stream entry {_s(sid)} is not a message of shmq "
                                    "(written by another program?)") from None
        end = _MHEAD.size + hl
        if end > len(m):
            raise CorruptQueueError(f"queue {self._name!r}: message {mid} is malformed (header past its end)")
        view = memoryview(m)
        body = (kind, bytes(view[end:])) if raw else _codec.decode(kind, view[end:], self._raw, mid)
        grp = None if not g else (g[1:], 1 if g[0] else 0)      # (key, type 0 str / 1 bytes), as on shm
        count = int(count)
        return (body, bytes(view[_MHEAD.size:end]) if hl else b"", mid, t / 1e3, count, prio, (sid, count), grp)

    def receive(self, timeout: Optional[float] = None, *, block: bool = True) -> Message:
        """As shmq.Queue.receive on shared memory."""
        return Message(self, self._take(1, block, timeout)[0])

    def receive_many(self, max_items: int = 64, timeout: Optional[float] = None, *,
                     block: bool = True) -> list[Message]:
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return [Message(self, r) for r in self._take(n, block, timeout)]

    def get(self, block: bool = True, timeout: Optional[float] = None, copy: bool = True) -> Any:
        rec = self._take(1, block, timeout)[0]
        self._settle("ack", 0, [rec[6]])
        return rec[0]

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True,
                 copy: bool = True) -> list[Any]:
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        recs = self._take(n, block, timeout)
        self._settle("ack", 0, [r[6] for r in recs])
        return [r[0] for r in recs]

    def qsize(self) -> int:
        return self.stats()["depth"]

    async def receive_async(self, timeout=None):
        return Message(self, (await self._async(lambda t: self._take(1, True, t), timeout))[0])

    async def receive_many_async(self, max_items=64, timeout=None):
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return [Message(self, r) for r in await self._async(lambda t: self._take(n, True, t), timeout)]

    async def get_async(self, timeout=None):
        m = await self.receive_async(timeout)
        m.ack()
        return m.body

    async def get_many_async(self, max_items=64, timeout=None):
        ms = await self.receive_many_async(max_items, timeout)
        self.ack_many(ms)
        return [m.body for m in ms]

    async def send_async(self, body, headers=None, priority=None, delay=None, ttl=None, dedup_id=None, *,
                         timeout=None, group=None):
        args = self._send_args(body, headers, priority, delay, ttl, dedup_id, group=group)
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(None, self._send_raw, args, True, timeout))[0]

    async def put_async(self, obj, timeout=None):
        await self.send_async(obj, timeout=timeout)

    # -- settling ------------------------------------------------------------------------------
    def _settle(self, op, ms, tokens, extra=()):
        self._check()
        args = [op, self._consumer, ms, *extra]
        for sid, count in tokens:
            args += [sid, count]
        with _io(self):
            return [int(i) - 1 for i in self._scripts["settle"](keys=[self._p], args=args)]

    def _stale(self, op, token, mid):
        if self._settle(op[0], op[1], [token]):
            e = LeaseExpiredError(f"message {mid}: this delivery's lease expired and the message was delivered "
                                  f"again (or it was settled already); {op[2]} changed nothing")
            e.ids = [mid]
            raise e

    def _ack(self, token, mid):
        self._stale(("ack", 0, "ack"), token, mid)

    def _nack(self, token, mid, requeue, delay_ns):
        self._stale(("requeue" if requeue else "nack", delay_ns // 1_000_000, "nack"), token, mid)

    def _extend(self, token, mid, ns):
        self._stale(("extend", max(1, ns // 1_000_000), "extend"), token, mid)

    def ack_many(self, messages) -> int:
        todo = []
        for m in messages:
            if not isinstance(m, Message) or m._q is not self:
                raise ArgumentTypeError("ack_many() takes Messages received from this queue")
            if m._state == "acked":
                continue
            if m._state is not None:
                raise ArgumentError(f"message {m.id} was {m._state}: this delivery is over")
            todo.append(m)
        stale = {todo[i].id for i in self._settle("ack", 0, [m._token for m in todo])}
        for m in todo:
            m._state = "lease expired" if m.id in stale else "acked"
        if stale:
            raise _lease_expired_many(sorted(stale))
        return len(todo)

    def _timers_run(self):
        """Apply what is due now without delivering anything: delays, expired leases, TTLs of
        unread messages, dead-letter moves that waited for room (receive does this lazily)."""
        self._check()
        with _io(self):
            self._scripts["receive"](keys=[self._p], args=[self._consumer, 0, -1, "timers"])
        return 0

    def _repair(self):
        """What shared-memory repair does for dead participants: the leases of consumers whose
        connection is gone end now, then what is due is applied (past max_deliveries: the DLQ)."""
        self._check()
        with _io(self):
            self._reap()
        self._timers_run()
        return 0

    # -- monitoring -----------------------------------------------------------------------------
    def _counts(self, pipe):
        self._scripts["stats"](keys=[self._p], client=pipe)
        pipe.xrange(self._stream, count=1)
        pipe.xinfo_consumers(self._stream, "g")

    def _fill(self, st, meta, res):
        (xlen, pending, due_leases, given_back, given_back_due, delayed), head, consumers = res
        # ready: never delivered, or due again; in flight: leases not past their deadline
        # (a message waiting behind its group's head is queued: ready, as on shared memory)
        st.update(depth=max(0, xlen - pending + due_leases + given_back_due) + int(meta.get("parked", 0)),
                  in_flight=max(0, pending - due_leases - given_back),
                  delayed=delayed + given_back - given_back_due, consumers=len(consumers))
        if head:
            st["oldest_age_s"] = max(0.0, time.time() - _MHEAD.unpack_from(head[0][1][b"m"])[2] / 1e3)


def pack_args(kind, payload, hdr, prio, delay_ms, ttl_ms, key, group=b""):
    """send.lua's 5 arguments of one message: the packed m field (kind, priority, send time,
    headers, body), delay, ttl, dedup key, group field (group_field(); b"" none)."""
    return [_MHEAD.pack(kind, prio, time.time() * 1e3, len(hdr)) + hdr + payload, delay_ms, ttl_ms, key, group]


def group_field(gkey, gtype):
    """The g field of a grouped message (common.lua): the key's type byte (0 str, 1 bytes),
    then the key; b"" for no group."""
    return b"" if gkey is None else bytes((gtype,)) + gkey


def _priority(p):
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
        raise ArgumentError(f"priority must be an int from 0 to 9, got {p!r}")
    return p


def _gap(name):
    def gap(self, *args, **kwargs):
        _unsupported(f"{name}()", "not mapped to Redis yet")
    gap.__name__ = name
    return gap


# Every public call of the shared-memory classes that has no Redis version raises
# UnsupportedError naming itself (never an AttributeError on the missing segment). The calls
# Queue defines in Python for every backend (send & co refusing at-most-once queues) stay.
_KEEP = {"send", "receive", "receive_many", "ack_many", "join_thread", "cancel_join_thread", "dead_letter_queue",
         "name", "_redis"}
for _cls, _base in ((RedisQueue, Queue), (RedisReliableQueue, ReliableQueue)):
    for _n in dir(_base):
        if _n.startswith("__") or _n in _KEEP:
            continue
        if any(_n in k.__dict__ for k in _cls.__mro__ if k in (RedisQueue, RedisReliableQueue)):
            continue
        if _n.startswith("_") and _n not in ("_peek", "_peek_body", "_purge", "_repair", "_consistency", "_validate",
                                             "_fd", "_set_consumer"):
            continue
        if callable(getattr(_base, _n, None)) or _n == "_fd":
            setattr(_cls, _n, _gap(_n) if _n != "_fd" else property(_gap(_n)))


def redrive_loop(src, to, max_messages, timeout, target, no_source):
    """shmq.reliable._redrive for a dead-letter queue on Redis: each message is sent to its target
    with a dedup id derived from the DLQ and message id, then acked here (a crash in between
    repeats nothing within the target's dedup window). The next message's target is checked
    before it is taken (a receive counts a delivery)."""
    def dest_of(headers, mid):
        dest = to or headers.get(_options.DLQ_SOURCE)
        if not dest:
            raise no_source(mid)
        return target(dest)

    moved = 0
    while max_messages is None or moved < max_messages:
        head = src._head()
        if head is not None:
            dest_of(*head)
        try:
            m = Message(src, src._take(1, True, timeout, raw=True)[0])
        except Empty:
            break
        try:
            q = dest_of(m.headers, m.id)
            headers = {k: v for k, v in m.headers.items() if k not in _options.DLQ_HEADERS}
            kind, payload = m.body
            dk = dedup_key(f"redrive:{src.name}:{m.id}")
            if isinstance(q, RedisReliableQueue):
                q._send_raw(pack_args(kind, payload, _codec.encode_headers(headers), m.priority, -1, -1, dk.hex()),
                            True, None)
            else:
                q._core._send(payload, _codec.encode_headers(headers), m.priority, _core.USE_DEFAULT,
                              _core.USE_DEFAULT, dk, True, None, kind)
        except BaseException:
            try:
                m.nack(requeue=True)
            except Exception:
                pass
            raise
        m.ack()
        moved += 1
    return moved


def _head(self):
    """(headers, id) of the next never-delivered message, or None (redrive looks before taking)."""
    with _io(self):
        last = "0-0"
        for g in self._r.xinfo_groups(self._stream):
            if _s(g["name"]) == "g":
                last = _s(g["last-delivered-id"])
        e = self._r.xrange(self._stream, min="(" + last, count=1)
    if not e:
        return None
    f = e[0][1]
    m = f[b"m"]
    hl = _MHEAD.unpack_from(m)[3]
    block = m[_MHEAD.size:_MHEAD.size + hl]
    return (_codec.decode_headers(block) if block else {}), int(f[b"i"])


RedisReliableQueue._head = _head
