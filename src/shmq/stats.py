"""Queue inventory: QueueInfo records and list_queues(), read without attaching."""
from __future__ import annotations

import os
import stat as _stat
import time
from typing import Any, NamedTuple, Optional, Union

from . import _core, _latency, _names
from ._options import ACK_COUNTERS, SETTINGS_KEYS
from .errors import CorruptQueueError, IncompatibleQueueError, ShmqError

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


def kind_name(st: dict[str, Any]) -> str:
    if st["flags"] & _core.F_JOINABLE:
        return "joinable"
    return {_core.KIND_QUEUE: "queue", _core.KIND_PRIORITY: "priority", _core.KIND_TOPIC: "topic"}.get(st["kind"], "?")


def settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The core's raw counters (Core._raw_stats) under their public names, in seconds/ms."""
    st = {}
    for k, v in raw.items():
        public, div = SETTINGS_KEYS.get(k, (k, None))
        st[public] = v / div if div else v
    return st


def complete_stats(core: _core.Core, raw: dict[str, Any], histograms: bool = False) -> dict[str, Any]:
    """Every key every kind reports (DESIGN §5.1, shmq._options.STATS_KEYS) from the core's raw
    counters. histograms=True also keeps the summed bucket counts under "histograms" (metrics)."""
    st = settings(raw)
    hist = core._hist()
    _latency.add_keys(st, hist)
    if histograms:
        st["histograms"] = hist
    st["skipped_cells"] = 0  # the ring has no holes to skip (docs/internals/ring.md)
    if st["kind"] == _core.KIND_PRIORITY:  # DESIGN §5.5: per kind, priority "levels" (ready per level)
        _lv, mw, counts = core._prio_info()
        st["levels"] = counts
        st["max_wait"] = mw / 1e9 if mw else None
    oldest_ns = st.pop("oldest_ready_ns")
    if st["kind"] == _core.KIND_TOPIC:   # a log, not a ring: shmq.topic fills the figures
        from .topic import topic_stats
        return topic_stats(core, st)
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


def inspect_path(path: str, histograms: bool = True) -> dict[str, Any]:
    """Counters of the segment at path, read without attaching (participants are not disturbed),
    with the summed latency bucket counts under "histograms" (None when the segment has none).
    Raises FileNotFoundError, PermissionError or another OSError (a symlink, which is never
    followed, or a directory), CorruptQueueError, IncompatibleQueueError."""
    c = _core.Core()
    c._open(path, -1, False)
    try:
        return complete_stats(c, c._raw_stats(), histograms)
    finally:
        c._close()


NOT_A_QUEUE = "not-a-queue"     # a directory, symlink, FIFO, socket or device named shmq.*: never opened


def _bare(name: str, kind: str) -> QueueInfo:
    return QueueInfo(name, kind, None, None, None, None, None, None)


def entry_kind(path: str) -> Union[str, bool, None]:
    """None for a regular file (a candidate segment), NOT_A_QUEUE for any other kind of entry,
    False when nothing is there any more. Judged with lstat: a symlink is never followed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return None if _stat.S_ISREG(mode) else NOT_A_QUEUE


def scan(include_anonymous: bool = True) -> list[tuple[QueueInfo, Optional[dict[str, Any]]]]:
    """[(QueueInfo, counters or None)] for every shmq.* entry of /dev/shm, sorted by name. Each
    entry is judged on its own: one that is no queue, or that cannot be read, is listed with a
    kind saying so and no counters, and never stops the listing."""
    out: list[tuple[QueueInfo, Optional[dict[str, Any]]]] = []
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
        path = os.path.join(_names.SHM_DIR, f)
        kind = entry_kind(path)
        if kind is False:
            continue  # removed while we listed
        if isinstance(kind, str):
            out.append((_bare(name, kind), None))
            continue
        try:
            st = inspect_path(path)
        except CorruptQueueError:
            out.append((_bare(name, "corrupt"), None))
            continue
        except IncompatibleQueueError:
            out.append((_bare(name, "incompatible"), None))
            continue
        except FileNotFoundError:
            continue  # removed while we listed
        except PermissionError:
            out.append((_bare(name, "no-permission"), None))
            continue
        except OSError:
            # replaced by a directory or symlink since the lstat (ELOOP, EISDIR), or a file
            # the kernel will not map (ENODEV, EINVAL): not something we can read as a queue
            out.append((_bare(name, NOT_A_QUEUE if entry_kind(path) else "unreadable"), None))
            continue
        except ShmqError:
            out.append((_bare(name, "corrupt"), None))
            continue
        out.append((QueueInfo(name, kind_name(st), st["depth"], st["bytes_used"], st["capacity"] or None,
                              st["attached"], st["creator_pid"], st["created_at"], st["producers"],
                              st["consumers"]), st))
    return out


def list_queues(include_anonymous: bool = True) -> list[QueueInfo]:
    """Every shmq.* entry in /dev/shm as QueueInfo, sorted by name. Entries that are not queues
    or fail validation are listed with kind 'not-a-queue' (a directory, symlink, FIFO...),
    'corrupt', 'incompatible', 'no-permission' or 'unreadable', and no counters; none of them
    stops the listing."""
    return [qi for qi, _ in scan(include_anonymous)]
