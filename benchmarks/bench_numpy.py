"""Benchmark: 1->1 throughput of 1 MiB numpy arrays (pickle protocol 5, out-of-band buffers in shmq). Usage: python -m benchmarks.bench_numpy [--quick] [--json FILE] [--plot FILE]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(['numpy']))
