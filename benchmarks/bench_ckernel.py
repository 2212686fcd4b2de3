"""Benchmark: the C core alone (csrc/tests/bench_ring.c built with gcc), 64 B, 1 -> 1 processes. Usage: python -m benchmarks.bench_ckernel [--quick] [--json FILE] [--plot FILE]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(['ckernel']))
