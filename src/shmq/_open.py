"""shmq.open(name): a handle of the class the named segment's kind calls for."""
from __future__ import annotations

from typing import Any

from . import _core, _names
from .errors import IncompatibleQueueError, QueueNotFound
from .stats import inspect_path

__all__ = ["open"]


def _classes() -> dict[int, Any]:
    # imported here: the kinds' modules import the handle machinery this module sits beside
    from .priority import PriorityQueue
    from .queue import Queue
    from .topic import Topic
    return {_core.KIND_QUEUE: Queue, _core.KIND_PRIORITY: PriorityQueue, _core.KIND_TOPIC: Topic}


def open(name: str, **options: Any) -> Any:  # noqa: A001 - the public name of DESIGN §5
    """Open the named queue with the class its segment was created as (Queue, an at-least-once
    Queue, PriorityQueue, Topic). options: as for that class (they must agree with the queue's).
    Raises QueueNotFound, IncompatibleQueueError for a kind this shmq cannot open, and what
    the class raises."""
    _names.check_name(name)
    from .queue import _pick_backend
    url = _pick_backend(options.get("backend"))
    if url is not None:                     # the Redis backend: the kind is in the queue's meta hash
        from ._redis.queue import kind_of
        from .priority import PriorityQueue
        from .queue import Queue
        from .topic import Topic
        return {"queue": Queue, "priority": PriorityQueue, "topic": Topic}[kind_of(name, url)](name, **options)
    path = _names.path_of(name)
    try:
        kind = inspect_path(path)["kind"]
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {name!r} (create it with create=True)", path) from None
    cls = _classes().get(kind)
    if cls is None:
        raise IncompatibleQueueError(f"queue {name!r} is of kind {kind}, which this shmq cannot open")
    return cls(name, **options)
