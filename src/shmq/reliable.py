"""At-least-once queues: send/receive under a lease, ack/nack/extend, the dead-letter queue, redrive."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Union

from . import _aio, _codec, _core, _options
from ._handle import _live, _live_lock
from .errors import ArgumentError, ArgumentTypeError, Empty, QueueNotFound, QueuePermissionError, UnsupportedError
from .message import Message, _lease_expired_many, dedup_key
from .queue import Queue, _create_dlq

__all__ = ["ReliableQueue", "redrive"]


class ReliableQueue(_aio.AsyncReliableOps, Queue):
    """An at-least-once queue: what ``shmq.Queue(name, create=True, ack=True, ...)`` returns, and
    ``shmq.Queue(name)`` for a queue created so. put/get work too (at most once, no lease)."""

    _dlq = None           # the dead-letter queue's handle (internal: closed with ours)
    _dlq_name = None
    _just_created = False  # this call created our named queue (set by Queue.__new__)

    def _attached(self):
        """Open (creating it if needed) the dead-letter queue this queue names, and hand it to
        the core, which moves poison messages there."""
        st = self._settings()
        dlq = st["dead_letter"]
        if not dlq:
            self._core._set_dlq(None, self._name)
            return
        kw = dict(create=True, exist_ok=True, ack=True, visibility_timeout=st["visibility_timeout"],
                  max_deliveries=st["max_deliveries"], mode=st["mode"])
        jdir = self._core._journal_dir
        if jdir is not None:   # dead letters stay durable: the DLQ has its own journal beside ours
            kw["journal"] = jdir.rstrip("/") + ".dlq"
            kw["fsync"] = {v: k for k, v in _core.JOURNAL_MODES.items()}[self._core._journal_stats()["mode"]]
        if st["flags"] & _core.F_GROWABLE:
            kw["capacity"] = None
        else:
            kw["capacity"] = st["capacity"]
            kw["max_message"] = st["max_message"]
        try:
            try:
                q = self._dlq_open(dlq)            # an existing one is used as it is
            except QueueNotFound:
                q = self._dlq_create(dlq, **kw)    # same options as ours, ack=True, no DLQ of its own
        except ValueError as e:
            self._abandon()
            raise ArgumentError(f"queue {self._name!r}: its dead-letter queue {dlq!r} cannot be used: {e}") from None
        except BaseException as e:
            # issue 13 item 3: both or neither. A queue this call created is removed again (its
            # name stays free), so a retry with room (or other options) can create the pair.
            if self._abandon() and isinstance(e, Exception):
                e.add_note(f"queue {self._name!r} was not created either: an at-least-once queue and its "
                           "dead-letter queue are created together (the default dead-letter queue takes as much "
                           "room as the queue: pass a smaller capacity, or free room in /dev/shm)")
            raise
        # issue 11 item 5: only a file of our queue's owner that lets nobody else write beyond our
        # queue's mode (another user could have planted it first to read or plant dead letters)
        try:
            q._core._check_trusted(os.fstat(self._core._fd).st_uid, st["mode"])
        except QueuePermissionError:
            q.close()
            self._abandon()
            raise
        if not isinstance(q, ReliableQueue):
            q.close()
            self._abandon()
            raise ArgumentError(f"queue {self._name!r}: its dead-letter queue {dlq!r} exists without ack=True")
        q._internal = True
        self._dlq = q
        self._dlq_name = dlq
        # The core keeps q's segment object and closes it when it unmaps its own (a close
        # deferred for a thread inside a call still needs the dead-letter queue).
        self._core._set_dlq(q._core, self._name)

    def _abandon(self):
        """Close our core after a failed open; remove our queue if this call created it (True)."""
        self._core._close()
        if not self._just_created:
            return False
        self._just_created = False
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return True

    def _closing(self):
        if self._dlq is not None:
            with _live_lock:
                _live.discard(self._dlq)
            self._dlq = None

    @property
    def dead_letter_queue(self) -> Optional[str]:
        """The name of this queue's dead-letter queue (None when it is one itself)."""
        return self._dlq_name

    def send(self, body: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None, priority: Optional[int] = None,
             delay: Optional[float] = None, ttl: Optional[float] = None, dedup_id: Union[str, bytes, None] = None, *,
             block: bool = True, timeout: Optional[float] = None, group: Union[str, bytes, None] = None) -> int:
        """Send a message; returns its id (for a duplicate dedup_id within the window, the
        original's id, and nothing is enqueued). delay/ttl: seconds (None: the queue's
        default). group: a message group key (str or bytes, at most 128 UTF-8 bytes): the
        group's messages are delivered in send order, one at a time (docs/guide/groups.md).
        Raises Full (no room in time, dedup or group table full), MessageTooLargeError,
        ValueError/TypeError for bad arguments (also group= on a queue created before groups
        existed), QueueClosedError."""
        hdr, _, d, t, gkey, gtype = _send_args(headers, None, delay, ttl, group)
        prio = self._priority_of(priority)
        key = None if dedup_id is None else dedup_key(dedup_id)
        if gkey is not None:
            _check_groups(self)
        mid, _dup = self._core._send(body, hdr, prio, d, t, key, block, timeout, 0, gkey, gtype)
        return mid

    def receive(self, timeout: Optional[float] = None, *, block: bool = True, copy: bool = True) -> Message:
        """Take the next message under a lease (the queue's visibility_timeout). Returns a
        Message; raises Empty when none arrives in time, QueueClosedError. copy=False: the body
        is a read-only view into shared memory as with get(copy=False), and the lease is held
        open while a view lives (docs/guide/zero-copy.md)."""
        if copy is not True and not copy:
            return Message(self, self._core._receive_view(block, timeout))
        return Message(self, self._core._receive(block, timeout))

    def receive_many(self, max_items: int = 64, timeout: Optional[float] = None, *,
                     block: bool = True, copy: bool = True) -> list[Message]:
        """1..max_items Messages, as soon as at least one is there. Raises Empty. copy=False:
        as receive(copy=False), each message pinned by its own views."""
        n = _options.check_int(max_items, "max_items", 1, _options.MAX_COUNT)
        if copy is not True and not copy:
            return [Message(self, r) for r in self._core._receive_many_views(n, timeout, block)]
        return [Message(self, r) for r in self._core._receive_many(n, timeout, block)]

    def ack_many(self, messages: Iterable[Message]) -> int:
        """Ack every message of the list; returns how many were acked now (ones acked before
        are skipped). Raises LeaseExpiredError (its .ids) after acking the others when some
        had been delivered again."""
        pairs, todo, held = [], [], 0
        for m in messages:
            if not isinstance(m, Message) or m._q is not self:
                raise ArgumentTypeError("ack_many() takes Messages received from this queue")
            if m._state == "acked":
                continue
            if m._state is not None:
                raise ArgumentError(f"message {m.id} was {m._state}: this delivery is over")
            if m._pin is not None and m._pin() is not None:
                m.ack()               # views alive: acked through its pin (storage kept)
                held += 1
                continue
            pairs.append((m._token, m.id))
            todo.append(m)
        stale = set(self._core._ack_many(pairs))
        for m in todo:
            m._state = "lease expired" if m.id in stale else "acked"
        if stale:
            raise _lease_expired_many(sorted(stale))
        return len(todo) + held

    def _priority_of(self, priority):
        """The priority a send carries (a plain queue: 0..9, carried in Message.priority, no
        reordering; shmq.priority overrides it with the queue's levels)."""
        return 0 if priority is None else _priority(priority)

    def _dlq_open(self, name):
        """Open the existing dead-letter queue `name` (shmq.priority opens a PriorityQueue); in
        shared memory always, never on $SHMQ_BACKEND."""
        return Queue(name, backend="shm")

    def _dlq_create(self, name, **kw):
        """Create (or open) the dead-letter queue `name` with our options (shmq.priority: its levels too)."""
        return _create_dlq(name, **kw)

    # settles of one delivery (Message calls these) and the timer scan (tests, tools)
    def _timers_run(self):
        return self._core._timers_run()


def _send_args(headers=None, priority=None, delay=None, ttl=None, group=None):
    """The checked arguments of a send: (header block, priority, delay ns, ttl ns, group key
    bytes or None, group key type 0 = str / 1 = bytes)."""
    hdr = _codec.encode_headers(headers)
    prio = 0 if priority is None else _priority(priority)
    d = _core.USE_DEFAULT if delay is None else _options.seconds_ns(delay, "delay")
    t = _core.USE_DEFAULT if ttl is None else _options.seconds_ns(ttl, "ttl", allow_zero=False)
    gkey, gtype = _group_key(group)
    return hdr, prio, d, t, gkey, gtype


GROUP_KEY_MAX = 128


def _group_key(group):
    """(key bytes, type) of a group= argument: str (UTF-8, type 0) or bytes (type 1); None: (None, 0)."""
    if group is None:
        return None, 0
    if isinstance(group, str):
        raw, kind = group.encode("utf-8", "surrogateescape"), 0
    elif isinstance(group, (bytes, bytearray, memoryview)):
        raw, kind = bytes(group), 1
    else:
        raise ArgumentTypeError(f"group must be str or bytes, not {type(group).__name__}")
    if len(raw) > GROUP_KEY_MAX:
        raise ArgumentError(f"group key is {len(raw)} bytes (UTF-8); at most {GROUP_KEY_MAX} are allowed")
    return raw, kind


def _check_groups(q):
    """Raise where send(group=) cannot keep its promise: a queue made before groups, or one with
    a journal (recovery does not rebuild a group's chain yet: its members would come back as
    never-due delayed messages, so we refuse rather than lose them)."""
    flags = q._core._flags_value
    if not flags & _core.F_GROUPS:
        raise _unsupported_groups(q._name)
    if flags & _core.F_JOURNAL:
        raise UnsupportedError(f"queue {q._name!r} has a journal: send(group=) is not supported on journaled "
                               "queues yet (recovery does not rebuild message groups)")


def _unsupported_groups(name):
    return ArgumentError(f"queue {name!r} was created by an shmq without message groups: "
                            "send(group=) needs a queue created by this version")


def _priority(p):
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
        raise ArgumentError(f"priority must be an int from 0 to 9, got {p!r}")
    return p


def redrive(dlq: Union[str, Queue], to: Optional[str] = None, *, max_messages: Optional[int] = None,
            timeout: float = 0.0) -> int:
    """Move messages from a dead-letter queue back: each to `to` (a queue name), else to the
    queue named by its x-dead-letter-source header. Headers, body and priority are kept, the
    x-dead-letter-* headers are dropped. Each copy is sent with a dedup id derived from the
    DLQ and message id, and acked in the DLQ only after the send returned, so a crash in
    between never loses it and, within the target's dedup window, never doubles it. The target
    of the next message is found and checked before the message is taken, so a redrive that
    stops there (no source header, no such target) leaves it as it was, its delivery uncounted.
    Returns how many were moved. Raises QueueNotFound, ValueError (a message with no source,
    a target that is not an at-least-once queue)."""
    targets = {}

    def target(dest):
        q = targets.get(dest)
        if q is None:
            q = targets[dest] = Queue(dest, backend=getattr(src, "backend", "shm"))  # the DLQ's backend
        if not isinstance(q, ReliableQueue):
            raise ArgumentError(f"redrive() target {dest!r} is not an at-least-once queue")
        return q

    def no_source(mid):
        return ArgumentError(f"message {mid} in {src_name!r} has no {_options.DLQ_SOURCE} header; pass to=")

    src = dlq if isinstance(dlq, Queue) else Queue(dlq)
    src_name = src.name
    try:
        return _redrive(src, to, max_messages, timeout, target, no_source)
    finally:
        for q in targets.values():
            q.close()
        if src is not dlq:
            src.close()


def _redrive(src, to, max_messages, timeout, target, no_source):
    """redrive()'s loop; target(name) -> the open at-least-once queue or raises, no_source(id)
    -> the exception for a message without a source (the CLI words both its own way)."""
    if not isinstance(src, ReliableQueue):
        raise ArgumentError(f"redrive() needs a dead-letter queue (ack=True); {src.name!r} is at-most-once")
    if getattr(src, "_redis", False):          # a dead-letter queue on Redis (DESIGN §11)
        from ._redis.queue import redrive_loop
        return redrive_loop(src, to, max_messages, timeout, target, no_source)

    def dest_of(headers, mid):
        dest = to or headers.get(_options.DLQ_SOURCE)
        if not dest:
            raise no_source(mid)
        return target(dest)

    moved = 0
    while max_messages is None or moved < max_messages:
        # Look before taking: a receive counts a delivery, and a message whose target is missing
        # would come back counted (issue 13 item 6). Only a message that a racing consumer put
        # at the head meanwhile is checked after it was taken.
        head = src._core._inspect(False, 0, 0)
        if head is not None:
            dest_of(_codec.decode_headers(head["headers"]), head["id"])
        try:
            # the body as stored (kind, payload): a dead letter is never unpickled here (issue 11 item 5)
            m = Message(src, src._core._receive(True, timeout, True))
        except Empty:
            break
        try:
            q = dest_of(m.headers, m.id)
            headers = {k: v for k, v in m.headers.items() if k not in _options.DLQ_HEADERS}
            kind, payload = m.body
            q._core._send(payload, _codec.encode_headers(headers), m.priority, _core.USE_DEFAULT, _core.USE_DEFAULT,
                          dedup_key(f"redrive:{src.name}:{m.id}"), True, None, kind)
        except BaseException:
            try:
                m.nack(requeue=True)    # back at once (a failed delivery), not after its lease
            except Exception:
                pass                    # the lease ended meanwhile: it is back already
            raise
        m.ack()
        moved += 1
    return moved
