"""shmq benchmarks: thin runnable wrappers over shmq._bench (see docs/benchmarks.md)."""
import sys


def run(groups, argv=None):
    """Run `shmq bench --only <groups>` with the extra command-line arguments given."""
    from shmq import _bench
    argv = list(sys.argv[1:] if argv is None else argv)
    return _bench.main(["--only", ",".join(groups)] + argv)
