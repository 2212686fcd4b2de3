"""Queue inventory: QueueInfo records and list_queues(), read without attaching."""
import os
import time
from typing import NamedTuple, Optional

from . import _core, _names
from ._options import ACK_COUNTERS, SETTINGS_KEYS
from .errors import CorruptQueueError, IncompatibleQueueError

__all__ = ["QueueInfo", "list_queues", "inspect_path", "complete_stats", "settings"]


class QueueInfo(NamedTuple):
    """What `list_queues()` and `shmq ls` report about one queue."""
    name: str
    kind: str
    depth: Optional[int]
    bytes_used: Optional[int]
    capacity: Optional[int]       # bytes; None for an unbounded (growable) queue
    attached: Optional[int]
    creator_pid: Optional[int]
    created_at: Optional[float]   # seconds since the epoch
    producers: Optional[int] = None
    consumers: Optional[int] = None


def kind_name(st):
    if st["flags"] & _core.F_JOINABLE:
        return "joinable"
    return {_core.KIND_QUEUE: "queue", _core.KIND_PRIORITY: "priority", _core.KIND_TOPIC: "topic"}.get(st["kind"], "?")


def settings(raw):
    """The core's raw counters (Core._raw_stats) under their public names, in seconds/ms."""
    st = {}
    for k, v in raw.items():
        public, div = SETTINGS_KEYS.get(k, (k, None))
        st[public] = v / div if div else v
    return st


def complete_stats(core, raw):
    """Every key every kind reports (DESIGN §5.1, shmq._options.STATS_KEYS) from the core's raw
    counters."""
    st = settings(raw)
    st["skipped_cells"] = 0  # the ring has no holes to skip (docs/internals/ring.md)
    oldest_ns = st.pop("oldest_ready_ns")
    if st["flags"] & _core.F_ACK:
        # counted by the core: descriptors by state (depth = ready only) and settle counters
        st["oldest_age_s"] = max(0.0, time.time() - oldest_ns / 1e9) if oldest_ns else 0.0
        return st
    # At-most-once: a taken message is gone, nothing is in flight, delayed or acked.
    for k in ACK_COUNTERS:
        st[k] = 0
    head = core._peek(0, 0)
    st["oldest_age_s"] = max(0.0, time.time() - head[1]) if head else 0.0
    return st


def inspect_path(path):
    """Counters of the segment at path, read without attaching (participants are not disturbed)."""
    c = _core.Core()
    c._open(path, -1, False)
    try:
        return complete_stats(c, c._raw_stats())
    finally:
        c._close()


def list_queues(include_anonymous=True):
    """Every queue segment in /dev/shm as QueueInfo, sorted by name. Segments that fail
    validation are listed with kind 'corrupt' or 'incompatible' and no counters."""
    out = []
    try:
        files = sorted(os.listdir(_names.SHM_DIR))
    except FileNotFoundError:
        return out
    for f in files:
        if not f.startswith(_names.PREFIX) or "~" in f:
            continue
        name = f[len(_names.PREFIX):]
        if name.startswith(_names.ANON_MARK) and not include_anonymous:
            continue
        try:
            st = inspect_path(os.path.join(_names.SHM_DIR, f))
        except CorruptQueueError:
            out.append(QueueInfo(name, "corrupt", None, None, None, None, None, None))
            continue
        except IncompatibleQueueError:
            out.append(QueueInfo(name, "incompatible", None, None, None, None, None, None))
            continue
        except FileNotFoundError:
            continue  # removed while we listed
        except PermissionError:
            out.append(QueueInfo(name, "no-permission", None, None, None, None, None, None))
            continue
        out.append(QueueInfo(name, kind_name(st), st["depth"], st["bytes_used"], st["capacity"] or None,
                             st["attached"], st["creator_pid"], st["created_at"], st["producers"], st["consumers"]))
    return out
