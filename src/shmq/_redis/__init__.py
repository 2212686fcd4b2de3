"""The Redis Streams backend (DESIGN §11): the same public API on a Redis server, chosen by
backend="redis://host:port/db" (also rediss:// and unix://) or SHMQ_BACKEND for named handles.

Layout (docs/guide/redis.md): every key of queue NAME starts with "shmq:{NAME}:" (one hash tag):
``meta`` a hash of settings and counters; ``q`` the list of an at-most-once queue; ``s`` the
stream of an at-least-once queue with its consumer group ``g``; ``l`` lease deadlines; ``d``
delayed message ids with ``m:<id>`` hashes; ``dd:<key>`` dedup ids; ``r:<id>`` a requester's
reply list. A priority queue has a list (``q0``..) or a stream (``s0``..) per level, with that
level's ``l<k>``, ``w<k>``, ``dl<k>`` (shmq._redis.priority); a topic has the stream ``s``
with its seqs as entry ids and one consumer group per named subscription (``g:<name>``),
``sub:<name>`` hashes and the ``subs``/``block`` sets (shmq._redis.topic).
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from importlib import resources
from urllib.parse import urlsplit

from ..errors import ArgumentError, ArgumentTypeError, UnsupportedError

ENV = "SHMQ_BACKEND"
SCHEMES = ("redis", "rediss", "unix")
REAP_S = 0.1            # a waiting consumer looks for consumers whose connection is gone this often


def pick(backend):
    """The backend URL to use for a named handle: `backend` if given, else $SHMQ_BACKEND, else
    None (shared memory). "shm" (or "") names shared memory explicitly. Raises ValueError
    (ShmqError) for a URL it cannot use, naming what is wrong."""
    if backend is None:
        backend = os.environ.get(ENV) or None
        where = f"${ENV}"
    else:
        where = "backend="
    if backend is None:
        return None
    if not isinstance(backend, str):
        raise ArgumentTypeError(f"backend must be a URL string such as 'redis://localhost:6379/0', "
                                f"not {type(backend).__name__}")
    if backend in ("", "shm"):
        return None
    check_url(backend, where)
    return backend


def check_url(url, where="backend="):
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ArgumentError(f"{where} {url!r} is not a valid URL ({e}); use redis://host:port/db, "
                            "rediss://host:port/db or unix:///path/to/redis.sock") from None
    if parts.scheme not in SCHEMES:
        raise ArgumentError(f"{where} {url!r}: unknown scheme {parts.scheme!r}; use redis://host:port/db, "
                            "rediss://host:port/db or unix:///path/to/redis.sock (or 'shm' for shared memory)")
    if parts.scheme == "unix":
        if not parts.path:
            raise ArgumentError(f"{where} {url!r}: a unix:// URL needs the socket's path (unix:///run/redis.sock)")
    else:
        if not parts.hostname:
            raise ArgumentError(f"{where} {url!r}: no host; use redis://host:port/db")
        if port is not None and not 0 < port < 65536:
            raise ArgumentError(f"{where} {url!r}: port must be 1-65535")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ArgumentError(f"{where} {url!r}: the path must be a database number (redis://host:port/0)")
    return url


def _redis_module():
    try:
        import redis
    except ImportError:
        raise UnsupportedError("backend=redis://... needs redis-py: pip install 'shmq[redis]'") from None
    return redis


def client_name(role):
    """A unique CLIENT SETNAME for one handle (its consumer name too): liveness is this name
    being in CLIENT LIST."""
    host = "".join(c if c.isalnum() or c in "-._" else "_" for c in socket.gethostname())[:40]
    return f"shmq-{role}-{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def connect(url, name):
    """A redis-py client on url whose connections are named `name`. Raises ConnectionError
    (a ShmqError) naming the URL when the server cannot be reached."""
    redis = _redis_module()
    try:
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
        # the same reconnect policy on every redis-py version: a dropped connection is opened
        # again at once (up to 3 times, backing off to 0.5 s) before BackendConnectionError
        errors = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
        r = redis.Redis.from_url(url, client_name=name, socket_connect_timeout=5, health_check_interval=0,
                                 retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 3), retry_on_error=errors)
        r.ping()
    except redis.exceptions.ConnectionError as e:
        from ..errors import BackendConnectionError
        raise BackendConnectionError(f"cannot reach the Redis server at {url}: {e}") from None
    except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError) as e:
        from ..errors import BackendConnectionError
        raise BackendConnectionError(f"the Redis server at {url} refused us: {e}") from None
    except ValueError as e:
        raise ArgumentError(f"backend= {url!r}: {e}") from None
    return r


_SOURCES = {}
_lock = threading.Lock()


def script_source(name):
    with _lock:
        src = _SOURCES.get(name)
        if src is None:
            pkg = resources.files(__name__)
            src = _SOURCES[name] = (pkg / "common.lua").read_text() + "\n" + (pkg / f"{name}.lua").read_text()
        return src


def prefix(name):
    return f"shmq:{{{name}}}:"
