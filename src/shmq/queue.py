"""Queue, SimpleQueue and JoinableQueue: multiprocessing drop-ins and named queues."""
from . import _core, _names, _options
from ._handle import Handle, open_core, unlink
from .errors import ArgumentError
from .stats import settings

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "unlink", "redrive"]

_UNSET = object()
_ACK_ONLY = ("send", "receive", "receive_many", "ack_many")


def _make_core(spec):
    """(attached binding object, created) for a validated Queue() call."""
    if spec.name is None:
        core = _core.Core()
        core._create(_names.path_of(_names.anonymous_name()), _core.KIND_QUEUE, spec.flags, spec.capacity,
                     spec.max_message, spec.maxsize, spec.mode, spec.slots, False)
        return core, True
    path = _names.path_of(spec.name)
    if spec.create:
        core = _core.Core()
        created = core._create(path, _core.KIND_QUEUE, spec.flags, spec.capacity, spec.max_message, spec.maxsize,
                               spec.mode, spec.slots, spec.exist_ok, spec.ack)
    else:
        core, created = open_core(path, spec.name), False
    if not created:
        problems = _options.problems(spec.explicit, settings(core._raw_stats()))
        if problems:
            core._close()
            raise ArgumentError(f"queue {spec.name!r} exists with other options: " + "; ".join(problems))
    return core, created


def _refuse(q, what, *args, **kwargs):
    raise ArgumentError(f"{what}() needs a queue created with ack=True; queue {q.name or 'anonymous'!r} "
                        "is at-most-once (use put/get)")


class Queue(Handle):
    """A process-shared FIFO queue in POSIX shared memory.

    ``Queue()`` / ``Queue(maxsize)``: the multiprocessing drop-in (anonymous, unbounded bytes,
    removed when its creating process closes it or exits). ``Queue("name", create=True, ...)``
    creates a named queue; ``Queue("name")`` opens one. With ``ack=True`` (or when the named
    queue was created so) the handle is an at-least-once queue (shmq.reliable), still a Queue.

    Raises QueueNotFound, QueueExistsError, ValueError/TypeError (ShmqError too) for bad
    arguments or options that contradict the existing queue's, QueuePermissionError,
    NoSpaceError, CorruptQueueError, IncompatibleQueueError.
    """

    _DIRECT: "tuple[str, ...]" = ("put", "put_nowait", "put_many", "get", "get_nowait", "qsize", "empty", "full")
    _joinable = False

    def __new__(cls, name_or_maxsize=0, *, maxsize=None, create=False, exist_ok=False, capacity=_UNSET,
                max_message=None, mode=0o600, raw=False, max_participants=None, ctx=None, ack=None,
                visibility_timeout=None, max_deliveries=None, dead_letter=None, delay=None, ttl=None,
                dedup_window=None, dedup_capacity=None, _is_dlq=False):
        # ctx: accepted for multiprocessing's signature; a shared-memory queue needs no context.
        spec = _options.resolve(name_or_maxsize, maxsize=maxsize, create=create, exist_ok=exist_ok,
                                capacity=None if capacity is _UNSET else capacity,
                                capacity_given=capacity is not _UNSET, max_message=max_message, mode=mode,
                                raw=raw, max_participants=max_participants, joinable=cls._joinable,
                                is_dlq=_is_dlq, ack=ack, visibility_timeout=visibility_timeout,
                                max_deliveries=max_deliveries, dead_letter=dead_letter, delay=delay, ttl=ttl,
                                dedup_window=dedup_window, dedup_capacity=dedup_capacity)
        core, _created = _make_core(spec)
        if core._flags_value & _core.F_ACK:
            if cls is Queue:
                cls = ReliableQueue
            elif not issubclass(cls, ReliableQueue):
                core._close()
                raise ArgumentError(f"{cls.__name__} cannot be an at-least-once queue: use "
                                    "shmq.Queue(name, ack=True)")
        self = object.__new__(cls)
        self._adopt(core, spec.name, owner=spec.name is None)
        return self

    def __getattr__(self, name):
        # The at-least-once calls live on shmq.reliable.ReliableQueue; on an at-most-once queue
        # they raise (ValueError) when called, and dead_letter_queue is None.
        if name in _ACK_ONLY:
            return lambda *a, **k: _refuse(self, name)
        if name == "dead_letter_queue":
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # The per-message calls below are bound straight to the binding's methods on each instance
    # (Handle._DIRECT); these definitions document them and serve calls through the class.
    def put(self, obj, block=True, timeout=None):
        """Put obj. Raises Full (timeout/non-blocking), MessageTooLargeError, QueueClosedError,
        TypeError (raw queues, unpicklable objects), ValueError for a negative timeout."""
        self._core.put(obj, block, timeout)

    def put_nowait(self, obj):
        """put(obj, block=False)."""
        self._core.put_nowait(obj)

    def put_many(self, items, block=True, timeout=None):
        """Put every item of an iterable, in order; returns how many were put. The timeout is
        for the whole batch; an error carries .items_put."""
        return self._core.put_many(items, block, timeout)

    def get(self, block=True, timeout=None):
        """Remove and return an item. Raises Empty (timeout/non-blocking), QueueClosedError."""
        return self._core.get(block, timeout)

    def get_nowait(self):
        """get(block=False)."""
        return self._core.get_nowait()

    def qsize(self):
        """Ready messages. Raises QueueClosedError."""
        return self._core.qsize()

    def empty(self):
        return self._core.empty()

    def full(self):
        return self._core.full()

    def get_many(self, max_items=64, timeout=None, block=True):
        """1..max_items items, as soon as at least one is there (it does not wait to fill the
        batch). Raises Empty, QueueClosedError, ValueError/TypeError for max_items. An error met
        after items were taken (an object that fails to unpickle) is raised by the next get."""
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        items, err = self._core._get_many(n, timeout, block)
        if err is not None:
            self._core._defer(err)
        return items

    def join_thread(self):
        """No feeder thread exists (puts land in shared memory at once); kept for the drop-in."""
        assert self.closed, f"Queue {self!r} not closed"

    def cancel_join_thread(self):
        """No feeder thread exists; kept for the drop-in."""


class SimpleQueue(Queue):
    """Drop-in for multiprocessing.SimpleQueue: put(obj), get(), empty(), close()."""

    _DIRECT = tuple(m for m in Queue._DIRECT if m not in ("put", "get"))

    def __new__(cls, *, ctx=None, **kwargs):
        return super().__new__(cls, 0, ctx=ctx, **kwargs)

    def put(self, obj):
        self._core.put(obj)

    def get(self):
        return self._core.get()


class JoinableQueue(Queue):
    """Drop-in for multiprocessing.JoinableQueue: adds task_done() and join()."""

    _joinable = True

    def task_done(self):
        """Mark one item as processed. Raises ValueError if called more often than put."""
        self._core._task_done()

    def join(self, timeout=None):
        """Block until every item put has been task_done()'d. With a timeout, return False if
        it passed first (multiprocessing's join has no timeout and returns None)."""
        ok = self._core._join(timeout)
        if timeout is not None:
            return ok
        return None


from .reliable import ReliableQueue, redrive  # noqa: E402  (reliable builds on Queue)
