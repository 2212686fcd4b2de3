"""Messages of at-least-once queues: Message (ack, nack, extend), header encoding, dedup keys."""
import hashlib
import math
import struct

from .errors import CorruptQueueError, LeaseExpiredError

__all__ = ["Message", "encode_headers", "decode_headers", "dedup_key", "seconds_ns"]

_ENT = struct.Struct("<HBxI")   # key length, value type (0 str, 1 bytes), pad, value length
_STR, _BYTES = 0, 1


def encode_headers(headers):
    """The header block of a send (csrc/lease.h: encoding). Raises TypeError for keys that are
    not str or values that are neither str nor bytes-like."""
    if not headers:
        return b""
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict of str to str/bytes, not {type(headers).__name__}")
    parts = []
    for k, v in headers.items():
        if not isinstance(k, str):
            raise TypeError(f"header names must be str, not {type(k).__name__}")
        kb = k.encode()
        if isinstance(v, str):
            t, vb = _STR, v.encode()
        elif isinstance(v, (bytes, bytearray, memoryview)):
            t, vb = _BYTES, bytes(v)
        else:
            raise TypeError(f"header {k!r}: values must be str or bytes, not {type(v).__name__}")
        if len(kb) > 0xFFFF:
            raise ValueError(f"header name of {len(kb)} bytes is too long (at most 65535)")
        parts.append(_ENT.pack(len(kb), t, len(vb)) + kb + vb)
    return b"".join(parts)


def decode_headers(block):
    """dict of a header block. untrusted: every length is checked against the block."""
    out = {}
    off, n = 0, len(block)
    while off < n:
        if n - off < _ENT.size:
            raise CorruptQueueError("header block ends inside an entry")
        kl, t, vl = _ENT.unpack_from(block, off)
        off += _ENT.size
        if kl > n - off or vl > n - off - kl or t not in (_STR, _BYTES):
            raise CorruptQueueError("header entry outside its block")
        k = bytes(block[off:off + kl]).decode(errors="replace")
        v = bytes(block[off + kl:off + kl + vl])
        out[k] = v.decode(errors="replace") if t == _STR else v
        off += kl + vl
    return out


def dedup_key(dedup_id):
    """16-byte key of a dedup id (str or bytes; the two never collide)."""
    if isinstance(dedup_id, str):
        raw = b"s" + dedup_id.encode()
    elif isinstance(dedup_id, (bytes, bytearray, memoryview)):
        raw = b"b" + bytes(dedup_id)
    else:
        raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    return hashlib.blake2b(raw, digest_size=16, person=b"shmq-dedup").digest()


def seconds_ns(value, what, allow_zero=True):
    """Non-negative seconds (int or float) as integer nanoseconds; ValueError/TypeError naming what."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'a non-negative' if allow_zero else 'a positive'} number of seconds, got {value!r}")
    if value > 1e9:
        raise ValueError(f"{what} of {value!r} seconds is too large")
    return int(value * 1e9)


class Message:
    """One delivery of a message from an at-least-once queue.

    Attributes: ``id`` (unique per queue, increasing), ``body``, ``headers`` (dict; ``{}`` when
    none were sent), ``timestamp`` (seconds since the epoch at send), ``delivery_count`` (1 on
    the first delivery), ``priority``. Settle it with exactly one of ack() or nack(); extend()
    keeps it in flight longer.
    """

    __slots__ = ("_q", "_token", "_state", "id", "body", "headers", "timestamp", "delivery_count", "priority")

    def __init__(self, q, rec):
        body, hdr, mid, ts, count, prio, token = rec
        self._q = q
        self._token = token
        self._state = None
        self.id = mid
        self.body = body
        self.headers = decode_headers(hdr) if hdr else {}
        self.timestamp = ts
        self.delivery_count = count
        self.priority = prio

    def __repr__(self):
        st = self._state or "in flight"
        return f"<shmq.Message id={self.id} delivery={self.delivery_count} {st}>"

    def ack(self):
        """Delete the message: it will not be delivered again. Returns True; False if this
        delivery was acked already (nothing changes). Raises LeaseExpiredError when the lease
        expired and the message was delivered again (nothing changes), ValueError after nack()."""
        if self._state == "acked":
            return False
        if self._state is not None:
            raise ValueError(f"message {self.id} was {self._state}: this delivery is over")
        self._q._ack(self._token, self.id)
        self._state = "acked"
        return True

    def nack(self, requeue=True, delay=0.0):
        """Give the message back: with requeue=True it is delivered again (after `delay`
        seconds), counting a failed delivery (past max_deliveries it is dead-lettered); with
        requeue=False it goes to the dead-letter queue at once (reason "rejected").
        Raises LeaseExpiredError as ack() does, ValueError after ack()/nack()."""
        d = seconds_ns(delay, "delay")
        if self._state is not None:
            raise ValueError(f"message {self.id} was {self._state}: this delivery is over")
        self._q._nack(self._token, self.id, bool(requeue), d)
        self._state = "nacked"

    def extend(self, seconds):
        """Keep the message in flight until now + seconds. Raises LeaseExpiredError when it was
        delivered again meanwhile, ValueError after ack()/nack() or for a negative value."""
        ns = seconds_ns(seconds, "extend(seconds)")
        if self._state is not None:
            raise ValueError(f"message {self.id} was {self._state}: this delivery is over")
        self._q._extend(self._token, self.id, ns)

    def __reduce__(self):
        raise TypeError("a Message is one process's delivery and cannot be pickled; send its body instead")


def _lease_expired_many(ids):
    e = LeaseExpiredError(f"{len(ids)} message(s) were delivered again before this ack: {ids[:10]}")
    e.ids = ids
    return e
