# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Thin binding over the C core: argument conversion, GIL handling and error mapping only."""
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from shmq cimport _shmq_c as c

import os

from shmq import errors as _errors

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1
    int PyByteArray_CheckExact(object o)
    int PyMemoryView_Check(object o)
    enum:
        PyBUF_READ

# Payload kinds (descriptor "kind" byte), owned by this layer.
DEF KIND_BYTES = 1
DEF KIND_BYTEARRAY = 2
DEF KIND_PICKLE = 3
DEF KIND_PICKLE_OOB = 4
DEF GIL_RELEASE_BYTES = 65536   # copies this large run without the GIL
DEF OOB_ALIGN = 64

_KIND_NAMES = {KIND_BYTES: "bytes", KIND_BYTEARRAY: "bytearray", KIND_PICKLE: "pickle", KIND_PICKLE_OOB: "pickle+oob"}

KIND_QUEUE = c.SHMQ_KIND_QUEUE
KIND_PRIORITY = c.SHMQ_KIND_PRIORITY
KIND_TOPIC = c.SHMQ_KIND_TOPIC
F_GROWABLE = c.SHMQ_F_GROWABLE
F_RAW = c.SHMQ_F_RAW
F_ANONYMOUS = c.SHMQ_F_ANONYMOUS
F_JOINABLE = c.SHMQ_F_JOINABLE
F_ACK = c.SHMQ_F_ACK
LAYOUT_VERSION = c.SHMQ_LAYOUT_VERSION
USE_DEFAULT = c.SHMQ_USE_DEFAULT

# Set by shmq.queue: (pickler_factory(file, buffer_callback) -> Pickler, loads)
cdef object _make_pickler = None
cdef object _loads = None
cdef object _BytesIO = None

def _set_serializer(make_pickler, loads, bytes_io):
    global _make_pickler, _loads, _BytesIO
    _make_pickler = make_pickler
    _loads = loads
    _BytesIO = bytes_io

cdef bytes _ZEROS = b"\0" * OOB_ALIGN

def crash_points():
    """[(name, where)] of every crash point compiled into the core."""
    return [(c.shmq_crash_name(i).decode(), c.shmq_crash_where(i).decode()) for i in range(c.shmq_crash_count())]

def set_spin_us(double us):
    """Spin budget of blocking gets in microseconds (0 disables spinning), process-wide."""
    if not (us >= 0):
        raise ValueError("spin budget must be a non-negative number of microseconds")
    c.shmq_set_spin_ns(<uint64_t>(us * 1000.0))

def get_spin_us():
    return c.shmq_get_spin_ns() / 1000.0


cdef int _deadline(object block, object timeout, uint64_t *out) except -1:
    cdef double t
    if not block:
        out[0] = 0
        return 0
    if timeout is None:
        out[0] = c.SHMQ_NO_DEADLINE
        return 0
    if isinstance(timeout, (str, bytes, bytearray)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}") from None
    if t != t:
        raise ValueError("timeout must be a number, not NaN")
    if t < 0:
        raise ValueError("'timeout' must be a non-negative number")
    if t > 1e9:
        out[0] = c.SHMQ_NO_DEADLINE
        return 0
    out[0] = c.shmq_now_mono_ns() + <uint64_t>(t * 1e9)
    if out[0] == 0:
        out[0] = 1
    return 0


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
        f"{who(expected_uid)} with no write permission beyond mode {oct(mode)} was expected; another user may have created it "
        "first to read or plant messages. Check who made it, remove it (`shmq rm`, as its owner or root), "
        "or open it by name without create=True if you trust it", path)


cdef class Core:
    """One attached handle on one queue segment."""
    cdef c.shmq_seg_t seg
    cdef readonly bint opened
    cdef bint _closed
    cdef int _active          # calls running without the GIL (close waits for them)
    cdef uint32_t _flags
    cdef readonly str path
    cdef object _pending_error  # a decode error met by get_many after it had taken items
    cdef object _dlq            # the dead-letter queue's Core (its seg is referenced by ours)
    cdef int _fault_word        # set by the SIGBUS guard (guard.h): our file was truncated under us
    cdef bint _guarded          # registered with the guard

    def __cinit__(self):
        self.opened = False
        self._closed = False
        self._active = 0
        self.seg.fd = -1
        self.path = None

    def __dealloc__(self):
        if self.opened:
            self._seg_close()

    # -- lifecycle ---------------------------------------------------------------------
    def _create(self, str path, uint32_t kind, uint32_t flags, uint64_t capacity, uint64_t max_message,
                uint64_t maxsize, uint32_t mode, uint32_t max_slots, bint exist_ok, dict ack=None,
                bint check_mode=True):
        """Create (or with exist_ok open) the segment at path and attach. Returns True if created.
        An existing file is opened only if it is ours and (check_mode) no wider than mode.
        ack: at-least-once options (visibility_ns, max_deliveries, dead_letter, default_delay_ns,
        default_ttl_ns, dedup_window_ns, dedup_slots) when flags has F_ACK."""
        cdef c.shmq_create_opts_t o
        cdef int created = 0
        cdef int rc
        bpath = os.fsencode(path)
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
        if ack is not None:
            o.visibility_ns = ack["visibility_ns"]
            o.max_deliveries = ack["max_deliveries"]
            o.default_delay_ns = ack["default_delay_ns"]
            o.default_ttl_ns = ack["default_ttl_ns"]
            o.dedup_window_ns = ack["dedup_window_ns"]
            o.dedup_slots = ack["dedup_slots"]
            bdlq = (ack["dead_letter"] or "").encode()
            o.dead_letter = bdlq
        rc = c.shmq_create(&self.seg, &o, exist_ok, &created)
        if rc != c.SHMQ_OK:
            self._raise_open(rc, path)
        if not created:
            # issue 11 item 5: exist_ok must not adopt a file someone else planted under the name
            problem = _untrusted_file(self.seg.fd, path, os.geteuid(), mode if check_mode else 0o777)
            if problem is not None:
                c.shmq_close(&self.seg)
                raise problem
        self._opened(path)
        self._attach()
        return bool(created)

    def _open(self, str path, int fd=-1, bint attach=True):
        """Open an existing segment by path (or by an inherited descriptor) and attach."""
        cdef int rc
        bpath = os.fsencode(path) if path is not None else None
        cdef const char *p = NULL
        if bpath is not None:
            p = bpath
        rc = c.shmq_open(&self.seg, p, fd)
        if rc != c.SHMQ_OK:
            self._raise_open(rc, path)
        self._opened(path)
        if attach:
            self._attach()

    cdef _opened(self, path):
        self.opened = True
        # issue 11 item 7: an access to pages a truncation removed raises instead of killing us
        self._guarded = c.shmq_guard_register(&self.seg, &self._fault_word) == 0
        self.path = path
        self._flags = self.seg.hdr.flags
        self.seg.poll_signals = 1   # blocking calls surface every 50 ms so Python signal handlers run

    cdef _attach(self):
        cdef int rc = c.shmq_attach(&self.seg)
        self._check_fault()
        if rc != c.SHMQ_OK:
            self._seg_close()
            raise _errors.ShmqError(f"cannot attach to queue {self.path!r}: the participant table is full "
                                    "(too many handles open on it at once); close unused handles")

    cdef _raise_open(self, int rc, path):
        cdef int e = self.seg.err
        if rc == c.SHMQ_ECORRUPT:
            raise _errors.CorruptQueueError(f"{path}: not a valid shmq segment (failed validation); "
                                            "remove it with `shmq rm` if it is garbage")
        if rc == c.SHMQ_EINCOMPAT:
            raise _errors.IncompatibleQueueError(f"{path}: made by an shmq with segment layout version {e}; "
                                                 f"this shmq reads layout version {c.SHMQ_LAYOUT_VERSION} "
                                                 "(close every process of the older version and recreate the queue)")
        if rc == c.SHMQ_ETOOBIG:
            raise ValueError(f"max_message is larger than the capacity can ever hold")
        if rc == c.SHMQ_ESYS:
            raise _errors._oserror(e, path)
        raise _errors.ShmqError(f"{path}: {c.shmq_strerror(rc).decode()}")

    def _after_fork(self):
        """In a forked child: take a slot of our own (the parent's stays the parent's)."""
        if not self.opened:
            return
        cdef int rc = c.shmq_after_fork(&self.seg)
        if rc != c.SHMQ_OK:
            self._seg_close()

    def _close(self):
        """Detach and unmap (deferred until calls running without the GIL return)."""
        self._closed = True
        if not self.opened:
            return
        if self._active:
            c.shmq_wake_all(&self.seg)   # blocked threads of ours wake, see _closed and leave
            return
        self._seg_close()

    cdef void _seg_close(self):
        """Detach and unmap now (a truncated file's missing pages read as zeros meanwhile)."""
        c.shmq_close(&self.seg)
        if self._guarded:
            c.shmq_guard_unregister(&self.seg)
            self._guarded = False
        self.opened = False

    cdef int _check_fault(self) except -1:
        """After each call into the core: a caught SIGBUS becomes CorruptQueueError, closing us."""
        if not self._fault_word:
            return 0
        self._closed = True
        self._close_if_idle()
        raise _errors.CorruptQueueError(
            f"queue {self.path!r}: its file was truncated while this process used it (an access beyond its "
            "end was caught); this handle is closed. Another process shrank the segment: recreate the queue")

    cdef inline int _leave(self) except -1:
        self._active -= 1
        self._close_if_idle()
        return 0

    cdef inline int _check(self) except -1:
        if self._closed or not self.opened:
            if self._fault_word:
                raise _errors.QueueClosedError(f"queue {self.path!r} is closed: its file was truncated under us")
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        return 0

    def _check_trusted(self, uint32_t expected_uid, uint32_t mode):
        """Raise QueuePermissionError (and close) unless the file, as opened, is owned by
        expected_uid and its mode is not wider than mode (fstat of our descriptor: no window
        between the check and the use)."""
        if not self.opened:
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
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
                      uint64_t dl, c.shmq_send_opts_t *so=NULL, uint64_t *idp=NULL) except -1:
        cdef int rc
        cdef int dup = 0
        if so != NULL:
            total += so.hdr_size
        if total < GIL_RELEASE_BYTES:
            if so == NULL:
                rc = c.shmq_put(&self.seg, iov, n, kind, 0, idp)
            else:
                rc = c.shmq_send(&self.seg, iov, n, kind, so, 0, idp, &dup)
            self._check_fault()
            if rc == c.SHMQ_OK:
                return dup
            if rc != c.SHMQ_FULL or dl == 0:
                return self._put_error(rc, total)
        while True:
            self._active += 1
            try:
                with nogil:
                    if so == NULL:
                        rc = c.shmq_put(&self.seg, iov, n, kind, dl, idp)
                    else:
                        rc = c.shmq_send(&self.seg, iov, n, kind, so, dl, idp, &dup)
            finally:
                self._leave()
            self._check_fault()
            if rc == c.SHMQ_EINTR:
                PyErr_CheckSignals()
                self._check()
                continue
            if rc == c.SHMQ_OK:
                return dup
            if self._closed:
                self._check()
            return self._put_error(rc, total)

    cdef int _put_error(self, int rc, uint64_t total) except -1:
        if rc == c.SHMQ_FULL:
            raise _errors.Full()
        if rc == c.SHMQ_ETOOBIG:
            raise _errors.MessageTooLargeError(
                f"message of {total} bytes is larger than this queue's max_message "
                f"({self.seg.hdr.max_message} bytes); create the queue with a larger capacity or max_message")
        if rc == c.SHMQ_ENOMEM:
            raise _errors.QueueMemoryError(f"queue {self.path!r} cannot grow any further")
        if rc == c.SHMQ_ESYS:
            raise _errors._oserror(self.seg.err, self.path)
        if rc == c.SHMQ_ECORRUPT:
            raise _errors.CorruptQueueError(f"queue {self.path!r} failed validation during put")
        if rc == c.SHMQ_EDEDUPFULL:
            raise _errors.Full(f"queue {self.path!r}: the deduplication table holds only live dedup ids; "
                               "create the queue with a larger dedup_capacity or a shorter dedup_window")
        if rc == c.SHMQ_TIMEOUT:
            raise _errors.Full(f"queue {self.path!r}: another send of the same dedup_id did not finish in time")
        raise _errors.ShmqError(f"put failed: {c.shmq_strerror(rc).decode()}")

    cdef int _put_obj(self, object obj, uint64_t dl, c.shmq_send_opts_t *so=NULL, uint64_t *idp=NULL) except -1:
        cdef c.shmq_iov_t iov
        cdef uint32_t kind
        if PyBytes_CheckExact(obj):
            iov.ptr = PyBytes_AS_STRING(obj)
            iov.len = <uint64_t>PyBytes_GET_SIZE(obj)
            return self._put_iov(&iov, 1, KIND_BYTES, iov.len, dl, so, idp)
        if PyByteArray_CheckExact(obj) or PyMemoryView_Check(obj) or (self._flags & c.SHMQ_F_RAW):
            if self._flags & c.SHMQ_F_RAW and not (PyByteArray_CheckExact(obj) or PyMemoryView_Check(obj)
                                                   or isinstance(obj, (bytes, bytearray, memoryview))):
                raise TypeError(f"raw queues carry bytes-like bodies only, not {type(obj).__name__}")
            kind = KIND_BYTEARRAY if PyByteArray_CheckExact(obj) or isinstance(obj, bytearray) else KIND_BYTES
            if PyMemoryView_Check(obj) and not obj.contiguous:
                obj = obj.tobytes()
            return self._put_contig(obj, kind, dl, so, idp)
        return self._put_pickled(obj, dl, so, idp)

    cdef int _put_pickled(self, object obj, uint64_t dl, c.shmq_send_opts_t *so=NULL, uint64_t *idp=NULL) except -1:
        cdef c.shmq_iov_t *iov
        cdef Py_buffer *views
        cdef Py_ssize_t nbuf, i, k, nviews = 0
        cdef uint64_t total, off, pad
        buffers = []
        f = _BytesIO()
        _make_pickler(f, buffers).dump(obj)
        stream = f.getbuffer()
        if not buffers:
            try:
                return self._put_contig(stream, KIND_PICKLE, dl, so, idp)
            finally:
                stream.release()
        # Out-of-band: [u64 n][u64 stream_len][u64 len_i x n] pad | stream pad | buf_i pad ...
        nbuf = len(buffers)
        raws = [b.raw() for b in buffers]   # contiguous views (PickleBuffer.raw raises if not contiguous)
        lens = [len(stream)] + [r.nbytes for r in raws]
        header = (nbuf).to_bytes(8, "little") + b"".join(l.to_bytes(8, "little") for l in lens)
        parts = [header, stream] + raws
        views = <Py_buffer *>malloc(sizeof(Py_buffer) * len(parts))
        iov = <c.shmq_iov_t *>malloc(sizeof(c.shmq_iov_t) * len(parts) * 2)
        if views == NULL or iov == NULL:
            free(views)
            free(iov)
            raise MemoryError()
        try:
            k = 0
            off = 0
            for i in range(len(parts)):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_ANY_CONTIGUOUS)
                nviews += 1
                iov[k].ptr = views[i].buf
                iov[k].len = <uint64_t>views[i].len
                off += iov[k].len
                k += 1
                pad = (OOB_ALIGN - (off % OOB_ALIGN)) % OOB_ALIGN
                if pad and i + 1 < len(parts):
                    iov[k].ptr = PyBytes_AS_STRING(_ZEROS)
                    iov[k].len = pad
                    off += pad
                    k += 1
            return self._put_iov(iov, <uint32_t>k, KIND_PICKLE_OOB, off, dl, so, idp)
        finally:
            for i in range(nviews):
                PyBuffer_Release(&views[i])
            free(views)
            free(iov)

    cdef int _put_contig(self, object data, uint32_t kind, uint64_t dl, c.shmq_send_opts_t *so=NULL,
                         uint64_t *idp=NULL) except -1:
        cdef Py_buffer view
        cdef c.shmq_iov_t iov
        PyObject_GetBuffer(data, &view, PyBUF_ANY_CONTIGUOUS)
        try:
            iov.ptr = view.buf
            iov.len = <uint64_t>view.len
            return self._put_iov(&iov, 1, kind, iov.len, dl, so, idp)
        finally:
            PyBuffer_Release(&view)

    def put(self, obj, block=True, timeout=None):
        """Put obj. Raises Full (timeout/non-blocking), MessageTooLargeError, QueueClosedError."""
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        self._put_obj(obj, dl)

    def put_nowait(self, obj):
        self._check()
        self._put_obj(obj, 0)

    def put_many(self, items, block=True, timeout=None):
        """Put every item of an iterable, in order; returns how many were put. The timeout is for
        the whole batch."""
        cdef uint64_t dl
        cdef Py_ssize_t n = 0
        self._check()
        _deadline(block, timeout, &dl)
        try:
            for obj in items:
                self._put_obj(obj, dl)
                n += 1
        except BaseException as e:
            e.items_put = n   # how many of the batch went in before the error
            raise
        return n

    # -- get -------------------------------------------------------------------------
    cdef object _decode(self, c.shmq_msg_t *m):
        cdef object out
        cdef char *dst
        cdef uint64_t n = m.size
        cdef uint32_t kind = m.kind
        if kind == KIND_BYTES:
            if n < GIL_RELEASE_BYTES:
                return PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>n)
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
            dst = PyBytes_AS_STRING(out)
            with nogil:
                memcpy(dst, m.data, n)
            return out
        if kind == KIND_BYTEARRAY:
            out = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>n)
            dst = PyByteArray_AS_STRING(out)
            if n < GIL_RELEASE_BYTES:
                memcpy(dst, m.data, n)
            else:
                with nogil:
                    memcpy(dst, m.data, n)
            return out
        if (kind == KIND_PICKLE or kind == KIND_PICKLE_OOB) and (self._flags & c.SHMQ_F_RAW):
            raise _errors.CorruptQueueError(f"message {m.id} on raw queue {self.path!r} is pickled: "
                                            "refusing to unpickle (raw queues carry bytes only)")
        if kind == KIND_PICKLE:
            mv = PyMemoryView_FromMemory(<char *>m.data, <Py_ssize_t>n, PyBUF_READ)
            try:
                return _loads(mv)
            finally:
                mv.release()
        if kind == KIND_PICKLE_OOB:
            return self._decode_oob(m)
        raise _errors.CorruptQueueError(f"message {m.id} has an unknown payload kind {kind}")

    cdef object _decode_oob(self, c.shmq_msg_t *m):
        cdef uint64_t size = m.size, nbuf, hdr, off, ln, i
        cdef const uint8_t *p = m.data
        cdef char *dst
        # untrusted: every length and offset is checked against the payload size
        if size < 16:
            raise _errors.CorruptQueueError("out-of-band message shorter than its header")
        memcpy(&nbuf, p, 8)
        if nbuf > (size - 16) // 8:
            raise _errors.CorruptQueueError("out-of-band message with an impossible buffer count")
        hdr = 8 + 8 * (nbuf + 1)
        off = hdr
        lens = []
        for i in range(nbuf + 1):
            memcpy(&ln, p + 8 + 8 * i, 8)
            lens.append(ln)
        off = hdr + (OOB_ALIGN - hdr % OOB_ALIGN) % OOB_ALIGN
        pieces = []
        for i in range(nbuf + 1):
            ln = lens[i]
            if ln > size or off > size - ln:
                raise _errors.CorruptQueueError("out-of-band message with a buffer outside the payload")
            if i == 0:
                pieces.append(PyBytes_FromStringAndSize(<const char *>(p + off), <Py_ssize_t>ln))
            else:
                ba = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>ln)
                dst = PyByteArray_AS_STRING(ba)
                if ln < GIL_RELEASE_BYTES:
                    memcpy(dst, p + off, ln)
                else:
                    with nogil:
                        memcpy(dst, p + off, ln)
                pieces.append(ba)
            off += ln
            off += (OOB_ALIGN - off % OOB_ALIGN) % OOB_ALIGN
        return _loads(pieces[0], buffers=pieces[1:])

    cdef int _take(self, c.shmq_msg_t *m, uint64_t dl, bint lease) except -1:
        """Take the next message (lease: under a lease, for receive), waiting until dl without
        the GIL. Returns 1 (taken: the message pins the mapping until get_end/receive_end and
        _close_if_idle), 0 (nothing in time); raises for errors and after close."""
        cdef int rc
        rc = c.shmq_receive_begin(&self.seg, m, 0) if lease else c.shmq_get_begin(&self.seg, m, 0)
        if rc != c.SHMQ_OK:
            self._check_fault()
        if rc == c.SHMQ_EMPTY and dl != 0:
            while True:
                self._active += 1
                try:
                    with nogil:
                        if lease:
                            rc = c.shmq_receive_begin(&self.seg, m, dl)
                        else:
                            rc = c.shmq_get_begin(&self.seg, m, dl)
                finally:
                    if rc == c.SHMQ_OK:
                        self._active -= 1   # the message pins the mapping until it is released
                    else:
                        self._leave()
                if rc != c.SHMQ_OK:
                    self._check_fault()
                if rc == c.SHMQ_EINTR:
                    PyErr_CheckSignals()
                    self._check()
                    continue
                break
            if rc != c.SHMQ_OK and self._closed:
                self._check()
        if rc == c.SHMQ_OK:
            return 1
        if rc == c.SHMQ_EMPTY:
            return 0
        if rc == c.SHMQ_EINVAL and lease:
            raise ValueError(f"queue {self.path!r} was not created with ack=True: use get()")
        if rc == c.SHMQ_ECORRUPT:
            raise _errors.CorruptQueueError(f"queue {self.path!r} failed validation during {'receive' if lease else 'get'}")
        if rc == c.SHMQ_ESYS:
            raise _errors._oserror(self.seg.err, self.path)
        raise _errors.ShmqError(f"{'receive' if lease else 'get'} failed: {c.shmq_strerror(rc).decode()}")

    cdef inline void _close_if_idle(self):
        """After a taken message was released: finish a close() that waited for it."""
        if self._closed and self._active == 0 and self.opened:
            self._seg_close()

    cdef object _get_one(self, uint64_t dl, bint *got):
        cdef c.shmq_msg_t m
        got[0] = self._take(&m, dl, False)
        if not got[0]:
            return None
        try:
            obj = self._decode(&m)
        finally:
            c.shmq_get_end(&self.seg, &m)
            self._check_fault()   # what was decoded from zero pages is not returned
            self._close_if_idle()
        return obj

    def get(self, block=True, timeout=None):
        """Remove and return an item. Raises Empty (timeout/non-blocking), QueueClosedError."""
        cdef uint64_t dl
        cdef bint got
        self._check()
        _deadline(block, timeout, &dl)
        self._raise_pending()
        obj = self._get_one(dl, &got)
        if not got:
            raise _errors.Empty()
        return obj

    def get_nowait(self):
        cdef bint got
        self._check()
        self._raise_pending()
        obj = self._get_one(0, &got)
        if not got:
            raise _errors.Empty()
        return obj

    def get_many(self, Py_ssize_t max_items=64, timeout=None, block=True):
        """Return a list of 1..max_items items as soon as at least one is there. Raises Empty."""
        cdef uint64_t dl
        cdef bint got
        self._check()
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        _deadline(block, timeout, &dl)
        self._raise_pending()
        first = self._get_one(dl, &got)
        if not got:
            raise _errors.Empty()
        out = [first]
        while len(out) < max_items:
            try:
                obj = self._get_one(0, &got)
            except Exception as e:
                # The items already taken are returned; this error is raised by the next get.
                self._pending_error = e
                break
            if not got:
                break
            out.append(obj)
        return out

    cdef int _raise_pending(self) except -1:
        if self._pending_error is not None:
            e = self._pending_error
            self._pending_error = None
            raise e
        return 0

    # -- at-least-once ----------------------------------------------------------------
    def _set_dlq(self, Core dlq, str name):
        """Attach the dead-letter queue (kept alive by this handle) and record our name."""
        self._dlq = dlq
        bname = name.encode()
        c.shmq_ack_set_dlq(&self.seg, &dlq.seg if dlq is not None else NULL, bname)

    def _send(self, obj, bytes hdr, uint32_t priority, uint64_t delay_ns, uint64_t ttl_ns, bytes dedup_key,
              block=True, timeout=None, uint32_t raw_kind=0):
        """Send obj with a header block; returns (id, duplicate). delay/ttl: SHMQ_USE_DEFAULT
        for the queue's default. raw_kind: obj is a payload of that kind taken by a raw receive,
        stored as it is (redrive). Raises Full, MessageTooLargeError, QueueClosedError."""
        cdef c.shmq_send_opts_t so
        cdef uint64_t dl, mid = 0
        cdef int dup
        self._check()
        _deadline(block, timeout, &dl)
        if len(hdr) > c.SHMQ_HDR_MAX:
            raise ValueError(f"headers take {len(hdr)} bytes encoded; at most {c.SHMQ_HDR_MAX} fit")
        so.delay_ns = delay_ns
        so.ttl_ns = ttl_ns
        so.hdr = PyBytes_AS_STRING(hdr)
        so.hdr_size = <uint32_t>len(hdr)
        so.priority = priority
        so.dedup_key = NULL
        if dedup_key is not None:
            if len(dedup_key) != 16:
                raise ValueError("dedup key must be 16 bytes")
            so.dedup_key = <const uint8_t *>PyBytes_AS_STRING(dedup_key)
        if raw_kind:
            if raw_kind not in _KIND_NAMES or not isinstance(obj, bytes):
                raise ValueError(f"not a payload of a raw receive: kind {raw_kind}")
            if (raw_kind == KIND_PICKLE or raw_kind == KIND_PICKLE_OOB) and (self._flags & c.SHMQ_F_RAW):
                raise TypeError(f"raw queue {self.path!r} carries bytes-like bodies only, not a pickle")
            dup = self._put_contig(obj, raw_kind, dl, &so, &mid)
        else:
            dup = self._put_obj(obj, dl, &so, &mid)
        return mid, bool(dup)

    cdef object _receive_one(self, uint64_t dl, bint raw=False):
        """(body, hdr, id, timestamp, delivery_count, priority, token) or None when empty.
        raw: body is (payload kind, payload bytes), never unpickled (redrive)."""
        cdef c.shmq_msg_t m
        cdef int rc
        while True:
            if not self._take(&m, dl, True):
                return None
            body = None
            err = None
            try:
                if raw:
                    body = (m.kind, PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.size))
                else:
                    body = self._decode(&m)
                hdr = PyBytes_FromStringAndSize(<const char *>m.hdr, <Py_ssize_t>m.hdr_size)
            except Exception as e:
                err = e
            rc = c.shmq_receive_end(&self.seg, &m)
            self._check_fault()
            self._close_if_idle()
            if rc == c.SHMQ_ESTALE:
                continue   # the lease ran out while we copied: that copy may be torn; take the next
            if err is not None:
                raise err
            return (body, hdr, m.id, m.timestamp_ns / 1e9, m.delivery_count, m.priority, m.handle)

    def _receive(self, block=True, timeout=None, bint raw=False):
        cdef uint64_t dl
        self._check()
        _deadline(block, timeout, &dl)
        r = self._receive_one(dl, raw)
        if r is None:
            raise _errors.Empty()
        return r

    def _receive_many(self, Py_ssize_t max_items=64, timeout=None, block=True):
        cdef uint64_t dl
        self._check()
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        _deadline(block, timeout, &dl)
        first = self._receive_one(dl)
        if first is None:
            raise _errors.Empty()
        out = [first]
        while len(out) < max_items:
            r = self._receive_one(0)
            if r is None:
                break
            out.append(r)
        return out

    cdef int _settle_error(self, int rc, uint64_t mid, str what) except -1:
        if rc == c.SHMQ_ESTALE:
            raise _errors.LeaseExpiredError(
                f"message {mid}: this delivery's lease expired and the message was delivered again "
                f"(or it was settled already); {what} changed nothing")
        if rc == c.SHMQ_TIMEOUT:
            raise _errors.ShmqError(f"message {mid}: another process held this delivery for 100 ms "
                                    f"(stopped?); {what} changed nothing, try again")
        raise _errors.ShmqError(f"{what} failed: {c.shmq_strerror(rc).decode()}")

    def _ack(self, uint64_t token, uint64_t mid):
        cdef int rc
        self._check()
        rc = c.shmq_ack(&self.seg, token, mid)
        self._check_fault()
        if rc != c.SHMQ_OK:
            self._settle_error(rc, mid, "ack")

    def _ack_many(self, list pairs):
        """Ack (token, id) pairs; returns the list of ids whose lease had expired (not acked)."""
        cdef int rc
        cdef uint64_t token, mid
        self._check()
        stale = []
        for token, mid in pairs:
            rc = c.shmq_ack(&self.seg, token, mid)
            self._check_fault()
            if rc == c.SHMQ_ESTALE:
                stale.append(mid)
            elif rc != c.SHMQ_OK:
                self._settle_error(rc, mid, "ack")
        return stale

    def _nack(self, uint64_t token, uint64_t mid, bint requeue, uint64_t delay_ns):
        cdef int rc
        self._check()
        rc = c.shmq_nack(&self.seg, token, mid, requeue, delay_ns)
        self._check_fault()
        if rc != c.SHMQ_OK:
            self._settle_error(rc, mid, "nack")

    def _extend(self, uint64_t token, uint64_t mid, uint64_t ns):
        cdef int rc
        self._check()
        rc = c.shmq_extend(&self.seg, token, mid, ns)
        self._check_fault()
        if rc != c.SHMQ_OK:
            self._settle_error(rc, mid, "extend")

    def _timers_run(self):
        """Run the timer scan now (lease ends, delays, TTLs); returns how many it changed."""
        self._check()
        n = c.shmq_timers_run(&self.seg)
        self._check_fault()
        return n

    # -- state ------------------------------------------------------------------------
    def qsize(self):
        self._check()
        n = c.shmq_depth(&self.seg)
        self._check_fault()
        return n

    def empty(self):
        return self.qsize() == 0

    def full(self):
        self._check()
        cdef uint64_t maxsize = self.seg.hdr.maxsize
        full = maxsize != 0 and c.shmq_depth(&self.seg) >= maxsize
        self._check_fault()
        return full

    def _raw_stats(self):
        cdef c.shmq_stats_t st
        if not self.opened:
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        c.shmq_stats(&self.seg, &st)
        self._check_fault()
        return {
            "depth": st.depth, "bytes_used": st.bytes_used, "capacity": st.capacity,
            "file_size": st.file_size, "max_message": st.max_message, "maxsize": st.maxsize,
            "enqueued": st.enqueued, "dequeued": st.dequeued, "repairs": st.repairs,
            "corrupt_skipped": st.corrupt_skipped, "unfinished": st.unfinished,
            "creator_pid": st.creator_pid, "created_at": st.created_at_ns / 1e9,
            "attached": st.attached, "producers": st.producers, "consumers": st.consumers,
            "areas": st.areas, "flags": st.flags, "kind": st.kind, "mode": st.mode,
            "max_slots": st.max_slots, "last_repair_ms": st.last_repair_ns / 1e6,
            "in_flight": st.in_flight, "delayed": st.delayed, "oldest_ready": st.oldest_ready_ns / 1e9,
            "acked": st.acked, "redelivered": st.redelivered, "dead_lettered": st.dead_lettered,
            "expired": st.expired, "dead_letter_failed": st.dead_letter_failed, "dedup_hits": st.dedup_hits,
            "visibility_timeout": st.visibility_ns / 1e9, "max_deliveries": st.max_deliveries,
            "default_delay": st.default_delay_ns / 1e9, "default_ttl": st.default_ttl_ns / 1e9,
            "dedup_window": st.dedup_window_ns / 1e9, "dedup_capacity": st.dedup_slots,
            "dead_letter": st.dead_letter.decode(errors="replace"),
        }

    def _peek(self, uint64_t n, Py_ssize_t cap=64):
        """(id, timestamp, kind, size, prefix bytes) of the n-th queued message, without taking
        it; None when there are fewer messages. Never unpickles."""
        cdef c.shmq_peek_t pk
        cdef int rc
        if not self.opened:
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        buf = PyBytes_FromStringAndSize(NULL, cap)
        for _ in range(1000):
            rc = c.shmq_peek(&self.seg, n, &pk, PyBytes_AS_STRING(buf), <uint64_t>cap)
            self._check_fault()
            if rc != c.SHMQ_EAGAIN:
                break
        if rc == c.SHMQ_EMPTY:
            return None
        if rc == c.SHMQ_ECORRUPT:
            raise _errors.CorruptQueueError(f"queue {self.path!r}: a queued message failed validation")
        if rc != c.SHMQ_OK:
            raise _errors.ShmqError(f"peek failed: {c.shmq_strerror(rc).decode()}")
        return (pk.id, pk.timestamp_ns / 1e9, _KIND_NAMES.get(pk.kind, str(pk.kind)), pk.size, buf[:pk.copied])

    def _peek_body(self, uint64_t n):
        """The object of the n-th queued message (unpickles: runs code from the queue)."""
        info = self._peek(n, 0)
        if info is None:
            return None
        cdef c.shmq_peek_t pk
        cdef int rc
        for _ in range(1000):
            buf = PyBytes_FromStringAndSize(NULL, info[3])
            rc = c.shmq_peek(&self.seg, n, &pk, PyBytes_AS_STRING(buf), info[3])
            self._check_fault()
            if rc == c.SHMQ_OK and pk.size == pk.copied:
                break
            if rc == c.SHMQ_OK:
                info = (0, 0, 0, pk.size)
        if rc != c.SHMQ_OK:
            return None
        if pk.kind == KIND_BYTES:
            return buf
        if pk.kind == KIND_BYTEARRAY:
            return bytearray(buf)
        if pk.kind == KIND_PICKLE:
            return _loads(buf)
        return "<message with out-of-band buffers>"

    def _purge(self):
        """Take and discard every queued message (no unpickling); returns how many."""
        self._check()
        n = c.shmq_purge(&self.seg)
        self._check_fault()
        return n

    def _repair(self):
        """Repair every dead participant we can; returns how many were repaired."""
        if not self.opened:
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        n = c.shmq_repair_dead(&self.seg)
        self._check_fault()
        return n

    def _consistency(self):
        """Consistency walk (call on a quiescent queue): counts of descriptors by state,
        orphans, chunk and arena mismatches."""
        cdef c.shmq_check_t ck
        if not self.opened:
            raise _errors.QueueClosedError(f"queue {self.path!r} is closed")
        c.shmq_check(&self.seg, &ck)
        self._check_fault()
        return {"free_desc": ck.free_desc, "ready_desc": ck.ready_desc, "owned_desc": ck.owned_desc,
                "dead_owned": ck.dead_owned, "orphan_ready": ck.orphan_ready, "bad_chunks": ck.bad_chunks,
                "arena_mismatch": ck.arena_mismatch, "bad_areas": ck.bad_areas, "queued": ck.queued}

    def _validate(self):
        cdef int rc = c.shmq_validate(&self.seg)
        self._check_fault()
        if rc != c.SHMQ_OK:
            self._raise_open(rc, self.path)

    # -- JoinableQueue -----------------------------------------------------------------
    def _task_done(self):
        self._check()
        rc = c.shmq_task_done(&self.seg)
        self._check_fault()
        if rc != c.SHMQ_OK:
            raise ValueError("task_done() called too many times")

    def _join(self, timeout=None):
        cdef uint64_t dl
        cdef int rc
        self._check()
        _deadline(True, timeout, &dl)
        while True:
            self._active += 1
            try:
                with nogil:
                    rc = c.shmq_join(&self.seg, dl)
            finally:
                self._leave()
            self._check_fault()
            if rc == c.SHMQ_EINTR:
                PyErr_CheckSignals()
                self._check()
                continue
            if self._closed:
                self._check()
            return rc == c.SHMQ_OK
