"""Queue, SimpleQueue and JoinableQueue: multiprocessing drop-ins and named queues."""
from . import _aio, _core, _names, _options, _sweep
from ._handle import Handle, open_core, unlink
from .errors import ArgumentError
from .stats import settings

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "unlink", "redrive"]

_UNSET = object()


def _make_core(spec):
    """(attached binding object, created) for a validated Queue() call."""
    if spec.name is None:
        _sweep.sweep_dead()     # issue 13 item 4: what creators killed by SIGTERM/SIGKILL/OOM left
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


class Queue(Handle, _aio.AsyncQueueOps, _core.QueueOps):
    """A process-shared FIFO queue in POSIX shared memory.

    ``Queue()`` / ``Queue(maxsize)``: the multiprocessing drop-in (anonymous, unbounded bytes,
    removed when its creating process closes it or exits). ``Queue("name", create=True, ...)``
    creates a named queue; ``Queue("name")`` opens one. With ``ack=True`` (or when the named
    queue was created so) the handle is an at-least-once queue (shmq.reliable), still a Queue.

    Raises QueueNotFound, QueueExistsError, ValueError/TypeError (ShmqError too) for bad
    arguments or options that contradict the existing queue's, QueuePermissionError,
    NoSpaceError, CorruptQueueError, IncompatibleQueueError.
    """

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
        self = _core.HandleBase.__new__(cls)
        self._just_created = _created and spec.name is not None
        self._adopt(core, spec.name, owner=spec.name is None)
        return self

    # The at-least-once calls live on shmq.reliable.ReliableQueue; on an at-most-once queue they
    # raise ValueError. (Methods, not a __getattr__: a class with __getattr__ gets no specialised
    # attribute and method lookups from CPython, which cost every put and get ~30 ns.)
    dead_letter_queue = None

    def send(self, body, *args, **kwargs):
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.send."""
        _refuse(self, "send")

    def receive(self, *args, **kwargs):
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.receive."""
        _refuse(self, "receive")

    def receive_many(self, *args, **kwargs):
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.receive_many."""
        _refuse(self, "receive_many")

    def ack_many(self, messages):
        """At-least-once queues only (ack=True): see shmq.reliable.ReliableQueue.ack_many."""
        _refuse(self, "ack_many")

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
