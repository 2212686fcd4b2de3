"""PriorityQueue: a queue whose higher-priority messages are served first (a ring per level in shared memory)."""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Mapping, Optional, TypeVar, Union

from . import _aio, _core, _options
from .errors import ArgumentError, Full, UnsupportedError
from . import journal as _journal
from .queue import _JOURNAL_ARGS, Queue, _make_core, _pick_backend
from .reliable import ReliableQueue

__all__ = ["PriorityQueue", "ReliablePriorityQueue"]

DEFAULT_LEVELS = 10
MAX_LEVELS = 64

_P = TypeVar("_P", bound="PriorityQueue")


def _levels(levels):
    if levels is None:
        return DEFAULT_LEVELS
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise ArgumentError(f"levels must be an int from 1 to {MAX_LEVELS}, got {levels!r}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ArgumentError(f"levels must be from 1 to {MAX_LEVELS}, got {levels}")
    return levels


def _new(cls: type[_P], name_or_maxsize: Union[str, int], levels: Optional[int], max_wait: Optional[float],
         is_dlq: bool = False, **options: Any) -> _P:
    lv = _levels(levels)
    mw = 0 if max_wait is None else _options.seconds_ns(max_wait, "max_wait", allow_zero=False)
    backend = options.pop("backend", None)
    url = _pick_backend(backend) if isinstance(name_or_maxsize, str) or backend is not None else None
    if url is not None and not is_dlq:
        # DESIGN §11: a list / a stream per level on Redis (shmq._redis.priority)
        if not isinstance(name_or_maxsize, str):
            raise ArgumentError("backend= needs a named queue: anonymous queues stay in shared memory")
        if any(options.get(k) is not None for k in _JOURNAL_ARGS):
            raise UnsupportedError("journal= is not supported on the Redis backend (Redis persists with its "
                                   "own AOF/RDB settings): drop it or use backend='shm'")
        for k in _JOURNAL_ARGS:
            options.pop(k, None)
        from ._redis.priority import open_priority
        return open_priority(cls, name_or_maxsize, url, options, levels and lv, max_wait)  # type: ignore[return-value]
    jargs = {k: options.pop(k, None) for k in _JOURNAL_ARGS}
    spec = _options.resolve(name_or_maxsize, is_dlq=is_dlq, **options)
    jopts = _journal.resolve(*jargs.values(), name=spec.name, max_message=spec.max_message)
    core, created = _make_core(spec, _core.KIND_PRIORITY, lv, mw, jopts=jopts, jfsync=jargs["fsync"])
    if not created:
        have_lv, have_mw, _ = core._prio_info()
        bad = []
        if levels is not None and levels != have_lv:
            bad.append(f"levels={levels} (the queue has levels={have_lv})")
        if max_wait is not None and mw != have_mw:
            bad.append(f"max_wait={max_wait!r} (the queue has max_wait={have_mw / 1e9 if have_mw else None!r})")
        if bad:
            core._close()
            raise ArgumentError(f"queue {spec.name!r} exists with other options: " + "; ".join(bad))
    if core._flags_value & _core.F_ACK and not issubclass(cls, ReliablePriorityQueue):
        cls = ReliablePriorityQueue  # type: ignore[assignment]
    self = _core.PriorityOps.__new__(cls)
    self._just_created = created and spec.name is not None
    self._adopt(core, spec.name, owner=spec.name is None)
    return self


class PriorityQueue(_core.PriorityOps, Queue):
    """A process-shared priority queue: ``put(obj, priority)``, ``get()`` returns the oldest
    message of the highest priority (0 <= priority < levels, higher first; FIFO within a level).

    ``PriorityQueue()`` / ``PriorityQueue(maxsize)``: anonymous (passes to children like Queue;
    it grows as needed unless capacity= says otherwise, as an anonymous Queue).
    ``PriorityQueue("name", create=True, ...)``: named, with every option of a named Queue
    (ack=True and capacity=None, a queue that grows, included), plus
    ``levels`` (1..64, default 10) and ``max_wait`` (seconds: a message ready for longer is
    served before any younger one, whatever its level; None = strict priority).

    Raises what Queue() raises, ValueError for bad levels/max_wait/priority, and
    IncompatibleQueueError when the name holds another kind of queue."""

    _c_base = _core.PriorityOps

    def __new__(cls: type[_P], name_or_maxsize: Union[str, int] = 0, *, levels: Optional[int] = None,
                max_wait: Optional[float] = None, maxsize: Optional[int] = None, create: bool = False,
                exist_ok: bool = False, capacity: Union[int, str, None] = "default",
                max_message: Union[int, str, None] = None, mode: int = 0o600, raw: bool = False,
                max_participants: Optional[int] = None, ack: Optional[bool] = None,
                visibility_timeout: Optional[float] = None, max_deliveries: Optional[int] = None,
                dead_letter: Optional[str] = None, delay: Optional[float] = None, ttl: Optional[float] = None,
                dedup_window: Optional[float] = None, dedup_capacity: Optional[int] = None,
                journal: Union[str, os.PathLike, None] = None, fsync: Optional[str] = None,
                fsync_interval: Optional[float] = None, journal_recovery: Optional[str] = None,
                journal_segment_size: Union[int, str, None] = None, backend: Optional[str] = None) -> _P:
        return _new(cls, name_or_maxsize, levels, max_wait, maxsize=maxsize, create=create, exist_ok=exist_ok,
                    capacity=capacity, max_message=max_message, mode=mode, raw=raw,
                    max_participants=max_participants, ack=ack, visibility_timeout=visibility_timeout,
                    max_deliveries=max_deliveries, dead_letter=dead_letter, delay=delay, ttl=ttl,
                    dedup_window=dedup_window, dedup_capacity=dedup_capacity, journal=journal, fsync=fsync,
                    fsync_interval=fsync_interval, journal_recovery=journal_recovery,
                    journal_segment_size=journal_segment_size, backend=backend)

    @property
    def levels(self) -> int:
        """The number of priority levels (priorities 0 .. levels-1)."""
        return self._core._prio_info()[0]

    @property
    def max_wait(self) -> Optional[float]:
        """Seconds after which a ready message is served before younger ones (None: strict)."""
        ns = self._core._prio_info()[1]
        return ns / 1e9 if ns else None

    async def put_async(self, obj: Any, priority: int = 0, timeout: Optional[float] = None) -> None:  # type: ignore[override]
        """put(obj, priority) waiting for room without blocking the event loop (as Queue.put_async)."""
        self._core._check_priority(priority)
        return await _aio._wait(self, _aio.PUT, lambda: self.put_nowait(obj, priority), timeout, Full)

    def stats(self) -> dict[str, Any]:
        """Queue.stats() plus "levels": ready messages per priority (index = priority)."""
        s = super().stats()
        s["levels"] = self._core._prio_info()[2]
        return s


class ReliablePriorityQueue(PriorityQueue, ReliableQueue):
    """An at-least-once priority queue (``PriorityQueue(name, create=True, ack=True)``):
    send(priority=)/receive/ack/nack/extend as on an at-least-once Queue. A message keeps its
    priority through nack, lease expiry, a consumer's death and the dead-letter move; the
    dead-letter queue is a priority queue with the same levels."""

    def _priority_of(self, priority):
        p = 0 if priority is None else priority
        self._core._check_priority(p)
        return p

    def _dlq_open(self, name):
        return PriorityQueue(name, backend="shm")

    def _dlq_create(self, name, **kw):
        return _new(PriorityQueue, name, self.levels, self.max_wait, is_dlq=True, **kw)

    # put on an at-least-once queue is a send with the queue's defaults (no lease is taken)
    def put(self, obj: Any, priority: int = 0, block: bool = True, timeout: Optional[float] = None) -> None:
        """send(obj, priority=priority): no id returned (at-least-once queues: see send)."""
        self.send(obj, priority=priority, block=block, timeout=timeout)

    def put_nowait(self, obj: Any, priority: int = 0) -> None:
        self.send(obj, priority=priority, block=False)

    def put_many(self, items: Iterable[Any], priority: int = 0, block: bool = True,
                 timeout: Optional[float] = None) -> int:
        self._core._check_priority(priority)
        ns = (None if timeout is None else _options.timeout_ns(timeout)) if block else 0   # for the whole batch
        end = None if ns is None else time.monotonic() + ns / 1e9
        n = 0
        try:
            for obj in items:
                left = None if end is None else max(0.0, end - time.monotonic())
                self.send(obj, priority=priority, block=block and left != 0.0, timeout=left)
                n += 1
        except BaseException as e:
            e.items_put = n  # type: ignore[attr-defined]
            raise
        return n

    def send(self, body: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None,
             priority: Optional[int] = None, delay: Optional[float] = None, ttl: Optional[float] = None,
             dedup_id: Union[str, bytes, None] = None, *, block: bool = True,
             timeout: Optional[float] = None, group: Union[str, bytes, None] = None) -> int:
        """ReliableQueue.send with priority in 0..levels-1 (ValueError otherwise); group= as there."""
        return ReliableQueue.send(self, body, headers, priority, delay, ttl, dedup_id, block=block, timeout=timeout,
                                  group=group)
