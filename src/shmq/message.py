"""Messages of at-least-once queues: Message (ack, nack, extend) and dedup keys."""
from __future__ import annotations

import hashlib
import os
import signal
import weakref
from typing import TYPE_CHECKING, Any, Mapping, NoReturn, Optional, Union

from . import _core
from ._codec import decode_headers
from ._options import seconds_ns
from .errors import ArgumentError, ArgumentTypeError, LeaseExpiredError

if TYPE_CHECKING:
    from .reliable import ReliableQueue

__all__ = ["Message", "dedup_key"]


def dedup_key(dedup_id: Union[str, bytes, bytearray, memoryview]) -> bytes:
    """16-byte key of a dedup id (str or bytes; the two never collide)."""
    if isinstance(dedup_id, str):
        raw = b"s" + dedup_id.encode()
    elif isinstance(dedup_id, (bytes, bytearray, memoryview)):
        raw = b"b" + bytes(dedup_id)
    else:
        raise ArgumentTypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    return hashlib.blake2b(raw, digest_size=16, person=b"shmq-dedup").digest()


class Message:
    """One delivery of a message from an at-least-once queue.

    Attributes: ``id`` (unique per queue, increasing), ``body``, ``headers`` (dict; ``{}`` when
    none were sent), ``timestamp`` (seconds since the epoch at send), ``delivery_count`` (1 on
    the first delivery), ``priority``, ``group`` (the message group key as sent, str or bytes, or
    None). Settle it with exactly one of ack(), nack() or forward(); extend() keeps it in flight
    longer.
    """

    __slots__ = ("_q", "_token", "_state", "_pin", "id", "body", "headers", "timestamp", "delivery_count", "priority",
                 "group")

    id: int
    body: Any                              # the object sent (unpickled), or bytes as sent
    headers: dict[str, Union[str, bytes]]
    timestamp: float
    delivery_count: int
    priority: int
    group: Union[str, bytes, None]

    def __init__(self, q: ReliableQueue, rec: tuple[Any, ...]) -> None:
        body, hdr, mid, ts, count, prio, token = rec[:7]
        grp = rec[7] if len(rec) > 7 else None
        if grp is None:
            self.group: Union[str, bytes, None] = None
        else:
            key, kind = grp
            self.group = key if kind else key.decode("utf-8", "surrogateescape")
        # receive(copy=False): the pin of the views (docs/guide/zero-copy.md), weakly: the views
        # and the body keep it alive, and a settle made while it lives goes through it
        self._pin = weakref.ref(rec[8]) if len(rec) > 8 else None
        self._q = q
        self._token = token
        self._state: Optional[str] = None
        self.id = mid
        self.body = body
        self.headers = decode_headers(hdr) if hdr else {}
        self.timestamp = ts
        self.delivery_count = count
        self.priority = prio

    def __repr__(self) -> str:
        st = self._state or "in flight"
        return f"<shmq.Message id={self.id} delivery={self.delivery_count} {st}>"

    def ack(self) -> bool:
        """Delete the message: it will not be delivered again. Returns True; False if this
        delivery was acked already (nothing changes). Raises LeaseExpiredError when the lease
        expired and the message was delivered again (nothing changes), ValueError after nack()."""
        if self._state == "acked":
            return False
        if self._state is not None:
            raise ArgumentError(f"message {self.id} was {self._state}: this delivery is over")
        pin = self._pin() if self._pin is not None else None
        if pin is not None:
            pin._ack()                 # acked now; its storage is freed when the last view goes
        else:
            self._q._ack(self._token, self.id)
        self._state = "acked"
        return True

    def nack(self, requeue: bool = True, delay: float = 0.0) -> None:
        """Give the message back: with requeue=True it is delivered again (after `delay`
        seconds), counting a failed delivery (past max_deliveries it is dead-lettered); with
        requeue=False it goes to the dead-letter queue at once (reason "rejected").
        Raises LeaseExpiredError as ack() does, ValueError after ack()/nack()."""
        d = seconds_ns(delay, "delay")
        if self._state is not None:
            raise ArgumentError(f"message {self.id} was {self._state}: this delivery is over")
        pin = self._pin() if self._pin is not None else None
        if pin is not None:
            pin._nack(bool(requeue), d)   # applied when the last view is released
        else:
            self._q._nack(self._token, self.id, bool(requeue), d)
        self._state = "nacked"

    def extend(self, seconds: float) -> None:
        """Keep the message in flight until now + seconds. Raises LeaseExpiredError when it was
        delivered again meanwhile, ValueError after ack()/nack() or for a negative value."""
        ns = seconds_ns(seconds, "extend(seconds)")
        if self._state is not None:
            raise ArgumentError(f"message {self.id} was {self._state}: this delivery is over")
        pin = self._pin() if self._pin is not None else None
        if pin is not None:
            pin._extend(ns)            # the lease is held while views live; it resumes from this
        else:
            self._q._extend(self._token, self.id, ns)

    def forward(self, dest: ReliableQueue, body: Any, headers: Optional[Mapping[str, Union[str, bytes]]] = None,
                **send_options: Any) -> int:
        """Ack this message and send `body` to `dest` (an at-least-once queue handle) as one
        step: after a crash at any instant either both took effect or neither did, in which
        case this message is delivered again, and forwarding that delivery again sends nothing
        new (the new message is de-duplicated in `dest` on this message's queue and id, for
        dest's dedup window). send_options: priority, delay, ttl, group, block, timeout (as
        send(); dedup_id is not allowed: forward sets its own). Returns the new message's id
        (a repeated forward: the first one's). Raises LeaseExpiredError (this delivery is
        over: nothing sent, nothing acked), Full (nothing sent, the delivery is still yours),
        TypeError/ValueError for bad arguments, QueueClosedError."""
        global _reliable
        if _reliable is None:
            from . import reliable as _reliable   # noqa: PLW0603 (a cycle: reliable imports us)
        if not isinstance(dest, _reliable.ReliableQueue):
            raise ArgumentTypeError(f"forward() needs an at-least-once queue (ack=True) as dest, not "
                                    f"{type(dest).__name__}")
        if self._state is not None:
            raise ArgumentError(f"message {self.id} was {self._state}: this delivery is over")
        across = getattr(dest, "_url", None) is not None or getattr(self._q, "_url", None) is not None
        if self._pin is not None and self._pin() is not None:
            # its views point into this delivery's storage, which the forward's ack would free
            raise ArgumentError(f"forward() of message {self.id} while its zero-copy views are alive: receive "
                                "with copy=True to forward, or copy what you need and release the views first")
        block = timeout = None
        if send_options:
            if "dedup_id" in send_options:
                raise ArgumentError("forward() sets its own dedup key (this message's queue and id); "
                                    "dedup_id is not allowed")
            block = send_options.pop("block", True)
            timeout = send_options.pop("timeout", None)
            unknown = set(send_options) - _FORWARD_OPTIONS
            if unknown:
                raise ArgumentTypeError(f"forward() got unexpected send options: {sorted(unknown)}")
        priority = None
        if headers is None and not send_options:
            hdr, prio, d, t, gkey, gtype = _PLAIN_SEND   # the common case: no options to check
        else:
            priority = send_options.pop("priority", None)
            hdr, prio, d, t, gkey, gtype = _reliable._send_args(headers, **send_options)
            if gkey is not None and getattr(dest, "_url", None) is None:
                _reliable._check_groups(dest)       # (a shared-memory queue's limits)
            if priority is not None and not across:     # (across: dest's send checks it)
                prio = dest._priority_of(priority)   # a priority queue checks against its levels
        if block is None:
            block = True
        if across:
            return self._forward_across(dest, body, headers, priority, send_options, block, timeout)
        try:
            mid, _dup = dest._core._forward(self._q._core, self._token, self.id, body, hdr, prio, d, t, gkey, gtype,
                                            block, timeout)
        except LeaseExpiredError:
            self._state = "lease expired"
            raise
        self._state = "acked"
        return mid

    def _forward_across(self, dest, body, headers, priority, options, block, timeout):
        """forward() where the source or dest is on Redis (no one step spans two backends):
        the delivery is checked to be ours (its lease renewed for the source's visibility
        timeout), the new message sent to dest with a dedup id made of this message's backend,
        queue and id, then this delivery acked. A crash (or a lost lease) between the send and
        the ack leaves the message delivered again here; its forward then sends nothing new
        (dest's dedup window) and acks it (docs/guide/redis.md)."""
        src = self._q
        vis = src._settings().get("visibility_timeout") or 30.0
        try:
            src._extend(self._token, self.id, max(1_000_000, int(vis * 1e9)))   # still ours, or nothing is sent
        except LeaseExpiredError:
            self._state = "lease expired"
            raise
        where = getattr(src, "_url", None) or "shm"
        dedup = f"forward:{where}:{src.name}:{self.id}"
        mid = dest.send(body, headers, priority=priority, dedup_id=dedup, block=block, timeout=timeout, **options)
        _crash("forward_across_after_send")
        try:
            src._ack(self._token, self.id)
        except LeaseExpiredError:
            # redelivered meanwhile: that delivery's forward is de-duplicated in dest
            self._state = "lease expired"
            raise
        self._state = "acked"
        return mid

    def __reduce__(self) -> NoReturn:
        raise ArgumentTypeError("a Message is one process's delivery and cannot be pickled; send its body instead")


_reliable: Any = None

# A named point where a test makes the process SIGKILL itself (SHMQ_CRASH_AT=<point>[:<n>], as
# the core's points and shmq.rpc's): forward() across backends, sent to dest, source not acked
# (the kill test: tests/redis/test_redis_groups_forward.py).
CRASH_POINTS = {"forward_across_after_send": "forward() across backends: sent to dest, not yet acked at the source"}
_crash_left: Optional[int] = None


def _crash(name: str) -> None:
    global _crash_left
    spec = os.environ.get("SHMQ_CRASH_AT", "")
    point, _, n = spec.partition(":")
    if point != name:
        return
    if _crash_left is None:
        _crash_left = max(1, int(n)) if n.isdigit() else 1
    _crash_left -= 1
    if _crash_left == 0:
        os.kill(os.getpid(), signal.SIGKILL)


_FORWARD_OPTIONS = frozenset(("priority", "delay", "ttl", "group"))
_PLAIN_SEND: tuple = (b"", 0, _core.USE_DEFAULT, _core.USE_DEFAULT, None, 0)


def _lease_expired_many(ids: list[int]) -> LeaseExpiredError:
    e = LeaseExpiredError(f"{len(ids)} message(s) were delivered again before this ack: {ids[:10]}")
    e.ids = ids
    return e
