"""Queue, SimpleQueue and JoinableQueue: multiprocessing drop-ins and named queues."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NoReturn, Optional, TypeVar, Union

import os

from . import _aio, _core, _names, _options, _sweep
from . import journal as _journal
from ._handle import Handle, open_core, unlink
from .errors import ArgumentError, IncompatibleQueueError, UnsupportedError, _label
from .stats import settings

if TYPE_CHECKING:
    from .message import Message

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "unlink", "redrive"]

_Q = TypeVar("_Q", bound="Queue")
_JOURNAL_ARGS = ("journal", "fsync", "fsync_interval", "journal_recovery", "journal_segment_size")


def _make_core(spec, kind=_core.KIND_QUEUE, levels=0, max_wait_ns=0, jopts=None, jfsync=None):
    """(attached binding object, created) for a validated Queue() call (kind, levels and
    max_wait_ns: shmq.priority's PriorityQueue; jopts: shmq.journal's checked options, or None;
    jfsync: fsync= as given, for the "exists with other options" check)."""
    if jopts is not None:
        return _journal.make_core(spec, jopts, jfsync, kind, levels, max_wait_ns)
    if spec.name is None:
        _sweep.sweep_dead()     # issue 13 item 4: what creators killed by SIGTERM/SIGKILL/OOM left
        core = _core.Core()
        core._create(_names.path_of(_names.anonymous_name()), kind, spec.flags, spec.capacity,
                     spec.max_message, spec.maxsize, spec.mode, spec.slots, False, levels=levels,
                     max_wait_ns=max_wait_ns)
        return core, True
    path = _names.path_of(spec.name)
    if spec.create:
        core = _core.Core()
        created = core._create(path, kind, spec.flags, spec.capacity, spec.max_message, spec.maxsize,
                               spec.mode, spec.slots, spec.exist_ok, spec.ack, levels=levels, max_wait_ns=max_wait_ns)
    else:
        core, created = open_core(path, spec.name), False
    if _core._kind_of(core) == _core.KIND_TOPIC:
        core._close()
        from .topic import incompatible
        raise incompatible(spec.name, path, _core.KIND_TOPIC, _core.KIND_QUEUE)
    if not created:
        st = settings(core._raw_stats())
        if st["kind"] != kind:  # DESIGN §5.2: the class must match the segment's kind
            core._close()
            raise _wrong_kind(spec.name, st["kind"], kind)
        problems = _options.problems(spec.explicit, st, kind)
        if problems:
            core._close()
            raise ArgumentError(f"queue {spec.name!r} exists with other options: " + "; ".join(problems))
    return core, created


_KIND_WORDS = {_core.KIND_QUEUE: ("a FIFO queue", "shmq.Queue"),
               _core.KIND_PRIORITY: ("a priority queue", "shmq.PriorityQueue"),
               _core.KIND_TOPIC: ("a topic", "shmq.Topic")}


def _wrong_kind(name, have, want):
    h, hcls = _KIND_WORDS.get(have, (f"a segment of kind {have}", "shmq.open"))
    w, wcls = _KIND_WORDS.get(want, (f"kind {want}", "?"))
    return IncompatibleQueueError(f"queue {name!r} is {h}, not {w}: open it with {hcls}({name!r}) "
                                  "or shmq.open(name)")


def _pick_backend(backend):
    """The Redis URL a named handle goes to (backend=, else $SHMQ_BACKEND), or None for shared
    memory; shmq._redis (URL checks) is imported only when a backend is named."""
    if backend == "shm" or (backend is None and not os.environ.get("SHMQ_BACKEND")):
        return None
    from . import _redis
    return _redis.pick(backend)


def _refuse(q: Queue, what: str) -> NoReturn:
    raise ArgumentError(f"{what}() needs a queue created with ack=True; {_label(q.path)} "
                        "is at-most-once (use put/get)")


def _new(cls: type[_Q], name_or_maxsize: Union[str, int], *, is_dlq: bool = False, **options: Any) -> _Q:
    """Queue.__new__, with the one internal option: is_dlq (create the queue as a dead-letter
    queue, with no dead-letter queue of its own; shmq.reliable and tests use it)."""
    backend = options.pop("backend", None)
    url = _pick_backend(backend) if isinstance(name_or_maxsize, str) or backend is not None else None
    if url is not None and not is_dlq:
        if not isinstance(name_or_maxsize, str):
            raise ArgumentError("backend= needs a named queue: anonymous queues stay in shared memory")
        if any(options.get(k) is not None for k in _JOURNAL_ARGS):
            raise UnsupportedError("journal= is not supported on the Redis backend (Redis persists with its "
                                   "own AOF/RDB settings): drop it or use backend='shm'")
        for k in _JOURNAL_ARGS:
            options.pop(k, None)
        from ._redis.queue import open_queue
        return open_queue(cls, name_or_maxsize, url, options)
    jargs = {k: options.pop(k, None) for k in _JOURNAL_ARGS}
    spec = _options.resolve(name_or_maxsize, joinable=cls._joinable, is_dlq=is_dlq, **options)
    jopts = _journal.resolve(*jargs.values(), name=spec.name, max_message=spec.max_message)
    core, _created = _make_core(spec, jopts=jopts, jfsync=jargs["fsync"])
    if core._flags_value & _core.F_ACK:
        if cls is Queue:
            cls = ReliableQueue  # type: ignore[assignment]  # a subclass of Queue
        elif not issubclass(cls, ReliableQueue):
            core._close()
            raise ArgumentError(f"{cls.__name__} cannot be an at-least-once queue: use "
                                "shmq.Queue(name, ack=True)")
    self = _core.HandleBase.__new__(cls)
    self._just_created = _created and spec.name is not None
    self._adopt(core, spec.name, owner=spec.name is None)
    return self


def _create_dlq(name: str, **options: Any) -> Queue:
    """Create (or open, with exist_ok=True) the dead-letter queue `name`: an at-least-once queue
    with no dead-letter queue of its own."""
    return _new(Queue, name, is_dlq=True, **options)


class Queue(Handle, _aio.AsyncQueueOps, _core.QueueOps):
    """A process-shared FIFO queue in POSIX shared memory.

    ``Queue()`` / ``Queue(maxsize)``: the multiprocessing drop-in (anonymous, unbounded bytes,
    removed when its creating process closes it or exits). ``Queue("name", create=True, ...)``
    creates a named queue; ``Queue("name")`` opens one. With ``ack=True`` (or when the named
    queue was created so) the handle is an at-least-once queue (shmq.reliable), still a Queue.

    Arguments (all but the first keyword-only; None means "not given" unless said otherwise):

    - ``name_or_maxsize=0``: a queue name (str), or the maxsize of an anonymous queue (int).
    - ``maxsize=None``: at most this many items (0 or less: unbounded, as multiprocessing).
    - ``create=False``, ``exist_ok=False``: create the named queue; with exist_ok, open it if it exists.
    - ``capacity="default"``: bytes of shared memory (an int or a string such as "64MiB", at least
      64 KiB), or None for a queue that grows as needed. "default" is 64 MiB for a named queue and
      None (grows) for an anonymous one.
    - ``max_message=None``: the largest message in bytes (default: a quarter of a fixed capacity,
      any size for a queue that grows).
    - ``mode=0o600``: the file mode of a created queue (exactly this, whatever the umask).
    - ``raw=False``: bytes-like bodies only, never pickled.
    - ``max_participants=None``: the size of the participant table (handles attached at once).
    - ``ctx=None``: accepted for multiprocessing's signature (no context is needed).
    - ``ack=None`` and the at-least-once options ``visibility_timeout`` (30 s), ``max_deliveries``
      (20), ``dead_letter`` ("NAME.dlq"), ``delay`` (0), ``ttl`` (none), ``dedup_window`` (300 s),
      ``dedup_capacity`` (16384): see docs/guide/at-least-once.md.
    - ``journal=None`` (a directory), ``fsync="always"|"batch"|"never"``, ``fsync_interval`` (10 ms),
      ``journal_recovery="strict"|"skip"``, ``journal_segment_size`` (32 MiB): a write-ahead journal that
      survives restarts; see docs/guide/persistence.md.
    - ``backend=None``: "redis://host:port/db" (also rediss://, unix://) puts a named queue on Redis
      (docs/guide/redis.md); default $SHMQ_BACKEND for named queues, else shared memory.

    Raises QueueNotFound, QueueExistsError, ValueError/TypeError (ShmqError too) for bad
    arguments or options that contradict the existing queue's, QueuePermissionError,
    NoSpaceError, CorruptQueueError, IncompatibleQueueError.
    """

    _joinable = False

    def __new__(cls: type[_Q], name_or_maxsize: Union[str, int] = 0, *, maxsize: Optional[int] = None,
                create: bool = False, exist_ok: bool = False, capacity: Union[int, str, None] = "default",
                max_message: Union[int, str, None] = None, mode: int = 0o600, raw: bool = False,
                max_participants: Optional[int] = None, ctx: Any = None, ack: Optional[bool] = None,
                visibility_timeout: Optional[float] = None, max_deliveries: Optional[int] = None,
                dead_letter: Optional[str] = None, delay: Optional[float] = None, ttl: Optional[float] = None,
                dedup_window: Optional[float] = None, dedup_capacity: Optional[int] = None,
                journal: Union[str, os.PathLike, None] = None, fsync: Optional[str] = None,
                fsync_interval: Optional[float] = None, journal_recovery: Optional[str] = None,
                journal_segment_size: Union[int, str, None] = None,
                backend: Optional[str] = None) -> _Q:
        # ctx: accepted for multiprocessing's signature; a shared-memory queue needs no context.
        return _new(cls, name_or_maxsize, maxsize=maxsize, create=create, exist_ok=exist_ok, capacity=capacity,
                    max_message=max_message, mode=mode, raw=raw, max_participants=max_participants, ack=ack,
                    visibility_timeout=visibility_timeout, max_deliveries=max_deliveries, dead_letter=dead_letter,
                    delay=delay, ttl=ttl, dedup_window=dedup_window, dedup_capacity=dedup_capacity,
                    journal=journal, fsync=fsync, fsync_interval=fsync_interval, journal_recovery=journal_recovery,
                    journal_segment_size=journal_segment_size,
                    **({} if backend is None else {"backend": backend}))

    # The at-least-once calls live on shmq.reliable.ReliableQueue; on an at-most-once queue they
    # raise ValueError. (Methods, not a __getattr__: a class with __getattr__ gets no specialised
    # attribute and method lookups from CPython, which cost every put and get ~30 ns.)
    @property
    def dead_letter_queue(self) -> Optional[str]:
        """The name of this queue's dead-letter queue (None: at-most-once, or a dead-letter queue itself)."""
        return None

    def send(self, body: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None, priority: Optional[int] = None,
             delay: Optional[float] = None, ttl: Optional[float] = None, dedup_id: Union[str, bytes, None] = None, *,
             block: bool = True, timeout: Optional[float] = None) -> int:
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.send."""
        _refuse(self, "send")

    def receive(self, timeout: Optional[float] = None, *, block: bool = True, copy: bool = True) -> Message:
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.receive."""
        _refuse(self, "receive")

    def receive_many(self, max_items: int = 64, timeout: Optional[float] = None, *,
                     block: bool = True, copy: bool = True) -> list[Message]:
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.receive_many."""
        _refuse(self, "receive_many")

    def ack_many(self, messages: Iterable[Message]) -> int:
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.ack_many."""
        _refuse(self, "ack_many")

    def get_many(self, max_items: int = 64, timeout: Optional[float] = None, block: bool = True,
                 copy: bool = True) -> list[Any]:
        """1..max_items items, as soon as at least one is there (it does not wait to fill the
        batch). Raises Empty, QueueClosedError, ValueError/TypeError for max_items. An error met
        after items were taken (an object that fails to unpickle) is raised by the next get.
        copy=False: views as get(copy=False) gives, each message pinned until its views go."""
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        if not copy:
            items, err = self._core._get_many_views(n, timeout, block)
        else:
            items, err = self._core._get_many(n, timeout, block)
        if err is not None:
            self._core._defer(err)
        return items

    def join_thread(self) -> None:
        """No feeder thread exists (puts land in shared memory at once); kept for the drop-in."""
        assert self.closed, f"Queue {self!r} not closed"

    def cancel_join_thread(self) -> None:
        """No feeder thread exists; kept for the drop-in."""


class SimpleQueue(Queue):
    """Drop-in for multiprocessing.SimpleQueue: put(obj), get(), empty(), close()."""

    def __new__(cls, *, ctx: Any = None, capacity: Union[int, str, None] = "default",
                max_message: Union[int, str, None] = None, mode: int = 0o600, raw: bool = False,
                max_participants: Optional[int] = None) -> SimpleQueue:
        """An anonymous queue (the options as for Queue: capacity "default" grows as needed, mode=0o600)."""
        return _new(cls, 0, capacity=capacity, max_message=max_message, mode=mode, raw=raw,
                    max_participants=max_participants)

    def put(self, obj: Any) -> None:  # type: ignore[override]  # multiprocessing's SimpleQueue.put takes obj only)
        """Put obj (never blocks: the queue grows). Raises QueueClosedError."""
        self._core.put(obj)

    def get(self) -> Any:  # type: ignore[override]  # no block/timeout, as multiprocessing's
        """Remove and return the next item, waiting for one. Raises QueueClosedError."""
        return self._core.get()


class JoinableQueue(Queue):
    """Drop-in for multiprocessing.JoinableQueue: adds task_done() and join().

    Takes the arguments of Queue (``JoinableQueue()`` / ``JoinableQueue(maxsize)`` anonymous,
    ``JoinableQueue("name", create=True)`` named; ``capacity="default"``, ``mode=0o600``, ...)
    except ack=True and the at-least-once options."""

    _joinable = True

    def task_done(self) -> None:
        """Mark one item as processed. Raises ValueError if called more often than put."""
        self._core._task_done()

    def join(self, timeout: Optional[float] = None) -> Optional[bool]:
        """Block until every item put has been task_done()'d. With a timeout, return False if
        it passed first (multiprocessing's join has no timeout and returns None)."""
        ok = self._core._join(timeout)
        if timeout is not None:
            return ok
        return None


from .reliable import ReliableQueue, redrive  # noqa: E402  (reliable builds on Queue)
