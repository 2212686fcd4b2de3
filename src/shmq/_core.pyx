# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Thin binding over the C core: argument conversion and GIL handling only.

Policy lives in Python and is registered here once at import (_set_policy): the payload codec
(shmq._codec: kinds, pickling, out-of-band framing), the time rule (shmq._options.timeout_ns)
and the error words (shmq.errors.from_code). Every C call that can wait (a futex sleep, a
lock held by another process) runs without the GIL; a handle stays busy from the start of
such a call until the message it took is copied out and released, and close() defers the
unmap until the handle is idle.
"""
cimport cython
import threading as _threading
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.memoryview cimport PyMemoryView_FromMemory, PyMemoryView_FromObject
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from shmq cimport _shmq_c as c
from posix.unistd cimport getpid

import os

from shmq import errors as _errors

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1
    int PyBuffer_FillInfo(Py_buffer *view, object obj, void *buf, Py_ssize_t len, int readonly, int flags) except -1
    enum:
        PyBUF_WRITABLE
    enum:
        PyBUF_READ
    ctypedef struct PyThreadState
    ctypedef struct PyInterpreterState
    PyInterpreterState *PyInterpreterState_Get()
    PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *interp)
    PyThreadState *PyThreadState_Next(PyThreadState *ts)
    PyThreadState *PyEval_SaveThread()
    void PyEval_RestoreThread(PyThreadState *ts)

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int shmq_mallopt(int param, int value) { return mallopt(param, value); }
    #define SHMQ_M_TRIM_THRESHOLD M_TRIM_THRESHOLD
    #define SHMQ_M_MMAP_THRESHOLD M_MMAP_THRESHOLD
    #else
    static int shmq_mallopt(int param, int value) { (void)param; (void)value; return 0; }
    #define SHMQ_M_TRIM_THRESHOLD (-1)
    #define SHMQ_M_MMAP_THRESHOLD (-3)
    #endif
    """
    int shmq_mallopt(int param, int value)
    enum:
        SHMQ_M_TRIM_THRESHOLD
        SHMQ_M_MMAP_THRESHOLD

DEF GIL_RELEASE_BYTES = 65536   # copies this large run without the GIL
DEF _PIN_HOLD_NS = 3153600000000000000   # receive(copy=False): ~100 years, a lease that does not run out while viewed
DEF SMALL_COPY = 256            # bodies up to this size are copied out inside the take's nogil block

KIND_QUEUE = c.SHMQ_KIND_QUEUE
KIND_PRIORITY = c.SHMQ_KIND_PRIORITY
KIND_TOPIC = c.SHMQ_KIND_TOPIC
F_GROWABLE = c.SHMQ_F_GROWABLE
F_RAW = c.SHMQ_F_RAW
F_ANONYMOUS = c.SHMQ_F_ANONYMOUS
F_JOINABLE = c.SHMQ_F_JOINABLE
F_ACK = c.SHMQ_F_ACK
F_GROUPS = c.SHMQ_F_GROUPS
F_HIST = c.SHMQ_F_HIST
HIST_BUCKETS = c.SHMQ_HIST_BUCKETS
HIST_BASE_LOG2 = c.SHMQ_HIST_BASE_LOG2
LAYOUT_VERSION = c.SHMQ_LAYOUT_VERSION
USE_DEFAULT = c.SHMQ_USE_DEFAULT
PROBE_GONE = c.SHMQ_PROBE_GONE
PROBE_READY = c.SHMQ_PROBE_READY
PROBE_DELAYED = c.SHMQ_PROBE_DELAYED
PROBE_INFLIGHT = c.SHMQ_PROBE_INFLIGHT
PROBE_BUSY = c.SHMQ_PROBE_BUSY
HDR_MAX = c.SHMQ_HDR_MAX
MIN_CAPACITY = c.SHMQ_MIN_AREA_SIZE   # the smallest fixed capacity (bytes of the first area)
# Why a put found no room (seg.full_why after SHMQ_FULL): passed to from_code in a put's detail.
FULL_WHY = {c.SHMQ_WHY_NONE: None, c.SHMQ_WHY_MAXSIZE: "maxsize", c.SHMQ_WHY_SLOTS: "slots",
            c.SHMQ_WHY_BYTES: "bytes", c.SHMQ_WHY_BUSY: "busy", c.SHMQ_WHY_GROUPS: "groups"}

# Result codes, for shmq.errors.from_code (the words of each error live there).
RC = {name: value for name, value in (
    ("OK", c.SHMQ_OK), ("EMPTY", c.SHMQ_EMPTY), ("FULL", c.SHMQ_FULL), ("TIMEOUT", c.SHMQ_TIMEOUT),
    ("EINTR", c.SHMQ_EINTR), ("ETOOBIG", c.SHMQ_ETOOBIG), ("ECORRUPT", c.SHMQ_ECORRUPT),
    ("EINCOMPAT", c.SHMQ_EINCOMPAT), ("ESYS", c.SHMQ_ESYS), ("ESLOTS", c.SHMQ_ESLOTS),
    ("ESEALED", c.SHMQ_ESEALED), ("EINVAL", c.SHMQ_EINVAL), ("ENOMEM", c.SHMQ_ENOMEM),
    ("ECLOSED", c.SHMQ_ECLOSED), ("EAGAIN", c.SHMQ_EAGAIN), ("ESTALE", c.SHMQ_ESTALE),
    ("EDEDUPFULL", c.SHMQ_EDEDUPFULL), ("EJOURNAL", c.SHMQ_EJOURNAL))}

# Registered by the Python layer (_set_policy).
cdef object _encode = None       # (obj, raw) -> (kind, [buffers written back to back])
cdef object _decode = None       # (kind, memoryview, raw, id) -> obj; the view dies after the call
cdef object _decode_view = None  # the same for get(copy=False): the view may live in what it returns
cdef object _kind_names = {}
# descriptor states (desc.h) as the CLI's peek names them; SETTLING is a moment of an in-flight one
cdef dict _STATE_NAMES = {2: "ready", 4: "in-flight", 7: "in-flight", 5: "delayed"}
cdef uint32_t _KIND_BYTES = 0    # the codec's kinds that are plain copies (no Python call)
cdef uint32_t _KIND_BYTEARRAY = 0
cdef uint32_t _KIND_PICKLE = 0xffffffff   # the codec's plain pickle kind, decoded by _loads
cdef object _loads = None
cdef object _timeout_ns = None   # timeout -> relative ns, or None for no deadline
cdef object _from_code = None    # (rc, op, path, errno, detail) -> exception
cdef object _last_timeout = None # the last timeout object converted, and its relative ns
cdef uint64_t _last_timeout_ns = 0
cdef object _heap_hook = None    # (bytes of a get_many batch) -> the next batch size to report (shmq._heap)
cdef uint64_t _heap_report = <uint64_t>-1 # a batch of at least this many body bytes is reported


def _set_policy(encode, decode, kind_names, uint32_t kind_bytes, uint32_t kind_bytearray, timeout_ns, from_code):
    """Register the Python layer's codec, time rule and error words (once, at import)."""
    global _encode, _decode, _kind_names, _KIND_BYTES, _KIND_BYTEARRAY, _timeout_ns, _from_code
    _encode = encode
    _decode = decode
    _kind_names = dict(kind_names)
    _KIND_BYTES = kind_bytes
    _KIND_BYTEARRAY = kind_bytearray
    _timeout_ns = timeout_ns
    _from_code = from_code


def _set_pickle_decoder(uint32_t kind_pickle, loads):
    """The codec's kind for one plain pickle stream and the function that decodes it
    (pickle.loads): the binding calls it directly for that kind on queues that are not raw."""
    global _KIND_PICKLE, _loads
    _KIND_PICKLE = kind_pickle
    _loads = loads


def _set_pickle_encoder(new_pickler, read_only, encode_oob):
    """The codec's reusable picklers (shmq._codec.new_pickler: (pickler, pieces, buffers)),
    the exception a dump raises when encode() must do the object itself, and the framing of
    out-of-band buffers: objects on queues that are not raw are pickled here with a pooled
    pickler, without a Python call per message (issue 12 item 3)."""
    global _new_pickler, _ReadOnly, _encode_oob
    _new_pickler = new_pickler
    _ReadOnly = read_only
    _encode_oob = encode_oob


cdef list _pickler_pool = []     # idle (pickler, pieces, buffers) of the codec; one dump at a time each
cdef object _new_pickler = None
cdef object _ReadOnly = None
cdef object _encode_oob = None


cdef object _pickle_fast(object obj):
    """(kind, parts) of obj through a pooled pickler of the codec, or None when the codec's
    encode() must do it (an out-of-band buffer that is read-only). A pickler whose dump failed
    is dropped (its framing state may be left behind)."""
    if _pickler_pool:
        r = _pickler_pool.pop()
    else:
        r = _new_pickler()
    pickler, pieces, bufs = <tuple>r
    try:
        pickler.dump(obj)
    except BaseException as e:
        pickler.clear_memo()
        if isinstance(e, _ReadOnly):
            return None
        raise
    pickler.clear_memo()            # the memo holds references to what was pickled
    parts = (<list>pieces)[:]
    del (<list>pieces)[:]
    if <list>bufs:
        oob = (<list>bufs)[:]
        del (<list>bufs)[:]
        res = _encode_oob(parts, oob)
    else:
        res = (_KIND_PICKLE, parts)
    if len(_pickler_pool) < 8:
        _pickler_pool.append(r)
    return res


def _set_view_decoder(decode_view):
    """The codec's decoder for zero-copy gets (shmq._codec.decode_view)."""
    global _decode_view
    _decode_view = decode_view


def _set_heap_policy(hook, uint64_t report_at):
    """Register the Python layer's heap policy (shmq._heap): get_many calls hook(batch bytes)
    once a batch's bodies add up to report_at bytes; hook returns the next report_at."""
    global _heap_hook, _heap_report
    _heap_hook = hook
    _heap_report = report_at


def _mallopt_thresholds(int mmap_threshold, int trim_threshold):
    """glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, set together (setting either ends glibc's
    own adjustment of both). False where the C library has no mallopt (not glibc) or refuses."""
    if shmq_mallopt(SHMQ_M_MMAP_THRESHOLD, mmap_threshold) == 0:
        return False
    return shmq_mallopt(SHMQ_M_TRIM_THRESHOLD, trim_threshold) != 0


cdef inline void _heap_batch(uint64_t nbytes):
    """A get_many batch of nbytes of bodies was made: tell the heap policy when it is large."""
    global _heap_report
    if nbytes >= _heap_report and _heap_hook is not None:
        try:
            _heap_report = <uint64_t>_heap_hook(nbytes)
        except Exception:
            _heap_report = <uint64_t>-1     # a policy that fails is not asked again


def crash_points():
    """[(name, where)] of every crash point compiled into the core."""
    return [(c.shmq_crash_name(i).decode(), c.shmq_crash_where(i).decode()) for i in range(c.shmq_crash_count())]

def set_spin_us(us):
    """Spin budget of blocking gets in microseconds (0 disables spinning), process-wide.
    Raises ValueError/TypeError (ShmqError too) for anything but a number from 0 to 1e9."""
    if isinstance(us, bool) or not isinstance(us, (int, float)):
        raise _errors.ArgumentTypeError(f"spin budget must be a number of microseconds, not {type(us).__name__}")
    if not (0 <= us <= 1e9):
        raise _errors.ArgumentError(f"spin budget must be a non-negative number of microseconds, got {us!r}")
    c.shmq_set_spin_ns(<uint64_t>(us * 1000.0))

def get_spin_us():
    return c.shmq_get_spin_ns() / 1000.0

def copy_bytearray(view):
    """A bytearray copy of a contiguous buffer; large copies run without the GIL."""
    cdef Py_buffer b
    cdef char *dst
    PyObject_GetBuffer(view, &b, PyBUF_ANY_CONTIGUOUS)
    try:
        out = PyByteArray_FromStringAndSize(NULL, b.len)
        dst = PyByteArray_AS_STRING(out)
        if b.len < GIL_RELEASE_BYTES:
            memcpy(dst, b.buf, <size_t>b.len)
        else:
            with nogil:
                memcpy(dst, b.buf, <size_t>b.len)
        return out
    finally:
        PyBuffer_Release(&b)


# This module is single-phase initialised: it lives in one interpreter, looked up once.
cdef PyInterpreterState *_interp = PyInterpreterState_Get()


cdef inline PyThreadState *_release() noexcept:
    """Release the GIL around a C call that may wait (a futex sleep, a lock another process
    holds), unless this is the interpreter's only thread: then there is nobody to hand it to,
    and keeping it saves the two GIL handovers per call of the hot path. (Another thread can
    appear only through a thread holding the GIL, so "alone" stays true during the call.)"""
    cdef PyThreadState *head = PyInterpreterState_ThreadHead(_interp)
    if head != NULL and PyThreadState_Next(head) == NULL:
        return NULL
    return PyEval_SaveThread()


cdef inline void _reacquire(PyThreadState *ts) noexcept:
    if ts != NULL:
        PyEval_RestoreThread(ts)


cdef int _deadline(object block, object timeout, uint64_t *out) except -1:
    """Absolute monotonic deadline of a call: 0 = do not wait, SHMQ_NO_DEADLINE = forever."""
    if not block:
        out[0] = 0
        return 0
    global _last_timeout, _last_timeout_ns
    cdef uint64_t rel
    if timeout is None:
        out[0] = c.SHMQ_NO_DEADLINE
        return 0
    if timeout is _last_timeout:
        rel = _last_timeout_ns        # the same int/float object as last time: the same answer
    else:
        ns = _timeout_ns(timeout)
        rel = c.SHMQ_NO_DEADLINE if ns is None else <uint64_t>ns
        if PyFloat_CheckExact(timeout) or PyLong_CheckExact(timeout):   # immutable: safe to remember
            _last_timeout = timeout
            _last_timeout_ns = rel
    if rel == c.SHMQ_NO_DEADLINE:
        out[0] = c.SHMQ_NO_DEADLINE
        return 0
    out[0] = c.shmq_now_mono_ns() + rel
    if out[0] == 0:
        out[0] = 1
    return 0


cdef void _progress_cb(void *ctx, uint64_t done, uint64_t total) noexcept with gil:
    try:
        (<object>ctx)(done, total)
    except BaseException:
        pass    # a progress display never stops a recovery


cdef dict _scan(str directory, uint32_t flags, c.shmq_seg_t *q, progress):
    cdef c.shmq_jreport_t rep
    cdef int rc
    cdef bytes bdir = os.fsencode(directory)
    cdef const char *p = bdir
    cdef void *ctx = <void *>progress
    if progress is None:
        with nogil:
            rc = c.shmq_journal_scan(p, flags, q, &rep, NULL, NULL)
    else:
        with nogil:
            rc = c.shmq_journal_scan(p, flags, q, &rep, _progress_cb, ctx)
    out = {k: v for k, v in (<dict>rep).items()}
    out["rc"] = rc
    out["rc_name"] = c.shmq_strerror(rc).decode()
    return out


def journal_scan(str directory, bint skip=False):
    """Check every record of the journal in directory (no queue needed): a report dict with
    its rc (0 when it validates; see shmq.journal for the words)."""
    return _scan(directory, c.SHMQ_JSCAN_SKIP if skip else 0, NULL, None)


def journal_defer(bint defer):
    """This thread's journal commits return at once while set (the caller waits once, later)."""
    c.shmq_journal_defer(defer)


def journal_last_end():
    """The end position of this thread's last journal record."""
    return c.shmq_journal_last_end()


def journal_on_tmpfs(str directory):
    return c.shmq_journal_on_tmpfs(os.fsencode(directory))


JOURNAL_MODES = {"always": c.SHMQ_JMODE_ALWAYS, "batch": c.SHMQ_JMODE_BATCH, "never": c.SHMQ_JMODE_NEVER}
JOURNAL_MIN_SEGMENT = c.SHMQ_JOURNAL_MIN_SEG
JOURNAL_DIR_MAX = c.SHMQ_JOURNAL_DIR_MAX
JOURNAL_READY = c.SHMQ_JSTATE_READY
JOURNAL_RECOVERING = c.SHMQ_JSTATE_RECOVERING
JSCAN_SKIP = c.SHMQ_JSCAN_SKIP
F_JOURNAL = c.SHMQ_F_JOURNAL


def _untrusted_file(int fd, path, uint32_t expected_uid, uint32_t mode):
    """None if the open file fd is owned by expected_uid and grants no write permission outside
    mode, else the QueuePermissionError to raise (naming the file, its owner and mode). Another
    user can only plant a file it owns (the uid check); a file of our own that is readable by more
    than asked is our own earlier choice, but one that lets others write is refused."""
    import errno
    import pwd
    st = os.fstat(fd)
    have = st.st_mode & 0o777
    if st.st_uid == expected_uid and not (have & ~mode & 0o022):
        return None
    def who(uid):
        try:
            return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
        except KeyError:
            return f"uid {uid}"
    return _errors.QueuePermissionError(
        errno.EPERM,
        f"refusing to use queue file {path}: it is owned by {who(st.st_uid)} with mode {oct(have)}, but "
        f"{who(expected_uid)} with no write permission beyond mode {oct(mode)} was expected; another user may "
        "have created it first to read or plant messages. Check who made it, remove it (`shmq rm`, as its owner "
        "or root), or open it by name without create=True if you trust it", path)


@cython.final
cdef class Core:
    """One attached handle on one queue segment."""
    cdef c.shmq_seg_t seg
    cdef readonly bint opened
    cdef bint _closed
    cdef int _active          # calls of ours between a GIL release and their message's release
    cdef uint32_t _flags
    cdef readonly str path
    cdef object _pending       # an error to raise at the next call (set by the Python layer)
    cdef Core _dlq              # the dead-letter queue's Core (its seg is referenced by ours)
    cdef bytes _name_b          # our queue name as the core keeps it for dead-letter headers
    cdef int _lost_rc           # why a forked child's handle could not re-attach (0: it did)
    cdef int _lost_errno
    cdef uint32_t _lost_slots
    cdef int _fault_word        # set by the SIGBUS guard (guard.h): our file was truncated under us
    cdef bint _guarded          # registered with the guard
    cdef bint _attach_pending   # a forked child's handle: takes its slot at the first use
    cdef Core _fwd_src          # forward (_forward): the source of the delivery being forwarded, else None
    cdef uint64_t _fwd_token
    cdef uint64_t _fwd_id
    cdef object _fwd_lock       # one forward into this handle at a time (it rides on the fields above)
    cdef unsigned long _fwd_thread  # the thread whose forward the fields above belong to
    cdef uint64_t _vis_ns       # receive(copy=False): the queue's lease length, read once

    def __cinit__(self):
        self.opened = False
        self._closed = False
        self._active = 0
        self._lost_rc = 0
        self.seg.fd = -1
        self.path = None

    def __dealloc__(self):
        if self.opened:
            self._seg_close()
            self.opened = False

    # -- errors ------------------------------------------------------------------------
    cdef object _error(self, int rc, str op, object detail=None):
        return _from_code(rc, op, self.path, self.seg.err, detail)

    cdef inline int _check(self) except -1:
        # the test the hot path pays inline; the words of the error in a call only when closed
        if self._fault_word or self._closed or not self.opened or self._attach_pending:
            return self._check_failed()
        return 0

    cdef int _check_failed(self) except -1:
        if self._attach_pending and not (self._fault_word or self._closed or not self.opened):
            return self._attach_late()
        if self._fault_word:
            raise _errors.QueueClosedError(f"{_errors._label(self.path)} is closed: its file was truncated under us")
        if self._closed or not self.opened:
            if self._lost_rc:
                raise _from_code(self._lost_rc, "after_fork", self.path, self._lost_errno, self._lost_slots)
            raise _from_code(c.SHMQ_ECLOSED, "use", self.path, 0)
        return 0

    cdef inline int _raise_pending(self) except -1:
        if self._pending is not None:
            e = self._pending
            self._pending = None
            raise e
        return 0

    def _defer(self, exc):
        """Raise exc at the next get on this handle (a batch that had taken items first)."""
        self._pending = exc

    # -- busy accounting: close() never unmaps under a call of ours ----------------------
    cdef inline void _enter(self):
        self._active += 1

    cdef inline int _leave(self) except -1:
        self._active -= 1
        if self._closed and self._active == 0 and self.opened:
            self._unmap()
        if self._fault_word:
            self._fault()
        return 0

    cdef void _seg_close(self):
        """Detach and unmap the segment now (a truncated file's missing pages read as zeros: the
        guard stays registered while the detach writes to them, and is dropped after)."""
        c.shmq_close(&self.seg)
        if self._guarded:
            c.shmq_guard_unregister(&self.seg)
            self._guarded = False

    cdef int _fault(self) except -1:
        """After a call into the core: a SIGBUS the guard caught (issue 11 item 7) becomes
        CorruptQueueError; the handle is closed (unmapped once no call of ours is running)."""
        if not self._fault_word:
            return 0
        self._closed = True
        if self._active == 0 and self.opened:
            self._unmap()
        raise _errors.CorruptQueueError(
            f"queue {self.path!r}: its file was truncated while this process used it (an access beyond its "
            "end was caught); this handle is closed. Another process shrank the segment: recreate the queue")

    cdef void _unmap(self):
        """Detach and unmap now; then close the dead-letter queue's segment, which ours referenced."""
        self._seg_close()
        self.opened = False
        if self._dlq is not None:
            d = self._dlq
            self._dlq = None
            d._close()

    cdef int _retry(self, int rc) except -1:
        """After a wait returned rc: 1 if it was a signal and the call should wait again (Python
        handlers ran and did not raise, the handle is still open), 0 if rc is the result."""
        if rc == c.SHMQ_EINTR:
            PyErr_CheckSignals()
            self._check()
            return 1
        if self._closed:
            self._check()   # woken by close()
        return 0

    # -- lifecycle ---------------------------------------------------------------------
    def _create(self, str path, uint32_t kind, uint32_t flags, uint64_t capacity, uint64_t max_message,
                uint64_t maxsize, uint32_t mode, uint32_t max_slots, bint exist_ok, dict ack=None,
                bint check_mode=True, uint32_t levels=0, uint64_t max_wait_ns=0, dict journal=None):
        """Create (or with exist_ok open) the segment at path and attach. Returns True if created.
        An existing file is opened only if it is ours and (check_mode) lets nobody else write
        beyond mode (issue 11 item 5).
        ack: at-least-once options (visibility_ns, max_deliveries, dead_letter, default_delay_ns,
        default_ttl_ns, dedup_window_ns, dedup_slots) when flags has F_ACK."""
        cdef c.shmq_create_opts_t o
        cdef c.shmq_journal_opts_t jo
        cdef int created = 0
        cdef int rc
        bpath = os.fsencode(path)
        bjdir = None
        bdlq = None
        memset(&o, 0, sizeof(o))
        o.path = bpath
        o.kind = kind
        o.flags = flags
        o.capacity = capacity
        o.max_message = max_message
        o.maxsize = maxsize
        o.mode = mode
        o.max_slots = max_slots
        o.levels = levels            # SHMQ_KIND_PRIORITY (prio.h)
        o.max_wait_ns = max_wait_ns
        if ack is not None:
            o.visibility_ns = ack["visibility_ns"]
            o.max_deliveries = ack["max_deliveries"]
            o.default_delay_ns = ack["default_delay_ns"]
            o.default_ttl_ns = ack["default_ttl_ns"]
            o.dedup_window_ns = ack["dedup_window_ns"]
            o.dedup_slots = ack["dedup_slots"]
            bdlq = (ack["dead_letter"] or "").encode()
            o.dead_letter = bdlq
        if journal is not None:   # shmq.journal: options checked there; flags carries F_JOURNAL
            bjdir = os.fsencode(journal["dir"])
            memset(&jo, 0, sizeof(jo))
            jo.dir = bjdir
            jo.mode = journal["mode"]
            jo.seg_size = journal["segment_size"]
            jo.interval_ns = journal["interval_ns"]
            o.journal = &jo
        with nogil:
            rc = c.shmq_create(&self.seg, &o, exist_ok, &created)
        self.path = path
        if rc != c.SHMQ_OK:
            raise self._error(rc, "create")
        if not created:
            # issue 11 item 5: exist_ok must not adopt a file someone else planted under the name
            problem = _untrusted_file(self.seg.fd, path, os.geteuid(), mode if check_mode else 0o777)
            if problem is not None:
                c.shmq_close(&self.seg)
                raise problem
        self._opened()
        self._attach()
        return bool(created)

    def _open(self, str path, int fd=-1, bint attach=True):
        """Open an existing segment by path (or by an inherited descriptor); attach unless
        attach is False (an inspector: reads counters, takes no participant slot)."""
        cdef int rc
        bpath = os.fsencode(path) if path is not None else None
        cdef const char *p = NULL
        if bpath is not None:
            p = bpath
        with nogil:
            rc = c.shmq_open(&self.seg, p, fd)
        self.path = path
        if rc != c.SHMQ_OK:
            raise self._error(rc, "open")
        self._opened()
        if attach:
            self._attach()

    cdef _opened(self):
        self.opened = True
        # issue 11 item 7: an access to pages a truncation removed raises instead of killing us
        self._guarded = c.shmq_guard_register(&self.seg, &self._fault_word) == 0
        self._flags = self.seg.hdr.flags
        self.seg.poll_signals = 1   # blocking calls surface every 50 ms so Python signal handlers run

    cdef _attach(self):
        cdef int rc
        with nogil:
            rc = c.shmq_attach(&self.seg)
        if rc != c.SHMQ_OK:
            err = self._error(rc, "attach", self.seg.hdr.max_slots)
            self._seg_close()
            self.opened = False
            raise err

    def _after_fork(self):
        """In a forked child: take a slot of our own (the parent's stays the parent's). On
        failure the handle is unusable and its next use raises why."""
        cdef int rc
        self._active = 0            # the threads that were busy in calls of ours are the parent's
        if self._dlq is not None:   # the dead-letter queue's handle is ours: it re-attaches first
            self._dlq._after_fork()
            if not self._dlq.opened and self.opened:
                # its re-attach failed: poison messages stay here (the move is retried) rather
                # than go through a closed segment
                c.shmq_ack_set_dlq(&self.seg, NULL, self._name_b)
        if not self.opened:
            return
        if self._closed:            # a close deferred in the parent: finish it here
            self._unmap()
            return
        rc = c.shmq_after_fork(&self.seg)
        if rc != c.SHMQ_OK:
            self._lose(rc)
            return
        # issue 13 item 1: the slot is taken at the child's first use of the handle (_check), so
        # 500 forked workers that never use an inherited queue take none of its slots
        self._attach_pending = True

    cdef void _lose(self, int rc):
        """A forked child's handle that could not be made its own: closed; its next use raises why."""
        self._lost_rc = rc
        self._lost_errno = self.seg.err
        self._lost_slots = self.seg.hdr.max_slots
        self._attach_pending = False
        self._seg_close()
        self.opened = False
        self._closed = True

    cdef int _attach_late(self) except -1:
        """The first use of an inherited handle in a forked child: take a slot (the dead-letter
        queue's first, which the core may move poison messages into). Raises as after_fork."""
        cdef int rc
        if self._dlq is not None and self._dlq._attach_pending:
            self._dlq._attach_late_quiet()
            if not self._dlq.opened:
                # its attach failed: poison messages stay here (the move is retried) rather than
                # go through a segment we hold no slot of
                c.shmq_ack_set_dlq(&self.seg, NULL, self._name_b)
        with nogil:
            rc = c.shmq_attach(&self.seg)
        self._attach_pending = False
        if rc != c.SHMQ_OK:
            self._lose(rc)
            raise _from_code(rc, "after_fork", self.path, self._lost_errno, self._lost_slots)
        return 0

    cdef void _attach_late_quiet(self):
        try:
            self._attach_late()
        except Exception:
            pass

    def _close(self):
        """Detach and unmap (deferred until calls of ours that released the GIL are done)."""
        self._closed = True
        if not self.opened:
            return
        if self._active:
            c.shmq_wake_all(&self.seg)   # blocked threads of ours wake, see _closed and leave
            return
        self._unmap()

    def _check_trusted(self, uint32_t expected_uid, uint32_t mode):
        """Raise QueuePermissionError (and close) unless the file, as opened, is owned by
        expected_uid and lets nobody else write beyond mode (fstat of our descriptor: no window
        between the check and the use)."""
        if not self.opened:
            raise _from_code(c.SHMQ_ECLOSED, "use", self.path, 0)
        problem = _untrusted_file(self.seg.fd, self.path, expected_uid, mode)
        if problem is not None:
            self._close()
            raise problem

    @property
    def _fd(self):
        return self.seg.fd

    @property
    def _flags_value(self):
        return self._flags

    @property
    def closed(self):
        return self._closed

    # -- put -------------------------------------------------------------------------
    cdef int _put_iov(self, c.shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t total,
                      uint64_t dl, c.shmq_send_opts_t *so=NULL, uint64_t *idp=NULL, int prio=-1) except -1:
        cdef int rc
        cdef int dup = 0
        cdef PyThreadState *ts
        cdef Core src = self._fwd_src   # forward: the source queue of the held delivery, else None
        if src is not None and self._fwd_thread != PyThread_get_thread_ident():
            src = None                  # another thread's own send while this handle forwards: a plain send
        while True:
            self._enter()
            if src is not None:
                src._enter()
            ts = _release()
            if so == NULL and prio >= 0:
                rc = c.shmq_put_prio(&self.seg, iov, n, kind, <uint32_t>prio, dl, idp)
            elif so == NULL:
                rc = c.shmq_put(&self.seg, iov, n, kind, dl, idp)
            elif src is not None:
                rc = c.shmq_forward(&src.seg, self._fwd_token, self._fwd_id, &self.seg, iov, n, kind, so, dl, idp, &dup)
            else:
                rc = c.shmq_send(&self.seg, iov, n, kind, so, dl, idp, &dup)
            _reacquire(ts)
            if src is not None:
                src._leave()
            self._leave()
            if (rc != c.SHMQ_EINTR and not self._closed) or not self._retry(rc):
                break
        if rc == c.SHMQ_OK:
            if self.seg.journal != NULL:
                self._journal_commit_c(dl)   # always: until durable; deferred (thread-local): at once
            return dup
        if so != NULL:
            total += so.hdr_size
        if src is not None and rc == c.SHMQ_ESTALE:
            raise src._error(rc, "forward", self._fwd_id)
        raise self._error(rc, "put" if so == NULL else ("send" if src is None else "forward"),
                          (total, self.seg.hdr.max_message, FULL_WHY.get(self.seg.full_why), self.seg.hdr.maxsize))

    cdef int _put_obj(self, object obj, uint64_t dl, c.shmq_send_opts_t *so=NULL, uint64_t *idp=NULL,
                      int prio=-1) except -1:
        cdef c.shmq_iov_t one
        cdef c.shmq_iov_t *iov
        cdef Py_buffer *views
        cdef Py_ssize_t i, nviews = 0
        cdef uint64_t total = 0
        if PyBytes_CheckExact(obj):
            one.ptr = PyBytes_AS_STRING(obj)
            one.len = <uint64_t>PyBytes_GET_SIZE(obj)
            return self._put_iov(&one, 1, _KIND_BYTES, one.len, dl, so, idp, prio)
        cdef Py_buffer view1
        res = None
        if _new_pickler is not None and not (self._flags & c.SHMQ_F_RAW) and type(obj) is not bytearray \
                and type(obj) is not memoryview:
            res = _pickle_fast(obj)
        if res is None:
            res = _encode(obj, self._flags & c.SHMQ_F_RAW)
        kind, parts = <tuple>res
        n = len(parts)
        if n == 1:   # one part (a plain pickle stream, a bytes-like): no arrays to allocate
            PyObject_GetBuffer(parts[0], &view1, PyBUF_ANY_CONTIGUOUS)
            try:
                one.ptr = view1.buf
                one.len = <uint64_t>view1.len
                return self._put_iov(&one, 1, <uint32_t>kind, one.len, dl, so, idp, prio)
            finally:
                PyBuffer_Release(&view1)
        views = <Py_buffer *>malloc(sizeof(Py_buffer) * n)
        iov = <c.shmq_iov_t *>malloc(sizeof(c.shmq_iov_t) * n)
        if views == NULL or iov == NULL:
            free(views)
            free(iov)
            raise MemoryError()
        try:
            for i in range(n):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_ANY_CONTIGUOUS)
                nviews += 1
                iov[i].ptr = views[i].buf
                iov[i].len = <uint64_t>views[i].len
                total += iov[i].len
            return self._put_iov(iov, <uint32_t>n, <uint32_t>kind, total, dl, so, idp, prio)
        finally:
            for i in range(nviews):
                PyBuffer_Release(&views[i])
            free(views)
            free(iov)

    # The per-message calls are cdef functions, so that QueueOps (a handle's base) reaches them
    # with a C call; the def methods serve Python callers of the binding object itself.
    cdef int _put_c(self, obj, block, timeout) except -1:
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        self._put_obj(obj, dl)
        return 0

    cdef int _put_nowait_c(self, obj) except -1:
        self._check()
        self._put_obj(obj, 0)
        return 0

    def put(self, obj, block=True, timeout=None):
        """Put obj. Raises Full (timeout/non-blocking), MessageTooLargeError, QueueClosedError."""
        self._put_c(obj, block, timeout)

    def put_nowait(self, obj):
        self._put_nowait_c(obj)

    def put_many(self, items, block=True, timeout=None):
        """Put every item of an iterable, in order; returns how many were put. The timeout is for
        the whole batch; an error carries .items_put (how many went in before it)."""
        return self._put_many_c(items, block, timeout)

    cdef object _put_many_c(self, items, block, timeout):
        cdef uint64_t dl
        cdef Py_ssize_t n = 0
        cdef bint journaled
        self._check()
        _deadline(block, timeout, &dl)
        journaled = self.seg.journal != NULL
        if journaled:
            c.shmq_journal_defer(1)     # thread-local: other threads' puts still wait for their own sync
        try:
            for obj in items:
                self._put_obj(obj, dl)
                n += 1
            if journaled:
                c.shmq_journal_defer(0)
                self._journal_commit_c(dl)   # one sync covers the batch (the last record is this thread's)
        except BaseException as e:
            e.items_put = n
            raise
        finally:
            if journaled:
                c.shmq_journal_defer(0)
        return n

    # -- journal (shmq.journal holds the policy) ------------------------------------------
    cdef int _journal_commit_c(self, uint64_t dl) except -1:
        """After a put or send returned: fsync="always" waits until its record is durable."""
        cdef int rc
        cdef PyThreadState *ts
        if c.shmq_journal_deferred() or c.shmq_journal_stats_mode(&self.seg) != c.SHMQ_JMODE_ALWAYS:
            rc = c.shmq_journal_commit(&self.seg, dl)   # never waits: the sticky failure check only
            if rc != c.SHMQ_OK:
                raise self._error(rc, "journal")
            return 0
        while True:
            self._enter()
            ts = _release()
            rc = c.shmq_journal_commit(&self.seg, dl)
            _reacquire(ts)
            self._leave()
            if rc != c.SHMQ_EINTR or not self._retry(rc):
                break
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal")
        return 0

    def _journal_sync(self, timeout=None):
        """Make every record appended so far durable (q.sync(), the batch timer)."""
        cdef int rc
        cdef uint64_t dl
        cdef PyThreadState *ts
        self._check()
        _deadline(True, timeout, &dl)
        if self.seg.jstate == NULL:
            return False
        while True:
            self._enter()
            ts = _release()
            rc = c.shmq_journal_sync(&self.seg, dl)
            _reacquire(ts)
            self._leave()
            if rc != c.SHMQ_EINTR or not self._retry(rc):
                break
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal")
        return True

    def _journal_wait(self, uint64_t pos, timeout=None):
        """Wait until every record before pos is durable (syncing if nobody else does)."""
        cdef int rc
        cdef uint64_t dl
        cdef PyThreadState *ts
        self._check()
        _deadline(True, timeout, &dl)
        while True:
            self._enter()
            ts = _release()
            rc = c.shmq_journal_wait(&self.seg, pos, dl)
            _reacquire(ts)
            self._leave()
            if rc != c.SHMQ_EINTR or not self._retry(rc):
                break
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal")

    def _journal_prepare_spare(self):
        """Maintenance: build the next segment file ahead of need (no-op when not due)."""
        cdef int rc
        self._check()
        self._enter()
        with nogil:
            rc = c.shmq_journal_prepare_spare(&self.seg)
        self._leave()
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal")

    @property
    def _journal_always(self):
        """Sends of this handle wait for their sync (fsync="always")."""
        return self.seg.journal != NULL and c.shmq_journal_stats_mode(&self.seg) == c.SHMQ_JMODE_ALWAYS

    @property
    def _journal_dir(self):
        """The journal directory this queue was created with, or None."""
        cdef const char *d
        if not self.opened:
            return None
        d = c.shmq_journal_dir_of(&self.seg)
        return None if d == NULL else os.fsdecode(<bytes>d)

    def _journal_state(self):
        return c.shmq_journal_state(&self.seg) if self.opened else 0

    def _journal_enable(self):
        c.shmq_journal_enable(&self.seg)

    def _journal_claim(self):
        cdef int rc = c.shmq_journal_claim(&self.seg)
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal claim")

    def _journal_start(self, uint64_t last_seg, uint64_t next_lsn):
        cdef int rc
        with nogil:
            rc = c.shmq_journal_start(&self.seg, last_seg, next_lsn)
        if rc != c.SHMQ_OK:
            raise self._error(rc, "journal start")

    def _journal_recover(self, str directory, uint32_t flags, progress=None):
        """Replay the journal in directory into this (new, empty) queue: a report dict; raises
        CorruptJournalError / OSError / Full through shmq.journal's words (the report's rc)."""
        return _scan(directory, flags | c.SHMQ_JSCAN_REPAIR, &self.seg, progress)

    def _journal_stats(self):
        cdef c.shmq_journal_stats_t st
        self._check_open()
        c.shmq_journal_stats(&self.seg, &st)
        return {"bytes": st.bytes, "segments": st.segments, "durable_pos": st.durable_pos,
                "write_pos": st.write_pos, "sync_count": st.sync_count, "fsync_errors": st.fsync_errors,
                "last_sync_ns": st.last_sync_ns, "records": st.records, "failed_errno": st.failed_errno,
                "mode": st.mode, "interval_ns": st.interval_ns}

    # -- get -------------------------------------------------------------------------
    cdef object _body(self, c.shmq_msg_t *m):
        """The object of a taken message (the caller releases it afterwards)."""
        cdef object out
        cdef char *dst
        cdef uint64_t n = m.size
        if m.kind == _KIND_BYTES or m.kind == _KIND_BYTEARRAY:
            if m.kind == _KIND_BYTES:
                out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
                dst = PyBytes_AS_STRING(out)
            else:
                out = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>n)
                dst = PyByteArray_AS_STRING(out)
            if n < GIL_RELEASE_BYTES:
                memcpy(dst, m.data, n)
            else:
                with nogil:
                    memcpy(dst, m.data, n)
            return out
        mv = PyMemoryView_FromMemory(<char *>m.data, <Py_ssize_t>n, PyBUF_READ)
        try:
            if m.kind == _KIND_PICKLE and _loads is not None and not (self._flags & c.SHMQ_F_RAW):
                return _loads(mv)   # the codec's own answer for a plain pickle (no Python call in between)
            return _decode(m.kind, mv, self._flags & c.SHMQ_F_RAW, m.id)
        finally:
            mv.release()

    cdef int _take(self, c.shmq_msg_t *m, uint64_t dl, bint lease, char *small, uint64_t *small_n) except -1:
        """Take the next message without the GIL (lease: under a lease, for receive), waiting
        until dl. Returns 1 with the handle busy (the caller copies out, releases the message
        and calls _leave), 0 (nothing in time, not busy); raises for errors and after close.
        A plain bytes body of at most SMALL_COPY bytes is copied into small (*small_n = its
        size) and released in the same GIL release; else *small_n = UINT64_MAX."""
        cdef int rc
        cdef PyThreadState *ts
        while True:
            self._enter()
            ts = _release()
            if lease:
                rc = c.shmq_receive_begin(&self.seg, m, dl)
            else:
                rc = c.shmq_get_begin(&self.seg, m, dl)
                if rc == c.SHMQ_OK and small != NULL and m.kind == _KIND_BYTES and m.size <= SMALL_COPY:
                    memcpy(small, m.data, m.size)
                    small_n[0] = m.size
                    c.shmq_get_end(&self.seg, m)
                else:
                    small_n[0] = <uint64_t>-1
            _reacquire(ts)
            if rc == c.SHMQ_OK:
                return 1
            self._leave()
            if not self._retry(rc):
                break
        if rc == c.SHMQ_EMPTY or rc == c.SHMQ_TIMEOUT:
            return 0
        raise self._error(rc, "receive" if lease else "get")

    cdef object _get_one(self, uint64_t dl, bint *got, uint64_t *nbytes=NULL):
        cdef c.shmq_msg_t m
        cdef char small[SMALL_COPY]
        cdef uint64_t small_n
        cdef PyThreadState *ts
        got[0] = self._take(&m, dl, False, small, &small_n)
        if not got[0]:
            return None
        if small_n != <uint64_t>-1:
            self._leave()
            return PyBytes_FromStringAndSize(small, <Py_ssize_t>small_n)
        if nbytes != NULL:
            nbytes[0] += m.size
        try:
            return self._body(&m)
        finally:
            ts = _release()
            c.shmq_get_end(&self.seg, &m)
            _reacquire(ts)
            self._leave()

    cdef object _get_c(self, block, timeout):
        cdef uint64_t dl
        cdef bint got
        self._check()
        _deadline(block, timeout, &dl)
        self._raise_pending()
        obj = self._get_one(dl, &got)
        if not got:
            raise _errors.Empty()
        return obj

    cdef object _get_view_c(self, block, timeout):
        """get(copy=False): bytes bodies as read-only memoryviews and out-of-band buffers as
        read-only views into shared memory; the message stays taken (pinned: its chunk is not
        reused, and close() leaves the segment mapped) until the last view is gone."""
        cdef uint64_t dl
        cdef c.shmq_msg_t m
        cdef uint64_t unused
        cdef _Pin pin
        self._check()
        _deadline(block, timeout, &dl)
        self._raise_pending()
        if not self._take(&m, dl, False, NULL, &unused):
            raise _errors.Empty()
        pin = _Pin.__new__(_Pin)      # from here the pin owns the taken message and busy count
        pin.core = self
        pin.m = m
        pin.pid = getpid()
        view = PyMemoryView_FromObject(pin)
        return _decode_view(m.kind, view, self._flags & c.SHMQ_F_RAW, m.id)

    def _get_many_views(self, Py_ssize_t max_items, timeout=None, block=True):
        """(views, error) as _get_many, with get(copy=False)'s views."""
        out = [self._get_view_c(block, timeout)]
        while len(out) < max_items:
            try:
                out.append(self._get_view_c(False, None))
            except _errors.Empty:
                break
            except Exception as e:
                return out, e
        return out, None

    cdef object _get_nowait_c(self):
        cdef bint got
        self._check()
        self._raise_pending()
        obj = self._get_one(0, &got)
        if not got:
            raise _errors.Empty()
        return obj

    def get(self, block=True, timeout=None):
        """Remove and return an item. Raises Empty (timeout/non-blocking), QueueClosedError."""
        return self._get_c(block, timeout)

    def get_nowait(self):
        return self._get_nowait_c()

    def _get_many(self, Py_ssize_t max_items, timeout=None, block=True):
        """(items, error): 1..max_items items, as soon as at least one is there, and the error
        met after items had been taken (None if none). Raises Empty, or an error met first."""
        return self._get_many_c(max_items, timeout, block)

    cdef tuple _get_many_c(self, Py_ssize_t max_items, timeout, block):
        cdef uint64_t dl
        cdef bint got
        self._check()
        _deadline(block, timeout, &dl)
        self._raise_pending()
        cdef uint64_t nbytes = 0
        first = self._get_one(dl, &got, &nbytes)
        if not got:
            raise _errors.Empty()
        out = [first]
        while len(out) < max_items:
            try:
                obj = self._get_one(0, &got, &nbytes)
            except Exception as e:
                _heap_batch(nbytes)
                return out, e
            if not got:
                break
            out.append(obj)
        _heap_batch(nbytes)
        return out, None

    # -- at-least-once ----------------------------------------------------------------
    def _set_dlq(self, Core dlq, str name):
        """Attach the dead-letter queue (kept alive by this handle) and record our name."""
        self._dlq = dlq
        self._name_b = name.encode()
        c.shmq_ack_set_dlq(&self.seg, &dlq.seg if dlq is not None else NULL, self._name_b)

    def _send(self, obj, bytes hdr, uint32_t priority, uint64_t delay_ns, uint64_t ttl_ns, bytes dedup_key,
              block=True, timeout=None, uint32_t raw_kind=0, bytes group=None, uint32_t group_type=0):
        """Send obj with a header block; returns (id, duplicate). delay/ttl: USE_DEFAULT for the
        queue's default. raw_kind: obj is a payload of that kind taken by a raw receive, stored as
        it is (redrive: never unpickled). Raises Full, MessageTooLargeError, QueueClosedError."""
        cdef c.shmq_send_opts_t so
        cdef c.shmq_iov_t one
        cdef uint64_t dl, mid = 0
        cdef int dup
        self._check()
        _deadline(block, timeout, &dl)
        so.delay_ns = delay_ns
        so.ttl_ns = ttl_ns
        so.hdr = PyBytes_AS_STRING(hdr)
        so.hdr_size = <uint32_t>len(hdr)
        so.priority = priority
        so.dedup_key = NULL
        if dedup_key is not None:
            so.dedup_key = <const uint8_t *>PyBytes_AS_STRING(dedup_key)
        so.group = NULL
        so.group_len = 0
        so.group_type = group_type
        if group is not None:
            so.group = <const uint8_t *>PyBytes_AS_STRING(group)
            so.group_len = <uint32_t>len(group)
        if raw_kind:
            if raw_kind not in _kind_names or not PyBytes_CheckExact(obj):
                raise _errors.ArgumentError(f"not a payload of a raw receive: kind {raw_kind}")
            if str(_kind_names[raw_kind]).startswith("pickle") and (self._flags & c.SHMQ_F_RAW):
                raise _errors.ArgumentTypeError(f"raw queue {self.path!r} carries bytes-like bodies only, not a pickle")
            one.ptr = PyBytes_AS_STRING(obj)
            one.len = <uint64_t>PyBytes_GET_SIZE(obj)
            dup = self._put_iov(&one, 1, raw_kind, one.len, dl, &so, &mid)
        else:
            dup = self._put_obj(obj, dl, &so, &mid)
        return mid, bool(dup)

    cdef object _receive_one(self, uint64_t dl, bint raw=False, uint64_t *nbytes=NULL):
        """(body, hdr, id, timestamp, delivery_count, priority, token, group) or None when empty;
        group: None, or (key bytes, key type 0 = str / 1 = bytes).
        raw: body is (payload kind, payload bytes), never unpickled (redrive)."""
        cdef c.shmq_msg_t m
        cdef int rc
        cdef uint64_t unused
        cdef PyThreadState *ts
        while True:
            if not self._take(&m, dl, True, NULL, &unused):
                return None
            body = hdr = err = None
            if nbytes != NULL:
                nbytes[0] += m.size
            try:
                if raw:
                    body = (m.kind, PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.size))
                else:
                    body = self._body(&m)
                hdr = PyBytes_FromStringAndSize(<const char *>m.hdr, <Py_ssize_t>m.hdr_size)
                grp = None
                if m.group != NULL:
                    grp = (PyBytes_FromStringAndSize(<const char *>m.group, <Py_ssize_t>m.group_len), m.group_type)
            except Exception as e:
                err = e
            ts = _release()
            rc = c.shmq_receive_end(&self.seg, &m)
            _reacquire(ts)
            self._leave()
            if rc == c.SHMQ_ESTALE:
                continue   # the lease ran out while we copied: that copy may be torn; take the next
            if err is not None:
                raise err
            return (body, hdr, m.id, m.timestamp_ns / 1e9, m.delivery_count, m.priority, m.handle, grp)

    cdef object _receive_view_one(self, uint64_t dl):
        """receive(copy=False): the record of _receive_one plus its pin (a 9th item), the body
        decoded as get(copy=False) decodes it. The delivery's lease is held open while the pin
        lives (_LeasePin), or None when empty."""
        cdef c.shmq_msg_t m
        cdef int rc
        cdef uint64_t unused, now
        cdef _LeasePin pin
        cdef PyThreadState *ts
        while True:
            if not self._take(&m, dl, True, NULL, &unused):
                return None
            ts = _release()
            now = c.shmq_now_mono_ns()
            rc = c.shmq_receive_end(&self.seg, &m)
            if rc == c.SHMQ_OK:   # the lease stops running while views live (it resumes at release)
                rc = c.shmq_extend(&self.seg, m.handle, m.id, _PIN_HOLD_NS)
            _reacquire(ts)
            if rc != c.SHMQ_OK:
                self._leave()
                if rc == c.SHMQ_ESTALE:
                    continue  # the lease ran out before we held it: the message is someone else's
                raise self._error(rc, "receive")
            pin = _LeasePin.__new__(_LeasePin)   # from here the pin owns the delivery and busy count
            pin.core = self
            pin.m = m
            pin.pid = getpid()
            pin.lease_end_ns = now + self._visibility_ns()
            hdr = PyBytes_FromStringAndSize(<const char *>m.hdr, <Py_ssize_t>m.hdr_size)
            body = _decode_view(m.kind, PyMemoryView_FromObject(pin), self._flags & c.SHMQ_F_RAW, m.id)
            grp = None
            if m.group != NULL:
                grp = (PyBytes_FromStringAndSize(<const char *>m.group, <Py_ssize_t>m.group_len), m.group_type)
            return (body, hdr, m.id, m.timestamp_ns / 1e9, m.delivery_count, m.priority, m.handle, grp, pin)

    cdef uint64_t _visibility_ns(self):
        cdef c.shmq_stats_t st
        if self._vis_ns == 0:
            c.shmq_stats(&self.seg, &st)
            self._vis_ns = st.visibility_ns
        return self._vis_ns

    def _receive_view(self, block=True, timeout=None):
        """receive(copy=False): see _receive_view_one. Raises Empty."""
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        r = self._receive_view_one(dl)
        if r is None:
            raise _errors.Empty()
        return r

    def _receive_many_views(self, Py_ssize_t max_items, timeout=None, block=True):
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        first = self._receive_view_one(dl)
        if first is None:
            raise _errors.Empty()
        out = [first]
        while len(out) < max_items:
            r = self._receive_view_one(0)
            if r is None:
                break
            out.append(r)
        return out

    def _receive(self, block=True, timeout=None, bint raw=False):
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        r = self._receive_one(dl, raw)
        if r is None:
            raise _errors.Empty()
        return r

    def _receive_many(self, Py_ssize_t max_items, timeout=None, block=True):
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        cdef uint64_t nbytes = 0
        first = self._receive_one(dl, False, &nbytes)
        if first is None:
            raise _errors.Empty()
        out = [first]
        try:
            while len(out) < max_items:
                r = self._receive_one(0, False, &nbytes)
                if r is None:
                    break
                out.append(r)
        finally:
            _heap_batch(nbytes)
        return out

    cdef int _settle(self, int op, uint64_t token, uint64_t mid, int requeue, uint64_t ns) except? -9999:
        cdef int rc
        cdef PyThreadState *ts
        self._check()
        self._enter()
        ts = _release()   # a settle may move the message to the dead-letter queue (its locks)
        if op == 0:
            rc = c.shmq_ack(&self.seg, token, mid)
        elif op == 1:
            rc = c.shmq_nack(&self.seg, token, mid, requeue, ns)
        else:
            rc = c.shmq_extend(&self.seg, token, mid, ns)
        _reacquire(ts)
        self._leave()
        return rc

    cdef int _settle_or_raise(self, int op, uint64_t token, uint64_t mid, int requeue, uint64_t ns) except -1:
        cdef int rc = self._settle(op, token, mid, requeue, ns)
        if rc != c.SHMQ_OK:
            raise self._error(rc, ("ack", "nack", "extend")[op], mid)
        return 0

    def _ack(self, uint64_t token, uint64_t mid):
        self._settle_or_raise(0, token, mid, 0, 0)

    def _ack_many(self, list pairs):
        """Ack (token, id) pairs; returns the list of ids whose lease had expired (not acked)."""
        cdef int rc
        cdef uint64_t token, mid
        stale = []
        for token, mid in pairs:
            rc = self._settle(0, token, mid, 0, 0)
            if rc == c.SHMQ_ESTALE:
                stale.append(mid)
            elif rc != c.SHMQ_OK:
                raise self._error(rc, "ack", mid)
        return stale

    def _nack(self, uint64_t token, uint64_t mid, bint requeue, uint64_t delay_ns):
        self._settle_or_raise(1, token, mid, requeue, delay_ns)

    def _extend(self, uint64_t token, uint64_t mid, uint64_t ns):
        self._settle_or_raise(2, token, mid, 0, ns)

    def _forward(self, Core src, uint64_t token, uint64_t mid, obj, bytes hdr, uint32_t priority, uint64_t delay_ns,
                 uint64_t ttl_ns, bytes group=None, uint32_t group_type=0, block=True, timeout=None):
        """Ack src's delivery (token, mid) and send obj here as one step (forward.h); returns
        (id, duplicate). Raises LeaseExpiredError (nothing sent), Full, QueueClosedError."""
        src._check()
        if self._fwd_lock is None:
            self._fwd_lock = _threading.Lock()
        self._fwd_lock.acquire()   # the forward's source rides on this object for one call
        try:
            self._fwd_thread = PyThread_get_thread_ident()
            self._fwd_src = src
            self._fwd_token = token
            self._fwd_id = mid
            return self._send(obj, hdr, priority, delay_ns, ttl_ns, None, block, timeout, 0, group, group_type)
        finally:
            self._fwd_src = None
            self._fwd_lock.release()

    # -- request-reply: a sender looking after its message, responders' presence ---------------
    def _find(self, uint64_t mid):
        """The token of the descriptor holding message mid (walks the descriptors), or None."""
        cdef uint64_t token = 0
        cdef int rc
        self._check()
        rc = c.shmq_ack_find(&self.seg, mid, &token)
        self._fault()
        if rc == c.SHMQ_ESTALE:
            return None
        if rc != c.SHMQ_OK:
            raise self._error(rc, "find", mid)
        return token

    def _probe(self, uint64_t token, uint64_t mid):
        """(state, owner_alive, delivery_count) of message (token, mid): state is one of
        PROBE_GONE/READY/DELAYED/INFLIGHT/BUSY. O(1); a dead owner's check is one system call."""
        cdef c.shmq_probe_t p
        cdef int rc
        self._check()
        rc = c.shmq_ack_probe(&self.seg, token, mid, &p)
        self._fault()
        if rc != c.SHMQ_OK:
            raise self._error(rc, "probe", mid)
        return p.state, bool(p.owner_alive), p.delivery_count

    def _consumers(self, bint alive):
        """Attached handles that took the consumer role (alive: only live ones, one system call
        each; else dead ones not yet repaired count too, and no system call is made)."""
        self._check()
        n = c.shmq_part_consumers(&self.seg, alive)
        self._fault()
        return n

    def _set_consumer(self):
        """Take the consumer role now (a responder is one before its first receive)."""
        self._check()
        c.shmq_part_set_role(&self.seg, c.SHMQ_ROLE_CONSUMER)

    def _timers_run(self):
        """Run the timer scan now (lease ends, delays, TTLs); returns how many it changed."""
        cdef int n
        self._check()
        self._enter()
        with nogil:
            n = c.shmq_timers_run(&self.seg)
        self._leave()
        return n

    # -- state ------------------------------------------------------------------------
    cdef uint64_t _qsize_c(self) except? 0xffffffffffffffff:
        self._check()
        cdef uint64_t n = c.shmq_depth(&self.seg)
        self._fault()
        return n

    cdef bint _full_c(self) except -1:
        self._check()
        cdef uint64_t maxsize = self.seg.hdr.maxsize
        cdef bint full = maxsize != 0 and c.shmq_depth(&self.seg) >= maxsize
        self._fault()
        return full

    def qsize(self):
        return self._qsize_c()

    def empty(self):
        return self._qsize_c() == 0

    def full(self):
        return self._full_c()

    # -- watchers (queue.h): shmq._aio's waiter threads sleep for coroutines that take ------
    def _watch_begin(self, int direction):
        """Count as a sleeper of not_empty (0) or not_full (1) until _watch_end or close."""
        self._check()
        cdef int rc = c.shmq_watch_begin(&self.seg, direction)
        if rc != c.SHMQ_OK:
            raise self._error(rc, "watch")

    def _watch_token(self, int direction):
        """Clear the pending wake-up and read the word: look after this, then _watch_sleep(token)."""
        self._check()
        return c.shmq_watch_token(&self.seg, direction)

    def _watch_sleep(self, int direction, uint32_t token, uint64_t timeout_ns):
        """Sleep (GIL released) until the word moves from token, a liveness slice or timeout_ns
        (relative; 0: no deadline). True: look again; False: the timeout passed. Raises
        QueueClosedError once the handle is closed."""
        cdef int rc
        cdef uint64_t dl = c.SHMQ_NO_DEADLINE
        self._check()
        if timeout_ns:
            dl = c.shmq_now_mono_ns() + timeout_ns
        self._enter()
        with nogil:
            rc = c.shmq_watch_sleep(&self.seg, direction, token, dl)
        self._leave()
        if self._closed or rc == c.SHMQ_ECLOSED:
            self._check()
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        return rc != c.SHMQ_TIMEOUT

    def _watch_end(self, int direction):
        """Stop counting as a sleeper (a no-op once closed: close undid it)."""
        if self.opened and not self._closed:
            c.shmq_watch_end(&self.seg, direction)

    cdef int _check_open(self) except -1:
        # inspection calls work on an inspector handle too (opened, not attached)
        if not self.opened:
            self._check()
        return 0

    def _prio_info(self):
        """(levels, max_wait_ns, ready messages per level) of a priority queue; (0, 0, []) otherwise."""
        cdef uint64_t counts[c.SHMQ_PRIO_MAX_LEVELS]
        cdef uint32_t n
        self._check_open()
        n = c.shmq_prio_counts(&self.seg, counts, c.SHMQ_PRIO_MAX_LEVELS)
        return (c.shmq_prio_levels(&self.seg), c.shmq_prio_max_wait_ns(&self.seg), [counts[i] for i in range(n)])

    cpdef int _check_priority(self, object priority) except -1:
        """priority must be an int (not a bool) with 0 <= priority < levels: never clamped."""
        cdef uint32_t levels = c.shmq_prio_levels(&self.seg)
        if type(priority) is not int and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise _errors.ArgumentError(f"priority must be an int in 0..{levels - 1}, got {priority!r}")
        if not 0 <= priority < levels:
            raise _errors.ArgumentError(f"priority {priority} is out of range: this queue has {levels} levels "
                                        f"(0..{levels - 1}, higher first)")
        return 0

    def _hist(self):
        """The latency histograms and error counters summed over every participant (hist.h):
        {"wait": [32 counts], "process": [...], "wait_sum_ns", "process_sum_ns", "nacks",
        "late_replies"}, or None when the segment has none (made by an older version) or its
        histogram region fails validation. Bucket b < 31 holds samples below 2**(b+10) ns."""
        cdef c.shmq_hist_sum_t hs
        cdef int rc
        self._check_open()
        self._enter()
        with nogil:
            rc = c.shmq_hist_read(&self.seg, &hs)
        self._leave()
        if rc != c.SHMQ_OK:
            return None
        return {"wait": [hs.wait[i] for i in range(c.SHMQ_HIST_BUCKETS)],
                "process": [hs.process[i] for i in range(c.SHMQ_HIST_BUCKETS)],
                "wait_sum_ns": hs.wait_sum_ns, "process_sum_ns": hs.process_sum_ns,
                "nacks": hs.nacks, "late_replies": hs.late_replies}

    def _scrape(self, uint64_t unless=0):
        """(signature, stats, histograms) for shmq.metrics in one call: the stats() keys a
        scrape renders, under their public names and units (as shmq.stats.complete_stats gives
        them), except oldest_age_s, which the caller completes from "oldest_ready_ns" (ack
        queues) or a peek of the head ("depth" > 0); histograms as _hist() (None when absent or
        empty). signature: a hash of every figure read; when it equals `unless` (the previous
        scrape's), stats and histograms are None: nothing changed, nothing is built."""
        cdef c.shmq_stats_t st
        cdef c.shmq_hist_sum_t hs
        cdef int hrc
        cdef uint64_t nw = 0, np_ = 0, sig = 14695981039346656037ULL
        cdef int i
        cdef const uint64_t *w
        self._check_open()
        self._enter()
        with nogil:
            c.shmq_stats(&self.seg, &st)
            hrc = c.shmq_hist_read(&self.seg, &hs)
            w = <const uint64_t *>&st           # both zeroed before filling: padding hashes the same
            for i in range(<int>(sizeof(st) // 8)):
                sig = (sig ^ w[i]) * 1099511628211ULL
            w = <const uint64_t *>&hs
            for i in range(<int>(sizeof(hs) // 8)):
                sig = (sig ^ w[i]) * 1099511628211ULL
            sig ^= <uint64_t>(hrc & 0xff)
        self._leave()
        if sig == unless and sig != 0:
            return sig, None, None
        ack = (st.flags & c.SHMQ_F_ACK) != 0
        d = {"depth": st.depth, "in_flight": st.in_flight, "delayed": st.delayed, "unfinished": st.unfinished,
             "bytes_used": st.bytes_used, "capacity": st.capacity, "file_size": st.file_size,
             "attached": st.attached, "producers": st.producers, "consumers": st.consumers,
             "last_repair_ms": st.last_repair_ns / 1e6, "created_at": st.created_at_ns / 1e9,
             "enqueued": st.enqueued, "dequeued": st.dequeued,
             "acked": st.acked if ack else 0, "redelivered": st.redelivered if ack else 0,
             "dead_lettered": st.dead_lettered if ack else 0,
             "dead_letter_failed": st.dead_letter_failed if ack else 0, "expired": st.expired if ack else 0,
             "dedup_hits": st.dedup_hits if ack else 0, "repairs": st.repairs,
             "corrupt_skipped": st.corrupt_skipped, "flags": st.flags, "kind": st.kind,
             "dead_letter": st.dead_letter.decode(errors="replace") if ack else "",
             "oldest_ready_ns": st.oldest_ready_ns,
             "nacked": hs.nacks if hrc == c.SHMQ_OK else 0,
             "late_replies": hs.late_replies if hrc == c.SHMQ_OK else 0}
        if hrc != c.SHMQ_OK:
            return sig, d, None
        for i in range(c.SHMQ_HIST_BUCKETS):
            nw += hs.wait[i]
            np_ += hs.process[i]
        if nw == 0 and np_ == 0:
            return sig, d, None
        return sig, d, {"wait": [hs.wait[i] for i in range(c.SHMQ_HIST_BUCKETS)] if nw else None,
                   "process": [hs.process[i] for i in range(c.SHMQ_HIST_BUCKETS)] if np_ else None,
                   "wait_sum_ns": hs.wait_sum_ns, "process_sum_ns": hs.process_sum_ns}

    def _hist_count_late(self, uint64_t n=1):
        """Count n late replies (request-reply) in this handle's block; nothing if it has none."""
        self._check_open()
        c.shmq_hist_count(&self.seg, c.SHMQ_HIST_LATE_REPLIES, n)

    def _raw_stats(self):
        """The core's counters under their C names (shmq.stats gives them their public names)."""
        cdef c.shmq_stats_t st
        self._check_open()
        self._enter()
        with nogil:
            c.shmq_stats(&self.seg, &st)
        self._leave()
        return {
            "depth": st.depth, "bytes_used": st.bytes_used, "capacity": st.capacity,
            "file_size": st.file_size, "max_message": st.max_message, "maxsize": st.maxsize,
            "enqueued": st.enqueued, "dequeued": st.dequeued, "repairs": st.repairs,
            "corrupt_skipped": st.corrupt_skipped, "unfinished": st.unfinished,
            "creator_pid": st.creator_pid, "created_at_ns": st.created_at_ns,
            "attached": st.attached, "producers": st.producers, "consumers": st.consumers,
            "areas": st.areas, "flags": st.flags, "kind": st.kind, "mode": st.mode,
            "max_slots": st.max_slots, "last_repair_ns": st.last_repair_ns,
            "in_flight": st.in_flight, "delayed": st.delayed, "oldest_ready_ns": st.oldest_ready_ns,
            "acked": st.acked, "redelivered": st.redelivered, "dead_lettered": st.dead_lettered,
            "expired": st.expired, "dead_letter_failed": st.dead_letter_failed, "dedup_hits": st.dedup_hits,
            "visibility_ns": st.visibility_ns, "max_deliveries": st.max_deliveries,
            "default_delay_ns": st.default_delay_ns, "default_ttl_ns": st.default_ttl_ns,
            "dedup_window_ns": st.dedup_window_ns, "dedup_slots": st.dedup_slots,
            "dead_letter": st.dead_letter.decode(errors="replace"),
        }

    cdef int _peek_into(self, uint64_t n, c.shmq_peek_t *pk, object buf, uint64_t cap) noexcept:
        cdef int rc
        cdef char *p = PyBytes_AS_STRING(buf)
        for _ in range(1000):
            with nogil:
                rc = c.shmq_peek(&self.seg, n, pk, p, cap)
            if rc != c.SHMQ_EAGAIN:
                break
        return rc

    def _peek(self, uint64_t n, Py_ssize_t cap=64):
        """(id, timestamp, kind name, size, prefix bytes) of the n-th queued message, without
        taking it; None when there are fewer messages. Never unpickles."""
        cdef c.shmq_peek_t pk
        cdef int rc
        self._check_open()
        if cap < 0:
            raise _errors.ArgumentError(f"cap must be a non-negative number of bytes, got {cap}")
        buf = PyBytes_FromStringAndSize(NULL, cap)
        self._enter()
        try:
            rc = self._peek_into(n, &pk, buf, <uint64_t>cap)
        finally:
            self._leave()
        if rc == c.SHMQ_EMPTY:
            return None
        if rc != c.SHMQ_OK:
            raise self._error(rc, "peek")
        return (pk.id, pk.timestamp_ns / 1e9, _kind_names.get(pk.kind, str(pk.kind)), pk.size, buf[:pk.copied])

    def _peek_body(self, uint64_t n):
        """The object of the n-th queued message, decoded from a copy (unpickles: runs code
        from the queue); None when there are fewer messages."""
        cdef c.shmq_peek_t pk
        cdef int rc = c.SHMQ_OK
        info = self._peek(n, 0)
        if info is None:
            return None
        size = info[3]
        self._enter()
        try:
            for _ in range(1000):
                buf = PyBytes_FromStringAndSize(NULL, size)
                rc = self._peek_into(n, &pk, buf, <uint64_t>size)
                if rc != c.SHMQ_OK or pk.size == pk.copied:
                    break
                size = pk.size
        finally:
            self._leave()
        if rc != c.SHMQ_OK or pk.size != pk.copied:
            return None
        return _decode(pk.kind, memoryview(buf), self._flags & c.SHMQ_F_RAW, pk.id)

    def _inspect(self, bint held, uint64_t n, Py_ssize_t cap=64, bint decode=False):
        """A message without taking it (the CLI's peek): the n-th ready one in delivery order, or
        with held=True the first in-flight or delayed one at descriptor position >= n (at-least-
        once queues). A dict: id, timestamp, kind, size, delivery_count, state ("ready",
        "in-flight", "delayed"), headers (the raw header block), prefix (the body's first cap
        bytes), decoded/value (decode=True: the object, decoded from a copy: unpickles), next
        (held: the position after it); None when there are no more."""
        cdef c.shmq_peek_t pk
        cdef int rc = c.SHMQ_EAGAIN
        cdef uint64_t pos = n
        cdef uint64_t want
        cdef char *p
        self._check_open()
        if cap < 0:
            raise _errors.ArgumentError(f"cap must be a non-negative number of bytes, got {cap}")
        want = <uint64_t>cap + 65535  # SHMQ_HDR_MAX: the header block always fits before the prefix
        buf = b""
        self._enter()
        try:
            for _ in range(1000):
                buf = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>want)
                p = PyBytes_AS_STRING(buf)
                pos = n
                with nogil:
                    if held:
                        rc = c.shmq_peek_held(&self.seg, &pos, &pk, p, want, c.SHMQ_PEEK_HEADERS)
                    else:
                        rc = c.shmq_peek_ex(&self.seg, n, &pk, p, want, c.SHMQ_PEEK_HEADERS)
                if rc == c.SHMQ_OK and decode and pk.copied < <uint64_t>pk.hdr_size + pk.size:
                    want = <uint64_t>pk.hdr_size + pk.size  # the whole body, to decode it: again
                    rc = c.SHMQ_EAGAIN
                    continue
                if rc != c.SHMQ_EAGAIN:
                    break
        finally:
            self._leave()
        if rc == c.SHMQ_EMPTY:
            return None
        if rc != c.SHMQ_OK:
            raise self._error(rc, "peek")
        hs = pk.hdr_size
        body = buf[hs:pk.copied]
        decoded = bool(decode) and pk.copied == <uint64_t>hs + pk.size
        return {"id": pk.id, "timestamp": pk.timestamp_ns / 1e9, "kind": _kind_names.get(pk.kind, str(pk.kind)),
                "size": pk.size, "delivery_count": pk.delivery_count, "priority": pk.priority,
                "state": _STATE_NAMES.get(pk.state, str(pk.state)), "headers": buf[:hs], "prefix": body[:cap],
                "decoded": decoded,
                "value": _decode(pk.kind, memoryview(body), self._flags & c.SHMQ_F_RAW, pk.id) if decoded else None,
                "next": pos}

    def _purge(self, bint held=False):
        """Take and discard every queued message (no unpickling); returns how many. held=True:
        the in-flight and delayed messages of an at-least-once queue as well (their leases end)."""
        cdef uint64_t n, m = 0
        self._check()
        self._enter()
        with nogil:
            n = c.shmq_purge(&self.seg)
            if held:
                m = c.shmq_purge_held(&self.seg)
                n += m + c.shmq_purge(&self.seg)  # and what a settle put back meanwhile
        self._leave()
        return n

    def _repair(self):
        """Repair every dead participant we can; returns how many were repaired."""
        cdef int n
        self._check_open()
        self._enter()
        with nogil:
            n = c.shmq_repair_dead(&self.seg)
        self._leave()
        return n

    def _consistency(self):
        """Consistency walk (call on a quiescent queue): counts of descriptors by state,
        orphans, chunk and arena mismatches."""
        cdef c.shmq_check_t ck
        self._check_open()
        self._enter()
        with nogil:
            c.shmq_check(&self.seg, &ck)
        self._leave()
        return {"free_desc": ck.free_desc, "ready_desc": ck.ready_desc, "owned_desc": ck.owned_desc,
                "dead_owned": ck.dead_owned, "orphan_ready": ck.orphan_ready, "bad_chunks": ck.bad_chunks,
                "arena_mismatch": ck.arena_mismatch, "bad_areas": ck.bad_areas, "queued": ck.queued,
                "parked_chunks": ck.parked_chunks}

    def _validate(self):
        cdef int rc
        self._check_open()
        rc = c.shmq_validate(&self.seg)
        self._fault()
        if rc != c.SHMQ_OK:
            raise self._error(rc, "open")

    # -- JoinableQueue -----------------------------------------------------------------
    def _task_done(self):
        cdef int rc
        self._check()
        self._enter()
        with nogil:
            rc = c.shmq_task_done(&self.seg)
        self._leave()
        if rc != c.SHMQ_OK:
            raise self._error(rc, "task_done")

    def _join(self, timeout=None):
        cdef uint64_t dl
        cdef int rc
        self._check()
        _deadline(True, timeout, &dl)
        while True:
            self._enter()
            with nogil:
                rc = c.shmq_join(&self.seg, dl)
            self._leave()
            if not self._retry(rc):
                break
        return rc == c.SHMQ_OK


@cython.final
@cython.auto_pickle(False)
cdef class _Pin:
    """A message taken by get(copy=False), exported read-only to the views made from it. When
    the last view is released the pin dies and the message is released (and the handle's busy
    count, which keeps close() from unmapping, drops). In a forked child the pin is the
    parent's: it releases nothing there."""

    cdef Core core
    cdef c.shmq_msg_t m
    cdef int pid
    cdef Py_ssize_t shape

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a zero-copy view of a queued message is read-only")
        PyBuffer_FillInfo(buf, self, <void *>self.m.data, <Py_ssize_t>self.m.size, 1, flags)

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        cdef Core core = self.core
        if core is None or getpid() != self.pid:
            return
        self.core = None
        c.shmq_get_end(&core.seg, &self.m)
        try:
            core._leave()             # a close() deferred for this pin unmaps now
        except Exception:
            pass


@cython.final
@cython.auto_pickle(False)
cdef class _LeasePin:
    """A delivery received with receive(copy=False), exported read-only to the views made from
    it. While it lives the delivery's lease is held open (no expiry, no redelivery, so no other
    consumer can ack and free the payload under a view) and the handle stays mapped. Settles
    made meanwhile (Message.ack/nack/extend) are applied so that the payload outlives every
    view: an ack takes effect at once (counted, never delivered again) and frees the storage
    at release; a nack and an extend are applied at release. At release without a settle the
    lease resumes: it ends when it would have (receive + visibility_timeout, or as extend()
    set it), at once if that time has passed. A process that dies holding views leaves its
    delivery to repair (in flight: delivered again; acked: freed)."""

    cdef Core core
    cdef c.shmq_msg_t m
    cdef int pid
    cdef public int state           # 0 in flight, 1 acked (storage held), 2 nack pending
    cdef public bint requeue
    cdef public uint64_t delay_ns
    cdef public uint64_t lease_end_ns  # monotonic: where the lease resumes at release
    cdef object __weakref__

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a zero-copy view of a received message is read-only")
        PyBuffer_FillInfo(buf, self, <void *>self.m.data, <Py_ssize_t>self.m.size, 1, flags)

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def _ack(self):
        """Message.ack() while views live: acked now, the storage kept until release."""
        cdef Core core = self.core
        cdef int rc
        if core is None or self.state != 0:
            return
        core._check()
        with nogil:
            rc = c.shmq_ack_keep(&core.seg, self.m.handle, self.m.id)
        if rc != c.SHMQ_OK:
            raise core._error(rc, "ack", self.m.id)
        self.state = 1

    def _extend(self, uint64_t ns):
        self.core._check()
        self.lease_end_ns = c.shmq_now_mono_ns() + ns

    def _nack(self, bint requeue, uint64_t delay_ns):
        self.core._check()
        self.state = 2
        self.requeue = requeue
        self.delay_ns = delay_ns

    def __dealloc__(self):
        cdef Core core = self.core
        cdef uint64_t now
        if core is None or getpid() != self.pid:
            return
        self.core = None
        with nogil:
            if self.state == 1:
                c.shmq_ack_release(&core.seg, self.m.handle)
            elif self.state == 2:
                c.shmq_nack(&core.seg, self.m.handle, self.m.id, self.requeue, self.delay_ns)
            else:
                now = c.shmq_now_mono_ns()
                c.shmq_extend(&core.seg, self.m.handle, self.m.id,
                              self.lease_end_ns - now if self.lease_end_ns > now else 1)
        try:
            core._leave()             # a close() deferred for this pin unmaps now
        except Exception:
            pass


@cython.auto_pickle(False)
cdef class HandleBase:
    """The base of every handle (shmq._handle.Handle): the slot of its binding object. A C-level
    slot, so the per-message calls of a kind's ops class below reach the binding with a C call,
    and CPython's specialised method calls hit them directly (no instance dictionary, no
    Python frame)."""

    cdef public Core _core

    @cython.final
    cdef inline Core _c(self):
        if self._core is None:
            self._not_open()
        return self._core

    @cython.final
    cdef int _not_open(self) except -1:
        raise _errors.QueueClosedError(f"{type(self).__name__} handle is not open")


@cython.auto_pickle(False)
cdef class QueueOps(HandleBase):
    """The per-message calls of shmq.Queue (and the at-least-once settle calls Message uses)."""

    def put(self, obj, block=True, timeout=None):
        """Put obj. Raises Full (timeout/non-blocking), MessageTooLargeError, QueueClosedError,
        TypeError (raw queues, unpicklable objects), ValueError for a negative timeout."""
        cdef uint64_t dl
        cdef Core core = self._c()
        core._check()               # Core._put_c, written out: one C call less per message
        _deadline(block, timeout, &dl)
        core._put_obj(obj, dl)

    def put_nowait(self, obj):
        """put(obj, block=False)."""
        self._c()._put_nowait_c(obj)

    def put_many(self, items, block=True, timeout=None):
        """Put every item of an iterable, in order; returns how many were put. The timeout is
        for the whole batch; an error carries .items_put."""
        return self._c()._put_many_c(items, block, timeout)

    def get(self, block=True, timeout=None, copy=True):
        """Remove and return an item. Raises Empty (timeout/non-blocking), QueueClosedError.
        copy=False: bytes come as a read-only memoryview and out-of-band buffers (numpy
        arrays, PickleBuffer) as read-only views into shared memory, valid until released
        (docs/guide/zero-copy.md)."""
        cdef uint64_t dl
        cdef bint got
        cdef Core core = self._c()
        if copy is not True and not copy:
            return core._get_view_c(block, timeout)
        core._check()               # Core._get_c, written out: one C call less per message
        _deadline(block, timeout, &dl)
        core._raise_pending()
        obj = core._get_one(dl, &got)
        if not got:
            raise _errors.Empty()
        return obj

    def get_nowait(self):
        """get(block=False)."""
        return self._c()._get_nowait_c()

    def qsize(self):
        """Ready messages. Raises QueueClosedError."""
        return self._c()._qsize_c()

    def empty(self):
        """True if no message is ready. Raises QueueClosedError."""
        return self._c()._qsize_c() == 0

    def full(self):
        """True if a bounded queue holds maxsize messages. Raises QueueClosedError."""
        return self._c()._full_c()

    def _ack(self, uint64_t token, uint64_t mid):
        self._c()._settle_or_raise(0, token, mid, 0, 0)

    def _nack(self, uint64_t token, uint64_t mid, bint requeue, uint64_t delay_ns):
        self._c()._settle_or_raise(1, token, mid, requeue, delay_ns)

    def _extend(self, uint64_t token, uint64_t mid, uint64_t ns):
        self._c()._settle_or_raise(2, token, mid, 0, ns)


@cython.auto_pickle(False)
cdef class PriorityOps(QueueOps):
    """The per-message puts of shmq.PriorityQueue (at-most-once): put with a priority."""

    def put(self, obj, priority=0, block=True, timeout=None):
        """Put obj at priority (0 <= priority < levels, higher first). Raises Full, ValueError for
        a bad priority or a negative timeout, MessageTooLargeError, QueueClosedError."""
        cdef uint64_t dl
        cdef Core core = self._c()
        core._check()
        core._check_priority(priority)
        _deadline(block, timeout, &dl)
        core._put_obj(obj, dl, NULL, NULL, <int>priority)

    def put_nowait(self, obj, priority=0):
        """put(obj, priority, block=False)."""
        cdef Core core = self._c()
        core._check()
        core._check_priority(priority)
        core._put_obj(obj, 0, NULL, NULL, <int>priority)

    def put_many(self, items, priority=0, block=True, timeout=None):
        """Put every item of an iterable at one priority, in order; returns how many were put.
        The timeout is for the whole batch; an error carries .items_put."""
        cdef uint64_t dl
        cdef Py_ssize_t n = 0
        cdef Core core = self._c()
        core._check()
        core._check_priority(priority)
        _deadline(block, timeout, &dl)
        try:
            for obj in items:
                core._put_obj(obj, dl, NULL, NULL, <int>priority)
                n += 1
        except BaseException as e:
            e.items_put = n
            raise
        return n


def strerror(int rc):
    """The core's description of a result code."""
    return c.shmq_strerror(rc).decode()


include "_topic.pxi"
