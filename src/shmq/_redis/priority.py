"""PriorityQueue on Redis (the classes PriorityQueue() returns for backend=redis://): a list per
level at most once (q0..q<levels-1>), a stream per level with its consumer group at least once
(s0..s<levels-1>, with that level's lease, given-back and dead-letter-reason keys). The scripts
are the queue's (common.lua's use_level points them at one level); receive.lua and
prio_pop.lua look at the highest level first, in one script, so a take never returns a lower
level while a higher one holds a ready message (DESIGN §5.2). docs/internals/redis.md."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable, Optional

from .. import _core, _options
from ..errors import ArgumentError, Empty, Full
from ..priority import DEFAULT_LEVELS, PriorityQueue, ReliablePriorityQueue
from . import client_name, connect, script_source
from .queue import (_ITEM, _KEEP, _MHEAD, _SLICE_S, _create, _deadline, _gap, _io, _left, _POLL_S, _unsupported,
                    RedisQueue, RedisReliableQueue)

__all__ = ["open_priority", "RedisPriorityQueue", "RedisReliablePriorityQueue"]


def open_priority(cls, name, url, options, levels, max_wait):
    """PriorityQueue(name, backend=url, ...): validated as on shared memory, then the queue's
    keys created or opened on the server. levels: the checked int or None (default 10 when
    created; must agree with the queue's when given)."""
    mw_ms = None if max_wait is None else max(1, _options.seconds_ns(max_wait, "max_wait", allow_zero=False)
                                               // 1_000_000)
    spec = _options.resolve(name, **options)
    if spec.mode != 0o600:
        _unsupported("mode=", "access to a Redis server is governed by its ACLs (ACL SETUSER), not file modes")
    if spec.slots:
        _unsupported("max_participants=", "Redis serves any number of clients")
    if options.get("dedup_capacity") is not None:
        _unsupported("dedup_capacity=", "each dedup id is a key with a TTL (dedup_window): there is no table to size")
    r = connect(url, client_name("pq"))
    try:
        meta = _create(r, url, spec, False, "priority", levels or DEFAULT_LEVELS, {"max_wait_ms": mw_ms or 0})
    except BaseException:
        r.close()
        raise
    have = int(meta.get("levels") or 0)
    if not 1 <= have <= 64:
        r.close()
        from ..errors import CorruptQueueError
        raise CorruptQueueError(f"priority queue {name!r} on {url}: its levels field {meta.get('levels')!r} "
                                "is not 1-64 (written by another program?)")
    cls = RedisReliablePriorityQueue if meta.get("ack") == "1" else RedisPriorityQueue
    self = _core.HandleBase.__new__(cls)     # (the ops classes add no C fields)
    self._setup(r, url, name, meta)
    problems = _options.problems(spec.explicit, self._settings(), _core.KIND_PRIORITY)
    if levels is not None and levels != have:
        problems.append(f"levels={levels} (the queue has levels={have})")
    if mw_ms is not None and mw_ms != int(meta.get("max_wait_ms") or 0):
        problems.append(f"max_wait={max_wait!r} (the queue has max_wait={self.max_wait!r})")
    if problems:
        self.close()
        raise ArgumentError(f"queue {name!r} exists with other options: " + "; ".join(problems))
    return self


def _rebuild(name, url):
    return PriorityQueue(name, backend=url)


class _Levels:
    """What both Redis priority classes add to their queue class."""

    def _setup(self, r, url, name, meta):
        super()._setup(r, url, name, meta)
        self._levels = int(meta["levels"])

    @property
    def levels(self) -> int:
        """The number of priority levels (priorities 0 .. levels-1)."""
        return self._levels

    @property
    def max_wait(self) -> Optional[float]:
        """Aging: a message ready for longer than this many seconds goes first (None: strict)."""
        ms = int(self._meta.get("max_wait_ms") or 0)
        return ms / 1e3 if ms else None

    def _prio(self, p):
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < self._levels:
            raise ArgumentError(f"priority must be an int from 0 to {self._levels - 1} (levels={self._levels}), "
                                f"got {p!r}")
        return p

    def _settings(self):
        st = super()._settings()
        st["kind"] = _core.KIND_PRIORITY
        st["max_wait"] = self.max_wait
        return st

    def __reduce__(self):
        super().__reduce__()          # refuses a closed handle
        return (_rebuild, (self._name, self._url))

    def __repr__(self) -> str:
        return f"<shmq.PriorityQueue {self._name} on {self._url} {'closed' if self.closed else 'open'}>"


class RedisPriorityQueue(_Levels, RedisQueue, PriorityQueue):
    """An at-most-once priority queue on Redis: a list per level."""

    def _setup(self, r, url, name, meta):
        super()._setup(r, url, name, meta)
        self._lists = [self._p + f"q{k}" for k in range(self._levels)]
        self._put_script = r.register_script(script_source("prio_put"))
        self._pop_script = r.register_script(script_source("prio_pop"))

    def _push(self, items, block, timeout, level=0):
        self._check()
        dl = _deadline(timeout, block)
        if self._maxsize and len(items) > self._maxsize:
            raise ArgumentError(f"{len(items)} items can never fit queue {self._name!r} (maxsize={self._maxsize})")
        with _io(self):
            while not self._put_script(keys=[self._p], args=[level, *items]):
                if dl is not None and time.monotonic() >= dl:
                    e = Full(f"queue {self._name!r} is full: it holds maxsize={self._maxsize} items; consume some, "
                             "wait longer (timeout=), or create the queue with a larger maxsize")
                    e.reason = "maxsize"
                    raise e
                time.sleep(_POLL_S)
                self._check()

    def put(self, obj: Any, priority: int = 0, block: bool = True, timeout: Optional[float] = None) -> None:
        self._push([self._item(obj)], block, timeout, self._prio(priority))

    def put_nowait(self, obj: Any, priority: int = 0) -> None:
        self.put(obj, priority, False)

    def put_many(self, items: Iterable[Any], priority: int = 0, block: bool = True,
                 timeout: Optional[float] = None) -> int:
        p = self._prio(priority)
        batch = [self._item(o) for o in items]
        if batch:
            self._push(batch, block, timeout, p)
        return len(batch)

    async def put_async(self, obj: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
        item, p = self._item(obj), self._prio(priority)
        return await asyncio.get_running_loop().run_in_executor(None, self._push, [item], True, timeout, p)

    def _pop(self, n, block, timeout):
        self._check()
        if self._stash:
            got, self._stash[:] = self._stash[:n], self._stash[n:]
            return got
        dl = _deadline(timeout, block)
        with _io(self):
            while True:
                got = self._pop_script(keys=[self._p], args=[n])
                if got:
                    break
                left = _left(dl)
                if left is not None and left <= 0:
                    raise Empty()
                wait = _SLICE_S if left is None else min(left, _SLICE_S)
                # BLPOP looks at its keys in order: the highest level first
                one = self._r.blpop(self._lists[::-1], timeout=max(wait, 0.001))
                if one is not None:
                    self._r.hincrby(self._p + "meta", "dequeued", 1)
                    got = [one[1]]
                    if n > 1:
                        got += self._pop_script(keys=[self._p], args=[n - 1]) or []
                    break
                self._check()
        return [self._decode_item(x) for x in got]

    def qsize(self) -> int:
        self._check()
        with _io(self):
            pipe = self._r.pipeline(transaction=False)
            for k in self._lists:
                pipe.llen(k)
            return sum(int(x) for x in pipe.execute())

    def _counts(self, pipe):
        for k in self._lists:
            pipe.llen(k)
        for k in self._lists:
            pipe.lindex(k, 0)

    def _fill(self, st, meta, res):
        lens, heads = res[:self._levels], res[self._levels:]
        st["depth"] = sum(int(x) for x in lens)
        st["levels"] = [int(x) for x in lens]
        ts = [_ITEM.unpack_from(h)[1] for h in heads if h]
        if ts:
            st["oldest_age_s"] = max(0.0, time.time() - min(ts))


class RedisReliablePriorityQueue(_Levels, RedisReliableQueue, ReliablePriorityQueue):
    """An at-least-once priority queue on Redis: a stream per level, each with its consumer group;
    a message keeps its priority (its level) through nack, lease expiry, a consumer's death
    and the dead-letter copy (the DLQ is a priority queue with the same levels)."""

    def _setup(self, r, url, name, meta):
        super()._setup(r, url, name, meta)
        self._streams = [self._p + f"s{k}" for k in range(self._levels)]
        self._stream = self._streams[-1]

    # a dead consumer's leases end before every take (at most every REAP_S), so its message is
    # not passed over for a lower level's (DESIGN §5.2)
    _reap_first = True

    def _wait_new(self, last, wait):
        lasts = {last[i]: last[i + 1] for i in range(0, len(last), 2)}   # every level's stream
        self._r.xread(lasts, count=1, block=max(1, int(wait * 1000)))

    def put(self, obj: Any, priority: int = 0, block: bool = True, timeout: Optional[float] = None) -> None:
        """send(obj, priority=priority): no id returned (at-least-once queues: see send)."""
        self.send(obj, priority=priority, block=block, timeout=timeout)

    def put_nowait(self, obj: Any, priority: int = 0) -> None:
        self.send(obj, priority=priority, block=False)

    def put_many(self, items: Iterable[Any], priority: int = 0, block: bool = True,
                 timeout: Optional[float] = None) -> int:
        self._prio(priority)
        dl = _deadline(timeout, block)
        n = 0
        try:
            for obj in items:
                left = _left(dl)
                self.send(obj, priority=priority, block=block and left != 0.0, timeout=left)
                n += 1
        except BaseException as e:
            e.items_put = n  # type: ignore[attr-defined]
            raise
        return n

    async def put_async(self, obj: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
        await self.send_async(obj, priority=self._prio(priority), timeout=timeout)

    def _head(self):
        return None        # redrive checks each message's target after taking it

    def _counts(self, pipe):
        self._scripts["stats"](keys=[self._p], client=pipe)
        for st in self._streams:
            pipe.xrange(st, count=1)
        for st in self._streams:
            pipe.xinfo_consumers(st, "g")

    def _fill(self, st, meta, res):
        flat, rest = res[0], res[1:]
        heads, consumers = rest[:self._levels], rest[self._levels:]
        levels, depth, in_flight, given_back, given_back_due = [], 0, 0, 0, 0
        for k in range(self._levels):
            xlen, pending, due_leases, gb, gb_due = (int(x) for x in flat[5 * k:5 * k + 5])
            ready = max(0, xlen - pending + due_leases + gb_due)
            levels.append(ready)
            depth += ready
            in_flight += max(0, pending - due_leases - gb)
            given_back += gb
            given_back_due += gb_due
        delayed = int(flat[5 * self._levels])
        st.update(depth=depth + int(meta.get("parked", 0)), in_flight=in_flight, delayed=delayed + given_back - given_back_due, levels=levels,
                  consumers=len({c["name"] for cs in consumers for c in cs}))
        ts = [_MHEAD.unpack_from(h[0][1][b"m"])[2] / 1e3 for h in heads if h]
        if ts:
            st["oldest_age_s"] = max(0.0, time.time() - min(ts))


# As in queue.py: a call of the shared-memory classes with no Redis version raises UnsupportedError.
_OURS = (RedisQueue, RedisReliableQueue, RedisPriorityQueue, RedisReliablePriorityQueue, _Levels)
for _cls, _base in ((RedisPriorityQueue, PriorityQueue), (RedisReliablePriorityQueue, ReliablePriorityQueue)):
    for _n in dir(_base):
        if _n.startswith("_") or _n in _KEEP:
            continue
        if any(_n in k.__dict__ for k in _cls.__mro__ if k in _OURS):
            continue
        if callable(getattr(_base, _n, None)):
            setattr(_cls, _n, _gap(_n))
