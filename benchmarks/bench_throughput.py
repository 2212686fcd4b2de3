"""Benchmark: 1->1 throughput by message size (64 B .. 1 MiB bytes) and a pickled small dict. Usage: python -m benchmarks.bench_throughput [--quick] [--json FILE] [--plot FILE]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(['throughput']))
