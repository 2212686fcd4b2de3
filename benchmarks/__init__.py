"""shmq benchmarks: thin runnable wrappers over the harness shmq._bench (see docs/benchmarks.md),
plus what needs the source tree (bench_ckernel) or measures one mechanism (bench_repair, bench_timers)."""
import sys


def run(groups, argv=None):
    """Run `shmq bench --only <groups> --goals` (the project's performance goals, which `shmq
    bench` alone does not print) with the extra command-line arguments given."""
    from shmq import _bench
    argv = list(sys.argv[1:] if argv is None else argv)
    return _bench.main(["--only", ",".join(groups), "--goals"] + argv)
