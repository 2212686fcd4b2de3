"""The heap policy for batches of large messages: keep glibc from handing a batch's memory back to the kernel after every batch.

Why (measured, docs/guide/batching.md): get_many(64) of 64 KiB bodies makes 4 MiB of bytes
objects at once. glibc's malloc serves them from the heap (below its 128 KiB mmap threshold),
and when the caller drops the list, the free space at the top of the heap exceeds the 128 KiB
trim threshold: free() returns it to the kernel, and the next batch faults every page in
again (16 page faults per 64 KiB message, 15 of the 16 an avoidable zero-fill). At 1 MiB the
batch is 64 MiB: glibc's own adaptation (it raises the thresholds after freeing one mmapped
block) keeps single gets fast, but a batch trims it all again (256 faults per message).

What: the first batch of at least REPORT_AT bytes sets both thresholds (setting either one
ends glibc's adjustment of both, so they are set together, once, to at least what glibc itself
would reach): blocks below MMAP_THRESHOLD come from the heap, and free memory at its top is kept
up to twice the largest batch seen (at least TRIM_FLOOR, at most TRIM_CEILING). A later, larger
batch raises the trim threshold again. Nothing is set when the user chose (MALLOC_*_ environment
variables, glibc.malloc tunables) or SHMQ_HEAP_TUNE=0, or off glibc. The cost: a process that
received big batches keeps up to that much freed heap for its next ones.
"""
import os

from . import _core

__all__ = ["REPORT_AT", "MMAP_THRESHOLD", "TRIM_FLOOR", "TRIM_CEILING", "state", "on_batch"]

KiB = 1024
MiB = 1024 * KiB
REPORT_AT = 64 * KiB          # half glibc's default trim threshold: two such batches trim
MMAP_THRESHOLD = 32 * MiB     # glibc's ceiling for its own adjustment (64-bit): it never goes higher
TRIM_FLOOR = 2 * MMAP_THRESHOLD   # what glibc sets with it (trim = 2 x mmap threshold)
TRIM_CEILING = 1024 * MiB     # a batch bigger than half this is trimmed as before (bounded retention)
NEVER = (1 << 64) - 1

_USER_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_state = {"tuned": False, "trim_threshold": 0, "mmap_threshold": 0, "why_not": None}


def state():
    """A copy of what the policy did: tuned, the thresholds set, why_not (None or a reason)."""
    return dict(_state)


def _user_chose():
    if os.environ.get("SHMQ_HEAP_TUNE", "1") == "0":
        return "SHMQ_HEAP_TUNE=0"
    for v in _USER_VARS:
        if v in os.environ:
            return f"{v} is set"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in tunables:
        return "GLIBC_TUNABLES sets glibc.malloc tunables"
    return None


def on_batch(nbytes):
    """Called by the binding with the body bytes of a get_many/receive_many batch of at least
    the size it was last given; returns the next size to report (NEVER: do not call again)."""
    if _state["why_not"] is not None:
        return NEVER
    want = min(TRIM_CEILING, max(TRIM_FLOOR, 2 * int(nbytes)))
    if want <= _state["trim_threshold"]:
        return _next(want)
    why = _user_chose()
    if why is None and not _core._mallopt_thresholds(MMAP_THRESHOLD, want):
        why = "mallopt is not available (not glibc) or refused the thresholds"
    if why is not None:
        _state["why_not"] = why
        return NEVER
    _state.update(tuned=True, trim_threshold=want, mmap_threshold=MMAP_THRESHOLD)
    return _next(want)


def _next(trim):
    # report again only a batch that would need a higher trim threshold than the one set
    return NEVER if trim >= TRIM_CEILING else trim // 2 + 1


_core._set_heap_policy(on_batch, REPORT_AT)
