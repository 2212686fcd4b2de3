"""Benchmark: at-least-once send + receive + ack, 64 B, 1->1 and 2->2, against Redis Streams and
multiprocessing.Queue. An alias of `shmq bench --only ack` (the workload lives in the one harness).
Usage: python -m benchmarks.bench_ack [--quick] [--json FILE] [--messages N] [--repeats R] [--peers NAMES]
[--redis-server PATH]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(["ack"]))
