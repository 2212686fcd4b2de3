"""Topic on Redis (the class Topic() returns for backend=redis://): one stream whose entry ids are
the sequence numbers ("<seq>-0"), a consumer group per named subscription ("g:<name>", read with
NOACK: each member gets different messages), private subscriptions read with XRANGE/XREAD from
their own cursor. Every step that must be atomic is a script (tpublish, tread, tsub, tadmin);
docs/internals/redis.md."""
from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Any, Iterable, Mapping, Optional, Union

from .. import _codec, _core, _names, _options
from ..errors import (ArgumentError, ArgumentTypeError, CorruptQueueError, Empty, Full, LeaseExpiredError,
                      MessageTooLargeError, QueueClosedError, SubscriptionNotFound)
from ..topic import MIN_CAPACITY, Subscription, SubscriptionInfo, Topic, TopicDelivery, _start
from . import client_name, connect, prefix, script_source
from .queue import _MHEAD, _POLL_S, RedisReliableQueue, _create, _deadline, _io, _left, _s, _unsupported, unlink

__all__ = ["open_topic", "RedisTopic", "RedisSubscription"]

ENTRY_BYTES = 1024          # capacity= bytes / this = the messages the log keeps (shared memory's entry count)
REDIS_MAX_MESSAGE = 512 * 1024 * 1024 - 1024
_WAIT_S = 0.2               # a waiting get wakes this often (to notice close and unsubscribe)


def open_topic(cls, name, url, create, capacity, retention, max_message, mode, exist_ok, max_participants):
    """Topic(name, backend=url, ...): validated as on shared memory, then created or opened."""
    cap = _options.size(capacity, "capacity")
    if cap < MIN_CAPACITY:
        raise ArgumentError(f"capacity must be at least {MIN_CAPACITY} bytes, got {capacity!r}")
    ret_ms = 0 if retention is None else max(1, _options.seconds_ns(retention, "retention", allow_zero=False)
                                             // 1_000_000)
    mm = 0 if max_message is None else _options.size(max_message, "max_message")
    if max_message is not None and mm < 1:
        raise ArgumentError("max_message must be at least 1 byte")
    if _options._mode(mode) != 0o600:
        _unsupported("mode=", "access to a Redis server is governed by its ACLs (ACL SETUSER), not file modes")
    if max_participants is not None:
        _unsupported("max_participants=", "Redis serves any number of clients")
    spec = _options.resolve(name, create=create, exist_ok=exist_ok)
    r = connect(url, client_name("t"))
    try:
        meta = _create_topic(r, url, spec, cap, ret_ms, mm)
    except BaseException:
        r.close()
        raise
    if not create and retention is not None and int(meta.get("retention_ms") or 0) != ret_ms:
        r.close()
        have = int(meta.get("retention_ms") or 0)
        raise ArgumentError(f"topic {name!r} exists with other options: retention is "
                            f"{have / 1e3 if have else None}, not {retention!r}")
    self = _core.HandleBase.__new__(cls)
    self._setup(r, url, name, meta)
    return self


def _create_topic(r, url, spec, cap, ret_ms, mm):
    import shmq._redis.queue as rq
    # the queue's create script with the topic's fields (kind=topic: Queue() refuses the name)
    kv = dict(name=spec.name, kind="topic", entries=max(1, cap // ENTRY_BYTES), capacity=cap, retention_ms=ret_ms,
              max_message=mm or min(cap // 4, REDIS_MAX_MESSAGE), seq=0, published=0, dropped=0)
    args = [int(spec.create), int(spec.exist_ok), 0]
    for k, v in kv.items():
        args += [k, v]
    with _io(url):
        status, flat = r.register_script(script_source("create"))(keys=[prefix(spec.name)], args=args)
    status = _s(status)
    from ..errors import IncompatibleQueueError, QueueExistsError, QueueNotFound
    if status == "exists":
        raise QueueExistsError(17, f"topic already exists: {spec.name!r} on {url} (pass exist_ok=True to open it)")
    if status == "missing":
        raise QueueNotFound(2, f"no such topic: {spec.name!r} on {url} (create it with create=True)")
    meta = rq._meta_dict(flat)
    if meta.get("kind") != "topic":
        what = "a priority queue" if meta.get("kind") == "priority" else "a queue"
        cls = "shmq.PriorityQueue" if meta.get("kind") == "priority" else "shmq.Queue"
        raise IncompatibleQueueError(f"{spec.name!r} on {url} is {what}, not a topic: open it with {cls} "
                                     "(or shmq.open(name))")
    try:
        if int(meta["entries"]) < 1:
            raise ValueError
    except (KeyError, ValueError):
        raise CorruptQueueError(f"topic {spec.name!r} on {url}: its entries field is not a positive count "
                                "(written by another program?)") from None
    return meta


def _rebuild(name, url):
    return Topic(name, backend=url)


class RedisTopic(Topic):
    """A topic on Redis: the same calls as on shared memory (publish, subscribe, unsubscribe,
    subscriptions, stats, peek); capacity= counts messages (capacity / 1 KiB), not bytes."""

    _redis = True

    def _setup(self, r, url, name, meta):
        self._r, self._url, self._name, self._p = r, url, name, prefix(name)
        self._meta = meta
        self._entries = int(meta["entries"])
        self._max_message = int(meta.get("max_message") or REDIS_MAX_MESSAGE)
        self._stream = self._p + "s"
        self._closed_flag = False
        self._cname = r.connection_pool.connection_kwargs["client_name"]
        self._scripts = {n: r.register_script(script_source(n)) for n in ("tpublish", "tread", "tsub", "tadmin")}
        self._subs = []
        self._nsub = 0

    # -- identity and lifecycle ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Optional[str]:
        return None

    @property
    def backend(self) -> str:
        return self._url

    @property
    def closed(self) -> bool:
        return self._closed_flag

    def _check(self):
        if self._closed_flag:
            raise QueueClosedError(f"{self!r} is closed")

    def close(self) -> None:
        if self._closed_flag:
            return
        for sub in list(self._subs):
            with contextlib.suppress(Exception):
                sub.close()
        self._closed_flag = True
        self._r.close()

    def unlink(self) -> None:
        unlink(self._name, self._url)

    def __del__(self):
        pass

    def __reduce__(self):
        if self.closed:
            raise QueueClosedError(f"cannot pickle closed topic {self!r}")
        return (_rebuild, (self._name, self._url))

    def __repr__(self) -> str:
        return f"<shmq.Topic {self._name!r} on {self._url} {'closed' if self.closed else 'open'}>"

    # -- publish ------------------------------------------------------------------------
    def _pack(self, obj, hdr):
        kind, parts = _codec.encode(obj, False)
        payload = b"".join(parts)
        if len(payload) > self._max_message:
            raise MessageTooLargeError(f"message of {len(payload)} bytes is larger than topic {self._name!r}'s "
                                       f"max_message ({self._max_message} bytes)")
        return _MHEAD.pack(kind, 0, time.time() * 1e3, len(hdr)) + hdr + payload

    def _publish_packed(self, items, block, timeout):
        self._check()
        dl = _deadline(timeout, block)
        out = []
        with _io(self):
            while True:
                status, seqs = self._scripts["tpublish"](keys=[self._p], args=items[len(out):])
                out += [int(s) for s in seqs]
                if status != 2:
                    return out
                if dl is not None and time.monotonic() >= dl:
                    e = Full(f"topic {self._name!r} is full: a subscription with on_slow='block' lags by "
                             f"{self._entries} messages (the log's capacity); it must read some, or publish "
                             "with a longer timeout")
                    e.items_put = len(out)
                    raise e
                time.sleep(_POLL_S)
                self._check()

    def publish(self, obj: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None, block: bool = True,
                timeout: Optional[float] = None) -> int:
        """As Topic.publish on shared memory: returns the sequence number (1, 2, 3 ...)."""
        hdr = _codec.encode_headers(headers) if headers else b""
        return self._publish_packed([self._pack(obj, hdr)], block, timeout)[0]

    def publish_many(self, objs: Iterable[Any], headers: Optional[Mapping[str, Union[str, bytes]]] = None,
                     block: bool = True, timeout: Optional[float] = None) -> list[int]:
        hdr = _codec.encode_headers(headers) if headers else b""
        items = [self._pack(o, hdr) for o in objs]
        return self._publish_packed(items, block, timeout) if items else []

    # -- subscribe ----------------------------------------------------------------------
    def subscribe(self, name: Optional[str] = None, *, start: Any = "latest", on_slow: Optional[str] = None,
                  ack: bool = False, visibility_timeout: float = 30.0, max_deliveries: int = 20,
                  dead_letter: Optional[str] = None) -> Subscription:
        """As Topic.subscribe on shared memory (ack=True is not mapped to Redis yet)."""
        self._check()
        if ack and name is None:
            raise ArgumentError("ack=True needs a named subscription (a private one is lossy by definition)")
        kind, arg = _start(start)
        kinds = {_core.TSTART_LATEST: "latest", _core.TSTART_EARLIEST: "earliest", _core.TSTART_SEQ: "seq",
                 _core.TSTART_TIME: "time"}
        if name is None:
            if on_slow not in (None, "drop_oldest"):
                raise ArgumentError("a private subscription is always lossy (on_slow='drop_oldest'); use a named "
                                    "subscription for on_slow='block'")
            with _io(self):
                _st, _e, last, first = self._scripts["tread"](keys=[self._p], args=["", "", 1, 1])
            last, first = int(last), int(first)
            if kind == _core.TSTART_LATEST:
                cursor = last + 1
            elif kind == _core.TSTART_EARLIEST:
                cursor = first
            elif kind == _core.TSTART_SEQ:
                cursor = arg
            else:
                cursor = self._seq_at(arg / 1e9, first, last)
            sub = RedisSubscription(self, None, "drop_oldest", cursor=cursor)
        else:
            if not isinstance(name, str):
                raise ArgumentTypeError(f"subscription name must be a str, not {type(name).__name__}")
            try:
                _names.check_name(name)
            except ArgumentError as e:
                raise ArgumentError(f"subscription name: {e}") from None
            if len(name.encode()) > _core.TOPIC_NAME_MAX:
                raise ArgumentError(f"subscription name must be at most {_core.TOPIC_NAME_MAX} characters")
            slow = "block" if on_slow is None else on_slow
            if slow not in ("block", "drop_oldest"):
                raise ArgumentError(f"on_slow must be 'block' or 'drop_oldest', got {on_slow!r}")
            extra = []
            if ack:
                # the queue scripts' settings and counters, in the subscription's hash; its
                # dead-letter queue is an at-least-once Queue on the same server
                vis = _options.seconds_ns(visibility_timeout, "visibility_timeout", allow_zero=False)
                maxd = _options.check_int(max_deliveries, "max_deliveries", 1, 65535)
                dlq = f"{self.name}.{name}.dlq" if dead_letter is None else _options.name(dead_letter, "dead_letter")
                _names.check_name(dlq)
                dspec = _options.resolve(dlq, create=True, exist_ok=True, ack=True, visibility_timeout=vis / 1e9,
                                         max_deliveries=maxd, is_dlq=True)
                _create(self._r, self._url, dspec, True)
                extra = ["visibility_ms", max(1, vis // 1_000_000), "max_deliveries", maxd, "dlq_prefix", prefix(dlq),
                         "dead_letter", dlq, "name", self._name, "acked", 0, "redelivered", 0, "dead_lettered", 0]
                consumer = self._cname      # the liveness check (CLIENT LIST) needs the connection's own name
            else:
                self._nsub += 1
                consumer = f"{self._cname}#{self._nsub}"
            with _io(self):
                status, have = self._scripts["tsub"](keys=[self._p], args=[name, slow, kinds[kind],
                                                                           arg / 1e6 if kind == _core.TSTART_TIME
                                                                           else arg, consumer, int(bool(ack)), *extra])
            if _s(status) == "other":
                raise ArgumentError(f"subscription {name!r} of topic {self._name!r} exists with other options: "
                                    f"on_slow={_s(have)}")
            if ack:
                sub = RedisAckSubscription(self, name, slow, consumer=consumer)
            else:
                sub = RedisSubscription(self, name, slow, consumer=consumer)
        self._subs.append(sub)
        return sub

    def _seq_at(self, t, first, last):
        with _io(self):
            for sid, f in self._r.xrange(self._stream, min=f"{first}-0", max="+"):
                if _MHEAD.unpack_from(f[b"m"])[2] / 1e3 >= t:
                    return int(_s(sid).split("-")[0])
        return last + 1

    def _forget(self, sub):
        if sub in self._subs:
            self._subs.remove(sub)
        if sub._name is not None and not sub._ack and not self._closed_flag:   # (an ack one keeps its leases)
            with contextlib.suppress(Exception), _io(self):
                self._scripts["tadmin"](keys=[self._p], args=["leave", sub._name, sub._consumer])

    def unsubscribe(self, name: str) -> None:
        if not isinstance(name, str):
            raise ArgumentTypeError(f"subscription name must be a str, not {type(name).__name__}")
        self._check()
        with _io(self):
            if not self._scripts["tadmin"](keys=[self._p], args=["unsub", name]):
                raise SubscriptionNotFound(f"topic {self._name!r} has no subscription {name!r}")

    def _info(self):
        self._check()
        with _io(self):
            res = self._scripts["tadmin"](keys=[self._p], args=["info"])
            alive = {c.get("name") for c in self._r.client_list()}
        last, first, xlen = (int(x) for x in res[:3])
        subs = {}
        for name, slow, missed, delivered, lag, cs, acks in res[3:]:
            live = [c for c in cs if _s(c).split("#")[0] in alive]
            # no latency histograms on Redis: the keys are there, as None (as a queue's)
            subs[_s(name)] = dict(lag=int(lag), missed=int(missed), consumers=len(live), durable=True,
                                  on_slow=_s(slow), delivered=int(delivered), wait_p50_s=None, wait_p99_s=None,
                                  process_p50_s=None, process_p99_s=None)
            if acks:
                subs[_s(name)].update(ack=True, acked=int(acks[0]), redelivered=int(acks[1]),
                                      dead_lettered=int(acks[2]), in_flight=int(acks[3]))
        return last, first, xlen, subs

    def subscriptions(self) -> list[SubscriptionInfo]:
        last, first, _xlen, subs = self._info()
        out = [SubscriptionInfo(n, d["lag"], d["missed"], d["consumers"], True, d["on_slow"],
                                last - d["lag"] + 1, d["delivered"]) for n, d in sorted(subs.items())]
        for sub in list(self._subs):
            if sub._name is None and not sub._closed:
                out.append(SubscriptionInfo(None, sub.lag, sub.missed, 1, False, "drop_oldest", sub._cursor, 0))
        return out

    def stats(self) -> dict[str, Any]:
        """The keys of Topic.stats() on shared memory, from the server (bytes_used and the
        participant counts that have no meaning there are 0 or None; backend is added)."""
        last, first, xlen, subs = self._info()
        with _io(self):
            meta = {_s(k): _s(v) for k, v in self._r.hgetall(self._p + "meta").items()}
            head = self._r.xrange(self._stream, count=1)
        ret = int(meta.get("retention_ms") or 0)
        st = dict(name=self._name, kind=_core.KIND_TOPIC, flags=0, maxsize=0, capacity=int(meta.get("capacity", 0)),
                  max_message=self._max_message, mode=0o600, depth=xlen, bytes_used=0, file_size=0,
                  enqueued=int(meta.get("published", 0)), published=int(meta.get("published", 0)),
                  dequeued=sum(d["delivered"] for d in subs.values()), dropped=int(meta.get("dropped", 0)),
                  next_seq=last + 1, oldest_seq=first, retention=ret / 1e3 if ret else None,
                  log_entries=self._entries, subscriptions=subs, in_flight=0, delayed=0, acked=0, redelivered=0,
                  dead_lettered=0, expired=0, dead_letter_failed=0, dedup_hits=0, repairs=0, corrupt_skipped=0,
                  unfinished=0, creator_pid=None, created_at=int(meta.get("created_at", 0)) / 1e3, attached=None,
                  producers=None, consumers=sum(d["consumers"] for d in subs.values()), areas=0, max_slots=0,
                  last_repair_ms=0.0, skipped_cells=0, oldest_age_s=0.0, backend=self._url)
        # the keys a shared-memory topic shows for queue settings, the journal and latencies
        st.update(dead_letter="", dedup_capacity=0, dedup_window=0.0, default_delay=0.0, default_ttl=0.0,
                  max_deliveries=0, visibility_timeout=0.0, nacked=0, late_replies=0, journal_bytes=0,
                  journal_durable_position=0, journal_fsync_errors=0, journal_last_sync_age_s=None, journal_mode=None,
                  journal_position=0, journal_segments=0, journal_syncs=0, process_p50_s=None, process_p99_s=None,
                  wait_p50_s=None, wait_p99_s=None)
        if head:
            st["oldest_age_s"] = max(0.0, time.time() - _MHEAD.unpack_from(head[0][1][b"m"])[2] / 1e3)
        return st

    def peek(self, seq: int):
        seq = _options.check_int(seq, "seq", 1, (1 << 63) - 1)
        self._check()
        with _io(self):
            e = self._r.xrange(self._stream, min=f"{seq}-0", max=f"{seq}-0")
        return self._message(e[0]) if e else None

    def _message(self, e):
        sid, f = e
        try:                                   # untrusted: anyone who can write the stream wrote it
            if isinstance(f, list):            # (a script's reply: the fields flat)
                f = {f[i]: f[i + 1] for i in range(0, len(f) - 1, 2)}
            seq = int(_s(sid).split("-")[0])
            m = f[b"m"]
            kind, _p, t, hl = _MHEAD.unpack_from(m)
        except (KeyError, ValueError, TypeError, IndexError, struct.error):
            raise CorruptQueueError(f"topic {self._name!r}: stream entry {_s(sid)} is not a message of shmq "
                                    "(written by another program?)") from None
        end = _MHEAD.size + hl
        if end > len(m):
            raise CorruptQueueError(f"topic {self._name!r}: message {seq} is malformed (header past its end)")
        view = memoryview(m)
        body = bytes(view[end:]) if kind == _codec.KIND_BYTES else _codec.decode(kind, view[end:], False, seq)
        return _core._topic_message(seq, body, t / 1e3, bytes(view[_MHEAD.size:end]))

    def _closing(self):
        pass

    def sync(self, *args, **kwargs):
        _unsupported("Topic.sync()", "Redis persists with its own AOF/RDB settings (appendfsync)")


class RedisSubscription(Subscription):
    """A subscription of a topic on Redis: private (its own cursor, XRANGE/XREAD) or a member
    of a named one (the group "g:<name>", XREADGROUP NOACK)."""

    def __init__(self, topic, name, on_slow, cursor=0, consumer=""):
        self._ack = False
        self._dead_letter_name = None
        self._topic = topic
        self._reader = None
        self._name = name
        self._idx = self._gen = 0
        self._on_slow = on_slow
        self._closed = False
        self._cursor = cursor
        self._missed = 0
        self._consumer = consumer

    def _live(self):
        if self._closed or self._topic.closed:
            raise QueueClosedError(f"subscription {self._name or '(private)'} is closed")
        return self

    def _read(self, n, block, timeout):
        t = self._topic
        self._live()
        dl = _deadline(timeout, block)
        with _io(t):
            while True:
                st, entries, last, first = t._scripts["tread"](keys=[t._p], args=[self._name or "", self._consumer, n,
                                                                                 self._cursor])
                if int(st) < 0:
                    raise SubscriptionNotFound(f"subscription {self._name!r} of topic {t._name!r} was deleted "
                                               "(unsubscribe)")
                msgs = [t._message(e) for e in entries]
                if self._name is None:
                    first = int(first)
                    if first > self._cursor:
                        self._missed += first - self._cursor
                        self._cursor = first
                    if msgs:
                        self._cursor = msgs[-1].seq + 1
                if msgs:
                    return msgs
                left = _left(dl)
                if left is not None and left <= 0:
                    raise Empty()
                wait = _WAIT_S if left is None else min(left, _WAIT_S)
                if wait >= 0.001:
                    t._r.xread({t._stream: f"{int(last)}-0"}, count=1, block=max(1, int(wait * 1000)))
                self._live()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        return self._read(1, block, timeout)[0]

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True) -> list:
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return self._read(n, block, timeout)

    def get_bodies(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True) -> list:
        return [m.body for m in self.get_many(max_items, timeout, block)]

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        return (await self._async(1, timeout))[0]

    async def get_many_async(self, max_items: int = 64, timeout: Optional[float] = None) -> list:
        return await self._async(_options.check_int(max_items, "max_items", 1, _options.MAX_COUNT), timeout)

    async def _async(self, n, timeout):
        # in the executor in short slices (a cancelled call takes nothing: it only waits there)
        loop = asyncio.get_running_loop()
        dl = _deadline(timeout)
        while True:
            try:
                return self._read(n, False, None)
            except Empty:
                pass
            left = _left(dl)
            if left is not None and left <= 0:
                raise Empty()
            piece = _WAIT_S if left is None else min(left, _WAIT_S)
            await loop.run_in_executor(None, self._wait, piece)

    def _wait(self, seconds):
        t = self._topic
        self._live()
        with _io(t):
            last = t._r.hget(t._p + "meta", "seq") or b"0"
            t._r.xread({t._stream: f"{int(last)}-0"}, count=1, block=max(1, int(seconds * 1000)))

    @property
    def lag(self) -> int:
        if self._name is None:
            last, first, _x, _s2 = self._topic._info()
            return max(0, last + 1 - max(self._cursor, first))
        d = self._topic._info()[3].get(self._name)
        return d["lag"] if d else 0

    @property
    def missed(self) -> int:
        if self._name is None:
            return self._missed
        d = self._topic._info()[3].get(self._name)
        return d["missed"] if d else 0

    def stats(self) -> dict[str, Any]:
        """The keys of Subscription.stats() on shared memory; the latency keys are None (the
        server keeps no histograms)."""
        lat = dict(wait_p50_s=None, wait_p99_s=None, process_p50_s=None, process_p99_s=None)
        if self._name is None:
            return {"name": None, "durable": False, "kind": "private", "lag": self.lag, "missed": self.missed,
                    "delivered": None, "consumers": 1, **lat}
        d = self._topic._info()[3].get(self._name)
        if d is None:
            raise SubscriptionNotFound(f"subscription {self._name!r} of topic {self._topic.name!r} no longer exists")
        st = {"name": self._name, "durable": True, "kind": "ack" if d.get("ack") else d["on_slow"], "lag": d["lag"],
              "missed": d["missed"], "delivered": d["delivered"], "consumers": d["consumers"], **lat}
        if d.get("ack"):
            st.update(in_flight=d["in_flight"], acked=d["acked"], redelivered=d["redelivered"],
                      dead_lettered=d["dead_lettered"])
        return st

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._topic._forget(self)

    def __repr__(self) -> str:
        what = f"named {self._name!r}" if self._name else "private"
        return f"<shmq.Subscription {what} of {self._topic.name!r} on {self._topic.backend}{' closed' if self.closed else ''}>"


class _SubLeases(RedisReliableQueue):
    """The at-least-once machinery of the Redis queues (receive/settle/reap scripts, the reap
    of dead consumers, waiting) pointed at one ack=True subscription of a topic: the scripts get
    the subscription's name as KEYS[2] (common.lua then uses its group and keys)."""

    def __init__(self):      # (built by _for; never through Queue())
        pass

    @classmethod
    def _for(cls, sub):
        t = sub._topic
        self = _core.HandleBase.__new__(cls)
        self._sub, self._r, self._url, self._name, self._p = sub, t._r, t._url, t._name, t._p
        self._meta, self._raw, self._maxsize, self._max_message = {}, False, 0, t._max_message
        self._stash, self._consumer, self._reaped = [], sub._consumer, 0.0
        self._stream = t._stream
        self._streams = [t._stream]
        self._group = "g:" + sub._name
        self._closed_flag = False
        self._scripts = {n: self._with_name(t._r.register_script(script_source(n))) for n in ("receive", "settle", "reap")}
        return self

    def _with_name(self, script):
        # the queue code calls script(keys=[prefix], args=...): add the subscription's name as KEYS[2]
        def call(keys=None, args=(), client=None):
            return script(keys=[self._p, self._sub._name], args=args, client=client)
        return call

    def _check(self):
        self._sub._live()

    def _gone(self):
        return SubscriptionNotFound(f"subscription {self._sub._name!r} of topic {self._name!r} was deleted "
                                    "(unsubscribe)")

    def _records(self, out, raw):
        return [self._record(e) for e in out]     # (receive.lua's topic shape: {stream id, count, fields})

    def _record(self, e, raw=False):
        sid, count, f = e
        return self._sub._topic._message((sid, f)), int(count), (sid, int(count))

    def close(self):
        pass


class RedisTopicDelivery(TopicDelivery):
    """A delivery of an ack=True subscription on Redis: settled by the queue's settle script,
    checked against the subscription group's pending-entries list (stream id, count, consumer)."""

    __slots__ = ()

    def _settle(self, op, ms, what):
        if self._sub._leases._settle(op, ms, [self._token]):
            e = LeaseExpiredError(f"topic message {self.seq}: this delivery's lease expired and it was delivered "
                                  f"again (or it was settled already, or the subscription deleted); {what} changed "
                                  "nothing")
            e.ids = [self.seq]
            raise e

    def ack(self) -> bool:
        if self._state == "acked":
            return False
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        self._settle("ack", 0, "ack")
        self._state = "acked"
        return True

    def nack(self, requeue: bool = True) -> None:
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        self._settle("requeue" if requeue else "nack", 0, "nack")
        self._state = "nacked"

    def extend(self, seconds: float) -> None:
        ns = _options.seconds_ns(seconds, "extend(seconds)")
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        self._settle("extend", max(1, ns // 1_000_000), "extend")


class RedisAckSubscription(RedisSubscription):
    """A member of a named ack=True subscription on Redis: get() returns a TopicDelivery to ack;
    leases, redelivery (a dead member's at once), max_deliveries and the dead-letter queue are
    the at-least-once queue's (shmq._redis.queue) on the subscription's group."""

    def __init__(self, topic, name, on_slow, consumer):
        super().__init__(topic, name, on_slow, consumer=consumer)
        self._ack = True
        self._leases = _SubLeases._for(self)

    def _deliveries(self, n, block, timeout):
        self._live()
        return [RedisTopicDelivery(self, msg, token, count) for msg, count, token in
                self._leases._take(n, block, timeout)]

    def _receive(self, block, timeout):
        return self._deliveries(1, block, timeout)[0]

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        return self._deliveries(1, block, timeout)[0]

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True) -> list:
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        return self._deliveries(n, block, timeout)

    async def _async(self, n, timeout):
        # in the executor in short slices; a delivery taken by a call cancelled meanwhile stays
        # leased and comes back after its visibility timeout (at least once)
        loop = asyncio.get_running_loop()
        dl = _deadline(timeout)
        while True:
            left = _left(dl)
            piece = _WAIT_S if left is None else min(left, _WAIT_S)
            try:
                return await loop.run_in_executor(None, self._deliveries, n, True, piece)
            except Empty:
                if left is not None and left <= _WAIT_S:
                    raise
