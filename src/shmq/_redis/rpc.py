"""Request-reply on Redis: the request queue is a Redis at-least-once queue; each Requester owns
a reply list (BLPOP) under the queue's prefix; a responder pushes the reply and acks the
request in one script. Liveness (NoRespondersError, ResponderDiedError) is a client name in
CLIENT LIST: responders register theirs in the queue's ``responders`` set."""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict

from .. import _codec, _core, _names
from .. import rpc as _rpc
from ..errors import (ArgumentError, Empty, NoRespondersError, QueueClosedError, QueueNotFound, ResponderDiedError)
from ..queue import Queue
from . import pick
from .queue import RedisReliableQueue, _io, _s

__all__ = ["RedisResponder", "RedisRequester"]

_LIVE_CACHE_S = 0.05         # how long a requester trusts its count of live responders
_REPLY_TTL_MS = 300_000      # a reply list nobody reads (its requester died) expires after this


def _live_names(r):
    return {c.get("name") for c in r.client_list()}


class RedisResponder(_rpc.Responder):
    """A Responder whose request queue is on Redis (backend= or $SHMQ_BACKEND)."""

    def __init__(self, name, create=False, reliable=False, backend=None, **queue_options):
        _names.check_name(name)
        url = pick(backend)
        if "ack" in queue_options:
            raise ArgumentError("a request queue is always an at-least-once queue: do not pass ack=")
        if not reliable:
            for k in ("max_deliveries", "visibility_timeout"):
                if k in queue_options:
                    raise ArgumentError(f"{k} is an option of reliable=True responders")
        if create:
            opts = dict(queue_options)
            opts.setdefault("exist_ok", True)
            if not reliable:
                opts.update(max_deliveries=1, visibility_timeout=_rpc.NON_RELIABLE_VISIBILITY)
            q = Queue(name, create=True, ack=True, backend=url, **opts)
        else:
            if queue_options:
                raise ArgumentError("queue options need create=True")
            q = Queue(name, backend=url)
        if not isinstance(q, RedisReliableQueue):
            q.close()
            raise ArgumentError(f"queue {name!r} is not a request queue (it was not created by a Responder)")
        self._q = q
        self.reliable = q._settings()["max_deliveries"] > 1
        if reliable and not self.reliable:
            q.close()
            raise ArgumentError(f"request queue {name!r} exists without reliable=True")
        with _io(q):
            q._r.sadd(q._p + "responders", q._consumer)
        self._inboxes = OrderedDict()
        self._lock = threading.Lock()
        self._pruned = time.monotonic()
        self._stash = []
        self.name = name

    def receive(self, timeout=None):
        """The next Request. Raises Empty when none arrives in time, QueueClosedError."""
        if self._stash:
            return self._stash.pop(0)
        dl = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while True:
            left = None if dl is None else max(0.0, dl - time.monotonic())
            body, block, mid, _ts, count, _prio, token = self._q._take(1, True, left)[0][:7]
            req = self._request(body, block, mid, count, token)
            if req is not None:
                return req

    async def receive_async(self, timeout=None):
        """receive() for asyncio: waits in the default executor in short slices; a request a
        cancelled call had taken is returned by the next receive (none is lost)."""
        return await self._async_receive(timeout)

    async def _async_receive(self, timeout):
        import asyncio
        loop = asyncio.get_running_loop()
        dl = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while True:
            left = None if dl is None else max(0.0, dl - time.monotonic())
            piece = 0.2 if left is None else min(left, 0.2)
            fut = loop.run_in_executor(None, self.receive, piece)
            try:
                return await asyncio.shield(fut)
            except Empty:
                if left is not None and left <= 0.2:
                    raise
            except asyncio.CancelledError:
                fut.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                      or self._stash.append(f.result()))
                raise

    def _request_of(self, body, mid, count, token, corr, inbox, user):
        if corr is None or not inbox.startswith(self._q._p + "r:"):
            self._q._nack(token, mid, False, 0)     # not a request of a Requester: dead-lettered
            return None
        _rpc._crash("rpc_after_take")
        return _rpc.Request(self, body, mid, count, token, corr, inbox, user)

    def _answer(self, req, status, payload, headers):
        kind, parts = _codec.encode((req.correlation_id, status, payload, headers or None), False)
        item = bytes([kind]) + b"".join(parts)
        self._q._settle("reply", req._inbox, [req._token], extra=(item, _REPLY_TTL_MS))

    def stats(self):
        s = self._q.stats()
        s["kind_name"] = "responder"
        return s

    def close(self):
        if self._q.closed:
            return
        try:
            with _io(self._q):
                self._q._r.srem(self._q._p + "responders", self._q._consumer)
        except Exception:
            pass          # the server is gone: our name leaves CLIENT LIST anyway
        self._q.close()


class _Inbox:
    """A requester's reply list, read with BLPOP (get/get_nowait/close as a Queue's)."""

    def __init__(self, q, key):
        self._q, self._key, self.path = q, key, key
        self._closed = False

    def get(self, block=True, timeout=None):
        if self._closed:
            raise QueueClosedError("requester closed")
        with _io(self._q):
            if not block or (timeout is not None and timeout <= 0):
                item = self._q._r.lpop(self._key)
            else:
                got = self._q._r.blpop([self._key], timeout=max(0.001, min(1.0, timeout)) if timeout else 1.0)
                item = got[1] if got else None
        if item is None:
            raise Empty()
        return _codec.decode(item[0], memoryview(item)[1:], False, 0)

    def get_nowait(self):
        return self.get(False)

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            with _io(self._q):
                self._q._r.delete(self._key)
        except Exception:
            pass


class RedisRequester(_rpc.Requester):
    """A Requester whose request queue is on Redis (backend= or $SHMQ_BACKEND)."""

    def __init__(self, name, backend=None):
        _names.check_name(name)
        url = pick(backend)
        try:
            q = Queue(name, backend=url)
        except QueueNotFound:
            raise QueueNotFound(2, f"no request queue {name!r} on {url}: no Responder({name!r}, create=True) "
                                "has run") from None
        if not isinstance(q, RedisReliableQueue):
            q.close()
            raise ArgumentError(f"queue {name!r} is not a request queue (it was not created by a Responder)")
        self._q = q
        self.reliable = q._settings()["max_deliveries"] > 1
        self._inbox = _Inbox(q, q._p + "r:" + q._consumer)
        self._path = self._inbox.path
        self._ids = itertools.count(1)
        self._pending = {}
        self._mu = threading.Lock()
        self._reader = threading.Lock()
        self._dispatcher = None
        self._dispatch_ev = threading.Event()
        self._dispatch_wake = 0.0
        self._closed = False
        self._pid = os.getpid()
        self.name = name
        self._counts = dict(sent=0, replied=0, remote_errors=0, timeouts=0, responder_died=0,
                            no_responders=0, late_replies=0, cancelled=0)
        self._live = (0.0, 0)
        self._sids = {}

    def _responders(self, fresh=False):
        """How many registered responders have a connection (cached for _LIVE_CACHE_S)."""
        at, n = self._live
        if not fresh and time.monotonic() - at < _LIVE_CACHE_S:
            return n
        q = self._q
        with _io(q):
            names = {_s(x) for x in q._r.smembers(q._p + "responders")}
            live = _live_names(q._r)
        n = len(names & live)
        self._live = (time.monotonic(), n)
        return n

    def _send(self, obj, timeout, headers, future=None):
        if self._closed:
            raise QueueClosedError(f"requester of {self.name!r} is closed")
        if os.getpid() != self._pid:
            raise ArgumentError(f"a Requester belongs to the process that made it (pid {self._pid}): "
                                f"create shmq.Requester({self.name!r}) in this process")
        user = _rpc._check_headers(headers)
        dl = _rpc._deadline(timeout)
        if self._responders() == 0:
            self._count("no_responders")
            raise NoRespondersError(f"no responder is attached to request queue {self.name!r}")
        p = _rpc._Pending(str(next(self._ids)), dl, future)
        env = {_rpc.H_CORR: p.corr, _rpc.H_REPLY_TO: self._path}
        hdr = {**env, **user}
        if user:
            ulen, elen = len(_codec.encode_headers(user)), len(_codec.encode_headers(env))
            if ulen + elen > _core.HDR_MAX:
                raise ArgumentError(f"headers take {ulen} bytes encoded and a request adds {elen} of its own "
                                    f"(correlation id, reply list); at most {_core.HDR_MAX} fit")
        with self._mu:
            self._pending[p.corr] = p
            self._counts["sent"] += 1
        try:
            left = None if dl is None else max(0.0, dl - time.monotonic())
            p.mid, p.token = self._q._send_raw(self._q._send_args(obj, hdr, None, None, None, None), True, left)
        except BaseException:
            with self._mu:
                self._pending.pop(p.corr, None)
                self._counts["sent"] -= 1
            raise
        _rpc._crash("rpc_after_send")
        return p

    def _state(self, p):
        """("taken", consumer) / ("waiting", None) / ("gone", None) for p's request."""
        q = self._q
        with _io(q):
            pe = q._r.xpending_range(q._stream, "g", min=p.token, max=p.token, count=1)
            if pe:
                return "taken", _s(pe[0]["consumer"])
            if q._r.xrange(q._stream, min=p.token, max=p.token):
                return "waiting", None
        return "gone", None

    def _remove_if_waiting(self, p):
        """A request nobody took is removed; one held by a responder that died too (reliable)."""
        if not p.token:
            return
        try:
            state, who = self._state(p)
            if state == "waiting":
                self._q._settle("withdraw", 0, [(p.token, 0)])
            elif state == "taken" and who not in _live_names(self._q._r):
                self._q._settle("drop", 0, [(p.token, 0)])
        except Exception:
            pass

    def _look_after(self, p):
        p.look_at = time.monotonic() + _rpc.SLICE
        if p.mid is None or p.result is not None:
            return
        state, who = self._state(p)
        if state == "taken":
            if who in _live_names(self._q._r):
                return
            _rpc._crash("rpc_mid_look")
            if self.reliable:
                self._q._scripts["reap"](keys=[self._q._p], args=[who])   # another responder takes it
                return
            self._q._scripts["reap"](keys=[self._q._p], args=[who])       # max_deliveries=1: dead-lettered
            state = "gone"
        if state == "gone":
            with self._reader:
                self._read(0, most=None)
            if p.result is None:
                self._fail(p, ResponderDiedError(
                    f"the responder of {self.name!r} that took request {p.corr} died before replying"),
                    "responder_died")
        elif state == "waiting" and not self.reliable and self._responders(fresh=True) == 0:
            self._remove_if_waiting(p)
            self._fail(p, NoRespondersError(f"every responder of {self.name!r} left before taking the request"),
                       "no_responders")

    def _dispatch(self, item):
        # A reply read after its request's deadline is late, however the wait went (a BLPOP
        # that returned it after the deadline passed): the request times out, the reply is
        # dropped and counted.
        if isinstance(item, tuple) and len(item) == 4 and isinstance(item[0], str):
            p = self._pending.get(item[0])
            if p is not None and p.deadline is not None and time.monotonic() >= p.deadline:
                self._fail(p, _rpc.RequestTimeout(f"no reply from {self.name!r} within the timeout"), "timeouts")
        super()._dispatch(item)

    async def request_async(self, obj, timeout=None, headers=None):
        return await super().request_async(obj, timeout, headers)
