"""Latency figures from the core's histograms (csrc/hist.h): quantiles, bucket bounds, stats keys."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import _core

N_BUCKETS = _core.HIST_BUCKETS
BASE_LOG2 = _core.HIST_BASE_LOG2
# Upper bound of bucket b in ns (the last bucket has none: +Inf). Bucket 0 is [0, 2**BASE_LOG2).
UPPER_NS = tuple(1 << (b + BASE_LOG2) for b in range(N_BUCKETS - 1))
UPPER_S = tuple(u / 1e9 for u in UPPER_NS)
# stats() keys of this module (every kind reports them; None where no sample was taken).
LATENCY_KEYS = ("wait_p50_s", "wait_p99_s", "process_p50_s", "process_p99_s")
COUNTER_KEYS = ("nacked", "late_replies")


def _lower_ns(b: int) -> int:
    return 0 if b == 0 else 1 << (b + BASE_LOG2 - 1)


def quantile(counts: Sequence[int], q: float) -> Optional[float]:
    """The q-quantile in seconds of a histogram of N_BUCKETS counts, interpolated linearly inside
    its bucket (a bucket spans a factor of two: the estimate is within that bucket); None when
    empty. The open last bucket reports its lower bound. untrusted counts: any non-negative
    integers (garbage gives a garbage figure, never an error)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for b, n in enumerate(counts):
        if n <= 0:
            continue
        if seen + n >= rank:
            lo = _lower_ns(b)
            if b >= N_BUCKETS - 1:
                return lo / 1e9
            hi = UPPER_NS[b]
            return (lo + (hi - lo) * max(0.0, min(1.0, (rank - seen) / n))) / 1e9
        seen += n
    return _lower_ns(N_BUCKETS - 1) / 1e9


def add_keys(st: dict[str, Any], hist: Optional[dict[str, Any]]) -> None:
    """Put the latency keys and counters into a stats dict from core._hist() (None: no histogram
    region, as in a segment of an older version: the keys are None and the counters 0)."""
    if hist is None:
        for k in LATENCY_KEYS:
            st[k] = None
        for k in COUNTER_KEYS:
            st[k] = 0
        return
    st["wait_p50_s"] = quantile(hist["wait"], 0.5)
    st["wait_p99_s"] = quantile(hist["wait"], 0.99)
    st["process_p50_s"] = quantile(hist["process"], 0.5)
    st["process_p99_s"] = quantile(hist["process"], 0.99)
    st["nacked"] = hist["nacks"]
    st["late_replies"] = hist["late_replies"]
