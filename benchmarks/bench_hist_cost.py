"""Cost of the latency histograms on the 64 B put/get path, as instructions per put+get pair.

Wall-clock timing is noise on a shared machine; instruction counts are not. Run under
valgrind --tool=callgrind (perf's counters are missing on most VMs) twice, with N and 2N round trips, and
take the difference divided by N: setup and interpreter start cancel out.

    python -m benchmarks.bench_hist_cost --n 200000          # one run (what callgrind wraps)
    python -m benchmarks.bench_hist_cost --measure            # runs callgrind itself, prints per-pair counts
    python -m benchmarks.bench_hist_cost --measure --ack      # send/receive/ack instead of put/get
    python -m benchmarks.bench_hist_cost --measure --topic named   # publish/get on a topic subscription
                                                              # (private, named, ack: get + ack)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys


def topic_loop(n: int, kind: str) -> None:
    import shmq
    name = f"bench-hist-t-{os.getpid()}"
    t = shmq.Topic(name, create=True, capacity="4MiB")
    try:
        sub = t.subscribe() if kind == "private" else t.subscribe("s", ack=kind == "ack")
        body = b"x" * 64
        publish, get = t.publish, sub.get
        if kind == "ack":
            for _ in range(n):
                publish(body)
                get(timeout=1.0).ack()
        else:
            for _ in range(n):
                publish(body)
                get()
        sub.close()
    finally:
        t.close()
        shmq.unlink(name)


def loop(n: int, ack: bool) -> None:
    import shmq
    name = f"bench-hist-{os.getpid()}"
    q = shmq.Queue(name, create=True, capacity="4MiB", ack=ack, dead_letter=None) if ack else \
        shmq.Queue(name, create=True, capacity="4MiB")
    try:
        body = b"x" * 64
        if ack:
            send, receive = q.send, q.receive
            for _ in range(n):
                send(body)
                receive(timeout=1.0).ack()
        else:
            put, get = q.put, q.get
            for _ in range(n):
                put(body)
                get()
    finally:
        q.close()
        shmq.unlink(name)
        if ack:
            try:
                shmq.unlink(name + ".dlq")
            except FileNotFoundError:
                pass


def instructions(n: int, ack: bool, topic: str = "") -> int:
    """Instructions of one run: valgrind's callgrind count (perf's hardware counters are not
    available in most VMs)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
           "benchmarks.bench_hist_cost", "--n", str(n)] + (["--ack"] if ack else []) + \
        (["--topic", topic] if topic else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if not m:
        raise RuntimeError("callgrind printed no instruction count: " + r.stderr[-2000:])
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--ack", action="store_true")
    ap.add_argument("--topic", choices=("private", "named", "ack"), default="",
                    help="a topic: publish + get on a private, named or ack (get + ack) subscription")
    ap.add_argument("--measure", action="store_true", help="run callgrind at n and 2n and report per pair")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not a.measure:
        topic_loop(a.n, a.topic) if a.topic else loop(a.n, a.ack)
        return
    per = []
    for _ in range(a.repeat):
        lo, hi = instructions(a.n, a.ack, a.topic), instructions(2 * a.n, a.ack, a.topic)
        per.append((hi - lo) / a.n)
    work = f"topic {a.topic}: publish/get" + ("/ack" if a.topic == "ack" else "") if a.topic else \
        "send/receive/ack" if a.ack else "put/get"
    res = {"workload": work, "bytes": 64, "n": a.n,
           "instructions_per_pair": sorted(per), "median": sorted(per)[len(per) // 2]}
    print(json.dumps(res) if a.json else
          f"{res['workload']} 64 B: {res['median']:.0f} instructions per pair (runs: "
          + ", ".join(f"{p:.0f}" for p in res["instructions_per_pair"]) + ")")


if __name__ == "__main__":
    main()
