"""Benchmark: 2 producer -> 2 consumer processes, 64 B. Usage: python -m benchmarks.bench_mpmc [--quick] [--json FILE] [--plot FILE]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(['mpmc']))
