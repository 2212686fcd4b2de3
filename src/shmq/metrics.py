"""Prometheus metrics of every shmq queue of this user, read from shared memory without attaching."""
from __future__ import annotations

import http.server
import math
import os
import re
import resource
import socket
import stat as _stat
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import _core, _latency, _names
from .errors import CorruptQueueError, IncompatibleQueueError, ShmqError
from .stats import kind_name

__all__ = ["render", "Collector", "make_server", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every metric of one queue: (metric name, type, stats() key, divisor, help). Counters end in
# _total; units are the base units Prometheus names use (seconds, bytes). The values are those of
# q.stats() (docs/guide/monitoring.md), so a dashboard and a script agree.
_QUEUE_FAMILIES = (
    ("shmq_depth", "gauge", "depth", None,
     "Messages ready to be taken (an at-least-once queue: ready only, not in flight or delayed)."),
    ("shmq_in_flight", "gauge", "in_flight", None, "Messages received and not yet acked (at-least-once queues)."),
    ("shmq_delayed", "gauge", "delayed", None, "Messages waiting for their delay or a retry (at-least-once queues)."),
    ("shmq_unfinished", "gauge", "unfinished", None, "JoinableQueue items put and not yet task_done()."),
    ("shmq_used_bytes", "gauge", "bytes_used", None,
     "Arena bytes in use plus 128 bytes per queued message (stats() bytes_used)."),
    ("shmq_capacity_bytes", "gauge", "capacity", None, "Fixed capacity in bytes; no sample for a growable queue."),
    ("shmq_file_bytes", "gauge", "file_size", None, "Size of the queue's file in /dev/shm."),
    ("shmq_oldest_age_seconds", "gauge", "oldest_age_s", None,
     "Seconds since the oldest ready message was put (0 when empty)."),
    ("shmq_attached", "gauge", "attached", None, "Handles attached whose process is alive."),
    ("shmq_producers", "gauge", "producers", None, "Attached handles that have put at least one message."),
    ("shmq_consumers", "gauge", "consumers", None, "Attached handles that have taken at least one message."),
    ("shmq_last_repair_seconds", "gauge", "last_repair_ms", 1000.0, "Duration of the most recent repair (0 if none)."),
    ("shmq_creation_time_seconds", "gauge", "created_at", None, "When the queue was created, seconds since the epoch."),
    ("shmq_enqueued_total", "counter", "enqueued", None, "Messages put since the queue was created."),
    ("shmq_dequeued_total", "counter", "dequeued", None, "Messages taken since the queue was created."),
    ("shmq_acked_total", "counter", "acked", None, "Messages acked (at-least-once queues)."),
    ("shmq_redelivered_total", "counter", "redelivered", None,
     "Messages delivered again after a delivery ended without an ack (at-least-once queues)."),
    ("shmq_dead_lettered_total", "counter", "dead_lettered", None,
     "Messages moved to the dead-letter queue (at-least-once queues)."),
    ("shmq_dead_letter_failed_total", "counter", "dead_letter_failed", None,
     "Moves the dead-letter queue refused (full): the message waits, delayed, and is tried again."),
    ("shmq_expired_total", "counter", "expired", None,
     "Messages whose TTL passed; those moved to the dead-letter queue count in dead_lettered too."),
    ("shmq_dedup_hits_total", "counter", "dedup_hits", None,
     "Sends answered with an earlier message id: duplicates not queued again (at-least-once queues)."),
    ("shmq_repairs_total", "counter", "repairs", None, "Dead participants repaired."),
    ("shmq_corrupt_skipped_total", "counter", "corrupt_skipped", None,
     "Messages skipped because their shared-memory records failed validation."),
    ("shmq_nacked_total", "counter", "nacked", None, "nack() calls that took effect (at-least-once queues)."),
    ("shmq_late_replies_total", "counter", "late_replies", None,
     "Replies that came after their request gave up (a requester's reply inbox)."),
)

# Latency quantiles (issue 18 item 3: per-participant histograms that stats() summarises as
# wait_p50_s, wait_p99_s, process_p50_s, process_p99_s). Rendered as quantile-labelled gauges,
# only for queues whose stats() carries the key with a value: nothing is made up where the
# figures are absent. A family with no sample at all is left out.
_QUANTILES = (("0.5", "p50"), ("0.99", "p99"))
_LATENCY_FAMILIES = (
    ("shmq_wait_quantile_seconds", "wait", "Time in queue, enqueue to delivery, at the labelled quantile."),
    ("shmq_process_quantile_seconds", "process",
     "Processing time, receive to ack, at the labelled quantile (at-least-once queues)."),
)
# The histograms behind those quantiles (csrc/hist.h: 32 power-of-two buckets from 1.024 us),
# exported with every second bucket edge (a factor of 4 apart: 16 `le` values from 1.024 us to
# 2**40 ns = 1,100 s, then +Inf). The edges are fixed numbers of seconds, exact sums of the core's buckets.
# A queue's histogram is rendered once it has a sample (1,000 idle queues cost no lines).
_HIST_FAMILIES = (
    ("shmq_wait_seconds", "wait", "wait_sum_ns", "Time in queue, enqueue to first delivery."),
    ("shmq_process_seconds", "process", "process_sum_ns", "Processing time, receive to ack (at-least-once queues)."),
)
_HIST_EDGES = tuple(range(0, _latency.N_BUCKETS - 1, 2))   # bucket b's upper edge is exported
_HIST_LE = tuple(_latency.UPPER_S[b] for b in _HIST_EDGES)
_HIST_LE_TEXT = tuple(repr(v) for v in _HIST_LE) + ("+Inf",)

# A topic's subscriptions (labels queue = the topic, subscription, kind = "block", "drop_oldest",
# "ack" or "private"): (metric name, type, key of the subscription's figures, help). A named
# subscription's figures are its group's, kept in shared memory; the private subscriptions of a
# topic are one row (subscription="", kind="private") and only have histograms (their cursors
# and counts are process-local). in_flight and the ack counters only for ack subscriptions.
_SUB_FAMILIES = (
    ("shmq_subscription_lag", "gauge", "lag", "Messages published and not yet delivered to the subscription."),
    ("shmq_subscription_consumers", "gauge", "consumers", "Live handles reading the subscription."),
    ("shmq_subscription_in_flight", "gauge", "in_flight",
     "Messages delivered under a lease and not yet acked (ack subscriptions)."),
    ("shmq_subscription_delivered_total", "counter", "delivered", "Messages delivered to the subscription."),
    ("shmq_subscription_missed_total", "counter", "missed",
     "Messages the subscription lost: overrun (drop_oldest) or past retention before delivery."),
    ("shmq_subscription_acked_total", "counter", "acked", "Deliveries acked (ack subscriptions)."),
    ("shmq_subscription_redelivered_total", "counter", "redelivered",
     "Deliveries put back for another try: lease expiry, nack, a member's death (ack subscriptions)."),
    ("shmq_subscription_dead_lettered_total", "counter", "dead_lettered",
     "Messages moved to the dead-letter queue (ack subscriptions)."),
)
_SUB_HIST_FAMILIES = (
    ("shmq_subscription_wait_seconds", "wait", "wait_sum_ns", "Time in the log, publish to delivery to the subscription."),
    ("shmq_subscription_process_seconds", "process", "process_sum_ns",
     "Processing time, receive to ack (ack subscriptions)."),
)

# Why an entry named shmq.* of this user was not rendered (shmq_scrape_errors{reason=...}).
SCRAPE_ERROR_REASONS = ("corrupt", "incompatible", "no-permission", "unreadable", "not-a-queue", "bad-name")

_ANON_RE = re.compile(re.escape(_names.ANON_MARK) + r"[0-9]+-[0-9A-Za-z]{1,64}\Z")


def _valid_name(name: str) -> bool:
    return bool(_names._NAME_RE.match(name) or _ANON_RE.match(name))


def _kind(st: dict[str, Any]) -> str:
    """The kind as `shmq ls` shows it: an at-least-once queue is `ack`, its dead-letter queue
    (an ack queue that names none of its own: only dead-letter queues do) `dead-letter`."""
    if st["flags"] & _core.F_ACK:
        return "ack" if st["dead_letter"] else "dead-letter"
    return kind_name(st)


_Found = list[tuple[str, str, dict[str, Any]]]
_Labels = tuple[tuple[str, str], ...]
_Family = tuple[str, str, str, list[tuple[_Labels, Any]]]


# Open read-only mappings kept between scrapes (issue 18 item 4's speed): opening, mapping and
# validating a segment was a third of a scrape. An entry is reused while the directory entry
# names the same inode; one that disappeared is closed at the next scrape (until then its fd
# keeps an unlinked queue's memory allocated). Bounded, so a host with very many queues falls
# back to opening each one per scrape (the SIGBUS guard protects 4096 segments per process).
_CACHE_MAX = 2048
# path -> [inode, core, signature, stats, oldest] of the last scrape
_cache: dict[str, list[Any]] = {}
_lock = threading.Lock()                  # ThreadingHTTPServer scrapes concurrently: one reader at a time


def _cache_limit() -> int:
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 0
    return max(0, min(_CACHE_MAX, (soft if soft > 0 else 1024) // 4))


def _scrape_stats(core: _core.Core, prev: Optional[list[Any]] = None) -> dict[str, Any]:
    """The stats() figures a scrape renders (the same values as q.stats(): tests compare them),
    with the summed histograms under "histograms", from one call into the core. prev: the cache
    entry of the last scrape ([inode, core, signature, stats, oldest]): a queue whose figures
    are all unchanged gets its previous stats object back (render() then reuses its lines), with
    only oldest_age_s brought up to date (the oldest message is the same one: its timestamp,
    `oldest`, is kept)."""
    topic = prev is not None and prev[3] is not None and prev[3]["kind"] == _core.KIND_TOPIC
    # a topic's subscription figures are not in the signature: read them on every scrape
    sig, st, hist = core._scrape(prev[2] if prev is not None and prev[3] is not None and not topic else 0)
    if st is None:
        assert prev is not None
        old = prev[3]
        if prev[4]:
            old["oldest_age_s"] = max(0.0, time.time() - prev[4])
        return old
    if prev is not None:
        prev[2] = sig
    oldest = 0.0
    if st["flags"] & _core.F_ACK:
        oldest_ns = st.pop("oldest_ready_ns")
        oldest = oldest_ns / 1e9 if oldest_ns else 0.0
    else:
        st.pop("oldest_ready_ns")
        st["in_flight"] = st["delayed"] = 0
        head = core._peek(0, 0) if st["depth"] else None
        oldest = head[1] if head else 0.0
    st["oldest_age_s"] = max(0.0, time.time() - oldest) if oldest else 0.0
    if hist is not None:
        w, p = hist["wait"], hist["process"]
        st["wait_p50_s"] = _latency.quantile(w, 0.5) if w else None
        st["wait_p99_s"] = _latency.quantile(w, 0.99) if w else None
        st["process_p50_s"] = _latency.quantile(p, 0.5) if p else None
        st["process_p99_s"] = _latency.quantile(p, 0.99) if p else None
    st["histograms"] = hist
    if st["kind"] == _core.KIND_TOPIC:
        from .topic import latency_keys, sum_hists
        st["topic_subs"] = rows = _topic_rows(core, hist)
        # the topic's own histograms: every delivery of every subscription (as Topic.stats())
        total = sum_hists(h for _s, _k, _f, h in rows)
        if total is not None:
            for base in ("wait", "process"):
                if total[base] is not None and not sum(total[base]):
                    total[base] = None
        st["histograms"] = total
        latency_keys(st, total)
    if prev is not None:
        prev[3] = st
        prev[4] = oldest
    return st


def _topic_rows(core: _core.Core, private: Optional[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], Any]]:
    """[(subscription, kind, figures, histograms)] of a topic: its named subscriptions by name,
    then its private readers' row when they have a sample."""
    from .topic import sub_kind
    rows = []
    for rec in sorted(_core._topic_subscriptions(core), key=lambda r: r[2]):
        fig: dict[str, Any] = {"lag": rec[7], "consumers": rec[8], "delivered": rec[6], "missed": rec[5]}
        if rec[3] & _core.TSUB_ACK:
            fig.update(in_flight=rec[13], acked=rec[10], redelivered=rec[11], dead_lettered=rec[12])
        rows.append((rec[2], sub_kind(rec[3]), fig, _core._topic_sub_hist(core, rec[0])))
    if private is not None:
        rows.append(("", "private", {}, private))
    return rows


def _stats_at(path: str, inode: int, live: set[str], limit: int) -> dict[str, Any]:
    """_scrape_stats of the segment at path through the cache. Raises what opening raises."""
    live.add(path)
    hit = _cache.get(path)
    if hit is not None:
        if hit[0] == inode and hit[1].opened and not hit[1].closed:
            try:
                return _scrape_stats(hit[1], hit)
            except BaseException:
                pass                      # truncated under us, say: open it again below
        del _cache[path]
        hit[1]._close()
    core = _core.Core()
    core._open(path, -1, False)
    entry: list[Any] = [inode, core, 0, None, 0.0]
    try:
        st = _scrape_stats(core, entry)
    except BaseException:
        core._close()
        raise
    if len(_cache) < limit:
        _cache[path] = entry
    else:
        core._close()
    return st


def _by_name(item: tuple[str, Any]) -> str:
    return item[0]


def _read_all() -> tuple[_Found, dict[str, int], float]:
    """([(name, kind, stats)] sorted by name, {reason: count} of entries not read, seconds taken).
    Only entries owned by this user are considered; each is judged on its own and none raises."""
    with _lock:
        return _read_all_locked()


def _read_all_locked() -> tuple[_Found, dict[str, int], float]:
    t0 = time.perf_counter()
    errors = dict.fromkeys(SCRAPE_ERROR_REASONS, 0)
    found: _Found = []
    uid = os.geteuid()
    limit = _cache_limit()
    live: set[str] = set()
    try:
        with os.scandir(_names.SHM_DIR) as it:
            entries = [(e.name, e) for e in it if e.name.startswith(_names.PREFIX) and "~" not in e.name]
    except OSError:
        entries = []                      # no /dev/shm (or not readable): nothing to report
    entries.sort(key=_by_name)
    plen = len(_names.PREFIX)
    for f, e in entries:
        name = f[plen:]
        path = e.path
        hit = _cache.get(path)
        if hit is not None and hit[0] == e.inode() and e.is_file(follow_symlinks=False):
            pass                          # the file we opened and checked before (owner, kind)
        else:
            try:
                s = e.stat(follow_symlinks=False)
            except OSError:
                continue                  # removed while we listed
            if s.st_uid != uid:
                continue                  # another user's: not ours to report (and 0600 anyway)
            if not _stat.S_ISREG(s.st_mode):
                errors["not-a-queue"] += 1  # a directory, symlink, FIFO...: never opened
                continue
        if hit is None and not _valid_name(name):
            errors["bad-name"] += 1       # planted: no queue can be made under such a name
            continue
        try:
            st = _stats_at(e.path, e.inode(), live, limit)
        except FileNotFoundError:
            continue                      # removed while we listed
        except CorruptQueueError:
            errors["corrupt"] += 1
            continue
        except IncompatibleQueueError:
            errors["incompatible"] += 1
            continue
        except PermissionError:
            errors["no-permission"] += 1
            continue
        except ShmqError:
            errors["corrupt"] += 1
            continue
        except Exception:                 # noqa: BLE001 - a scrape must go on whatever one file holds
            errors["unreadable"] += 1
            continue
        found.append((name, _kind(st), st))
    for path in [p for p in _cache if p not in live]:
        _cache.pop(path)[1]._close()      # gone (or no longer a queue of ours): let its memory go
    return found, errors, time.perf_counter() - t0


def _escape_label(value: str) -> str:
    """A label value of the text format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: Any) -> str:
    if isinstance(v, int):
        return str(int(v))                # int(): a bool as 0/1
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _value(st: dict[str, Any], key: str, div: Optional[float]) -> Any:
    """The sample of one family for one queue, or None for no sample."""
    v = st.get(key)
    if v is None or (key == "capacity" and not v):
        return None                       # growable: capacity 0 means unbounded, not zero bytes
    return v / div if div else v


def _samples(found: _Found, errors: dict[str, int], seconds: float) -> Iterator[_Family]:
    """(name, type, help, [(labels, value)]) of every family, in the order they are rendered."""
    rows: list[tuple[_Labels, Any]]
    # one label tuple per queue, shared by all its samples (render() escapes it once)
    based: list[tuple[_Labels, dict[str, Any]]] = [((("queue", q), ("kind", kind)), st) for q, kind, st in found]
    for name, typ, key, div, text in _QUEUE_FAMILIES:
        if div is None and key != "capacity":
            rows = [(lab, st[key]) for lab, st in based if st.get(key) is not None]
        else:
            rows = [(lab, v) for lab, v in ((lab, _value(st, key, div)) for lab, st in based) if v is not None]
        yield name, typ, text, rows
    for name, base, text in _LATENCY_FAMILIES:
        rows = []
        for q, kind, st in found:
            for quantile, suffix in _QUANTILES:
                v = st.get(f"{base}_{suffix}_s")
                if v is not None:
                    rows.append(((("queue", q), ("kind", kind), ("quantile", quantile)), v))
        if rows:
            yield name, "gauge", text, rows
    for name, base, sum_key, text in _HIST_FAMILIES:
        hrows: list[tuple[_Labels, Any]] = []
        for lab, st in based:
            h = st.get("histograms")
            if not h:
                continue
            counts = h[base]
            if not counts:
                continue
            n = sum(counts)
            if n <= 0:
                continue
            cum, acc, at = [], 0, 0
            for b in _HIST_EDGES:
                while at <= b:
                    acc += counts[at]
                    at += 1
                cum.append(acc)
            cum.append(n)
            hrows.append((lab, (cum, h[sum_key] / 1e9, n)))
        if hrows:
            yield name, "histogram", text, hrows
    subs = [(q, sub, kind, fig, h) for q, _kind, st in found for sub, kind, fig, h in st.get("topic_subs") or ()]
    for name, typ, key, text in _SUB_FAMILIES:
        rows = [((("queue", q), ("subscription", sub), ("kind", kind)), fig[key])
                for q, sub, kind, fig, _h in subs if key in fig]
        if rows:
            yield name, typ, text, rows
    for name, base, sum_key, text in _SUB_HIST_FAMILIES:
        hrows = []
        for q, sub, kind, _fig, h in subs:
            counts = h[base] if h else None
            n = sum(counts) if counts else 0
            if n <= 0:
                continue
            cum, acc, at = [], 0, 0
            for b in _HIST_EDGES:
                while at <= b:
                    acc += counts[at]
                    at += 1
                cum.append(acc)
            cum.append(n)
            hrows.append(((("queue", q), ("subscription", sub), ("kind", kind)), (cum, h[sum_key] / 1e9, n)))
        if hrows:
            yield name, "histogram", text, hrows
    yield from _scrape_families(len(found), errors, seconds)


def _scrape_families(n: int, errors: dict[str, int], seconds: float) -> Iterator[_Family]:
    yield "shmq_scrape_queues", "gauge", "Queues read by this scrape.", [((), n)]
    yield ("shmq_scrape_errors", "gauge", "Entries named shmq.* of this user in /dev/shm that this scrape could not "
           "read as a queue, by reason.", [((("reason", r),), n) for r, n in errors.items()])
    yield "shmq_scrape_duration_seconds", "gauge", "Seconds this scrape took to read the queues.", [((), seconds)]


# Formatted lines of each queue, reused while its figures are unchanged (most are, between two
# scrapes): name -> (figures, lines per family).
_line_cache: dict[str, tuple[dict[str, Any], str, list[str]]] = {}
_AGE_NAME = "shmq_oldest_age_seconds"
_AGE_COL = [f[0] for f in _QUEUE_FAMILIES].index(_AGE_NAME)
# The joined sample lines of every family of the last render and the rows they were joined
# from: a render whose rows are all the same objects (every queue idle) reuses them.
_bodies: list[Any] = [None, None]


def _hist_text(name: str, inner: str, counts: Optional[list[int]], sum_ns: int) -> str:
    """The _bucket, _sum and _count lines of one histogram ("" when it has no sample)."""
    n = sum(counts) if counts else 0
    if n <= 0:
        return ""
    assert counts is not None
    parts, acc, at = [], 0, 0
    for le, b in zip(_HIST_LE_TEXT, _HIST_EDGES):
        while at <= b:
            acc += counts[at]
            at += 1
        parts.append(f'{name}_bucket{{{inner},le="{le}"}} {acc}\n')
    parts.append(f'{name}_bucket{{{inner},le="+Inf"}} {n}\n')
    parts.append(f"{name}_sum{{{inner}}} {_num(sum_ns / 1e9)}\n{name}_count{{{inner}}} {n}\n")
    return "".join(parts)


def _sub_lines(q: str, st: dict[str, Any]) -> list[str]:
    """One string per family of _SUB_FAMILIES and _SUB_HIST_FAMILIES: a topic's subscription lines."""
    rows = st.get("topic_subs") or ()
    out = []
    inners = [f'queue="{_escape_label(q)}",subscription="{_escape_label(sub)}",kind="{kind}"'
              for sub, kind, _f, _h in rows]
    for name, _typ, key, _text in _SUB_FAMILIES:
        out.append("".join(f"{name}{{{inner}}} {fig[key]}\n"
                           for inner, (_s, _k, fig, _h) in zip(inners, rows) if key in fig))
    for name, base, sum_key, _text in _SUB_HIST_FAMILIES:
        out.append("".join(_hist_text(name, inner, h[base], h[sum_key])
                           for inner, (_s, _k, _f, h) in zip(inners, rows) if h))
    return out


def _lines_of(q: str, kind: str, st: dict[str, Any]) -> list[str]:
    """One string per family (of _QUEUE_FAMILIES, _LATENCY_FAMILIES, _HIST_FAMILIES,
    _SUB_FAMILIES, _SUB_HIST_FAMILIES, in that order) holding this queue's sample lines, "" where
    it has none; the oldest-age family's entry is its label prefix (render() adds the value,
    the one figure that changes while a queue is idle). Cached while _scrape_stats hands back
    the same stats object (nothing read changed)."""
    hit = _line_cache.get(q)
    if hit is not None and hit[0] is st and hit[1] == kind:
        return hit[2]
    h = st.get("histograms")
    inner = f'queue="{_escape_label(q)}",kind="{_escape_label(kind)}"'
    lab = "{" + inner + "} "
    lines: list[str] = []
    for name, _typ, k, div, _text in _QUEUE_FAMILIES:
        if name == _AGE_NAME:
            lines.append(f"{name}{lab}")
            continue
        v = st.get(k) if div is None and k != "capacity" else _value(st, k, div)
        lines.append("" if v is None else f"{name}{lab}{v if type(v) is int else _num(v)}\n")
    for name, base, _text in _LATENCY_FAMILIES:
        parts = []
        for quantile, suffix in _QUANTILES:
            v = st.get(f"{base}_{suffix}_s")
            if v is not None:
                parts.append(f'{name}{{{inner},quantile="{quantile}"}} {_num(v)}\n')
        lines.append("".join(parts))
    for name, base, sum_key, _text in _HIST_FAMILIES:
        lines.append(_hist_text(name, inner, h[base] if h else None, h[sum_key] if h else 0))
    if "topic_subs" in st:
        lines.extend(_sub_lines(q, st))
    else:
        lines.extend(_NO_SUB_LINES)
    _line_cache[q] = (st, kind, lines)
    return lines


_HEADS = tuple([(name, typ, text) for name, typ, _k, _d, text in _QUEUE_FAMILIES] +
               [(name, "gauge", text) for name, _b, text in _LATENCY_FAMILIES] +
               [(name, "histogram", text) for name, _b, _s, text in _HIST_FAMILIES] +
               [(name, typ, text) for name, typ, _k, text in _SUB_FAMILIES] +
               [(name, "histogram", text) for name, _b, _s, text in _SUB_HIST_FAMILIES])
_NO_SUB_LINES = ("",) * (len(_SUB_FAMILIES) + len(_SUB_HIST_FAMILIES))
_HEAD_TEXT = tuple(f"# HELP {name} {_escape_help(text)}\n# TYPE {name} {typ}\n" for name, typ, text in _HEADS)


def render() -> str:
    """Every queue of this user in /dev/shm in the Prometheus text format 0.0.4: counters and
    gauges of stats() with the labels `queue` (anonymous queues: @pid-hex) and `kind` (as
    `shmq ls` shows it), the latency histograms, and the subscriptions of topics. Read without
    attaching: no participant slot is taken and nothing is unpickled. An entry that cannot be
    read is skipped and counted in shmq_scrape_errors; render() itself never raises for what it
    finds in /dev/shm."""
    found, errors, seconds = _read_all()
    with _lock:
        per_queue = [_lines_of(q, kind, st) for q, kind, st in found]
        if len(_line_cache) > len(found):
            names = {q for q, _k, _s in found}
            for q in [q for q in _line_cache if q not in names]:
                del _line_cache[q]
        rows, bodies = _bodies
        if rows is None or len(rows) != len(per_queue) or any(a is not b for a, b in zip(rows, per_queue)):
            columns = list(zip(*per_queue)) if per_queue else [()] * len(_HEADS)
            bodies = ["".join(col) for col in columns]
            _bodies[:] = [per_queue, bodies]
    # the one column that changes while queues are idle: the age of their oldest message
    ages = []
    for (_q, _k, st), lines in zip(found, per_queue):
        v = st["oldest_age_s"]
        ages.append(f"{lines[_AGE_COL]}{_num(v) if v else '0.0'}\n")
    out: list[str] = []
    n_always = len(_QUEUE_FAMILIES)
    for i, (name, typ, text) in enumerate(_HEADS):
        body = "".join(ages) if i == _AGE_COL else bodies[i]
        if body or i < n_always:
            out.append(_HEAD_TEXT[i])
            out.append(body)
    for name, typ, text, srows in _scrape_families(len(found), errors, seconds):
        out.append(f"# HELP {name} {_escape_help(text)}\n# TYPE {name} {typ}\n")
        for lab, v in srows:
            s = ("{" + ",".join(f'{k}="{_escape_label(x)}"' for k, x in lab) + "} ") if lab else " "
            out.append(f"{name}{s}{v if type(v) is int else _num(v)}\n")
    return "".join(out)


class Collector:
    """A prometheus_client collector of the same figures as render(): register it with
    `prometheus_client.REGISTRY.register(shmq.metrics.Collector())`. Raises ImportError when
    prometheus_client is not installed (pip install 'shmq[metrics]')."""

    def __init__(self) -> None:
        try:
            import prometheus_client.core  # noqa: F401 - optional dependency, loaded only here
        except ImportError as e:
            raise ImportError("shmq.metrics.Collector needs prometheus_client: pip install 'shmq[metrics]'") from e

    @staticmethod
    def _family(name: str, typ: str, text: str,
                label_names: list[str]) -> Union[CounterMetricFamily, GaugeMetricFamily]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        cls = CounterMetricFamily if typ == "counter" else GaugeMetricFamily
        return cls(name, text, labels=label_names)

    def describe(self) -> Iterator[Union[CounterMetricFamily, GaugeMetricFamily]]:
        """The families without samples (so registering reads no queue)."""
        for name, typ, _key, _div, text in _QUEUE_FAMILIES:
            yield self._family(name, typ, text, ["queue", "kind"])
        for name, typ, text, rows in _samples([], dict.fromkeys(SCRAPE_ERROR_REASONS, 0), 0.0):
            if name.startswith("shmq_scrape"):
                yield self._family(name, typ, text, [k for k, _ in rows[0][0]])

    def collect(self) -> Iterator[Union[CounterMetricFamily, GaugeMetricFamily]]:
        """Read every queue now and yield one metric family per metric of render()."""
        found, errors, seconds = _read_all()
        for name, typ, text, rows in _samples(found, errors, seconds):
            if typ == "histogram":
                from prometheus_client.core import HistogramMetricFamily
                hf = HistogramMetricFamily(name, text, labels=[k for k, _ in rows[0][0]])
                for lab, (cum, total_s, _n) in rows:
                    hf.add_metric([x for _, x in lab], list(zip(_HIST_LE_TEXT, cum)), total_s)
                yield hf
                continue
            fam = self._family(name, typ, text, [k for k, _ in rows[0][0]] if rows else ["queue", "kind"])
            for lab, v in rows:
                fam.add_metric([x for _, x in lab], v)
            yield fam


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "shmq-metrics"

    def _reply(self, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            body, code, ctype = b"not found: metrics are at /metrics\n", 404, "text/plain; charset=utf-8"
        else:
            body, code, ctype = render().encode("utf-8"), 200, CONTENT_TYPE
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self._reply(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass                              # one line per scrape would flood the terminal


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(host: str = "127.0.0.1", port: int = 9108) -> http.server.ThreadingHTTPServer:
    """An HTTP server of render() at /metrics (other paths: 404), bound and not yet serving:
    call serve_forever(), and server_close() when done. port 0 picks a free port
    (server.server_address[1]). Raises OSError when the address cannot be bound."""
    return (_Server6 if ":" in host else _Server)((host, port), _Handler)
