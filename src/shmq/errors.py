"""Exceptions of shmq: each derives from ShmqError and from the builtin that fits."""
from __future__ import annotations

import errno as _errno
import os as _os
import queue as _queue
from typing import Any, Optional

__all__ = [
    "ShmqError", "Empty", "Full", "QueueClosedError", "QueueNotFound", "CorruptQueueError",
    "IncompatibleQueueError", "MessageTooLargeError", "QueueMemoryError", "LeaseExpiredError",
    "QueueExistsError", "QueuePermissionError", "NoSpaceError",
    "NoRespondersError", "ResponderDiedError", "RequestTimeout", "RemoteError",
    "SubscriptionNotFound",
]


class ShmqError(Exception):
    """Base class of every shmq error."""


class Empty(ShmqError, _queue.Empty):
    """Nothing to deliver before the timeout (a queue.Empty, as multiprocessing raises)."""


class Full(ShmqError, _queue.Full):
    """No room before the timeout (a queue.Full, as multiprocessing raises).

    ``reason`` says which limit was reached: "maxsize" (maxsize items queued), "slots" (every
    message slot of a fixed capacity holds a message), "bytes" (no free block of the arena fits
    the message), "busy" (another process held the allocation lock through the wait), "dedup"
    (the deduplication table), or None when not known. The message says what to do."""

    reason: Optional[str] = None


class QueueClosedError(ShmqError, ValueError, OSError):
    """Use of a closed handle: a ValueError (multiprocessing.Queue) and an OSError (SimpleQueue)."""


class QueueNotFound(ShmqError, FileNotFoundError):
    """No queue of that name exists."""


class QueueExistsError(ShmqError, FileExistsError):
    """create=True on a name that exists (pass exist_ok=True to open it instead)."""


class QueuePermissionError(ShmqError, PermissionError):
    """The queue's file mode does not let this user open it."""


class NoSpaceError(ShmqError, OSError):
    """/dev/shm is full (Docker's default is 64 MiB): the segment could not be created or grown."""


class CorruptQueueError(ShmqError):
    """A segment failed validation: its bytes are not a queue this library can trust."""


class IncompatibleQueueError(ShmqError):
    """A valid segment of another layout version, or of another kind than the class opening it."""


class MessageTooLargeError(ShmqError, ValueError):
    """The message can never fit this queue (larger than max_message)."""


class QueueMemoryError(ShmqError, MemoryError):
    """An unbounded queue could not grow (host memory or /dev/shm exhausted)."""


class LeaseExpiredError(ShmqError):
    """The delivery's lease expired and the message was delivered again.

    ``ids``: the message ids concerned (ack_many: each one that had been delivered again)."""

    ids: list[int]


class ArgumentError(ShmqError, ValueError):
    """A bad argument value (not public: callers catch ValueError or ShmqError)."""


class ArgumentTypeError(ShmqError, TypeError):
    """An argument of the wrong type (not public: callers catch TypeError or ShmqError)."""


class QueueOSError(ShmqError, OSError):
    """A system call on a segment failed for a reason no other class names (not public)."""


# request-reply (shmq.rpc)
class NoRespondersError(ShmqError):
    """No responder is attached to the request queue (raised at once, or when the last one left
    while the request waited)."""


class ResponderDiedError(ShmqError):
    """The responder that took the request died before replying (the request is not handed to
    another responder unless the responder side is reliable=True)."""


class RequestTimeout(ShmqError, TimeoutError):
    """No reply arrived in time (a reply that arrives later is dropped and counted)."""


class RemoteError(ShmqError):
    """The responder answered with Request.fail(reason): str(e) is the reason."""


def _queue_name(path: Optional[str]) -> str:
    name = _os.path.basename(path or "")
    return name[len("shmq."):] if name.startswith("shmq.") else name


def _label(path: Optional[str]) -> str:
    """The queue at path as messages name it: by its name, as its handle's repr does, or for an
    anonymous queue ("anonymous" in the repr) with its segment's identifier, "@<creator pid>-..."
    (what `shmq ls` lists)."""
    name = _queue_name(path)
    if name.startswith("@"):
        return f"anonymous queue {name}"
    return f"queue {name!r}"


# What Full says for each reason the core reports (seg.full_why, named by _core.FULL_WHY):
# (why, what to do), with {size}, {maxsize} and {held} filled in; the remedies name the option.
_FULL_WORDS: dict[Optional[str], tuple[str, str]] = {
    "maxsize": ("it holds maxsize={maxsize} items",
                "consume some, wait longer (timeout=), or create the queue with a larger maxsize"),
    "slots": ("every message slot of its fixed capacity holds a message{held} (a fixed capacity has about "
              "one slot per KiB: small messages run out of slots before bytes)",
              "consume some, wait longer (timeout=), or create the queue with a larger capacity, "
              "or capacity=None to let it grow"),
    "bytes": ("no free block of its arena fits this {size}-byte message (blocks are powers of two; "
              "large messages fragment the arena)",
              "consume some, wait longer (timeout=), or create the queue with a larger capacity, "
              "or capacity=None to let it grow"),
    "busy": ("another process held the queue's allocation lock through the whole wait (stopped, e.g. by "
             "SIGSTOP or a debugger?)",
             "try again, or wait longer (timeout=); the lock is taken over if its holder dies"),
    "groups": ("its message-group table has no entry left for another group (4096 groups with messages "
               "queued at once)", "consume some, or use fewer distinct group keys"),
}


def _full(op: str, path: Optional[str], detail: Any) -> Full:
    """The Full of a put or send that found no room, naming the reason and the remedy."""
    size, _mm, why, maxsize = detail if isinstance(detail, tuple) and len(detail) == 4 else (0, 0, None, 0)
    label = _label(path)
    words = _FULL_WORDS.get(why)
    if words is None:
        e = Full(f"{label} is full: consume some, or wait longer (timeout=)")
    else:
        held = " (messages in flight or delayed hold slots too)" if op == "send" else ""
        cause, remedy = (w.format(size=size, maxsize=maxsize, held=held) for w in words)
        e = Full(f"{label} is full: {cause}; {remedy}")
    e.reason = why
    return e


def _oserror(err: Optional[int], path: Optional[str]) -> Exception:
    """An OSError (or subclass) for a failed system call on a segment, naming the cause."""
    name = _queue_name(path)
    if err == _errno.ENOENT:
        return QueueNotFound(err, f"no such queue: {name!r}", path)
    if err == _errno.EEXIST:
        return QueueExistsError(err, f"queue already exists: {name!r} (pass exist_ok=True to open it)", path)
    if err in (_errno.EACCES, _errno.EPERM):
        return QueuePermissionError(err, f"permission denied on queue {name!r} (created by another user "
                                         "with a mode that excludes you; see mode=)", path)
    if err == _errno.ENOSPC:
        return NoSpaceError(err, f"no space left in /dev/shm for queue {name!r} (Docker gives /dev/shm 64 MiB by "
                                 "default: --shm-size; or use a smaller capacity)", path)
    if err == _errno.ENOMEM:
        return QueueMemoryError(f"out of memory mapping queue {name!r}")
    if err in (_errno.EMFILE, _errno.ENFILE):
        return QueueOSError(err, f"no file descriptor left to open queue {name!r} ({_os.strerror(err)}): close "
                                 "unused handles or files, or raise the limit (ulimit -n)", path)
    return QueueOSError(err, f"{_os.strerror(err)} on queue {name!r}", path)


def from_code(rc: int, op: str, path: Optional[str], err: int, detail: Any = None) -> BaseException:
    """The exception for result code rc of the core's call op on the queue at path.

    err: errno of a failed system call (SHMQ_ESYS); detail: what op adds (a message id for
    settles, (size, max_message) for puts, the table size for attach). The binding raises
    what this returns, so every word the user reads is written here."""
    from . import _core
    rcs = _core.RC
    name = _queue_name(path)
    label = _label(path)
    if rc == rcs.get("EJOURNAL"):
        return _journal_error(err, op, label)
    if rc == rcs["ESYS"]:
        e = _oserror(err, path)
        if op == "after_fork":
            e.args = (e.args[0], f"this forked process could not re-open queue {name!r} for itself: {e.args[1]}")
        return e
    if rc == rcs["ESLOTS"]:
        who = "this forked process could not attach to" if op == "after_fork" else "cannot attach to"
        return ShmqError(f"{who} queue {name!r}: its participant table is full ({detail} slots, each held by a "
                         "live handle); close unused handles, or create the queue with a larger max_participants")
    if rc == rcs["ECLOSED"]:
        return QueueClosedError(f"{label} is closed")
    if rc == rcs["ECORRUPT"]:
        if op in ("open", "create"):
            return CorruptQueueError(f"{path}: not a valid shmq segment (failed validation); "
                                     "remove it with `shmq rm` if it is garbage")
        if op == "peek":
            return CorruptQueueError(f"{label}: a queued message failed validation")
        return CorruptQueueError(f"{label} failed validation during {op}")
    if rc == rcs["EINCOMPAT"]:
        return IncompatibleQueueError(f"{path}: made by an shmq with segment layout version {err}; this shmq "
                                      f"reads layout version {_core.LAYOUT_VERSION} (close every process of the "
                                      "other version and recreate the queue)")
    if rc == rcs["ETOOBIG"]:
        if op == "create":
            return ArgumentError("max_message is larger than the capacity can ever hold")
        size, mm = detail[:2]
        return MessageTooLargeError(f"message of {size} bytes is larger than this queue's max_message ({mm} bytes); "
                                    "create the queue with a larger capacity or max_message")
    if rc == rcs["FULL"]:
        return _full(op, path, detail)
    if rc == rcs["TIMEOUT"] and op == "send":
        full = Full(f"{label}: another send of the same dedup_id did not finish in time; try again")
        full.reason = "dedup"
        return full
    if rc == rcs["TIMEOUT"] and op in ("ack", "nack", "extend"):
        return ShmqError(f"message {detail}: another process held this delivery for 100 ms (stopped?); "
                         f"{op} changed nothing, try again")
    if rc == rcs["TIMEOUT"]:
        return _full(op, path, detail) if op == "put" else Empty()
    if rc == rcs["EDEDUPFULL"]:
        full = Full(f"{label} is full: its deduplication table holds only live dedup ids; create the queue "
                    "with a larger dedup_capacity or a shorter dedup_window")
        full.reason = "dedup"
        return full
    if rc == rcs["ENOMEM"]:
        return QueueMemoryError(f"{label} cannot grow any further")
    if rc == rcs["ESTALE"]:
        lease = LeaseExpiredError(f"message {detail}: this delivery's lease expired and the message was delivered "
                                  f"again (or it was settled already); {op} changed nothing")
        lease.ids = [detail] if isinstance(detail, int) else []
        return lease
    if rc == rcs["EINVAL"]:
        if op == "receive":
            return ArgumentError(f"{label} was not created with ack=True: use get()")
        if op == "task_done":
            return ArgumentError("task_done() called too many times")
        return ArgumentError(f"{op} refused by {label}: {_core.strerror(rc)}")
    return ShmqError(f"{op} failed on {label}: {_core.strerror(rc)}")


class SubscriptionNotFound(ShmqError, LookupError):
    """A topic has no named subscription of that name (unsubscribe, or a subscription another
    handle removed)."""


class JournalError(ShmqError, OSError):
    """The journal could not record or sync (an OSError with the errno): after a failed
    fdatasync no send is confirmed again; ENOSPC fails the send and later ones work once
    there is room."""


class CorruptJournalError(JournalError):
    """A journal record before the tail failed validation (``path`` and ``offset`` say where);
    open with journal_recovery="skip" to drop the damaged records and keep the rest."""


def _journal_error(err: int, op: str, label: str) -> JournalError:
    import errno as _errno
    import os as _os
    why = _os.strerror(err) if err else "journal error"
    if err == _errno.ENOSPC:
        hint = "the journal's disk is full: the send was not recorded; free space and send again"
    elif err == _errno.EWOULDBLOCK:
        hint = "another live queue has this journal directory open (one journal per queue)"
    elif err == _errno.EIO:
        hint = ("an fdatasync failed: this journal confirms nothing from now on; close every handle, check the "
                "disk, and reopen (recovery keeps what was synced)")
    else:
        hint = "the journal could not be written"
    return JournalError(err or _errno.EIO, f"{label}: {op}: {why}: {hint}")


# the Redis backend (shmq._redis, DESIGN §11)
class UnsupportedError(ShmqError, ValueError):
    """An option or call the chosen backend cannot provide (the message names it; the Redis
    backend's gaps are listed in docs/guide/redis.md)."""


class BackendConnectionError(ShmqError, ConnectionError):
    """The backend server (Redis) could not be reached or refused the connection."""


__all__ += ["UnsupportedError", "BackendConnectionError"]
