"""Queue, SimpleQueue and JoinableQueue: multiprocessing drop-ins and named queues."""
import collections
import copyreg
import errno
import io
import os
import pickle
import threading
import weakref
from multiprocessing import context as _mp_context
from multiprocessing import reduction as _reduction
from multiprocessing import util as _mp_util

from . import _core, _names
from .errors import QueueClosedError, QueueNotFound, QueuePermissionError, _oserror
from .message import Message, _lease_expired_many, dedup_key, encode_headers, seconds_ns
from .stats import complete_stats

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "unlink", "redrive", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 64 * 1024 * 1024      # named queues (DESIGN §5.1)
ANON_INITIAL_CAPACITY = 256 * 1024       # anonymous queues start here and grow (cheap: many fit in /dev/shm)


class _Pickler(pickle.Pickler):
    # A live view of what ForkingPickler would use (its registered reducers first), without
    # ForkingPickler's per-instance copy of the whole dispatch table.
    dispatch_table = collections.ChainMap(_reduction.ForkingPickler._extra_reducers, copyreg.dispatch_table)


class _ReadOnlyBuffer(Exception):
    """A read-only out-of-band buffer: pickle would mark it read-only and the receiver would get
    a read-only object (a numpy array with writeable=False), where multiprocessing (protocol 4,
    in-band) delivers a writable copy. Such an object is pickled again with protocol 4."""


def _out_of_band_into(buffers):
    def out_of_band(pb):
        try:
            readonly = pb.raw().readonly
        except BufferError:
            return True  # not contiguous: pickle copies it in-band
        if readonly:
            raise _ReadOnlyBuffer()
        buffers.append(pb)
        return False  # False: out of band
    return out_of_band


class _Dumper:
    """What the binding calls to serialise: dump(obj) fills the BytesIO and the buffer list."""
    __slots__ = ("f", "buffers")

    def __init__(self, f, buffers):
        self.f = f
        self.buffers = buffers

    def dump(self, obj):
        try:
            _Pickler(self.f, 5, buffer_callback=_out_of_band_into(self.buffers)).dump(obj)
        except _ReadOnlyBuffer:
            self.f.seek(0)
            self.f.truncate()
            self.buffers.clear()
            try:
                _Pickler(self.f, 4).dump(obj)
            except pickle.PicklingError:
                # protocol 4 cannot carry a PickleBuffer: protocol 5 with every buffer in-band
                self.f.seek(0)
                self.f.truncate()
                _Pickler(self.f, 5).dump(obj)


_make_pickler = _Dumper


_core._set_serializer(_make_pickler, pickle.loads, io.BytesIO)

_live = weakref.WeakSet()          # open handles of this process (fork re-attach, exit close)
_live_lock = threading.Lock()
_exit_finalizer = None
_UNSET = object()


def _close_all():
    for q in list(_live):
        if getattr(q, "_internal", False):
            continue   # a dead-letter queue handle: lives and dies with its source's handle
        try:
            q.close()
        except Exception:
            pass


def _ensure_exit_hook():
    # multiprocessing children leave through os._exit after util._exit_function(), which runs
    # Finalize callbacks; the main process runs it from atexit. Process._bootstrap clears the
    # registry, so this is re-done per process (from the after-fork hook below).
    global _exit_finalizer
    # still_active() is False when a child's bootstrap cleared the registry (fork, spawn and
    # forkserver children all do), so the hook is registered again there.
    if _exit_finalizer is None or not _exit_finalizer.still_active():
        _exit_finalizer = _mp_util.Finalize(None, _close_all, exitpriority=-100)


def _after_fork_in_child():
    for q in list(_live):
        q._after_fork()


def _after_mp_bootstrap(q):
    _ensure_exit_hook()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _register(q):
    with _live_lock:
        _live.add(q)
    _ensure_exit_hook()
    _mp_util.register_after_fork(q, _after_mp_bootstrap)


def unlink(name):
    """Remove the named queue. Attached processes keep working until they close.

    Raises QueueNotFound if there is no such queue, ValueError for an invalid name."""
    _names.check_name(name)
    try:
        os.unlink(_names.path_of(name))
    except OSError as e:
        raise _oserror(e.errno, _names.path_of(name)) from None


def _rebuild(cls, name, path, fdobj, maxsize_hint):
    q = cls.__new__(cls)
    fd = fdobj.detach() if fdobj is not None else -1
    try:
        if fd >= 0:
            q._open(path, fd)
        else:
            try:
                q._open(path)
            except FileNotFoundError:
                raise QueueNotFound(errno.ENOENT, f"queue {name or path!r} no longer exists "
                                    "(its creator closed it before this process attached)", path) from None
    finally:
        if fd >= 0:
            os.close(fd)
    q._setup(name, anonymous=name is None, owner=False)
    return q


class Queue(_core.Core):
    """A process-shared FIFO queue in POSIX shared memory.

    ``Queue()`` / ``Queue(maxsize)``: the multiprocessing drop-in (anonymous, unbounded bytes,
    removed when its creating process closes it or exits). ``Queue("name", create=True, ...)``
    creates a named queue; ``Queue("name")`` opens one.
    """

    _joinable = False

    def __cinit__(self, *args, **kwargs):
        pass

    def __init__(self, name_or_maxsize=0, *, maxsize=None, create=False, exist_ok=False,
                 capacity=_UNSET, max_message=None, mode=None, raw=False, max_participants=None, ctx=None,
                 ack=None, visibility_timeout=None, max_deliveries=None, dead_letter=None, delay=None, ttl=None,
                 dedup_window=None, dedup_capacity=None, _is_dlq=False):
        self._internal = False
        self._dlq_queue = None
        ack_opts = _ack_options(ack, visibility_timeout, max_deliveries, dead_letter, delay, ttl, dedup_window,
                                dedup_capacity)
        maxsize_given = maxsize is not None
        if isinstance(name_or_maxsize, str):
            name = _names.check_name(name_or_maxsize)
            maxsize = 0 if maxsize is None else maxsize
        elif isinstance(name_or_maxsize, int) and not isinstance(name_or_maxsize, bool):
            if maxsize is not None and name_or_maxsize:
                raise TypeError("maxsize given twice")
            maxsize = name_or_maxsize if maxsize is None else maxsize
            name = None
        else:
            raise TypeError(f"Queue() takes a maxsize (int) or a queue name (str), not {type(name_or_maxsize).__name__}")
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        maxsize = max(maxsize, 0)  # as multiprocessing: <= 0 means unbounded
        mode_given = mode is not None   # exist_ok checks an existing file's mode only against a given mode=
        if mode is None:
            mode = 0o600
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be a permission mode such as 0o600, got {mode!r}")
        slots = 0
        if max_participants is not None:
            if not isinstance(max_participants, int) or not 1 <= max_participants <= 1023:
                raise ValueError("max_participants must be an int from 1 to 1023")
            slots = max_participants
        mm = 0 if max_message is None else _names.parse_size(max_message, "max_message")
        flags = (_core.F_RAW if raw else 0) | (_core.F_JOINABLE if self._joinable else 0)
        if name is None:
            if create:
                raise ValueError("create=True needs a queue name")
            if ack:
                raise ValueError("ack=True needs a named queue: Queue('name', create=True, ack=True)")
            cap = ANON_INITIAL_CAPACITY if capacity is _UNSET or capacity is None else _names.parse_size(capacity)
            growable = capacity is _UNSET or capacity is None
            flags |= _core.F_ANONYMOUS | (_core.F_GROWABLE if growable else 0)
            path = _names.path_of(_names.anonymous_name())
            self._create(path, _core.KIND_QUEUE, flags, cap, mm, maxsize, mode, slots, False)
            self._setup(None, anonymous=True, owner=True)
            return
        path = _names.path_of(name)
        explicit = {}
        if maxsize_given:
            explicit["maxsize"] = maxsize
        if raw:
            explicit["raw"] = True
        if capacity is not _UNSET:
            explicit["capacity"] = capacity
        if max_message is not None:
            explicit["max_message"] = mm
        if ack_opts:
            explicit["ack"] = ack_opts
        create_ack = None
        if create and ack_opts.get("ack"):
            flags |= _core.F_ACK
            create_ack = _ack_create_dict(name, ack_opts, _is_dlq)
        if create:
            if capacity is None:
                flags |= _core.F_GROWABLE
                cap = ANON_INITIAL_CAPACITY
            else:
                cap = DEFAULT_CAPACITY if capacity is _UNSET else _names.parse_size(capacity)
            created = self._create(path, _core.KIND_QUEUE, flags, cap, mm, maxsize, mode, slots, exist_ok, create_ack,
                                   mode_given)
            if not created:
                self._check_options(name, explicit)
        else:
            try:
                self._open(path)
            except FileNotFoundError:
                raise QueueNotFound(errno.ENOENT, f"no such queue: {name!r} (create it with create=True)", path) from None
            self._check_options(name, explicit)
        self._setup(name, anonymous=False, owner=False)
        if self._flags_value & _core.F_ACK:
            self._attach_dlq(name, capacity, mode, max_message, slots)

    def _check_options(self, name, explicit):
        """Opening an existing queue with options that contradict its creator's is an error."""
        st = self._raw_stats()
        problems = []
        if "maxsize" in explicit and max(explicit["maxsize"], 0) != st["maxsize"]:
            problems.append(f"maxsize={explicit['maxsize']} (the queue has maxsize={st['maxsize']})")
        if "raw" in explicit and not st["flags"] & _core.F_RAW:
            problems.append("raw=True (the queue was created without raw)")
        if "capacity" in explicit:
            want = explicit["capacity"]
            have = None if st["flags"] & _core.F_GROWABLE else st["capacity"]
            if want is None and have is not None:
                problems.append(f"capacity=None (the queue has a fixed capacity of {have} bytes)")
            elif want is not None and have is not None and _names.parse_size(want) > have:
                problems.append(f"capacity={want!r} (the queue holds {have} bytes)")
            elif want is not None and have is None:
                problems.append(f"capacity={want!r} (the queue is unbounded: capacity=None)")
        if "max_message" in explicit and explicit["max_message"] > st["max_message"]:
            problems.append(f"max_message={explicit['max_message']} (the queue accepts up to {st['max_message']})")
        if st["kind"] != _core.KIND_QUEUE:
            problems.append("kind: the segment is not a work queue")
        if self._joinable and not st["flags"] & _core.F_JOINABLE:
            problems.append("JoinableQueue (the queue was created as a plain Queue: no task_done/join accounting)")
        problems += _ack_problems(explicit.get("ack") or {}, st)
        if problems:
            self._close()
            raise ValueError(f"queue {name!r} exists with other options: " + "; ".join(problems))

    def _setup(self, name, anonymous, owner):
        self._name = name
        self._anonymous = anonymous
        self._owner_pid = os.getpid() if owner else None
        _register(self)

    def _attach_dlq(self, name, capacity, mode, max_message, slots):
        """Open (creating it if needed) the dead-letter queue this at-least-once queue names."""
        st = self._raw_stats()
        dlq = st["dead_letter"]
        if not dlq:
            self._set_dlq(None, name)
            return
        kw = dict(create=True, exist_ok=True, ack=True, visibility_timeout=st["visibility_timeout"],
                  max_deliveries=st["max_deliveries"], mode=st["mode"], _is_dlq=True)
        if st["flags"] & _core.F_GROWABLE:
            kw["capacity"] = None
        else:
            kw["capacity"] = st["capacity"]
            kw["max_message"] = st["max_message"]
        try:
            try:
                q = Queue(dlq)              # an existing one is used as it is
            except QueueNotFound:
                q = Queue(dlq, **kw)        # same options as ours, ack=True, no DLQ of its own
            # issue 11 item 5: only a file of our queue's owner, no wider than our queue (squatting)
            try:
                q._check_trusted(os.fstat(self._fd).st_uid, st["mode"])
            except QueuePermissionError:
                q.close()
                raise
        except QueuePermissionError:
            self._close()
            raise
        except ValueError as e:
            self._close()
            raise ValueError(f"queue {name!r}: its dead-letter queue {dlq!r} cannot be used: {e}") from None
        if not q._flags_value & _core.F_ACK:
            q.close()
            self._close()
            raise ValueError(f"queue {name!r}: its dead-letter queue {dlq!r} exists without ack=True")
        q._internal = True
        self._dlq_queue = q
        self._set_dlq(q, name)

    @property
    def dead_letter_queue(self):
        """The name of this queue's dead-letter queue (None when it has none or is at-most-once)."""
        return self._dlq_queue._name if self._dlq_queue is not None else None

    # -- at-least-once ------------------------------------------------------------
    def _need_ack(self, what):
        if not self._flags_value & _core.F_ACK:
            raise ValueError(f"{what}() needs a queue created with ack=True; queue {self._name or 'anonymous'!r} "
                             "is at-most-once (use put/get)")

    def send(self, body, headers=None, priority=None, delay=None, ttl=None, dedup_id=None, *, block=True,
             timeout=None):
        """Send a message; returns its id (for a duplicate dedup_id within the window, the
        original's id, and nothing is enqueued). delay/ttl: seconds (None: the queue's
        default). Raises Full (no room in time, dedup table full), MessageTooLargeError,
        ValueError/TypeError for bad arguments, QueueClosedError."""
        self._need_ack("send")
        hdr = encode_headers(headers)
        if priority is None:
            prio = 0
        elif isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ValueError(f"priority must be an int from 0 to 9, got {priority!r}")
        else:
            prio = priority
        d = _core.USE_DEFAULT if delay is None else seconds_ns(delay, "delay")
        t = _core.USE_DEFAULT if ttl is None else seconds_ns(ttl, "ttl", allow_zero=False)
        key = None if dedup_id is None else dedup_key(dedup_id)
        mid, _dup = self._send(body, hdr, prio, d, t, key, block, timeout)
        return mid

    def receive(self, timeout=None, *, block=True):
        """Take the next message under a lease (the queue's visibility_timeout). Returns a
        Message; raises Empty when none arrives in time, QueueClosedError."""
        self._need_ack("receive")
        return Message(self, self._receive(block, timeout))

    def receive_many(self, max_items=64, timeout=None, *, block=True):
        """1..max_items Messages, as soon as at least one is there. Raises Empty."""
        self._need_ack("receive_many")
        return [Message(self, r) for r in self._receive_many(max_items, timeout, block)]

    def ack_many(self, messages):
        """Ack every message of the list; returns how many were acked now (ones acked before
        are skipped). Raises LeaseExpiredError (its .ids) after acking the others when some
        had been delivered again."""
        pairs, todo = [], []
        for m in messages:
            if not isinstance(m, Message) or m._q is not self:
                raise TypeError("ack_many() takes Messages received from this queue")
            if m._state == "acked":
                continue
            if m._state is not None:
                raise ValueError(f"message {m.id} was {m._state}: this delivery is over")
            pairs.append((m._token, m.id))
            todo.append(m)
        stale = set(self._ack_many(pairs))
        for m in todo:
            m._state = "lease expired" if m.id in stale else "acked"
        if stale:
            raise _lease_expired_many(sorted(stale))
        return len(todo)

    # -- identity -----------------------------------------------------------------
    @property
    def name(self):
        """The queue's name (None for an anonymous queue)."""
        return self._name

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<shmq.{type(self).__name__} {self._name or 'anonymous'} {state}>"

    # -- lifecycle ----------------------------------------------------------------
    def close(self):
        """Close this handle; further use raises QueueClosedError. An anonymous queue is
        removed when the process that created it closes it."""
        if self._owner_pid is not None and self._owner_pid == os.getpid() and self.path:
            self._owner_pid = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._close()
        with _live_lock:
            _live.discard(self)

    def join_thread(self):
        """No feeder thread exists (puts land in shared memory at once); kept for the drop-in."""
        assert self.closed, f"Queue {self!r} not closed"

    def cancel_join_thread(self):
        """No feeder thread exists; kept for the drop-in."""

    def unlink(self):
        """Remove this queue's name; attached processes keep working until they close."""
        if self._name is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            unlink(self._name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._owner_pid is not None and self._owner_pid == os.getpid() and self.path:
                os.unlink(self.path)
        except Exception:
            pass

    # -- pickling: handles travel to children and through other queues ---------------
    def __reduce__(self):
        if self.closed:
            raise QueueClosedError(f"cannot pickle closed queue {self!r}")
        fdobj = None
        popen = _mp_context.get_spawning_popen()
        if popen is not None:
            # While spawning, send the segment itself (a descriptor with no locks on it), so a
            # child that starts after we closed the queue still reaches it.
            fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
            _mp_util.Finalize(popen, os.close, (fd,))
            fdobj = _reduction.DupFd(fd)
        return (_rebuild, (type(self), self._name, self.path, fdobj, None))

    # -- monitoring ------------------------------------------------------------------
    def stats(self):
        """Counters of this queue (see docs/guide/monitoring.md). Every kind returns every key;
        the at-least-once counters are 0 on an at-most-once queue."""
        s = complete_stats(self, self._raw_stats())
        s["name"] = self._name
        return s


class SimpleQueue(Queue):
    """Drop-in for multiprocessing.SimpleQueue: put(obj), get(), empty(), close()."""

    def __init__(self, *, ctx=None, **kwargs):
        super().__init__(0, ctx=ctx, **kwargs)

    def put(self, obj):
        Queue.put(self, obj)

    def get(self):
        return Queue.get(self)


class JoinableQueue(Queue):
    """Drop-in for multiprocessing.JoinableQueue: adds task_done() and join()."""

    _joinable = True

    def task_done(self):
        """Mark one item as processed. Raises ValueError if called more often than put."""
        self._task_done()

    def join(self, timeout=None):
        """Block until every item put has been task_done()'d. With a timeout, return False if
        it passed first (multiprocessing's join has no timeout and returns None)."""
        ok = self._join(timeout)
        if timeout is not None:
            return ok
        return None


_ACK_DEFAULTS = dict(visibility_timeout=30.0, max_deliveries=20, dead_letter=None, delay=0.0, ttl=None,
                     dedup_window=300.0, dedup_capacity=16384)


def _ack_options(ack, visibility_timeout, max_deliveries, dead_letter, delay, ttl, dedup_window, dedup_capacity):
    """The at-least-once options given explicitly, validated (a dict; empty when none)."""
    given = {k: v for k, v in dict(ack=ack, visibility_timeout=visibility_timeout, max_deliveries=max_deliveries,
                                   dead_letter=dead_letter, delay=delay, ttl=ttl, dedup_window=dedup_window,
                                   dedup_capacity=dedup_capacity).items() if v is not None}
    if given and given.get("ack") is not True and set(given) - {"ack"}:
        extra = ", ".join(sorted(set(given) - {"ack"}))
        raise ValueError(f"{extra}: at-least-once options need ack=True")
    if "visibility_timeout" in given:
        seconds_ns(visibility_timeout, "visibility_timeout", allow_zero=False)
    if "max_deliveries" in given and (not isinstance(max_deliveries, int) or isinstance(max_deliveries, bool)
                                      or not 1 <= max_deliveries <= 65535):
        raise ValueError(f"max_deliveries must be an int from 1 to 65535, got {max_deliveries!r}")
    if "dead_letter" in given:
        _names.check_name(dead_letter)
    if "delay" in given:
        seconds_ns(delay, "delay")
    if "ttl" in given:
        seconds_ns(ttl, "ttl", allow_zero=False)
    if "dedup_window" in given:
        seconds_ns(dedup_window, "dedup_window", allow_zero=False)
    if "dedup_capacity" in given:
        c = dedup_capacity
        if not isinstance(c, int) or isinstance(c, bool) or c < 16 or c > (1 << 24) or c & (c - 1):
            raise ValueError(f"dedup_capacity must be a power of two from 16 to 2**24, got {c!r}")
    return given


def _ack_create_dict(name, opts, is_dlq):
    o = dict(_ACK_DEFAULTS, **opts)
    if is_dlq:
        dlq = ""
    else:
        dlq = o["dead_letter"] or f"{name}.dlq"
        try:
            _names.check_name(dlq)
        except ValueError:
            raise ValueError(f"queue name {name!r} is too long for its default dead-letter queue {dlq!r}; "
                             "pass dead_letter='shorter-name'") from None
        if dlq == name:
            raise ValueError("a queue cannot be its own dead-letter queue")
    return dict(visibility_ns=seconds_ns(o["visibility_timeout"], "visibility_timeout", allow_zero=False),
                max_deliveries=o["max_deliveries"], dead_letter=dlq,
                default_delay_ns=seconds_ns(o["delay"], "delay"),
                default_ttl_ns=0 if o["ttl"] is None else seconds_ns(o["ttl"], "ttl", allow_zero=False),
                dedup_window_ns=seconds_ns(o["dedup_window"], "dedup_window", allow_zero=False),
                dedup_slots=o["dedup_capacity"])


def _ack_problems(opts, st):
    """How explicit at-least-once options contradict an existing queue's (list of strings)."""
    out = []
    is_ack = bool(st["flags"] & _core.F_ACK)
    if not opts:
        return out
    if opts.get("ack") is True and not is_ack:
        return ["ack=True (the queue was created without ack: at-most-once)"]
    if opts.get("ack") is False and is_ack:
        return ["ack=False (the queue was created with ack=True)"]
    checks = [("visibility_timeout", "visibility_timeout"), ("max_deliveries", "max_deliveries"),
              ("delay", "default_delay"), ("dedup_window", "dedup_window"), ("dedup_capacity", "dedup_capacity")]
    for key, sk in checks:
        if key in opts and abs(float(opts[key]) - float(st[sk])) > 1e-6:
            out.append(f"{key}={opts[key]!r} (the queue has {st[sk]!r})")
    if "ttl" in opts and abs(float(opts["ttl"]) - float(st["default_ttl"])) > 1e-6:
        out.append(f"ttl={opts['ttl']!r} (the queue has {st['default_ttl'] or None!r})")
    if "dead_letter" in opts and opts["dead_letter"] != st["dead_letter"]:
        out.append(f"dead_letter={opts['dead_letter']!r} (the queue has {st['dead_letter'] or None!r})")
    return out


def redrive(dlq, to=None, *, max_messages=None, timeout=0.0):
    """Move messages from a dead-letter queue back: each to `to` (a queue name), else to the
    queue named by its x-dead-letter-source header. Headers, body and priority are kept, the
    x-dead-letter-* headers are dropped. Each copy is sent with a dedup id derived from the
    DLQ and message id, and acked in the DLQ only after the send returned, so a crash in
    between never loses it and, within the target's dedup window, never doubles it.
    Returns how many were moved. Raises QueueNotFound, ValueError (a message with no source)."""
    src = dlq if isinstance(dlq, Queue) else Queue(dlq)
    targets = {}
    moved = 0
    try:
        while max_messages is None or moved < max_messages:
            try:
                src._need_ack("receive")
                m = Message(src, src._receive(True, timeout, True))   # body: (kind, payload), never unpickled
            except Exception as e:
                from .errors import Empty
                if isinstance(e, Empty):
                    break
                raise
            dest = to or m.headers.get("x-dead-letter-source")
            if not dest:
                m.nack(requeue=True)
                raise ValueError(f"message {m.id} in {src.name!r} has no x-dead-letter-source header; pass to=")
            q = targets.get(dest)
            if q is None:
                q = targets[dest] = Queue(dest)
            headers = {k: v for k, v in m.headers.items() if not k.startswith("x-dead-letter-")
                       and k not in ("x-delivery-count", "x-first-delivery", "x-last-delivery",
                                     "x-original-id", "x-original-timestamp")}
            q._need_ack("send")
            q._send(m.body[1], encode_headers(headers), m.priority, _core.USE_DEFAULT, _core.USE_DEFAULT,
                    dedup_key(f"redrive:{src.name}:{m.id}"), True, None, m.body[0])
            m.ack()
            moved += 1
    finally:
        for q in targets.values():
            q.close()
        if src is not dlq:
            src.close()
    return moved
