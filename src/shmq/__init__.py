"""shmq: a message queue for processes on one host, in POSIX shared memory."""
from ._core import crash_points, get_spin_us, set_spin_us
from .errors import (CorruptQueueError, Empty, Full, IncompatibleQueueError, LeaseExpiredError,
                     MessageTooLargeError, NoSpaceError, QueueClosedError, QueueExistsError, QueueMemoryError,
                     NoRespondersError, QueueNotFound, QueuePermissionError, RemoteError, RequestTimeout,
                     ResponderDiedError, ShmqError)
from .message import Message
from .queue import JoinableQueue, Queue, SimpleQueue, redrive, unlink
from .rpc import Request, Requester, Responder
from .stats import QueueInfo, list_queues
from .topic import Subscription, SubscriptionInfo, Topic, TopicMessage
from .errors import SubscriptionNotFound
from .priority import PriorityQueue
from ._open import open  # noqa: A004 - shmq.open (DESIGN §5.2)
from .errors import CorruptJournalError, JournalError
from .errors import BackendConnectionError, UnsupportedError  # noqa: E402 - the Redis backend's (DESIGN §11)
from . import metrics  # noqa: F401,E402 - shmq.metrics.render() (DESIGN §5.5); prometheus_client is not imported

__version__ = "0.1.0"

__all__ = [
    "Queue", "SimpleQueue", "JoinableQueue", "Message", "unlink", "redrive", "list_queues", "QueueInfo",
    "ShmqError", "Empty", "Full", "QueueClosedError", "QueueNotFound", "CorruptQueueError",
    "IncompatibleQueueError", "MessageTooLargeError", "QueueMemoryError", "LeaseExpiredError",
    "QueueExistsError", "QueuePermissionError", "NoSpaceError",
    "Requester", "Responder", "Request", "NoRespondersError", "ResponderDiedError", "RequestTimeout", "RemoteError",
    "crash_points", "set_spin_us", "get_spin_us", "__version__",
    "Topic", "Subscription", "SubscriptionInfo", "TopicMessage", "SubscriptionNotFound",
    "PriorityQueue", "open",
    "JournalError", "CorruptJournalError",
    "UnsupportedError", "BackendConnectionError",
]
