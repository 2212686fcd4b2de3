# Topic binding (included by _core.pyx): publish, readers and the subscription table of
# csrc/topic.h. Argument conversion and the GIL only; names, options and lifecycle are
# shmq.topic's.

cdef extern from "topic.h" nogil:
    enum:
        SHMQ_TSUB_BLOCK
        SHMQ_TSUB_ACK
        SHMQ_TSTART_LATEST
        SHMQ_TSTART_EARLIEST
        SHMQ_TSTART_SEQ
        SHMQ_TSTART_TIME
        SHMQ_TOPIC_NAME_MAX
    ctypedef struct shmq_topic_msg_t:
        uint64_t seq
        uint64_t timestamp_ns
        const uint8_t *data
        uint32_t size
        uint32_t hdr_size
        uint32_t kind
    ctypedef struct shmq_topic_pub_t:
        const c.shmq_iov_t *iov
        uint32_t n_iov
        uint32_t kind
        uint32_t hdr_size
    ctypedef struct shmq_topic_reader_t:
        uint32_t sub
        uint32_t gen
        uint64_t cursor
        uint64_t missed
    ctypedef struct shmq_topic_subinfo_t:
        uint32_t idx, gen, flags, consumers
        char name[101]
        uint64_t cursor, missed, delivered, lag, created_ns
        uint64_t acked, redelivered, dead_lettered, visibility_ns
        uint32_t in_flight, max_deliveries
    ctypedef struct shmq_topic_stats_t:
        uint64_t head_seq, tail_seq, published, dropped, data_size, data_used, n_entries, max_message, retention_ns
        uint32_t max_subs, subs
    int shmq_topic_publish(c.shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                           uint32_t *done, uint64_t *first)
    int shmq_topic_publish_seqs(c.shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                                uint32_t *done, uint64_t *first, uint64_t *seqs)
    int shmq_topic_read(c.shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize,
                        shmq_topic_msg_t *out, uint32_t max, uint32_t *n, uint64_t deadline_ns)
    int shmq_topic_subscribe(c.shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                             uint64_t arg, uint32_t *idx, uint32_t *gen, int *created)
    void shmq_topic_leave(c.shmq_seg_t *t, uint32_t idx)
    int shmq_topic_unsubscribe(c.shmq_seg_t *t, const char *name, uint32_t name_len)
    uint64_t shmq_topic_head(c.shmq_seg_t *t)
    uint64_t shmq_topic_tail(c.shmq_seg_t *t)
    int shmq_topic_subinfo(c.shmq_seg_t *t, uint32_t i, shmq_topic_subinfo_t *out)
    void shmq_topic_stats(c.shmq_seg_t *t, shmq_topic_stats_t *st)
    int shmq_topic_peek(c.shmq_seg_t *t, uint64_t seq, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out)
    void *shmq_topic_of(c.shmq_seg_t *t)
    int shmq_topic_subscribe_ack(c.shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                                 uint64_t arg, uint64_t visibility_ns, uint32_t max_deliveries, uint32_t *idx,
                                 uint32_t *gen, int *created)
    int shmq_topic_receive(c.shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize,
                           shmq_topic_msg_t *out, uint64_t *token, uint32_t *deliveries, int *dead, uint64_t deadline_ns)
    int shmq_topic_ack(c.shmq_seg_t *t, uint64_t token)
    int shmq_topic_nack(c.shmq_seg_t *t, uint64_t token)
    int shmq_topic_extend(c.shmq_seg_t *t, uint64_t *token, uint64_t ns)
    int shmq_topic_sub_hist(c.shmq_seg_t *t, uint32_t idx, c.shmq_hist_sum_t *out)

TSTART_LATEST = SHMQ_TSTART_LATEST
TSTART_EARLIEST = SHMQ_TSTART_EARLIEST
TSTART_SEQ = SHMQ_TSTART_SEQ
TSTART_TIME = SHMQ_TSTART_TIME
TSUB_BLOCK = SHMQ_TSUB_BLOCK
TSUB_ACK = SHMQ_TSUB_ACK
TOPIC_NAME_MAX = SHMQ_TOPIC_NAME_MAX

DEF READ_BATCH = 256          # messages one read copies at most
DEF READ_SLACK = 256 * 1024   # reader buffer beyond max_message: room for a batch of small ones

cdef object _decode_headers = None


def _set_topic_policy(decode_headers):
    """The codec's header-block decoder (shmq._codec.decode_headers), for TopicMessage.headers."""
    global _decode_headers
    _decode_headers = decode_headers


def _kind_of(Core core):
    """The segment's kind (KIND_QUEUE, KIND_PRIORITY, KIND_TOPIC) of an opened binding object."""
    core._check_open()
    return core.seg.hdr.kind


def _topic_create(Core core, str path, uint64_t capacity, uint64_t max_message, uint64_t retention_ns,
                  uint32_t mode, uint32_t max_slots, bint exist_ok):
    """Create (or with exist_ok open) the topic segment at path and attach. Returns True if created."""
    cdef c.shmq_create_opts_t o
    cdef int created = 0
    cdef int rc
    bpath = os.fsencode(path)
    memset(&o, 0, sizeof(o))
    o.path = bpath
    o.kind = c.SHMQ_KIND_TOPIC
    o.capacity = capacity
    o.max_message = max_message
    o.mode = mode
    o.max_slots = max_slots
    o.retention_ns = retention_ns
    with nogil:
        rc = c.shmq_create(&core.seg, &o, exist_ok, &created)
    core.path = path
    if rc != c.SHMQ_OK:
        raise core._error(rc, "create")
    if not created:
        problem = _untrusted_file(core.seg.fd, path, os.geteuid(), mode)
        if problem is not None:
            c.shmq_close(&core.seg)
            raise problem
    core._opened()
    core._attach()
    return bool(created)


def _topic_stats(Core core):
    cdef shmq_topic_stats_t st
    core._check_open()
    if shmq_topic_of(&core.seg) == NULL:
        return None
    shmq_topic_stats(&core.seg, &st)
    return {"head_seq": st.head_seq, "tail_seq": st.tail_seq, "published": st.published, "dropped": st.dropped,
            "data_size": st.data_size, "data_used": st.data_used, "n_entries": st.n_entries,
            "max_message": st.max_message, "retention_ns": st.retention_ns, "max_subscriptions": st.max_subs,
            "subscription_count": st.subs}


def _topic_subscriptions(Core core):
    """[(idx, gen, name, flags, cursor, missed, delivered, lag, consumers, created_ns)] of the live entries."""
    cdef shmq_topic_subinfo_t si
    cdef uint32_t i
    core._check_open()
    out = []
    if shmq_topic_of(&core.seg) == NULL:
        return out
    for i in range(64):
        if shmq_topic_subinfo(&core.seg, i, &si) != c.SHMQ_OK:
            continue
        out.append((si.idx, si.gen, si.name.decode(errors="replace"), si.flags, si.cursor, si.missed,
                    si.delivered, si.lag, si.consumers, si.created_ns, si.acked, si.redelivered, si.dead_lettered,
                    si.in_flight, si.visibility_ns, si.max_deliveries))
    return out


def _topic_sub_hist(Core core, uint32_t idx):
    """The latency histograms of subscription entry idx as Core._hist() gives a queue's
    ({"wait": [32 counts], "process": [...], "wait_sum_ns", "process_sum_ns", ...}), or None
    when the topic has no subscription blocks (made by an older version) or idx is out of range."""
    cdef c.shmq_hist_sum_t hs
    core._check_open()
    if shmq_topic_of(&core.seg) == NULL or shmq_topic_sub_hist(&core.seg, idx, &hs) != c.SHMQ_OK:
        return None
    return {"wait": [hs.wait[i] for i in range(c.SHMQ_HIST_BUCKETS)],
            "process": [hs.process[i] for i in range(c.SHMQ_HIST_BUCKETS)],
            "wait_sum_ns": hs.wait_sum_ns, "process_sum_ns": hs.process_sum_ns,
            "nacks": hs.nacks, "late_replies": hs.late_replies}


def _topic_head(Core core):
    core._check()
    return shmq_topic_head(&core.seg), shmq_topic_tail(&core.seg)


def _topic_subscribe(Core core, bytes name, uint32_t flags, uint32_t start, uint64_t arg,
                     uint64_t visibility_ns=0, uint32_t max_deliveries=0):
    """(idx, gen, created) of named subscription name; raises on a full table or other flags."""
    cdef uint32_t idx = 0, gen = 0
    cdef int created = 0, rc
    cdef const char *p = name
    cdef uint32_t n = <uint32_t>len(name)
    core._check()
    core._enter()
    with nogil:
        if flags & SHMQ_TSUB_ACK:
            rc = shmq_topic_subscribe_ack(&core.seg, p, n, flags, start, arg, visibility_ns, max_deliveries,
                                          &idx, &gen, &created)
        else:
            rc = shmq_topic_subscribe(&core.seg, p, n, flags, start, arg, &idx, &gen, &created)
    core._leave()
    if rc == c.SHMQ_OK:
        return idx, gen, bool(created)
    if rc == c.SHMQ_EINCOMPAT:
        raise _errors.ArgumentError(f"subscription {name.decode()!r} exists with other options "
                                    "(on_slow or ack); unsubscribe it first, or subscribe with the same options")
    if rc == c.SHMQ_FULL:
        raise _errors.ShmqError(f"{_errors._label(core.path)}: its subscription table is full (64 named "
                                "subscriptions); unsubscribe unused ones")
    if rc == c.SHMQ_TIMEOUT:
        raise _errors.ShmqError(f"{_errors._label(core.path)}: another process held the subscription lock for 1 s "
                                "(stopped?); try again")
    raise core._error(rc, "subscribe")


def _topic_unsubscribe(Core core, bytes name):
    cdef int rc
    cdef const char *p = name
    cdef uint32_t n = <uint32_t>len(name)
    core._check()
    core._enter()
    with nogil:
        rc = shmq_topic_unsubscribe(&core.seg, p, n)
    core._leave()
    if rc == c.SHMQ_EMPTY:
        raise _errors.SubscriptionNotFound(f"{_errors._label(core.path)} has no subscription {name.decode()!r}")
    if rc == c.SHMQ_TIMEOUT:
        raise _errors.ShmqError(f"{_errors._label(core.path)}: another process held the subscription lock for 1 s "
                                "(stopped?); try again")
    if rc != c.SHMQ_OK:
        raise core._error(rc, "unsubscribe")


def _topic_settle(Core core, uint64_t token, int op, uint64_t ns=0, uint64_t seq=0):
    """op 0 ack, 1 nack (redeliver now), 2 extend (returns the new token). Raises
    LeaseExpiredError when the delivery is no longer current."""
    cdef int rc
    cdef uint64_t tok = token
    core._check()
    if op == 0:
        rc = shmq_topic_ack(&core.seg, tok)
    elif op == 1:
        rc = shmq_topic_nack(&core.seg, tok)
    else:
        rc = shmq_topic_extend(&core.seg, &tok, ns)
    if rc == c.SHMQ_ESTALE:
        e = _errors.LeaseExpiredError(f"topic message {seq}: this delivery's lease expired and the message was "
                                      "delivered again (or it was settled already); nothing changed")
        e.ids = [seq]
        raise e
    if rc != c.SHMQ_OK:
        raise core._error(rc, "ack")
    return tok


def _topic_leave(Core core, uint32_t idx):
    if core.opened and not core._closed:
        shmq_topic_leave(&core.seg, idx)


@cython.auto_pickle(False)
cdef class TopicMessage:
    """One message of a topic as a subscription got it: ``seq`` (1, 2, 3 ... per topic; also
    ``id``), ``body``, ``headers`` (dict, ``{}`` when none), ``timestamp`` (seconds since the
    epoch at publish)."""
    cdef readonly uint64_t seq
    cdef readonly object body
    cdef readonly double timestamp
    cdef object _hdr
    cdef object _headers

    @property
    def id(self):
        return self.seq

    @property
    def headers(self):
        if self._headers is None:
            self._headers = _decode_headers(self._hdr) if self._hdr else {}
        return self._headers

    def __repr__(self):
        return f"<shmq.TopicMessage seq={self.seq}>"

    def __reduce__(self):
        return (_topic_message, (self.seq, self.body, self.timestamp, self._hdr))


def _topic_message(seq, body, timestamp, hdr):
    cdef TopicMessage m = TopicMessage.__new__(TopicMessage)
    m.seq = seq
    m.body = body
    m.timestamp = timestamp
    m._hdr = hdr
    return m


cdef object _topic_body(const shmq_topic_msg_t *m, uint64_t seq):
    cdef const uint8_t *p = m.data + m.hdr_size
    cdef uint64_t n = m.size - m.hdr_size
    if m.kind == _KIND_BYTES:
        return PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>n)
    if m.kind == _KIND_BYTEARRAY:
        return PyByteArray_FromStringAndSize(<const char *>p, <Py_ssize_t>n)
    mv = PyMemoryView_FromMemory(<char *>p, <Py_ssize_t>n, PyBUF_READ)
    try:
        return _decode(m.kind, mv, 0, seq)
    finally:
        mv.release()


@cython.auto_pickle(False)
cdef class TopicReader:
    """One reader's position (a private cursor or a named subscription) and its copy buffer."""
    cdef Core core
    cdef shmq_topic_reader_t r
    cdef uint8_t *buf
    cdef uint64_t bufsize
    cdef shmq_topic_msg_t out[READ_BATCH]
    cdef readonly bint closed

    def __cinit__(self, Core core, uint32_t sub, uint32_t gen, uint64_t cursor, uint64_t max_message):
        self.core = core
        self.r.sub = sub
        self.r.gen = gen
        self.r.cursor = cursor
        self.r.missed = 0
        self.bufsize = max_message + READ_SLACK
        self.buf = <uint8_t *>malloc(self.bufsize)
        if self.buf == NULL:
            raise MemoryError()
        self.closed = False

    def __dealloc__(self):
        free(self.buf)

    @property
    def cursor(self):
        return self.r.cursor

    @property
    def missed(self):
        return self.r.missed

    def close(self):
        self.closed = True

    cdef int _read(self, uint32_t max, uint64_t dl, uint32_t *n) except -1:
        cdef int rc
        cdef PyThreadState *ts
        cdef Core core = self.core
        if self.closed:
            raise _errors.QueueClosedError("this subscription is closed")
        core._check()
        while True:
            core._enter()
            ts = _release()
            rc = shmq_topic_read(&core.seg, &self.r, self.buf, self.bufsize, self.out, max, n, dl)
            _reacquire(ts)
            core._leave()
            if (rc != c.SHMQ_EINTR and not core._closed) or not core._retry(rc):
                break
        if rc == c.SHMQ_OK:
            return 1
        if rc == c.SHMQ_EMPTY or rc == c.SHMQ_TIMEOUT:
            return 0
        if rc == c.SHMQ_ECLOSED and self.r.sub != <uint32_t>-1 and not core._closed:
            raise _errors.SubscriptionNotFound("this subscription was unsubscribed (t.unsubscribe) by another "
                                               "handle; subscribe again to start a new one")
        raise core._error(rc, "get")

    cdef object _msg(self, uint32_t i):
        cdef const shmq_topic_msg_t *m = &self.out[i]
        cdef TopicMessage tm = TopicMessage.__new__(TopicMessage)
        tm.seq = m.seq
        tm.timestamp = m.timestamp_ns / 1e9
        tm._hdr = PyBytes_FromStringAndSize(<const char *>m.data, m.hdr_size) if m.hdr_size else None
        tm.body = _topic_body(m, m.seq)
        return tm

    def receive(self, block=True, timeout=None):
        """(TopicMessage, token, deliveries, dead) of the next delivery under a lease (ack=True).
        Raises Empty."""
        cdef uint64_t dl, token = 0
        cdef uint32_t deliveries = 0
        cdef int dead = 0, rc
        cdef PyThreadState *ts
        cdef Core core = self.core
        if self.closed:
            raise _errors.QueueClosedError("this subscription is closed")
        core._check()
        _deadline(block, timeout, &dl)
        while True:
            core._enter()
            ts = _release()
            rc = shmq_topic_receive(&core.seg, &self.r, self.buf, self.bufsize, self.out, &token, &deliveries,
                                    &dead, dl)
            _reacquire(ts)
            core._leave()
            if (rc != c.SHMQ_EINTR and not core._closed) or not core._retry(rc):
                break
        if rc == c.SHMQ_OK:
            return self._msg(0), token, deliveries, bool(dead)
        if rc == c.SHMQ_EMPTY or rc == c.SHMQ_TIMEOUT:
            raise _errors.Empty()
        if rc == c.SHMQ_ECLOSED and not core._closed:
            raise _errors.SubscriptionNotFound("this subscription was unsubscribed (t.unsubscribe) by another "
                                               "handle; subscribe again to start a new one")
        raise core._error(rc, "receive")

    def get(self, block=True, timeout=None):
        """The next message (a TopicMessage). Raises Empty (timeout / non-blocking)."""
        cdef uint64_t dl
        cdef uint32_t n = 0
        _deadline(block, timeout, &dl)
        if not self._read(1, dl, &n):
            raise _errors.Empty()
        return self._msg(0)

    def get_many(self, Py_ssize_t max_items=64, timeout=None, block=True, bint bodies=False):
        """Up to max_items messages, as soon as at least one is there (bodies=True: just the
        bodies). Raises Empty when none came before the timeout."""
        cdef uint64_t dl
        cdef uint32_t n = 0, i
        if max_items < 1:
            raise _errors.ArgumentError(f"max_items must be at least 1, got {max_items}")
        _deadline(block, timeout, &dl)
        if not self._read(<uint32_t>min(max_items, READ_BATCH), dl, &n):
            raise _errors.Empty()
        if bodies:
            return [_topic_body(&self.out[i], self.out[i].seq) for i in range(n)]
        return [self._msg(i) for i in range(n)]


def _topic_peek(Core core, uint64_t seq):
    """(seq, timestamp_ns, kind, hdr bytes, payload bytes) of message seq, or None if not in the log."""
    cdef shmq_topic_msg_t m
    cdef int rc
    core._check_open()
    if shmq_topic_of(&core.seg) == NULL:
        return None
    st = _topic_stats(core)
    cdef uint64_t cap = st["max_message"] + 64
    cdef uint8_t *buf = <uint8_t *>malloc(cap)
    if buf == NULL:
        raise MemoryError()
    try:
        rc = shmq_topic_peek(&core.seg, seq, buf, cap, &m)
        if rc == c.SHMQ_EMPTY:
            return None
        if rc != c.SHMQ_OK:
            raise core._error(rc, "peek")
        return (m.seq, m.timestamp_ns, m.kind, PyBytes_FromStringAndSize(<const char *>m.data, m.hdr_size),
                PyBytes_FromStringAndSize(<const char *>m.data + m.hdr_size, m.size - m.hdr_size))
    finally:
        free(buf)


cdef int _publish_parts(Core core, list msgs, uint64_t dl, uint32_t *done, uint64_t *first,
                        uint64_t *seqs=NULL) except -1:
        # msgs: [(kind, hdr bytes or None, [buffers])]
        cdef Py_ssize_t nm = len(msgs), total_parts = 0, i, j, k = 0, nviews = 0
        cdef shmq_topic_pub_t *pubs
        cdef c.shmq_iov_t *iov
        cdef Py_buffer *views
        cdef int rc
        cdef PyThreadState *ts
        cdef uint64_t size
        cdef uint32_t j32 = 0
        cdef uint64_t f64 = 0
        for i in range(nm):
            total_parts += len(msgs[i][2]) + 1
        pubs = <shmq_topic_pub_t *>malloc(sizeof(shmq_topic_pub_t) * nm)
        iov = <c.shmq_iov_t *>malloc(sizeof(c.shmq_iov_t) * total_parts)
        views = <Py_buffer *>malloc(sizeof(Py_buffer) * total_parts)
        if pubs == NULL or iov == NULL or views == NULL:
            free(pubs)
            free(iov)
            free(views)
            raise MemoryError()
        try:
            for i in range(nm):
                kind, hdr, parts = msgs[i]
                pubs[i].iov = &iov[k]
                pubs[i].kind = <uint32_t>kind
                pubs[i].hdr_size = 0
                pubs[i].n_iov = 0
                if hdr:
                    PyObject_GetBuffer(hdr, &views[nviews], PyBUF_ANY_CONTIGUOUS)
                    iov[k].ptr = views[nviews].buf
                    iov[k].len = <uint64_t>views[nviews].len
                    pubs[i].hdr_size = <uint32_t>views[nviews].len
                    nviews += 1
                    k += 1
                    pubs[i].n_iov += 1
                for p in parts:
                    PyObject_GetBuffer(p, &views[nviews], PyBUF_ANY_CONTIGUOUS)
                    iov[k].ptr = views[nviews].buf
                    iov[k].len = <uint64_t>views[nviews].len
                    nviews += 1
                    k += 1
                    pubs[i].n_iov += 1
            core._check()
            while True:
                core._enter()
                ts = _release()
                rc = shmq_topic_publish_seqs(&core.seg, pubs + done[0], <uint32_t>(nm - done[0]), dl, &j32, &f64,
                                             seqs + done[0] if seqs != NULL else NULL)
                _reacquire(ts)
                core._leave()
                if done[0] == 0:
                    first[0] = f64
                done[0] += j32
                if (rc != c.SHMQ_EINTR and not core._closed) or not core._retry(rc):
                    break
            if rc == c.SHMQ_OK:
                return 0
            if rc == c.SHMQ_FULL or rc == c.SHMQ_TIMEOUT:
                e = _errors.Full(f"{_errors._label(core.path)} is full: a subscription with on_slow='block' has not "
                                 "consumed the oldest messages; consume them, unsubscribe it, or wait longer (timeout=)")
            elif rc == c.SHMQ_ETOOBIG:
                size = 0
                for j in range(pubs[done[0]].n_iov):
                    size += pubs[done[0]].iov[j].len
                e = core._error(rc, "publish", (size, _topic_stats(core)["max_message"]))
            else:
                e = core._error(rc, "publish")
            e.items_put = done[0]
            raise e
        finally:
            for i in range(nviews):
                PyBuffer_Release(&views[i])
            free(pubs)
            free(iov)
            free(views)

cdef int _publish_bytes(Core core, list objs, uint64_t dl, uint32_t *done, uint64_t *first,
                        uint64_t *seqs) except -1:
    """publish_many of exact bytes objects without headers: one iov each, straight from the
    objects (the list holds them alive; bytes are immutable)."""
    cdef Py_ssize_t nm = len(objs), i
    cdef shmq_topic_pub_t *pubs = <shmq_topic_pub_t *>malloc(sizeof(shmq_topic_pub_t) * nm)
    cdef c.shmq_iov_t *iov = <c.shmq_iov_t *>malloc(sizeof(c.shmq_iov_t) * nm)
    cdef int rc
    cdef uint32_t j32 = 0
    cdef uint64_t f64 = 0
    cdef PyThreadState *ts
    if pubs == NULL or iov == NULL:
        free(pubs)
        free(iov)
        raise MemoryError()
    try:
        for i in range(nm):
            o = objs[i]
            iov[i].ptr = PyBytes_AS_STRING(o)
            iov[i].len = <uint64_t>PyBytes_GET_SIZE(o)
            pubs[i].iov = &iov[i]
            pubs[i].n_iov = 1
            pubs[i].kind = _KIND_BYTES
            pubs[i].hdr_size = 0
        core._check()
        while True:
            core._enter()
            ts = _release()
            rc = shmq_topic_publish_seqs(&core.seg, pubs + done[0], <uint32_t>(nm - done[0]), dl, &j32, &f64,
                                             seqs + done[0] if seqs != NULL else NULL)
            _reacquire(ts)
            core._leave()
            if done[0] == 0:
                first[0] = f64
            done[0] += j32
            if (rc != c.SHMQ_EINTR and not core._closed) or not core._retry(rc):
                break
        if rc == c.SHMQ_OK:
            return 0
        if rc == c.SHMQ_FULL or rc == c.SHMQ_TIMEOUT:
            e = _errors.Full(f"{_errors._label(core.path)} is full: a subscription with on_slow='block' has not "
                             "consumed the oldest messages; consume them, unsubscribe it, or wait longer (timeout=)")
        elif rc == c.SHMQ_ETOOBIG:
            e = core._error(rc, "publish", (iov[done[0]].len, _topic_stats(core)["max_message"]))
        else:
            e = core._error(rc, "publish")
        e.items_put = done[0]
        raise e
    finally:
        free(pubs)
        free(iov)


@cython.auto_pickle(False)
cdef class TopicOps(HandleBase):
    """The per-message calls of shmq.Topic (module-level cdef helpers: a handle class that
    also derives from Handle has HandleBase's vtable, so no cdef methods here)."""

    def _publish(self, obj, hdr, block=True, timeout=None):
        cdef uint64_t dl
        cdef uint32_t done = 0
        cdef uint64_t first = 0
        _deadline(block, timeout, &dl)
        if PyBytes_CheckExact(obj):
            msgs = [(_KIND_BYTES, hdr, (obj,))]
        else:
            kind, parts = _encode(obj, 0)
            msgs = [(kind, hdr, parts)]
        _publish_parts(self._c(), msgs, dl, &done, &first)
        return first

    def _publish_many(self, objs, hdr, block=True, timeout=None):
        cdef uint64_t dl
        cdef uint32_t done = 0, i
        cdef uint64_t first = 0
        cdef uint64_t *seqs
        _deadline(block, timeout, &dl)
        fast = not hdr and type(objs) is list and all(PyBytes_CheckExact(o) for o in <list>objs)
        if fast:
            msgs = <list>objs
        else:
            msgs = []
            for obj in objs:
                if PyBytes_CheckExact(obj):
                    msgs.append((_KIND_BYTES, hdr, (obj,)))
                else:
                    kind, parts = _encode(obj, 0)
                    msgs.append((kind, hdr, parts))
        if not msgs:
            return []
        seqs = <uint64_t *>malloc(sizeof(uint64_t) * len(msgs))
        if seqs == NULL:
            raise MemoryError()
        try:
            try:
                if fast:
                    _publish_bytes(self._c(), msgs, dl, &done, &first, seqs)   # no per-message Python objects
                else:
                    _publish_parts(self._c(), msgs, dl, &done, &first, seqs)
            except BaseException as e:
                if hasattr(e, "items_put"):
                    e.seqs = [seqs[i] for i in range(done)]
                raise
            return [seqs[i] for i in range(done)]
        finally:
            free(seqs)
