"""Topic and Subscription: publish/subscribe over one shared log (DESIGN §5.3, csrc/topic.h)."""
from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Union

from . import _aio, _codec, _core, _latency, _names, _options
from ._handle import Handle, open_core
from . import errors as shmq_errors
from .errors import ArgumentError, ArgumentTypeError, Empty, IncompatibleQueueError, QueueClosedError, _label

__all__ = ["Topic", "Subscription", "SubscriptionInfo", "TopicMessage", "TopicDelivery", "KIND_NAMES"]

TopicMessage = _core.TopicMessage
_core._set_topic_policy(_codec.decode_headers)

DEFAULT_CAPACITY = 64 * 1024 * 1024
MIN_CAPACITY = 64 * 1024
KIND_NAMES = {_core.KIND_QUEUE: "queue", _core.KIND_PRIORITY: "priority queue", _core.KIND_TOPIC: "topic"}
_CLASS_OF = {_core.KIND_QUEUE: "shmq.Queue", _core.KIND_PRIORITY: "shmq.PriorityQueue", _core.KIND_TOPIC: "shmq.Topic"}
_NO_SUB = (1 << 32) - 1


def incompatible(name: Optional[str], path: Optional[str], have: int, want: int) -> IncompatibleQueueError:
    """The error for opening a segment of kind `have` as kind `want` (naming both)."""
    label = repr(name) if name else _label(path)
    return IncompatibleQueueError(
        f"{label} is a {KIND_NAMES.get(have, f'kind {have}')}, not a {KIND_NAMES.get(want, f'kind {want}')}: "
        f"open it with {_CLASS_OF.get(have, 'shmq.open')} (or shmq.open(name))")


def sub_kind(flags: int) -> str:
    """A named subscription's kind as metrics label it: "ack" (ack=True, either on_slow),
    "block" or "drop_oldest"; private subscriptions are "private"."""
    if flags & _core.TSUB_ACK:
        return "ack"
    return "block" if flags & _core.TSUB_BLOCK else "drop_oldest"


def sum_hists(hists: Iterable[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """The bucket-wise sum of Core._hist()-shaped dicts (None ones skipped; None if all are).
    A histogram given as None (Core._scrape: no sample) counts as all zeros."""
    out: Optional[dict[str, Any]] = None
    for h in hists:
        if h is None:
            continue
        if out is None:
            out = {"wait": [0] * _latency.N_BUCKETS, "process": [0] * _latency.N_BUCKETS,
                   "wait_sum_ns": 0, "process_sum_ns": 0, "nacks": 0, "late_replies": 0}
        for k, v in h.items():
            if v is None or k not in out:
                continue
            out[k] = [a + b for a, b in zip(out[k], v)] if isinstance(v, list) else out[k] + v
    return out


def latency_keys(st: dict[str, Any], hist: Optional[dict[str, Any]]) -> None:
    """wait_p50_s, wait_p99_s, process_p50_s, process_p99_s of hist into st (None: no sample)."""
    w = hist["wait"] if hist else None
    p = hist["process"] if hist else None
    st["wait_p50_s"] = _latency.quantile(w, 0.5) if w else None
    st["wait_p99_s"] = _latency.quantile(w, 0.99) if w else None
    st["process_p50_s"] = _latency.quantile(p, 0.5) if p else None
    st["process_p99_s"] = _latency.quantile(p, 0.99) if p else None


def topic_stats(core: Any, st: dict[str, Any]) -> dict[str, Any]:
    """A topic's figures over the common stats keys (shmq.stats.complete_stats calls this for
    every topic, attached or inspected)."""
    ts = _core._topic_stats(core)
    if ts is None:
        return st
    for k in ("in_flight", "delayed", "acked", "redelivered", "dead_lettered", "expired", "dead_letter_failed",
              "dedup_hits"):
        st[k] = 0
    st["depth"] = ts["head_seq"] - ts["tail_seq"]
    st["capacity"] = ts["data_size"]
    st["bytes_used"] = ts["data_used"]
    st["max_message"] = ts["max_message"]
    st["published"] = st["enqueued"] = ts["published"]
    st["dropped"] = ts["dropped"]
    st["next_seq"] = ts["head_seq"]
    st["oldest_seq"] = ts["tail_seq"]
    st["retention"] = ts["retention_ns"] / 1e9 if ts["retention_ns"] else None
    st["log_entries"] = ts["n_entries"]
    subs = {}
    private = core._hist()        # the slot blocks: every private subscription's deliveries
    hists = [private]
    for rec in _core._topic_subscriptions(core):
        subs[rec[2]] = {"lag": rec[7], "missed": rec[5], "consumers": rec[8], "durable": True,
                        "on_slow": "block" if rec[3] & _core.TSUB_BLOCK else "drop_oldest", "delivered": rec[6]}
        if rec[3] & _core.TSUB_ACK:
            subs[rec[2]].update(ack=True, in_flight=rec[13], acked=rec[10], redelivered=rec[11],
                                dead_lettered=rec[12])
        h = _core._topic_sub_hist(core, rec[0])
        latency_keys(subs[rec[2]], h)
        hists.append(h)
    st["subscriptions"] = subs
    # the topic's latency keys: every delivery of every live subscription, private ones included
    total = sum_hists(hists)
    latency_keys(st, total)
    if "histograms" in st:
        st["histograms"] = total
    st["oldest_age_s"] = 0.0
    if ts["head_seq"] > ts["tail_seq"]:
        m = _core._topic_peek(core, ts["tail_seq"])
        st["oldest_age_s"] = max(0.0, time.time() - m[1] / 1e9) if m else 0.0
    return st


class SubscriptionInfo(NamedTuple):
    """One line of `Topic.subscriptions()`."""
    name: Optional[str]     # None for a private subscription of this handle
    lag: int                # published and not yet delivered to the subscription
    missed: int             # overrun (drop_oldest, private) or expired before delivery
    consumers: int          # live handles reading it (a durable one may have 0)
    durable: bool
    on_slow: str            # "block" or "drop_oldest"
    next_seq: int           # the seq it delivers next
    delivered: int


def _start(start: Any) -> tuple[int, int]:
    if start == "latest" and isinstance(start, str):
        return _core.TSTART_LATEST, 0
    if start == "earliest" and isinstance(start, str):
        return _core.TSTART_EARLIEST, 0
    if isinstance(start, bool) or isinstance(start, (str, bytes)):
        raise ArgumentError(f"start must be 'latest', 'earliest', a sequence number (int) or an epoch time "
                            f"(float), got {start!r}")
    if isinstance(start, int):
        if not 1 <= start < 1 << 63:
            raise ArgumentError(f"start sequence number must be >= 1, got {start}")
        return _core.TSTART_SEQ, start
    if isinstance(start, float):
        if math.isnan(start) or start < 0 or start > 1e11:
            raise ArgumentError(f"start time must be seconds since the epoch, got {start!r}")
        return _core.TSTART_TIME, int(start * 1e9)
    raise ArgumentTypeError(f"start must be 'latest', 'earliest', an int or a float, not {type(start).__name__}")


class TopicDelivery:
    """One delivery of an ack=True subscription: ``seq``/``id``, ``body``, ``headers``,
    ``timestamp``, ``delivery_count`` (1 on the first delivery). Settle it with ack() or
    nack(); extend() keeps the lease longer."""

    __slots__ = ("_sub", "_token", "_state", "_msg", "seq", "id", "body", "timestamp", "delivery_count")

    def __init__(self, sub: Subscription, msg: Any, token: int, deliveries: int):
        self._sub, self._msg, self._token, self._state = sub, msg, token, None
        self.seq = self.id = msg.seq
        self.body = msg.body
        self.timestamp = msg.timestamp
        self.delivery_count = deliveries

    @property
    def headers(self) -> dict:
        return self._msg.headers

    def ack(self) -> bool:
        """Done: never delivered again. Returns False if this delivery was acked already.
        Raises LeaseExpiredError when the lease ran out and the message was delivered again."""
        if self._state == "acked":
            return False
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        _core._topic_settle(self._sub._topic._core, self._token, 0, 0, self.seq)
        self._state = "acked"
        return True

    def nack(self, requeue: bool = True) -> None:
        """Give it back: redelivered to the group (requeue=True; counts a failed delivery, past
        max_deliveries it is dead-lettered) or dead-lettered now (requeue=False, reason "rejected")."""
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        if requeue:
            _core._topic_settle(self._sub._topic._core, self._token, 1, 0, self.seq)
        else:
            self._sub._dead_letter(self._msg, self._token, self.delivery_count, "rejected")
        self._state = "nacked"

    def extend(self, seconds: float) -> None:
        """Keep it in flight until now + seconds. Raises LeaseExpiredError as ack() does."""
        ns = _options.seconds_ns(seconds, "extend(seconds)")
        if self._state is not None:
            raise ArgumentError(f"topic message {self.seq} was {self._state}: this delivery is over")
        self._token = _core._topic_settle(self._sub._topic._core, self._token, 2, ns, self.seq)

    def __repr__(self) -> str:
        return f"<shmq.TopicDelivery seq={self.seq} delivery={self.delivery_count} {self._state or 'in flight'}>"


class Subscription:
    """A reader of a topic: a private one (lossy, ends with its handle) or a member of a named,
    durable subscription (each message goes to one member of the group).

    get/get_many/iteration deliver TopicMessage objects (``seq``, ``id``, ``body``, ``headers``,
    ``timestamp``) in publish order."""

    def __init__(self, topic: Topic, reader: Any, name: Optional[str], idx: int, gen: int, on_slow: str,
                 ack: bool = False, dead_letter: Optional[str] = None):
        self._ack = ack
        self._dead_letter_name = dead_letter
        self._topic = topic
        self._reader = reader
        self._name = name
        self._idx = idx
        self._gen = gen
        self._on_slow = on_slow
        self._closed = False

    @property
    def name(self) -> Optional[str]:
        return self._name

    @property
    def durable(self) -> bool:
        return self._name is not None

    @property
    def closed(self) -> bool:
        return self._closed or self._topic.closed

    def _live(self):
        if self._closed:
            raise QueueClosedError(f"subscription {self._name or '(private)'} is closed")
        return self._reader

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next message (ack=True: a TopicDelivery to ack). Raises Empty (timeout or
        block=False with nothing there), QueueClosedError after close(), SubscriptionNotFound
        if it was unsubscribed meanwhile."""
        if self._ack:
            return self._receive(block, timeout)
        return self._live().get(block, timeout)

    def get_nowait(self) -> Any:
        return self.get(False)

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True) -> list:
        """Up to max_items messages, returned as soon as at least one is there. Raises Empty."""
        if self._ack:
            if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
                raise ArgumentError(f"max_items must be an int of at least 1, got {max_items!r}")
            out = [self._receive(block, timeout)]
            while len(out) < max_items:
                try:
                    out.append(self._receive(False, None))
                except Empty:
                    break
            return out
        return self._live().get_many(max_items, timeout, block)

    def _receive(self, block, timeout):
        reader = self._live()
        end = None if (timeout is None or not block) else time.monotonic() + _options.seconds_ns(timeout, "timeout") / 1e9
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            msg, token, n, dead = reader.receive(block, left)
            if not dead:
                return TopicDelivery(self, msg, token, n)
            self._dead_letter(msg, token, n - 1, "max-deliveries")   # the deliveries it had

    def _dead_letter(self, msg, token, deliveries, reason):
        """Copy msg to the dead-letter queue (deduplicated on topic, subscription and seq, so a
        repeat after a crash sends nothing new), then settle its lease."""
        from .queue import Queue, _create_dlq
        name = self._dead_letter_name
        try:
            dlq = Queue(name)
        except shmq_errors.QueueNotFound:
            dlq = _create_dlq(name, create=True, exist_ok=True, capacity="4MiB", ack=True)
        try:
            dlq.send(msg.body, headers={"x-dead-letter-source": f"topic:{self._topic.name}/{self._name}",
                                        "x-dead-letter-reason": reason, "x-delivery-count": str(deliveries),
                                        "x-original-seq": str(msg.seq)},
                     dedup_id=f"topic:{self._topic.name}:{self._name}:{msg.seq}")
        finally:
            dlq.close()
        try:
            _core._topic_settle(self._topic._core, token, 0, 0, msg.seq)
        except shmq_errors.LeaseExpiredError:
            pass   # settled meanwhile by a repair; the copy is deduplicated

    def get_bodies(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True) -> list:
        """get_many, but only the bodies (no TopicMessage objects: the fastest batch)."""
        return self._live().get_many(max_items, timeout, block, True)

    def __iter__(self) -> Iterator[Any]:
        """Every message as it comes (blocks); ends when the subscription or its topic closes."""
        while True:
            try:
                yield self.get()
            except QueueClosedError:
                return

    # -- asyncio (DESIGN §5.6): the queues' waiting (shmq._aio), on the topic's wait word ----------
    @property
    def _core(self) -> Any:
        return self._topic._core    # what shmq._aio's waiter watches: publishers wake it

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """get() without blocking the event loop: the next message (ack=True: a TopicDelivery).
        Raises Empty after timeout seconds, QueueClosedError. A cancelled call takes nothing."""
        return await _aio._wait(self, _aio.GET, lambda: self.get(False), timeout, Empty)

    async def get_many_async(self, max_items: int = 64, timeout: Optional[float] = None) -> list:
        """get_many() without blocking the event loop: 1..max_items messages. Raises Empty."""
        return await _aio._wait(self, _aio.GET, lambda: self.get_many(max_items, block=False), timeout, Empty)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        """``async for m in sub``: every message as it comes; ends when the subscription or its
        topic closes."""
        try:
            return await self.get_async()
        except QueueClosedError:
            raise StopAsyncIteration from None

    def _info(self):
        for rec in _core._topic_subscriptions(self._topic._core):
            if rec[0] == self._idx and rec[1] == self._gen:
                return rec
        return None

    @property
    def lag(self) -> int:
        """Messages published and not yet delivered to this subscription (its group)."""
        if self._name is None:
            head, tail = _core._topic_head(self._topic._core)
            return max(0, head - max(self._reader.cursor, tail))
        rec = self._info()
        return rec[7] if rec else 0

    @property
    def missed(self) -> int:
        """Messages this subscription lost: overrun (private, drop_oldest) or past retention."""
        if self._name is None:
            return self._reader.missed
        rec = self._info()
        return rec[5] if rec else 0

    def stats(self) -> dict[str, Any]:
        """This subscription's figures: name, durable, kind ("private", "block", "drop_oldest",
        "ack"), lag, missed, delivered, consumers, and the latency keys wait_p50_s, wait_p99_s
        (publish -> delivery to this subscription), process_p50_s, process_p99_s (receive -> ack,
        ack=True), None where no sample was taken. A named subscription's figures are its
        group's (every member, every process, since it was created); a private one's are those
        of every private subscription of this handle (they share the handle's block). ack=True:
        in_flight, acked, redelivered, dead_lettered too."""
        core = self._topic._core
        if self._name is None:
            st: dict[str, Any] = {"name": None, "durable": False, "kind": "private", "lag": self.lag,
                                  "missed": self.missed, "delivered": None, "consumers": 1}
            latency_keys(st, core._hist())
            return st
        rec = self._info()
        if rec is None:
            raise shmq_errors.SubscriptionNotFound(f"subscription {self._name!r} of topic {self._topic.name!r} "
                                                   "no longer exists")
        st = {"name": self._name, "durable": True, "kind": sub_kind(rec[3]), "lag": rec[7], "missed": rec[5],
              "delivered": rec[6], "consumers": rec[8]}
        if rec[3] & _core.TSUB_ACK:
            st.update(in_flight=rec[13], acked=rec[10], redelivered=rec[11], dead_lettered=rec[12])
        latency_keys(st, _core._topic_sub_hist(core, rec[0]))
        return st

    def close(self) -> None:
        """Stop reading. A named subscription keeps its position for the next subscriber."""
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        self._topic._forget(self)
        for w in list(self.__dict__.get("_aio_watchers", {}).values()):
            # coroutines asleep in get_async: each wakes and meets QueueClosedError in its own call
            try:
                w.loop.call_soon_threadsafe(w._kicked, QueueClosedError("subscription closed"))
            except RuntimeError:
                pass                             # that loop is closed: nobody waits there

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        what = f"named {self._name!r}" if self._name else "private"
        return f"<shmq.Subscription {what} of {self._topic.name!r}{' closed' if self.closed else ''}>"

    def __reduce__(self):
        raise ArgumentTypeError("a Subscription is one handle's reader and cannot be pickled; pass the Topic "
                                "and subscribe by name in the other process")


class Topic(Handle, _core.TopicOps):
    """A named publish/subscribe log in shared memory (DESIGN §5.3).

    ``Topic(name, create=True, capacity="64MiB", retention=None, max_message=None, mode=0o600,
    exist_ok=False)`` creates one; ``Topic(name)`` opens it. ``publish`` appends and returns
    the sequence number (1, 2, 3 ...); every subscription sees every message published after
    its start, in order; each message is stored once. Raises QueueNotFound (no such topic),
    QueueExistsError, IncompatibleQueueError (the name is a queue), ValueError/TypeError for
    bad options (ShmqError too)."""

    def __new__(cls, name: str, *, create: bool = False, capacity: Union[int, str] = DEFAULT_CAPACITY,
                retention: Optional[float] = None, max_message: Optional[Union[int, str]] = None,
                mode: int = 0o600, exist_ok: bool = False, max_participants: Optional[int] = None,
                backend: Optional[str] = None) -> Topic:
        name = _options.name(name, "topic name")
        from .queue import _pick_backend
        url = _pick_backend(backend)
        if url is not None:
            # DESIGN §11: a stream, a consumer group per named subscription (shmq._redis.topic)
            from ._redis.topic import RedisTopic, open_topic
            return open_topic(RedisTopic, name, url, create, capacity, retention, max_message, mode, exist_ok,
                              max_participants)
        cap = _options.size(capacity, "capacity")
        if cap < MIN_CAPACITY:
            raise ArgumentError(f"capacity must be at least {MIN_CAPACITY} bytes, got {capacity!r}")
        ret_ns = 0 if retention is None else _options.seconds_ns(retention, "retention", allow_zero=False)
        mm = 0 if max_message is None else _options.size(max_message, "max_message")
        if max_message is not None and mm < 1:
            raise ArgumentError("max_message must be at least 1 byte")
        mode = _options._mode(mode)
        slots = 0 if max_participants is None else _options.check_int(max_participants, "max_participants", 1, 1023)
        path = _names.path_of(name)
        if create:
            core = _core.Core()
            created = _core._topic_create(core, path, cap, mm, ret_ns, mode, slots, bool(exist_ok))
        else:
            core, created = open_core(path, name), False
        kind = _core._kind_of(core)
        if kind != _core.KIND_TOPIC:
            core._close()
            raise incompatible(name, path, kind, _core.KIND_TOPIC)
        if not created and retention is not None:
            have = _core._topic_stats(core)["retention_ns"]
            if have != ret_ns:
                core._close()
                raise ArgumentError(f"topic {name!r} exists with other options: retention is "
                                    f"{have / 1e9 if have else None}, not {retention!r}")
        self = _core.HandleBase.__new__(cls)
        self._adopt(core, name, owner=False)
        return self

    def _attached(self):
        self._subs = weakref.WeakSet()
        self._members: dict[int, int] = {}
        self._lock = threading.Lock()
        self._max_message = _core._topic_stats(self._core)["max_message"]

    # -- publish ---------------------------------------------------------------------
    def publish(self, obj: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None, block: bool = True,
                timeout: Optional[float] = None) -> int:
        """Append obj; returns its sequence number. Blocks (or raises Full after timeout /
        block=False) only while a subscription with on_slow='block' holds the oldest messages.
        Raises MessageTooLargeError, QueueClosedError, TypeError (unpicklable)."""
        hdr = _codec.encode_headers(headers) if headers else None
        return self._publish(obj, hdr, block, timeout)

    def publish_many(self, objs: Iterable[Any], headers: Optional[Mapping[str, Union[str, bytes]]] = None,
                     block: bool = True, timeout: Optional[float] = None) -> list[int]:
        """Publish each object in order (one lock hold per batch); returns their sequence
        numbers. An error carries .items_put (how many were published)."""
        hdr = _codec.encode_headers(headers) if headers else None
        return self._publish_many(objs, hdr, block, timeout)

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, name: Optional[str] = None, *, start: Any = "latest", on_slow: Optional[str] = None,
                  ack: bool = False, visibility_timeout: float = 30.0, max_deliveries: int = 20,
                  dead_letter: Optional[str] = None) -> Subscription:
        """A private subscription (name=None: lossy, never slows a publisher, ends with this
        handle) or a member of the named, durable subscription `name` (created on first use
        with `start` and `on_slow`: "block", the default, or "drop_oldest").
        Raises ValueError for bad arguments or when name exists with another on_slow."""
        if self.closed:
            raise QueueClosedError(f"{self!r} is closed")
        if ack and name is None:
            raise ArgumentError("ack=True needs a named subscription (a private one is lossy by definition)")
        kind, arg = _start(start)
        if name is None:
            if on_slow not in (None, "drop_oldest"):
                raise ArgumentError("a private subscription is always lossy (on_slow='drop_oldest'); use a named "
                                    "subscription for on_slow='block'")
            head, tail = _core._topic_head(self._core)
            if kind == _core.TSTART_LATEST:
                cursor = head
            elif kind == _core.TSTART_EARLIEST:
                cursor = tail
            elif kind == _core.TSTART_SEQ:
                cursor = arg
            else:
                cursor = self._seq_at(arg / 1e9, tail, head)
            reader = _core.TopicReader(self._core, _NO_SUB, 0, cursor, self._max_message)
            sub = Subscription(self, reader, None, _NO_SUB, 0, "drop_oldest")
        else:
            if not isinstance(name, str):
                raise ArgumentTypeError(f"subscription name must be a str, not {type(name).__name__}")
            try:
                _names.check_name(name)
            except ArgumentError as e:
                raise ArgumentError(f"subscription name: {e}") from None
            bname = name.encode()
            if len(bname) > _core.TOPIC_NAME_MAX:
                raise ArgumentError(f"subscription name must be at most {_core.TOPIC_NAME_MAX} characters")
            slow = "block" if on_slow is None else on_slow
            if slow not in ("block", "drop_oldest"):
                raise ArgumentError(f"on_slow must be 'block' or 'drop_oldest', got {on_slow!r}")
            flags = _core.TSUB_BLOCK if slow == "block" else 0
            vis = maxd = 0
            dlq = None
            if ack:
                flags |= _core.TSUB_ACK
                vis = _options.seconds_ns(visibility_timeout, "visibility_timeout", allow_zero=False)
                maxd = _options.check_int(max_deliveries, "max_deliveries", 1, 65535)
                dlq = f"{self.name}.{name}.dlq" if dead_letter is None else _options.name(dead_letter, "dead_letter")
                _names.check_name(dlq)
            idx, gen, _created = _core._topic_subscribe(self._core, bname, flags, kind, arg, vis, maxd)
            reader = _core.TopicReader(self._core, idx, gen, 0, self._max_message)
            sub = Subscription(self, reader, name, idx, gen, slow, bool(ack), dlq)
            with self._lock:
                self._members[idx] = self._members.get(idx, 0) + 1
        self._subs.add(sub)
        return sub

    def _seq_at(self, t: float, tail: int, head: int) -> int:
        # private start=time: the first message at or after t (a scan with peek; named ones do it in C)
        for seq in range(tail, head):
            m = _core._topic_peek(self._core, seq)
            if m is not None and m[1] / 1e9 >= t:
                return seq
        return head

    def _forget(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if sub._name is None or self.closed:
            return
        with self._lock:
            n = self._members.get(sub._idx, 0) - 1
            if n > 0:
                self._members[sub._idx] = n
                return
            self._members.pop(sub._idx, None)
        _core._topic_leave(self._core, sub._idx)

    def unsubscribe(self, name: str) -> None:
        """Delete the named subscription (its position and counters); its members' next get
        raises SubscriptionNotFound. Raises SubscriptionNotFound if there is none."""
        if not isinstance(name, str):
            raise ArgumentTypeError(f"subscription name must be a str, not {type(name).__name__}")
        _core._topic_unsubscribe(self._core, name.encode())

    def subscriptions(self) -> list[SubscriptionInfo]:
        """The named subscriptions (durable, listed with consumers == 0 while nobody reads
        them) and this handle's private ones."""
        out = [SubscriptionInfo(rec[2], rec[7], rec[5], rec[8], True,
                                "block" if rec[3] & _core.TSUB_BLOCK else "drop_oldest", max(rec[4], 1), rec[6])
               for rec in _core._topic_subscriptions(self._core)]
        for sub in list(self._subs):
            if sub._name is None and not sub._closed:
                out.append(SubscriptionInfo(None, sub.lag, sub.missed, 1, False, "drop_oldest",
                                            sub._reader.cursor, 0))
        return out

    # -- monitoring ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Every key of Queue.stats() plus the topic's: ``published``, ``dropped`` (left the log,
        read or not), ``next_seq``, ``oldest_seq``, ``retention``, ``subscriptions`` (name ->
        {lag, missed, consumers, durable, on_slow}). ``depth`` counts the messages in the log."""
        return super().stats()

    def peek(self, seq: int) -> Optional[TopicMessage]:
        """Message seq if it is still in the log (no cursor moves), else None."""
        seq = _options.check_int(seq, "seq", 1, (1 << 63) - 1)
        m = _core._topic_peek(self._core, seq)
        if m is None:
            return None
        seq, ts, kind, hdr, payload = m
        body = payload if kind == _codec.KIND_BYTES else _codec.decode(kind, memoryview(payload), False, seq)
        return _core._topic_message(seq, body, ts / 1e9, hdr)

    def _closing(self):
        for sub in list(getattr(self, "_subs", ())):
            sub._closed = True
            sub._reader.close()

    def __repr__(self) -> str:
        return f"<shmq.Topic {self._name!r} {'closed' if self.closed else 'open'}>"
