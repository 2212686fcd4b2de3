"""Exceptions of shmq: each derives from ShmqError and from the builtin that fits."""
import errno as _errno
import os as _os
import queue as _queue

__all__ = [
    "ShmqError", "Empty", "Full", "QueueClosedError", "QueueNotFound", "CorruptQueueError",
    "IncompatibleQueueError", "MessageTooLargeError", "QueueMemoryError", "LeaseExpiredError",
    "QueueExistsError", "QueuePermissionError", "NoSpaceError",
]


class ShmqError(Exception):
    """Base class of every shmq error."""


class Empty(ShmqError, _queue.Empty):
    """Nothing to deliver before the timeout (a queue.Empty, as multiprocessing raises)."""


class Full(ShmqError, _queue.Full):
    """No room before the timeout (a queue.Full, as multiprocessing raises)."""


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
    """A valid segment of another layout version."""


class MessageTooLargeError(ShmqError, ValueError):
    """The message can never fit this queue (larger than max_message)."""


class QueueMemoryError(ShmqError, MemoryError):
    """An unbounded queue could not grow (host memory or /dev/shm exhausted)."""


class LeaseExpiredError(ShmqError):
    """The delivery's lease expired and the message was delivered again."""


def _oserror(err, path):
    """An OSError (or subclass) for a failed system call on a segment, naming the cause."""
    name = _os.path.basename(path or "")
    if name.startswith("shmq."):
        name = name[len("shmq."):]
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
    return OSError(err, f"{_os.strerror(err)} on queue {name!r}", path)
