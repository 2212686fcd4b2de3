"""asyncio calls of the queues: coroutines take and put for themselves; a waiter thread sleeps for them."""
import asyncio
import collections
import threading
import time

from . import _core, _options
from .errors import Empty, Full, QueueClosedError

# How waiting works (docs/guide/asyncio.md). A coroutine first tries the non-blocking call; when
# that fails it waits on a future of the event loop. Per (handle, event loop, direction: get or
# put) one _Watcher counts as a sleeper of the queue's wait queue in the core (shmq_watch_begin)
# for as long as coroutines of that loop wait, and its one thread sleeps in the core (futex, GIL
# released) while nobody can progress. A round, always in the loop's thread: read the token
# (shmq_watch_token), wake some waiting futures (each coroutine then tries for itself, in its own
# context), and when every woken one failed hand that token to the thread, whose sleep returns at
# once if anything changed since. So a message is only ever taken by a coroutine that is running:
# a coroutine cancelled before it ran took nothing, and its wake-up passes on to the next waiter.

GET = 0
PUT = 1
_WOKEN = "woken"
_TIMED_OUT = "timed out"
_THREAD_IDLE_S = 5.0   # a waiter thread with nothing to sleep for exits after this long


class _Watcher:
    """The waiting coroutines of one event loop on one handle in one direction."""

    def __init__(self, handle, loop, direction):
        self.core = handle._core             # not the handle: a dropped handle is still collected (and closed)
        self.loop = loop
        self.dir = direction
        self.waiting = collections.deque()   # futures of waiting coroutines, not yet woken
        self.in_flight = 0                   # woken coroutines that have not reported back
        self.progress = False                # one of them took/put (or was cancelled): look again
        self.token = 0                       # the current round's token
        self.registered = False              # counted as a sleeper in the core
        self.round_pending = False
        self.cv = threading.Condition()
        self.handoff = None                  # a token for the thread to sleep on
        self.thread = None

    # -- the loop's side ----------------------------------------------------------------
    def begin(self):
        """Nobody waits yet: register and read the token; the caller looks once more, then
        waits (add(fut, sleep=True)) or leaves (idle())."""
        self.core._watch_begin(self.dir)
        self.registered = True
        try:
            self.token = self.core._watch_token(self.dir)
        except BaseException:
            self._end()
            raise

    def idle(self):
        if not self.waiting and not self.in_flight and self.registered:
            self._end()

    def add(self, fut, front, sleep=False):
        if front:
            self.waiting.appendleft(fut)
        else:
            self.waiting.append(fut)
        if not self.registered:
            try:
                self.core._watch_begin(self.dir)
            except BaseException:
                self.waiting.remove(fut)
                raise
            self.registered = True
            self._schedule_round()
        elif sleep and not self.in_flight and not self.round_pending:
            self._sleep()                     # begin's token, read before the caller's last look

    def back(self, progress):
        """A woken coroutine has tried (progress: it took/put, failed hard, or was cancelled)."""
        self.in_flight -= 1
        if progress:
            self.progress = True
        if self.in_flight == 0:
            if self.progress:
                self._schedule_round()
            else:
                self._sleep()

    def _schedule_round(self):
        if not self.round_pending:
            self.round_pending = True
            self.loop.call_soon(self._round)

    def _round(self, _closed=None):
        self.round_pending = False
        self.progress = False
        if self.in_flight:
            return                            # the woken ones report back first
        while self.waiting and self.waiting[0].done():
            self.waiting.popleft()            # cancelled or timed out while waiting
        if not self.waiting:
            self._end()
            return
        try:
            if _closed is not None:
                raise _closed
            self.token = self.core._watch_token(self.dir)
            n = len(self.waiting)
            if self.dir == GET:
                # as many as there are messages, and at least one: a kind's timer (a delayed
                # message come due) shows only to a take, and a take is what looks at it
                n = max(1, min(n, self.core.qsize()))
        except BaseException:
            # closed (or worse): everyone tries once more and meets the error in its own call
            n = len(self.waiting)
            self.token = None
        while n and self.waiting:
            fut = self.waiting.popleft()
            if fut.done():
                continue
            fut.set_result(_WOKEN)
            self.in_flight += 1
            n -= 1
        if not self.in_flight:
            self._sleep() if self.waiting else self._end()

    def _sleep(self):
        """Every woken coroutine failed: the thread sleeps on the round's token."""
        if self.token is None or not self.waiting:
            self._schedule_round()
            return
        with self.cv:
            self.handoff = self.token
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="shmq-aio-waiter", daemon=True)
                self.thread.start()
            else:
                self.cv.notify()

    def _end(self):
        if self.registered:
            self.registered = False
            self.core._watch_end(self.dir)

    def _kicked(self, closed):
        self._round(closed)

    # -- the thread's side ---------------------------------------------------------------
    def _run(self):
        while True:
            with self.cv:
                if self.handoff is None:
                    # idle: wait for a handoff, looking every 50 ms whether the loop was closed
                    # meanwhile (a kick queued just before loop.close() never runs: then nobody
                    # would end the registration, and every put would pay for a wake-up)
                    end = time.monotonic() + _THREAD_IDLE_S
                    while self.handoff is None and time.monotonic() < end and not self.loop.is_closed():
                        self.cv.wait(0.05)
                if self.handoff is None:
                    self.thread = None
                    if self.loop.is_closed():
                        self.waiting.clear()
                        self._end()      # nothing of that loop runs now: safe from this thread
                    return
                token, self.handoff = self.handoff, None
            closed = None
            try:
                self.core._watch_sleep(self.dir, token, 0)
            except BaseException as e:   # QueueClosedError: the loop's round turns it into each call's error
                closed = e
            try:
                self.loop.call_soon_threadsafe(self._kicked, closed)
            except RuntimeError:         # the loop is closed: nobody waits any more
                with self.cv:
                    self.thread = None
                self.waiting.clear()
                self._end()              # nothing of that loop runs now: safe from this thread
                return


def _watcher(handle, loop, direction):
    ws = handle.__dict__.get("_aio_watchers")
    if ws is None:
        ws = handle.__dict__["_aio_watchers"] = {}
    key = (loop, direction)
    w = ws.get(key)
    if w is None or w.core is not handle._core:
        w = ws[key] = _Watcher(handle, loop, direction)
        for k in [k for k in ws if k[0].is_closed()]:
            del ws[k]                     # loops that are gone
    return w


def _expire(fut):
    if not fut.done():
        fut.set_result(_TIMED_OUT)


async def _wait(handle, direction, attempt, timeout, nothing):
    """attempt() until it returns; nothing (Empty or Full) means "not now"; the timeout as the
    blocking calls have it (None: forever; negative: ValueError)."""
    ns = None if timeout is None else _options.timeout_ns(timeout)
    try:
        return attempt()
    except nothing:
        if ns == 0:
            raise
    loop = asyncio.get_running_loop()
    deadline = None if ns is None else loop.time() + ns / 1e9
    w = _watcher(handle, loop, direction)
    first = False
    if not w.registered:
        # the lost-wake-up rule (csrc/wait.h): register, read the token, look again, then sleep
        w.begin()
        try:
            result = attempt()
        except nothing:
            first = True
        except BaseException:
            w.idle()
            raise
        else:
            w.idle()
            return result
    front = False
    report = None          # a failed woken try reports back once its new future is queued
    while True:
        fut = loop.create_future()
        try:
            w.add(fut, front, first)
            first = False
        finally:
            if report is not None:
                w.back(False)
                report = None
        timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
        try:
            why = await fut
        except asyncio.CancelledError:
            # Cancelled while waiting, or after a wake but before it ran: nothing was taken.
            # A wake-up it did not use goes on to the next waiter (back(progress=True)).
            if fut.done() and not fut.cancelled() and fut.result() is _WOKEN:
                w.back(True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if why is _TIMED_OUT:
            return attempt()      # one last look, then Empty/Full as the blocking call raises
        try:
            result = attempt()
        except nothing:
            if deadline is not None and loop.time() >= deadline:
                w.back(False)
                raise
            front = True          # keep its place: it was at the head of the line
            report = True
            continue
        except BaseException:
            w.back(True)
            raise
        w.back(True)
        return result


class AsyncQueueOps:
    """The asyncio calls of shmq.Queue (also SimpleQueue, JoinableQueue and ReliableQueue)."""

    async def get_async(self, timeout=None, *, copy=True):
        """Remove and return an item, waiting without blocking the event loop. Raises Empty
        after timeout seconds, QueueClosedError, ValueError for a negative timeout. A
        cancelled get_async takes nothing. copy=False: as get(copy=False)."""
        if copy is not True and not copy:
            return await _wait(self, GET, lambda: self.get(False, None, False), timeout, Empty)
        return await _wait(self, GET, self.get_nowait, timeout, Empty)

    async def put_async(self, obj, timeout=None):
        """Put obj, waiting for room without blocking the event loop. Raises Full after
        timeout seconds, MessageTooLargeError, QueueClosedError, ValueError/TypeError."""
        if self._core._journal_always:   # fsync="always": durable without blocking the loop
            return await _durable(self, lambda: self.put_nowait(obj), timeout)
        return await _wait(self, PUT, lambda: self.put_nowait(obj), timeout, Full)

    async def get_many_async(self, max_items=64, timeout=None, *, copy=True):
        """1..max_items items as soon as at least one is there (as get_many). Raises Empty
        after timeout seconds, QueueClosedError, ValueError/TypeError for max_items."""
        return await _wait(self, GET, lambda: self.get_many(max_items, block=False, copy=copy), timeout, Empty)

    async def receive_async(self, timeout=None, *, copy=True):
        """At-least-once queues: the next Message under a lease (as receive; copy=False as
        receive(copy=False)). Raises Empty after timeout seconds, QueueClosedError. A
        cancelled receive_async takes nothing."""
        return await _wait(self, GET, lambda: self.receive(block=False, copy=copy), timeout, Empty)

    async def receive_many_async(self, max_items=64, timeout=None, *, copy=True):
        """At-least-once queues: 1..max_items Messages as soon as at least one is there."""
        return await _wait(self, GET, lambda: self.receive_many(max_items, block=False, copy=copy), timeout, Empty)

    async def send_async(self, body, headers=None, priority=None, delay=None, ttl=None, dedup_id=None, *,
                         timeout=None, group=None):
        """At-least-once queues: send (same options); returns the message id. Raises Full
        after timeout seconds, MessageTooLargeError, ValueError/TypeError, QueueClosedError."""
        if self._core._journal_always:   # fsync="always": durable without blocking the loop
            return await _durable(self, lambda: self.send(body, headers, priority, delay, ttl, dedup_id, block=False,
                                                            group=group),
                                  timeout)
        return await _wait(self, PUT, lambda: self.send(body, headers, priority, delay, ttl, dedup_id, block=False,
                                                            group=group),
                           timeout, Full)


class AsyncReliableOps:
    """``async for m in q`` over an at-least-once queue."""

    def __aiter__(self):
        return _messages(self)


async def _messages(q):
    """Messages as they arrive, until the handle is closed (then the loop ends quietly)."""
    while True:
        try:
            m = await q.receive_async()
        except QueueClosedError:
            if q.closed:
                return
            raise
        yield m


async def _durable(handle, attempt, timeout):
    """A put/send on a journal with fsync="always" from the event loop: the record is written
    without waiting for its sync (thread-local deferral), then the loop waits for the sync that
    covers it, which one thread per process runs for every pending record at once (group commit:
    many sends in flight share one fdatasync)."""
    from . import journal

    def deferred():
        _core.journal_defer(True)
        try:
            return attempt(), _core.journal_last_end()
        finally:
            _core.journal_defer(False)

    result, pos = await _wait(handle, PUT, deferred, timeout, Full)
    await journal.durable_future(handle._core, pos)
    return result
