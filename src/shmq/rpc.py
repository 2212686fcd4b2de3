"""Request-reply: Responder and Requester, linked by correlation ids.

The request queue is an at-least-once queue (named; several responders share it). Each
Requester owns a private reply inbox, an anonymous queue (removed when it closes or its process
exits; swept or `shmq gc`ed after a SIGKILL). A request is a message on the request queue whose
headers carry the correlation id and the inbox; a reply is put on that inbox, then the request
is acked. Without reliable=True the request queue allows one delivery (max_deliveries=1): a
request whose responder died is dead-lettered by repair instead of going to another responder.

A waiting requester looks after its request every SLICE seconds (the repair bound of this kind):
it finds the request's descriptor once and probes it in O(1). A request delivered to a dead
responder makes the requester run repair, after which the request is gone without a reply:
ResponderDiedError. A request still waiting when no live responder remains is removed:
NoRespondersError.
"""
import asyncio
import concurrent.futures
import itertools
import os
import signal
import threading
import time
from collections import OrderedDict

from . import _codec, _core, _names, _options, _sweep
from ._handle import _rebuild
from .errors import (ArgumentError, ArgumentTypeError, Empty, NoRespondersError, QueueClosedError,
                     QueueNotFound, RemoteError, RequestTimeout, ResponderDiedError, ShmqError)
from .queue import Queue, _pick_backend
from .reliable import ReliableQueue

__all__ = ["Responder", "Requester", "Request", "CRASH_POINTS"]

SLICE = 0.05                 # a waiting requester looks after its request this often (seconds)
LAZY = 0.002                 # a future no thread waits on is read for by the dispatcher after this
H_CORR = "x-correlation-id"
H_REPLY_TO = "x-reply-to"
_RESERVED = (H_CORR, H_REPLY_TO)
_OK, _FAIL = 0, 1
_INBOX_CACHE = 64            # inbox handles a responder keeps open (least recently used closed)
_PID_CHECK_S = 1.0           # a responder re-checks that an inbox's requester lives this often
NON_RELIABLE_VISIBILITY = 7 * 24 * 3600.0   # a live responder's request never expires

# Named points where a test makes the process SIGKILL itself (SHMQ_CRASH_AT=<point>[:<n>], as
# the core's points): each has a kill test in tests/crash/test_rpc_crash.py.
CRASH_POINTS = {
    "rpc_after_send": "request: sent to the request queue, not yet waiting for the reply",
    "rpc_after_take": "responder: request received (leased), no reply put yet",
    "rpc_after_reply": "responder: reply put on the inbox, request not yet acked",
    "rpc_mid_look": "requester: its request found with a dead responder, repair not yet run",
}


def _crash_spec():
    spec = os.environ.get("SHMQ_CRASH_AT", "")
    name, _, n = spec.partition(":")
    if name not in CRASH_POINTS:
        return None, 0
    try:
        return name, max(1, int(n or 1))
    except ValueError:
        return name, 1


_crash_name, _crash_left = _crash_spec()


def _crash(name):
    global _crash_left
    if _crash_name == name:
        _crash_left -= 1
        if _crash_left == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def _deadline(timeout):
    if timeout is None:
        return None
    ns = _options.timeout_ns(timeout)
    return None if ns is None else time.monotonic() + ns / 1e9


_KEY_CORR, _KEY_REPLY = H_CORR.encode(), H_REPLY_TO.encode()


def _envelope(block):
    """(correlation id, inbox path, the requester's headers) of a request's header block, or
    (None, None, None). untrusted: any sender may have written it; every length is checked."""
    try:
        ent, n = _codec._ENT, len(block)
        kl, t, vl = ent.unpack_from(block, 0)
        off = ent.size
        if t == _codec._STR and block[off:off + kl] == _KEY_CORR and off + kl + vl <= n:
            corr = block[off + kl:off + kl + vl].decode()
            off += kl + vl
            kl, t, vl = ent.unpack_from(block, off)
            off += ent.size
            if t == _codec._STR and block[off:off + kl] == _KEY_REPLY and off + kl + vl <= n:
                inbox = block[off + kl:off + kl + vl].decode()
                rest = block[off + kl + vl:]
                return corr, inbox, (_codec.decode_headers(rest) if rest else {})
        h = _codec.decode_headers(block)     # not in a Requester's order: the general way
    except Exception:
        return None, None, None
    return _split(h)


def _split(h):
    """(correlation id, inbox, the requester's headers) of decoded headers, or (None, None, None)."""
    corr, inbox = h.get(H_CORR), h.get(H_REPLY_TO)
    if not isinstance(corr, str) or not isinstance(inbox, str):
        return None, None, None
    return corr, inbox, {k: v for k, v in h.items() if k not in _RESERVED}


def _inbox_pid(path):
    """The creator pid an inbox path names, or None unless it is an anonymous queue's file."""
    d, f = os.path.split(path)
    m = _sweep.ANON_RE.match(f[len(_names.PREFIX):]) if d == _names.SHM_DIR and f.startswith(_names.PREFIX) else None
    return int(m.group(1)) if m else None


def _check_headers(headers):
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ArgumentTypeError(f"headers must be a dict of str to str/bytes, not {type(headers).__name__}")
    for k in _RESERVED:
        if k in headers:
            raise ArgumentError(f"header {k!r} is set by shmq.rpc; choose another name")
    return headers


# --------------------------------------------------------------------------- responder


class Request:
    """One request taken by a Responder: answer it with exactly one of reply() or fail().

    Attributes: ``body``, ``headers`` (the requester's, without shmq's), ``id`` (the request
    message's id), ``correlation_id``, ``delivery_count`` (> 1 only for reliable=True, after a
    responder died holding it)."""

    __slots__ = ("_srv", "_token", "_inbox", "body", "headers", "id", "correlation_id", "delivery_count", "_done")

    def __init__(self, srv, body, mid, count, token, corr, inbox, headers):
        self._srv, self._token, self._inbox = srv, token, inbox
        self.body, self.headers, self.id = body, headers, mid
        self.correlation_id, self.delivery_count = corr, count
        self._done = False

    def __repr__(self):
        return f"<shmq.Request {self.correlation_id} {'answered' if self._done else 'open'}>"

    def reply(self, obj, headers=None):
        """Send obj back to the requester (its request() returns it). Raises ValueError when
        this request was answered already."""
        self._answer(_OK, obj, _check_headers(headers))

    def fail(self, reason):
        """Answer with an error: the requester's request() raises RemoteError(reason)."""
        self._answer(_FAIL, str(reason), {})

    def _answer(self, status, payload, headers):
        if self._done:
            raise ArgumentError(f"request {self.correlation_id} was answered already (one reply per request)")
        self._done = True
        self._srv._answer(self, status, payload, headers)

    def __reduce__(self):
        raise ArgumentTypeError("a Request is one responder's delivery and cannot be pickled")


class Responder:
    """Serves the request queue `name`: ``for req in srv: req.reply(f(req.body))``.

    create=True creates the request queue if it does not exist (several responders may share
    it); queue_options are Queue options (capacity, mode, max_message, ...). reliable=True keeps
    requests on an at-least-once queue that hands a dead responder's request to another one
    (visibility_timeout and max_deliveries then apply); without it the request queue allows one
    delivery and a dead responder's requester gets ResponderDiedError.
    """

    def __new__(cls, name, *args, backend=None, **kwargs):
        # backend= (or $SHMQ_BACKEND): the request queue on Redis (shmq._redis.rpc, DESIGN §11)
        if cls is Responder and _pick_backend(backend) is not None:
            from ._redis.rpc import RedisResponder
            cls = RedisResponder
        return object.__new__(cls)

    def __init__(self, name, create=False, reliable=False, backend=None, **queue_options):
        _names.check_name(name)
        if "ack" in queue_options:
            raise ArgumentError("a request queue is always an at-least-once queue: do not pass ack=")
        if not reliable:
            for k in ("max_deliveries", "visibility_timeout"):
                if k in queue_options:
                    raise ArgumentError(f"{k} is an option of reliable=True responders")
        if create:
            opts = dict(queue_options)
            opts.setdefault("exist_ok", True)
            opts.setdefault("capacity", "8MiB")
            if not reliable:
                opts.update(max_deliveries=1, visibility_timeout=NON_RELIABLE_VISIBILITY)
            q = Queue(name, create=True, ack=True, backend="shm", **opts)
        else:
            if queue_options:
                raise ArgumentError("queue options need create=True")
            q = Queue(name, backend="shm")
        if not isinstance(q, ReliableQueue):
            q.close()
            raise ArgumentError(f"queue {name!r} is not a request queue (it was not created by a Responder)")
        self._q = q
        self.reliable = q._settings()["max_deliveries"] > 1
        if reliable and not self.reliable:
            q.close()
            raise ArgumentError(f"request queue {name!r} exists without reliable=True")
        q._core._set_consumer()      # a responder counts for requesters before its first receive
        self._inboxes = OrderedDict()
        self._lock = threading.Lock()
        self._pruned = time.monotonic()
        self.name = name

    def __repr__(self):
        return f"<shmq.Responder {self.name} {'closed' if self.closed else 'open'}>"

    @property
    def closed(self):
        return self._q.closed

    def receive(self, timeout=None):
        """The next Request. Raises Empty when none arrives in time, QueueClosedError."""
        dl = _deadline(timeout)
        while True:
            self._prune()
            left = None if dl is None else max(0.0, dl - time.monotonic())
            if self._inboxes and (left is None or left > _PID_CHECK_S):
                # wake once a second while inboxes are open, to let go of dead requesters' ones
                try:
                    rec = self._q._core._receive(True, _PID_CHECK_S)
                except Empty:
                    continue
            else:
                rec = self._q._core._receive(True, left)
            body, block, mid, _ts, count, _prio, token = rec[:7]
            req = self._request(body, block, mid, count, token)
            if req is not None:
                return req

    def _request(self, body, block, mid, count, token):
        """The Request of a received message, or None (and the message dead-lettered, reason
        "rejected") when it is not one."""
        return self._request_of(body, mid, count, token, *_envelope(block))

    def _request_of(self, body, mid, count, token, corr, inbox, user):
        if corr is None:
            self._q._core._nack(token, mid, False, 0)
            return None
        _crash("rpc_after_take")
        return Request(self, body, mid, count, token, corr, inbox, user)

    def __iter__(self):
        """Requests until this responder is closed."""
        while True:
            try:
                yield self.receive()
            except QueueClosedError:
                return

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive_async()
        except QueueClosedError:
            raise StopAsyncIteration from None

    async def receive_async(self, timeout=None):
        """receive() for asyncio: waits without blocking the loop."""
        dl = _deadline(timeout)
        while True:
            left = None if dl is None else max(0.0, dl - time.monotonic())
            self._prune()
            m = await self._q.receive_async(timeout=left)
            req = self._request_of(m.body, m.id, m.delivery_count, m._token, *_split(m.headers))
            if req is not None:
                return req

    def _inbox(self, path):
        """An open handle on a requester's inbox, or None when it is gone or its requester died."""
        now = time.monotonic()
        with self._lock:
            ent = self._inboxes.get(path)
            if ent is not None:
                self._inboxes.move_to_end(path)
                if now - ent[1] < _PID_CHECK_S:
                    return ent[0]
        pid = _inbox_pid(path)         # untrusted: a header anyone who can send may have written
        if pid is None:
            return None
        if not _sweep.pid_alive(pid):
            self._forget(path)
            return None
        if ent is not None:
            with self._lock:
                if path in self._inboxes:
                    self._inboxes[path] = (ent[0], now)
            return ent[0]
        try:
            h = _rebuild(Queue, None, path, None)
        except (ShmqError, OSError):
            return None
        if type(h) is not Queue or not (h._core._flags_value & _core.F_ANONYMOUS):
            h.close()
            return None
        with self._lock:
            old = self._inboxes.pop(path, None)
            self._inboxes[path] = (h, now)
            evict = []
            while len(self._inboxes) > _INBOX_CACHE:
                evict.append(self._inboxes.popitem(last=False)[1][0])
        for x in ([old[0]] if old else []) + evict:
            x.close()
        return h

    def _prune(self):
        """Close the inboxes of requesters that died (at most once a second): their files can
        then be swept (a handle we hold counts as a live user)."""
        now = time.monotonic()
        if now - self._pruned < _PID_CHECK_S:
            return
        self._pruned = now
        with self._lock:
            dead = [p for p in self._inboxes if not _sweep.pid_alive(_inbox_pid(p))]
        for p in dead:
            self._forget(p)

    def _forget(self, path):
        with self._lock:
            ent = self._inboxes.pop(path, None)
        if ent:
            ent[0].close()

    def _answer(self, req, status, payload, headers):
        inbox = self._inbox(req._inbox)
        if inbox is not None:
            try:
                inbox.put((req.correlation_id, status, payload, headers or None), timeout=5)
            except (QueueClosedError, QueueNotFound):
                self._forget(req._inbox)
            _crash("rpc_after_reply")
        self._q._core._ack(req._token, req.id)

    def stats(self):
        """The request queue's stats() (depth: requests waiting, in_flight: being answered)."""
        s = self._q.stats()
        s["kind_name"] = "responder"
        return s

    def close(self):
        """Close this responder (requests it holds unanswered go back: see reliable)."""
        with self._lock:
            inboxes = [e[0] for e in self._inboxes.values()]
            self._inboxes.clear()
        for h in inboxes:
            h.close()
        self._q.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- requester


class _Future(concurrent.futures.Future):
    """A Future whose result() reads the replies in the waiting thread itself (no hop through
    the dispatcher thread, which completes the futures nobody waits on: callbacks, asyncio)."""

    def __init__(self, requester):
        super().__init__()
        self._req = requester
        self._p = None
        self._eager = False      # someone is called back when it is done: read for it at once

    def add_done_callback(self, fn):
        self._eager = True
        super().add_done_callback(fn)
        self._req._dispatch_ev.set()

    def result(self, timeout=None):
        req, p = self._req, self._p
        until = None if timeout is None else time.monotonic() + timeout
        if p is not None and not self.done() and not req._closed and os.getpid() == req._pid:
            p.waiter = True
            try:
                req._drive(p, until)
            finally:
                p.waiter = False
        left = None if until is None else max(0.0, until - time.monotonic())
        return super().result(timeout=left)


class _Pending:
    __slots__ = ("corr", "mid", "token", "deadline", "event", "future", "result", "look_at", "waiter", "sent")

    def __init__(self, corr, deadline, future=None):
        self.corr, self.deadline, self.future = corr, deadline, future
        self.mid = self.token = self.result = None
        self.event = None        # made only for a thread that waits without reading the inbox
        self.sent = time.monotonic()
        self.look_at = self.sent + SLICE
        self.waiter = future is None       # a thread in request(), not a Future


class Requester:
    """Sends requests to the Responders of the request queue `name` and waits for replies.

    ``request(obj, timeout)`` returns the reply's body; ``submit(obj, timeout)`` returns a
    concurrent.futures.Future (thousands may be in flight, from many threads); ``await
    request_async(obj, timeout)`` for asyncio. Raises (each a ShmqError): NoRespondersError,
    ResponderDiedError, RequestTimeout (a TimeoutError), RemoteError; QueueNotFound when no
    responder ever created the queue.
    """

    def __new__(cls, name, *args, backend=None, **kwargs):
        if cls is Requester and _pick_backend(backend) is not None:
            from ._redis.rpc import RedisRequester
            cls = RedisRequester
        return object.__new__(cls)

    def __init__(self, name, backend=None):
        _names.check_name(name)
        try:
            q = Queue(name, backend="shm")
        except QueueNotFound:
            raise QueueNotFound(2, f"no request queue {name!r}: no Responder({name!r}, create=True) has run",
                                _names.path_of(name)) from None
        if not isinstance(q, ReliableQueue):
            q.close()
            raise ArgumentError(f"queue {name!r} is not a request queue (it was not created by a Responder)")
        self._q = q
        self.reliable = q._settings()["max_deliveries"] > 1
        self._inbox = Queue()
        self._path = self._inbox.path
        # every request's header block: its correlation id, then this constant tail (encoded once)
        self._hdr_tail = _codec.encode_headers({H_REPLY_TO: self._path})
        self._corr_key = H_CORR.encode()
        self._ids = itertools.count(1)
        self._pending = {}
        self._mu = threading.Lock()        # _pending and the counters
        self._reader = threading.Lock()    # one reader of the inbox at a time
        self._dispatcher = None
        self._dispatch_ev = threading.Event()
        self._dispatch_wake = 0.0          # when the sleeping dispatcher wakes by itself (0: awake)
        self._closed = False
        self._pid = os.getpid()
        self.name = name
        self._counts = dict(sent=0, replied=0, remote_errors=0, timeouts=0, responder_died=0,
                            no_responders=0, late_replies=0, cancelled=0)

    def __repr__(self):
        return f"<shmq.Requester {self.name} {'closed' if self._closed else 'open'}>"

    # -- sending ----------------------------------------------------------------------
    def _send(self, obj, timeout, headers, future=None):
        if self._closed:
            raise QueueClosedError(f"requester of {self.name!r} is closed")
        if os.getpid() != self._pid:
            # its inbox, pending table and reader thread are its creator's
            raise ArgumentError(f"a Requester belongs to the process that made it (pid {self._pid}): "
                                f"create shmq.Requester({self.name!r}) in this process")
        user = _codec.encode_headers(_check_headers(headers)) if headers else b""
        dl = _deadline(timeout)
        if self._q._core._consumers(False) == 0:     # no system call: ~0.1 us for a few slots
            self._count("no_responders")
            raise NoRespondersError(f"no responder is attached to request queue {self.name!r}")
        p = _Pending(str(next(self._ids)), dl, future)
        cb = p.corr.encode()
        block = _codec._ENT.pack(len(self._corr_key), _codec._STR, len(cb)) + self._corr_key + cb + self._hdr_tail + user
        if len(block) > _core.HDR_MAX:
            raise ArgumentError(f"headers take {len(user)} bytes encoded and a request adds {len(block) - len(user)} "
                                f"of its own (correlation id, reply inbox); at most {_core.HDR_MAX} fit")
        with self._mu:
            self._pending[p.corr] = p        # before the send: a reply can come back at once
            self._counts["sent"] += 1
        try:
            left = None if dl is None else max(0.0, dl - time.monotonic())
            p.mid = self._q._core._send(obj, block, 0, _core.USE_DEFAULT, _core.USE_DEFAULT, None, True, left)[0]
        except BaseException:
            with self._mu:
                self._pending.pop(p.corr, None)
                self._counts["sent"] -= 1
            raise
        _crash("rpc_after_send")
        return p

    def request(self, obj, timeout=None, headers=None):
        """Send obj to a responder and return its reply's body. Raises NoRespondersError at once
        (or when the last responder leaves meanwhile), ResponderDiedError, RequestTimeout,
        RemoteError, ValueError/TypeError for bad arguments, QueueClosedError."""
        p = self._send(obj, timeout, headers)
        self._drive(p, None)
        return self._outcome(p)

    def _drive(self, p, until):
        """Wait in this thread for p's outcome, reading the inbox whenever no other thread does,
        and looking after the request; returns when p has its result (or at `until`, monotonic)."""
        while p.result is None:
            now = time.monotonic()
            if until is not None and now >= until:
                return
            if p.deadline is not None and now >= p.deadline:
                self._give_up(p, "timeout")
                continue
            slice_end = p.look_at
            if p.deadline is not None and p.deadline < slice_end:
                slice_end = p.deadline
            if until is not None and until < slice_end:
                slice_end = until
            wait = max(0.0, slice_end - now)
            if self._reader.acquire(blocking=False):
                try:
                    if p.result is None:      # (the last reader may have dispatched it)
                        self._read(wait)
                finally:
                    self._reader.release()
                    self._kick()
            else:
                ev = p.event
                if ev is None:
                    # first wait: make the event, then try the reader lock once more (a reader
                    # leaving meanwhile could not wake us: _kick skips waiters without one)
                    p.event = threading.Event()
                    continue
                if p.result is None:          # (_finish sets result before it looks at event)
                    ev.wait(wait)
                ev.clear()
            if p.result is None and time.monotonic() >= p.look_at:
                self._look_after(p)

    def submit(self, obj, timeout=None, headers=None):
        """Send obj; returns a concurrent.futures.Future of the reply's body (its exception: as
        request() raises). Cancelling the future removes the request if no responder took it."""
        f = _Future(self)
        p = self._send(obj, timeout, headers, future=f)
        f._p = p
        # (ours: not a reason to read eagerly)
        concurrent.futures.Future.add_done_callback(f, lambda fut, p=p: fut.cancelled() and self._give_up(p, "cancelled"))
        self._ensure_dispatcher()
        if self._dispatch_wake > p.sent + LAZY:
            self._dispatch_ev.set()         # it sleeps past this one's LAZY: let it recompute
        return f

    async def request_async(self, obj, timeout=None, headers=None):
        """request() for asyncio (the replies are read by one thread per requester, not one per
        waiting coroutine). A cancelled request_async removes the request if no responder took
        it, and a reply that comes later is dropped and counted."""
        return await asyncio.wrap_future(self.submit(obj, timeout, headers))

    # -- replies ----------------------------------------------------------------------
    def _read(self, wait, most=256):
        """As the inbox's reader: dispatch the replies that arrive within wait seconds (the
        first, then up to `most` more that are there; most=None: until the inbox is empty)."""
        try:
            item = self._inbox.get(timeout=wait)
        except Empty:
            return
        except QueueClosedError:
            return
        self._dispatch(item)
        n = 0
        while most is None or n < most:
            try:
                item = self._inbox.get_nowait()
            except (Empty, QueueClosedError):
                return
            self._dispatch(item)
            n += 1

    def _dispatch(self, item):
        if not (isinstance(item, tuple) and len(item) == 4 and isinstance(item[0], str)):
            return                              # untrusted: not a reply of a responder
        corr, status, payload, _hdr = item
        with self._mu:
            p = self._pending.pop(corr, None)
            if p is None:
                self._counts["late_replies"] += 1
                core = getattr(self._inbox, "_core", None)   # None: an inbox on the Redis backend
                if core is not None:
                    try:
                        core._hist_count_late()  # shared memory too: metrics.render() sees it
                    except ShmqError:
                        pass
                return
            self._counts["replied" if status == _OK else "remote_errors"] += 1
        self._finish(p, (status, payload))

    def _finish(self, p, result):
        p.result = result
        if p.future is not None:
            if p.future.set_running_or_notify_cancel():
                try:
                    p.future.set_result(self._outcome(p))
                except BaseException as e:
                    p.future.set_exception(e)
        ev = p.event
        if ev is not None:
            ev.set()

    @staticmethod
    def _outcome(p):
        status, payload = p.result
        if status == _OK:
            return payload
        if status == _FAIL:
            raise RemoteError(payload)
        raise payload

    def _kick(self):
        """After a reader leaves: wake one thread still waiting in request(), to read next."""
        if not self._pending:
            return
        with self._mu:
            for q in self._pending.values():
                if q.waiter and q.result is None and q.event is not None:
                    q.event.set()
                    return

    # -- looking after a request ----------------------------------------------------------
    def _fail(self, p, exc, counter):
        with self._mu:
            if self._pending.pop(p.corr, None) is None:
                return                      # answered meanwhile
            self._counts[counter] += 1
        self._finish(p, (None, exc))

    def _give_up(self, p, why):
        """Timeout or cancellation: remove the request if no responder took it yet."""
        if p.result is not None:
            return
        if p.mid is not None:
            self._remove_if_waiting(p)
        if why == "timeout":
            self._fail(p, RequestTimeout(f"no reply from {self.name!r} within the timeout"), "timeouts")
        else:
            with self._mu:
                if self._pending.pop(p.corr, None) is not None:
                    self._counts["cancelled"] += 1

    def _remove_if_waiting(self, p):
        core = self._q._core
        try:
            if p.token is None:
                p.token = core._find(p.mid)
            if p.token is not None:
                st, alive, _n = core._probe(p.token, p.mid)
                if st in (_core.PROBE_INFLIGHT, _core.PROBE_BUSY) and not alive:
                    self._q._repair()              # a dead responder's: back to READY first
                    st, alive, _n = core._probe(p.token, p.mid)
                if st in (_core.PROBE_READY, _core.PROBE_DELAYED):
                    # taken by nobody: it leaves nothing behind. A fresh token: each delivery
                    # stamps a new generation, and settling needs the current one
                    tok = core._find(p.mid)
                    if tok is not None:
                        core._ack(tok, p.mid)
        except ShmqError:
            pass

    def _look_after(self, p):
        """Every SLICE while a request waits: is it still on its way to an answer?"""
        p.look_at = time.monotonic() + SLICE
        core = self._q._core
        if p.mid is None or p.result is not None:
            return
        if p.token is None:
            p.token = core._find(p.mid)
        state = _core.PROBE_GONE
        if p.token is not None:
            state, alive, _count = core._probe(p.token, p.mid)
            if state in (_core.PROBE_INFLIGHT, _core.PROBE_BUSY) and not alive:
                _crash("rpc_mid_look")
                self._q._repair()           # the dead responder's request: dead-lettered or requeued
                state, alive, _count = core._probe(p.token, p.mid)
        if state == _core.PROBE_GONE:
            # Settled without our reply? A responder puts the reply before it acks, so under the
            # reader lock everything it put is dispatched or still in the inbox: all of it is read
            # (with thousands in flight ours may be behind hundreds of others).
            with self._reader:
                self._read(0, most=None)
            if p.result is None:
                self._fail(p, ResponderDiedError(
                    f"the responder of {self.name!r} that took request {p.corr} died before replying"),
                    "responder_died")
        elif state == _core.PROBE_READY and not self.reliable and core._consumers(True) == 0:
            # (reliable: the request stays queued for a responder that comes back, until the timeout)
            self._remove_if_waiting(p)
            self._fail(p, NoRespondersError(f"every responder of {self.name!r} left before taking the request"),
                       "no_responders")

    # -- the reader thread of submit() ------------------------------------------------
    def _ensure_dispatcher(self):
        with self._mu:
            if self._dispatcher is not None and self._dispatcher.is_alive():
                return
            t = threading.Thread(target=self._dispatch_loop, name=f"shmq-rpc-{self.name}", daemon=True)
            self._dispatcher = t
        t.start()

    def _dispatch_loop(self):
        """The reader for futures nobody waits on in result(): at once for those with callbacks
        (asyncio's request_async, add_done_callback), after LAZY for the others (wait(),
        as_completed, timeouts), so that a thread waiting in result() reads its own replies
        without a hop through this thread."""
        while not self._closed:
            with self._mu:
                futures = [p for p in self._pending.values() if p.future is not None]
                if not futures:
                    self._dispatcher = None
                    return
            now = time.monotonic()
            idle = [p for p in futures if not p.waiter and p.result is None]
            urgent = [p for p in idle if p.future._eager or now - p.sent >= LAZY]
            if urgent:
                nxt = min(min(p.look_at for p in urgent),
                          min((p.deadline for p in urgent if p.deadline is not None), default=now + SLICE))
                if self._reader.acquire(timeout=SLICE):
                    try:
                        self._read(max(0.0, min(nxt - now, SLICE)))
                    finally:
                        self._reader.release()
                        self._kick()
            else:
                due = min([p.sent + LAZY for p in idle] + [p.look_at for p in idle]
                          + [p.deadline for p in idle if p.deadline is not None] + [now + SLICE])
                self._dispatch_wake = due
                self._dispatch_ev.wait(max(0.0, due - now))
                self._dispatch_ev.clear()
                self._dispatch_wake = 0.0
            now = time.monotonic()
            for p in futures:
                if p.result is not None or p.waiter:
                    continue                  # a thread in result() looks after its own
                if p.deadline is not None and now >= p.deadline:
                    self._give_up(p, "timeout")
                elif now >= p.look_at:
                    try:
                        self._look_after(p)
                    except QueueClosedError:
                        return

    # -- lifecycle --------------------------------------------------------------------
    def stats(self):
        """The request queue's stats() plus this requester's counters: sent, replied,
        remote_errors, timeouts, responder_died, no_responders, late_replies (replies that came
        after their request timed out or was cancelled: dropped), cancelled, pending."""
        s = self._q.stats()
        with self._mu:
            s.update(self._counts)
            s["pending"] = len(self._pending)
        s["kind_name"] = "requester"
        return s

    def _count(self, k):
        with self._mu:
            self._counts[k] += 1

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Close: waiting requests raise QueueClosedError; the inbox is removed."""
        if self._closed:
            return
        self._closed = True
        with self._mu:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            self._finish(p, (None, QueueClosedError(f"requester of {self.name!r} was closed")))
        self._dispatch_ev.set()
        t = self._dispatcher
        if t is not None and t is not threading.current_thread():
            t.join(2 * SLICE + 1)
        self._inbox.close()
        self._q.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
