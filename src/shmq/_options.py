"""The one option schema of queues: validation, defaults, the "exists with other options" check, the time rule; DLQ header names and stats keys."""
from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple, Optional, Union

from . import _core, _names
from .errors import ArgumentError, ArgumentTypeError

DEFAULT_CAPACITY = 64 * 1024 * 1024      # named queues (DESIGN §5.1)
ANON_INITIAL_CAPACITY = 256 * 1024       # anonymous queues start here and grow (cheap: many fit in /dev/shm)
MAX_COUNT = (1 << 63) - 1                # item counts and byte sizes: the core keeps them in 64 bits
MIN_CAPACITY = _core.MIN_CAPACITY        # 64 KiB: the smallest fixed capacity (one area of the core)
MAX_MAXSIZE = (1 << 32) - 2              # the core counts maxsize units in 32 bits (queue.c)
MAX_MESSAGE = (1 << 32) - 1              # a descriptor's size field is 32 bits
DEFAULT = "default"                      # capacity="default": 64 MiB named, unbounded anonymous

# The time rule, for every duration given in seconds (timeouts, leases, delays, TTLs, windows):
# a real number (int, float, Fraction, numpy scalar; never str/bytes), not NaN, not negative;
# above MAX_SECONDS (~31.7 years) it means "forever": a timeout then waits with no deadline and
# any other duration is refused. bool is refused except as a timeout, where multiprocessing
# accepts it.
MAX_SECONDS = 1e9

# Header names the dead-letter move adds (written by csrc/lease.c; redrive drops them).
DLQ_HEADERS = ("x-dead-letter-source", "x-dead-letter-reason", "x-delivery-count", "x-first-delivery",
               "x-last-delivery", "x-original-id", "x-original-timestamp")
DLQ_SOURCE = DLQ_HEADERS[0]

# stats() keys every kind reports (DESIGN §5 and §5.1; shmq.stats fills them). The
# at-least-once counters are 0 on an at-most-once queue. The latency keys (wait_p50_s ...,
# shmq._latency) come from the core's histograms (csrc/hist.h) and are None without samples.
ACK_COUNTERS = ("in_flight", "delayed", "acked", "redelivered", "dead_lettered", "expired", "dead_letter_failed",
                "dedup_hits")
STATS_KEYS = ("depth", "bytes_used", "capacity", "in_flight", "delayed", "producers", "consumers", "enqueued",
              "dequeued", "acked", "redelivered", "dead_lettered", "expired", "oldest_age_s", "repairs",
              "skipped_cells", "last_repair_ms", "wait_p50_s", "wait_p99_s", "process_p50_s", "process_p99_s",
              "nacked", "late_replies")
# The core's settings under their public names: raw key -> (public key, divisor to seconds or None).
SETTINGS_KEYS = {"created_at_ns": ("created_at", 1e9), "last_repair_ns": ("last_repair_ms", 1e6),
                 "visibility_ns": ("visibility_timeout", 1e9), "default_delay_ns": ("default_delay", 1e9),
                 "default_ttl_ns": ("default_ttl", 1e9), "dedup_window_ns": ("dedup_window", 1e9),
                 "dedup_slots": ("dedup_capacity", None)}

ACK_DEFAULTS = dict(visibility_timeout=30.0, max_deliveries=20, dead_letter=None, delay=0.0, ttl=None,
                    dedup_window=300.0, dedup_capacity=16384)


def seconds_ns(value, what, *, allow_zero=True, forever=False):
    """Integer nanoseconds of a duration in seconds under the time rule above; None for
    "forever" when forever=True (timeouts). Raises ArgumentError/ArgumentTypeError naming what."""
    if isinstance(value, (str, bytes, bytearray)) or (isinstance(value, bool) and not forever):
        raise ArgumentTypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    try:
        t = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ArgumentTypeError(f"{what} must be a number of seconds, not {type(value).__name__}") from None
    if math.isnan(t):
        raise ArgumentError(f"{what} must be a number of seconds, not NaN")
    if t < 0 or (t == 0 and not allow_zero):
        raise ArgumentError(f"{what} must be {'a non-negative' if allow_zero else 'a positive'} number of seconds, "
                            f"got {value!r}")
    if t > MAX_SECONDS:
        if forever:
            return None
        raise ArgumentError(f"{what} of {value!r} seconds is too large (at most {MAX_SECONDS:.0f})")
    # a positive duration below 1 ns is 1 ns, never 0 (which the core reads as "none": no TTL)
    return int(t * 1e9) or (1 if t > 0 else 0)


def timeout_ns(timeout):
    """The binding's conversion of a timeout: relative ns, or None for no deadline."""
    if (timeout.__class__ is float or timeout.__class__ is int) and 0 <= timeout <= MAX_SECONDS:
        return int(timeout * 1e9)   # the common case of seconds_ns, without its checks (NaN fails the range)
    return seconds_ns(timeout, "timeout", forever=True)


def check_int(value, what, lo, hi):
    """value as an int in [lo, hi]; bool and non-integers raise TypeError, others ValueError."""
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{what} must be an int, not bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if not lo <= n <= hi:
        raise ArgumentError(f"{what} must be an int from {lo} to {hi}, got {value!r}")
    return n


def size(value, what):
    """Bytes from an int or a string such as '64MiB' (shmq._names.parse_size), at most MAX_COUNT."""
    n = _names.parse_size(value, what)
    if n > MAX_COUNT:
        raise ArgumentError(f"{what} of {value!r} bytes is too large (at most {MAX_COUNT})")
    return n


def name(value, what="queue name"):
    """A valid queue name (DESIGN §2), else ArgumentError/ArgumentTypeError quoting the rule."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        return _names.check_name(value)
    except ArgumentError as e:
        if what == "queue name":
            raise
        raise ArgumentError(f"{what}: {e}") from None


def _mode(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"mode must be a permission mode such as 0o600 (an int), not {type(value).__name__}")
    if not 0 <= value <= 0o777:
        raise ArgumentError(f"mode must be a permission mode from 0 to 0o777 such as 0o600, got {value!r}")
    return value


def _dedup_capacity(c):
    c = check_int(c, "dedup_capacity", 16, 1 << 24)
    if c & (c - 1):
        raise ArgumentError(f"dedup_capacity must be a power of two from 16 to 2**24, got {c!r}")
    return c


# The at-least-once options: name -> validator (value -> value kept for the checks).
_ACK_CHECKS = {
    "visibility_timeout": lambda v: (seconds_ns(v, "visibility_timeout", allow_zero=False), v)[1],
    "max_deliveries": lambda v: check_int(v, "max_deliveries", 1, 65535),
    "dead_letter": lambda v: name(v, "dead_letter"),
    "delay": lambda v: (seconds_ns(v, "delay"), v)[1],
    "ttl": lambda v: (seconds_ns(v, "ttl", allow_zero=False), v)[1],
    "dedup_window": lambda v: (seconds_ns(v, "dedup_window", allow_zero=False), v)[1],
    "dedup_capacity": _dedup_capacity,
}


class Spec(NamedTuple):
    """A validated Queue() call: what to create or open, and the options given explicitly."""
    name: Optional[str]          # None: anonymous
    create: bool
    exist_ok: bool
    maxsize: int
    flags: int
    capacity: int
    max_message: int
    mode: int
    slots: int
    ack: Optional[dict]          # the core's at-least-once creation options (create with ack=True)
    explicit: dict               # options the caller named, for the "exists with other options" check


def resolve(name_or_maxsize: Union[str, int] = 0, *, maxsize: Optional[int] = None, create: bool = False,
            exist_ok: bool = False, capacity: Union[int, str, None] = DEFAULT,
            max_message: Union[int, str, None] = None, mode: int = 0o600, raw: bool = False,
            max_participants: Optional[int] = None, joinable: bool = False, is_dlq: bool = False,
            **ack_options: Any) -> Spec:
    """Validate the arguments of Queue() (every error a ShmqError and the builtin that fits,
    naming the option) and apply the defaults. Values the core would silently change are
    refused instead (a capacity below 64 KiB, a maxsize or max_message beyond its counters)."""
    maxsize_given = maxsize is not None
    capacity_given = not (isinstance(capacity, str) and capacity == DEFAULT)
    if not capacity_given:
        capacity = None
    if isinstance(name_or_maxsize, str):
        qname = name(name_or_maxsize)
        maxsize = 0 if maxsize is None else maxsize
    elif isinstance(name_or_maxsize, int) and not isinstance(name_or_maxsize, bool):
        if maxsize is not None and name_or_maxsize:
            raise ArgumentTypeError("maxsize given twice")
        maxsize = name_or_maxsize if maxsize is None else maxsize
        qname = None
    else:
        raise ArgumentTypeError(f"Queue() takes a maxsize (int) or a queue name (str), not "
                                f"{type(name_or_maxsize).__name__}")
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise ArgumentTypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if maxsize > MAX_MAXSIZE:
        raise ArgumentError(f"maxsize must be at most {MAX_MAXSIZE} items, got {maxsize!r} (0 or less: unbounded)")
    maxsize = max(maxsize, 0)  # as multiprocessing: <= 0 means unbounded
    mode = _mode(mode)
    slots = 0 if max_participants is None else check_int(max_participants, "max_participants", 1, 1023)
    mm = 0 if max_message is None else size(max_message, "max_message")
    if mm > MAX_MESSAGE:
        raise ArgumentError(f"max_message must be at most {MAX_MESSAGE} bytes (4 GiB - 1), got {max_message!r}")
    growable = capacity is None
    cap = 0 if capacity is None else size(capacity, "capacity")
    if capacity is not None and cap < MIN_CAPACITY:
        raise ArgumentError(f"capacity must be at least {MIN_CAPACITY} bytes (64 KiB), got {capacity!r}; "
                            "capacity=None makes a queue that grows as needed")
    ack = ack_options.pop("ack", None)
    unknown = set(ack_options) - set(_ACK_CHECKS)
    if unknown:
        raise ArgumentTypeError(f"Queue() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    given = {k: _ACK_CHECKS[k](v) for k, v in ack_options.items() if v is not None}
    if ack is not None and not isinstance(ack, bool):
        raise ArgumentTypeError(f"ack must be True or False, not {type(ack).__name__}")
    if given and ack is not True:
        raise ArgumentError(f"{', '.join(sorted(given))}: at-least-once options need ack=True")
    if ack is not None:
        given["ack"] = ack
    if joinable and ack:
        raise ArgumentError("a JoinableQueue cannot be an at-least-once queue: use shmq.Queue(name, ack=True)")
    flags = (_core.F_RAW if raw else 0) | (_core.F_JOINABLE if joinable else 0)
    if qname is None:
        if create:
            raise ArgumentError("create=True needs a queue name")
        if ack:
            raise ArgumentError("ack=True needs a named queue: Queue('name', create=True, ack=True)")
        growable = not capacity_given or capacity is None
        flags |= _core.F_ANONYMOUS | (_core.F_GROWABLE if growable else 0)
        return Spec(None, True, False, maxsize, flags, ANON_INITIAL_CAPACITY if growable else cap, mm, mode, slots,
                    None, {})
    explicit = dict(given and {"ack": given})
    if maxsize_given:
        explicit["maxsize"] = maxsize
    if raw:
        explicit["raw"] = True
    if capacity_given:
        explicit["capacity"] = capacity
    if max_message is not None:
        explicit["max_message"] = mm
    if joinable:
        explicit["joinable"] = True
    create_ack = None
    if create and given.get("ack"):
        flags |= _core.F_ACK
        create_ack = _ack_create(qname, given, is_dlq)
    if create:
        if capacity_given and growable:
            flags |= _core.F_GROWABLE
            cap = ANON_INITIAL_CAPACITY
        elif not capacity_given:
            cap = DEFAULT_CAPACITY
    return Spec(qname, bool(create), bool(exist_ok), maxsize, flags, cap, mm, mode, slots, create_ack, explicit)


def _ack_create(qname, given, is_dlq):
    """The core's creation options of an at-least-once queue (defaults filled in)."""
    o = dict(ACK_DEFAULTS, **{k: v for k, v in given.items() if k != "ack"})
    if is_dlq:
        dlq = ""
    else:
        dlq = o["dead_letter"] or f"{qname}.dlq"
        if not _names._NAME_RE.match(dlq):
            raise ArgumentError(f"queue name {qname!r} is too long for its default dead-letter queue {dlq!r}; "
                                "pass dead_letter='shorter-name'")
        if dlq == qname:
            raise ArgumentError("a queue cannot be its own dead-letter queue")
    return dict(visibility_ns=seconds_ns(o["visibility_timeout"], "visibility_timeout", allow_zero=False),
                max_deliveries=o["max_deliveries"], dead_letter=dlq,
                default_delay_ns=seconds_ns(o["delay"], "delay"),
                default_ttl_ns=0 if o["ttl"] is None else seconds_ns(o["ttl"], "ttl", allow_zero=False),
                dedup_window_ns=seconds_ns(o["dedup_window"], "dedup_window", allow_zero=False),
                dedup_slots=o["dedup_capacity"])


def problems(explicit, st, kind=_core.KIND_QUEUE):
    """How explicit options contradict an existing queue's settings st (shmq.stats.settings):
    a list of strings, empty when they agree."""
    out = []
    if "maxsize" in explicit and explicit["maxsize"] != st["maxsize"]:
        out.append(f"maxsize={explicit['maxsize']} (the queue has maxsize={st['maxsize']})")
    if "raw" in explicit and not st["flags"] & _core.F_RAW:
        out.append("raw=True (the queue was created without raw)")
    if "capacity" in explicit:
        want = explicit["capacity"]
        have = None if st["flags"] & _core.F_GROWABLE else st["capacity"]
        if want is None and have is not None:
            out.append(f"capacity=None (the queue has a fixed capacity of {have} bytes)")
        elif want is not None and have is not None and size(want, "capacity") > have:
            out.append(f"capacity={want!r} (the queue holds {have} bytes)")
        elif want is not None and have is None:
            out.append(f"capacity={want!r} (the queue is unbounded: capacity=None)")
    if "max_message" in explicit and explicit["max_message"] > st["max_message"]:
        out.append(f"max_message={explicit['max_message']} (the queue accepts up to {st['max_message']})")
    if st["kind"] != kind:
        out.append("kind: the segment is not a work queue")
    if explicit.get("joinable") and not st["flags"] & _core.F_JOINABLE:
        out.append("JoinableQueue (the queue was created as a plain Queue: no task_done/join accounting)")
    return out + _ack_problems(explicit.get("ack") or {}, st)


def _ack_problems(opts, st):
    is_ack = bool(st["flags"] & _core.F_ACK)
    if not opts:
        return []
    if opts.get("ack") is True and not is_ack:
        return ["ack=True (the queue was created without ack: at-most-once)"]
    if opts.get("ack") is False and is_ack:
        return ["ack=False (the queue was created with ack=True)"]
    out = []
    for key in ("visibility_timeout", "max_deliveries", "delay", "dedup_window", "dedup_capacity"):
        have = st["default_delay" if key == "delay" else key]
        if key in opts and abs(float(opts[key]) - float(have)) > 1e-6:
            out.append(f"{key}={opts[key]!r} (the queue has {have!r})")
    if "ttl" in opts and abs(float(opts["ttl"]) - float(st["default_ttl"])) > 1e-6:
        out.append(f"ttl={opts['ttl']!r} (the queue has {st['default_ttl'] or None!r})")
    if "dead_letter" in opts and opts["dead_letter"] != st["dead_letter"]:
        out.append(f"dead_letter={opts['dead_letter']!r} (the queue has {st['dead_letter'] or None!r})")
    return out
