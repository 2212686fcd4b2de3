"""Benchmark: the at-least-once timer scan (docs/internals/leases.md) over a full-size queue.

    python -m benchmarks.bench_timers [--capacity 64MiB] [--repeats 50] [--json FILE]

Creates an at-least-once queue, fills a share of its descriptors with delayed messages (so the
scan has work to look at but nothing due), and times `_timers_run()` (one full scan). Reports
the median and the descriptor count; asserts nothing."""
import argparse
import os
import statistics
import time

import shmq
from shmq._bench.harness import host_info, write_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", default="64MiB")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--fill", type=int, default=10_000, help="delayed messages in the queue while scanning")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    name = f"bench-timers-{os.getpid()}"
    q = shmq.Queue(name, create=True, ack=True, capacity=a.capacity)
    try:
        for i in range(a.fill):
            q.send(b"x" * 16, delay=3600)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            q._timers_run()
            times.append(time.perf_counter() - t0)
        geometry = q._consistency()
        n_desc = geometry["free_desc"] + geometry["ready_desc"] + geometry["owned_desc"]
        m = host_info()
        res = {"capacity": a.capacity, "descriptors": n_desc, "delayed": a.fill,
               "scan_ms_median": statistics.median(times) * 1e3, "scan_ms_min": min(times) * 1e3, "machine": m}
        print(f"timer scan over {n_desc} descriptors ({a.fill} delayed): median {res['scan_ms_median']:.3f} ms, "
              f"min {res['scan_ms_min']:.3f} ms  [{m['cpu_model']}, {m['cores']} cores, Python {m['python']}]")
        if a.json:
            write_json(res, a.json)
    finally:
        q.close()
        for n in (name, name + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass


if __name__ == "__main__":
    main()
