"""The base of every handle: it owns one binding segment object and holds the lifecycle (registry, fork and exit hooks, pickling, close/unlink, stats)."""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Optional, TypeVar
from multiprocessing import context as _mp_context
from multiprocessing import reduction as _reduction
from multiprocessing import util as _mp_util

from . import _codec, _core, _names, _options
from .errors import QueueClosedError, QueueNotFound, _label, _oserror, from_code
from .stats import complete_stats, settings

__all__ = ["Handle", "unlink"]

_H = TypeVar("_H", bound="Handle")

# The binding converts arguments and handles the GIL; what it must ask the Python layer (the
# codec, the time rule, the words of errors) is registered once, here.
_core._set_view_decoder(_codec.decode_view)
_core._set_policy(_codec.encode, _codec.decode, _codec.KIND_NAMES, _codec.KIND_BYTES, _codec.KIND_BYTEARRAY,
                  _options.timeout_ns, from_code)
_core._set_pickle_decoder(_codec.KIND_PICKLE, _codec.loads)
_core._set_pickle_encoder(_codec.new_pickler, _codec.ReadOnlyBuffer, _codec.encode_oob)
from . import _heap  # noqa: E402,F401  (registers the heap policy of large batches with the binding)

_live: "weakref.WeakSet[Handle]" = weakref.WeakSet()   # open handles of this process (fork, exit)
_live_lock = threading.Lock()
_exit_finalizer = None


def _close_all():
    for h in list(_live):
        if h._internal:
            continue   # a dead-letter queue handle: lives and dies with its source's handle
        try:
            h.close()
        except Exception:
            pass


def _ensure_exit_hook():
    # multiprocessing children leave through os._exit after util._exit_function(), which runs
    # Finalize callbacks; the main process runs it from atexit. Process._bootstrap clears the
    # registry (fork, spawn and forkserver children all do: still_active() is then False), so
    # the hook is registered again there, from the after-bootstrap callback below.
    global _exit_finalizer
    if _exit_finalizer is None or not _exit_finalizer.still_active():
        _exit_finalizer = _mp_util.Finalize(None, _close_all, exitpriority=-100)


def _after_fork_in_child():
    for h in list(_live):
        if not h._internal:     # a dead-letter queue's core is re-attached by its source's core
            h._core._after_fork()


def _after_mp_bootstrap(_handle):
    _ensure_exit_hook()


os.register_at_fork(after_in_child=_after_fork_in_child)


def unlink(name: str, backend: Optional[str] = None) -> None:
    """Remove the named queue. Attached processes keep working until they close.
    backend: as Queue()'s (default $SHMQ_BACKEND, else shared memory).

    Raises QueueNotFound if there is no such queue, ValueError for an invalid name."""
    _names.check_name(name)
    url = None
    if backend != "shm" and (backend is not None or os.environ.get("SHMQ_BACKEND")):
        from . import _redis
        url = _redis.pick(backend)
    if url is not None:
        from ._redis.queue import unlink as _redis_unlink
        return _redis_unlink(name, url)
    path = _names.path_of(name)
    try:
        os.unlink(path)
    except OSError as e:
        raise _oserror(e.errno, path) from None


def open_core(path, name=None, fd=-1):
    """An attached binding object on an existing segment (by path, or an inherited descriptor)."""
    core = _core.Core()
    try:
        core._open(path, fd)
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {name or path!r} (create it with create=True)", path) from None
    return core


def _rebuild(cls, name, path, fdobj):
    fd = fdobj.detach() if fdobj is not None else -1
    try:
        try:
            core = open_core(path, name, fd)
        except QueueNotFound:
            raise QueueNotFound(2, f"{_label(path)} no longer exists (its creator closed it before this "
                                "process attached)", path) from None
    finally:
        if fd >= 0:
            os.close(fd)
    h = cls._c_base.__new__(cls)
    h._adopt(core, name, owner=False)
    return h


class Handle(_core.HandleBase):
    """One attached handle on a queue segment (the base of Queue and the other kinds).

    It owns its binding object (self._core, a C-level slot of _core.HandleBase); the calls that
    run once per message are a kind's ops class in the binding (Queue: _core.QueueOps), so they
    cost no Python frame."""

    _internal = False     # a handle the library opened for another one (a dead-letter queue)
    _c_base: Any = _core.HandleBase  # the binding class whose __new__ builds this class's instances
    _name = None
    _owner_pid = None

    def _adopt(self, core, name, owner):
        """Take ownership of an attached binding object and register for fork and exit."""
        self._core = core
        self._name = name
        self._owner_pid = os.getpid() if owner else None
        with _live_lock:
            _live.add(self)
        _ensure_exit_hook()
        _mp_util.register_after_fork(self, _after_mp_bootstrap)
        if core._flags_value & _core.F_JOURNAL:
            from . import journal
            try:
                journal.attached(self)   # waits for a creator's recovery; batch mode: the sync timer
            except BaseException:
                with _live_lock:
                    _live.discard(self)
                raise
        self._attached()

    def _attached(self):
        """Hook of subclasses: the handle is open (also after unpickling)."""

    # -- identity -----------------------------------------------------------------
    @property
    def name(self) -> Optional[str]:
        """The queue's name (None for an anonymous queue)."""
        return self._name

    @property
    def path(self) -> Optional[str]:
        """The segment's file under /dev/shm."""
        return self._core.path

    @property
    def closed(self) -> bool:
        return self._core is None or self._core.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<shmq.{type(self).__name__} {self._name or 'anonymous'} {state}>"

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Close this handle; further use raises QueueClosedError. An anonymous queue is
        removed when the process that created it closes it."""
        if self._core is None:
            return
        if self._owner_pid is not None and self._owner_pid == os.getpid() and self.path:
            self._owner_pid = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._closing()
        self._core._close()
        with _live_lock:
            _live.discard(self)

    def _closing(self):
        """Hook of subclasses: close what this handle opened for itself (before its own core)."""

    def unlink(self) -> None:
        """Remove this queue's name; attached processes keep working until they close."""
        if self._name is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _oserror(e.errno, self.path) from None
        else:
            unlink(self._name)

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: object) -> None:
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
            # child that starts after we closed the queue still reaches it (DESIGN §2).
            try:
                fd = os.open(f"/proc/self/fd/{self._core._fd}", os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise _oserror(e.errno, self.path) from None
            _mp_util.Finalize(popen, os.close, (fd,))
            fdobj = _reduction.DupFd(fd)
        return (_rebuild, (type(self), self._name, self.path, fdobj))

    # -- monitoring ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters of this queue (see docs/guide/monitoring.md). Every kind returns every key;
        the at-least-once counters are 0 on an at-most-once queue. Raises QueueClosedError."""
        s = complete_stats(self._core, self._core._raw_stats())
        s["name"] = self._name
        from .journal import stats_of
        s.update(stats_of(self._core))   # journal_* keys (0 / None without a journal)
        return s

    def sync(self) -> None:
        """Make every journal record written so far durable (fdatasync), whatever the fsync
        mode. A queue without a journal: nothing to do. Raises JournalError (an OSError) when a
        sync failed, now or before (nothing is confirmed after a failed sync), QueueClosedError."""
        self._core._journal_sync(None)

    def _settings(self):
        return settings(self._core._raw_stats())

    # -- maintenance (the CLI, tests and repair tools) --------------------------------
    def _peek(self, n, cap=64):
        return self._core._peek(n, cap)

    def _peek_body(self, n):
        return self._core._peek_body(n)

    def _purge(self):
        return self._core._purge()

    def _repair(self):
        return self._core._repair()

    def _consistency(self):
        return self._core._consistency()

    def _validate(self):
        return self._core._validate()

    @property
    def _fd(self):
        return self._core._fd
