"""Benchmark: receiving 1 MiB numpy arrays with get() (a copy) against get(copy=False) (a
read-only view into shared memory), as bytes per second "equivalent": the array's size over the
time a get takes. The queue is filled first, so only the receiving side is timed; each view is
released (del) before the next get, as a consumer that processes one array at a time does.

usage: python benchmarks/bench_zero_copy.py [--quick]
"""
import argparse
import gc
import os
import statistics
import sys
import time

import numpy as np

import shmq


def run(n, copy, size):
    name = f"bench-zc-{os.getpid()}"
    # a 1 MiB array plus its framing takes a 2 MiB buddy block; the arena is 3/4 of the capacity
    q = shmq.Queue(name, create=True, capacity=(n + 8) * 4 * size)
    try:
        a = np.ones(size // 8)
        for _ in range(n):
            q.put(a, timeout=30)
        t = time.perf_counter()
        for _ in range(n):
            b = q.get(copy=copy, timeout=30)
            b[0] if copy else b[-1]      # touch it (one element: what the view costs to reach)
            del b
        dt = time.perf_counter() - t
        return n * size / dt
    finally:
        q.close()
        shmq.unlink(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n, reps, size = (50, 3, 1 << 20) if a.quick else (200, 5, 1 << 20)
    gc.disable()
    res = {}
    for copy in (True, False):
        res[copy] = statistics.median(run(n, copy, size) for _ in range(reps))
    print(f"# 1 MiB numpy arrays, {n} gets per run, median of {reps} runs, one process")
    print("| receive | GB/s equivalent | x copying |")
    print("|---|---:|---:|")
    for copy, label in ((True, "get() (copy)"), (False, "get(copy=False) (view)")):
        print(f"| {label} | {res[copy] / 1e9:.1f} | {res[copy] / res[True]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
