"""Benchmark: ping-pong round trip (64 B) on different CPUs and on one CPU, and the CPU of an idle blocked consumer. Usage: python -m benchmarks.bench_latency [--quick] [--json FILE] [--plot FILE]"""
import sys

from benchmarks import run

if __name__ == "__main__":
    sys.exit(run(['latency', 'idle']))
