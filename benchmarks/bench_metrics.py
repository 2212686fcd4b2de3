"""Benchmark: shmq.metrics.render() over many small named queues (goal: 1,000 queues in <= 5 ms).

    python -m benchmarks.bench_metrics [--queues 1000] [--repeats 5] [--profile] [--json FILE]

render() keeps each segment mapped between scrapes and reuses a queue's formatted lines while
its figures are unchanged: the median is of warm scrapes, and "cold" is the first scrape of a
new process (caches emptied before each run).

Creates --queues named queues of 64 KiB in /dev/shm (one message in every tenth, every third
at-least-once, all of those sharing one dead-letter queue, which is one more segment), closes
the handles (a scrape finds queues nobody holds too), then times render() and its parts:
reading every queue (open, map, validate, read the counters, unmap: shmq.stats.inspect_path),
the bare open/close of the core, and the formatting of the text.
Reports medians; asserts nothing. Every queue is removed at the end, also on failure."""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import time

import shmq
from shmq import _core, _names, metrics
from shmq._bench.harness import host_info, write_json


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queues", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print the cProfile top entries of one render()")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    prefix = f"bench-metrics-{os.getpid()}-"
    names = []
    try:
        for i in range(a.queues):
            name = f"{prefix}{i}"
            opts = dict(ack=True, dead_letter=prefix + "dlq") if i % 3 == 0 else {}
            q = shmq.Queue(name, create=True, capacity="64KiB", **opts)
            names.append(name)
            if i % 10 == 0:
                q.put(b"x")
            q.close()
        paths = [_names.path_of(n) for n in names]
        text = metrics.render()
        lines = text.count("\n")
        render_ms = _median_ms(metrics.render, a.repeats)   # warm: mappings and lines cached

        def cold_render():
            with metrics._lock:           # as the first scrape of a new exporter process
                for entry in metrics._cache.values():
                    entry[1]._close()
                metrics._cache.clear()
                metrics._line_cache.clear()
            metrics.render()
        cold_ms = _median_ms(cold_render, a.repeats)
        metrics.render()

        def read_only():
            metrics._read_all()

        def core_open_close():
            for p in paths:
                c = _core.Core()
                c._open(p, -1, False)
                c._close()

        def core_raw_stats():
            for p in paths:
                c = _core.Core()
                c._open(p, -1, False)
                c._raw_stats()
                c._close()
        read_ms = _median_ms(read_only, a.repeats)
        open_ms = _median_ms(core_open_close, a.repeats)
        raw_ms = _median_ms(core_raw_stats, a.repeats)
        m = host_info()
        res = {"queues": a.queues, "lines": lines, "render_ms_median": render_ms,
               "per_queue_us": render_ms * 1e3 / a.queues, "read_all_ms_median": read_ms,
               "core_open_close_ms_median": open_ms, "core_open_raw_stats_close_ms_median": raw_ms,
               "format_ms_estimate": render_ms - read_ms, "cold_render_ms_median": cold_ms, "goal_ms": 5.0,
               "machine": m}
        try:
            from prometheus_client import CollectorRegistry, generate_latest
            reg = CollectorRegistry()
            reg.register(metrics.Collector())
            res["collector_generate_latest_ms_median"] = _median_ms(lambda: generate_latest(reg), a.repeats)
        except ImportError:
            pass
        print(f"render() of {a.queues} queues ({lines} lines): median {render_ms:.2f} ms, "
              f"{res['per_queue_us']:.1f} us/queue (goal 5 ms)")
        print(f"  cold (first scrape: every segment opened, every line formatted): {cold_ms:.2f} ms")
        print(f"  reading the queues: {read_ms:.2f} ms (core open+close alone {open_ms:.2f} ms, "
              f"+ raw counters {raw_ms:.2f} ms); formatting ~{res['format_ms_estimate']:.2f} ms")
        if "collector_generate_latest_ms_median" in res:
            print(f"  Collector + generate_latest: {res['collector_generate_latest_ms_median']:.2f} ms")
        print(f"  [{m['cpu_model']}, {m['cores']} cores, Python {m['python']}]")
        if a.profile:
            prof = cProfile.Profile()
            prof.runcall(metrics.render)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            print(out.getvalue())
        if a.json:
            write_json(res, a.json)
    finally:
        for n in names + [prefix + "dlq"]:
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass


if __name__ == "__main__":
    main()
