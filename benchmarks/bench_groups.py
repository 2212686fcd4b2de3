"""Benchmark: message groups and Message.forward, against their plain counterparts in the same run.

    python -m benchmarks.bench_groups [--messages N] [--groups G] [--repeats R] [--json FILE]

1. 2 consumer processes receive + ack N messages (64 B) that are spread over G groups (default
   1,000), against the same N messages sent ungrouped. The messages are sent before the consumers
   start, so the figure is the consumers' throughput. Reported: msgs/s each and grouped/ungrouped.
2. One process moves N messages from one queue to the next with m.forward(dest, body), against
   receive + send + ack. Reported: steps/s each and forward/(receive+send+ack).
Best of R repeats. Reports, never asserts."""
import argparse
import multiprocessing as mp
import os
import sys
import time

import shmq
from shmq._bench.harness import host_info, write_json

BODY = b"x" * 64


def _consumer(name, count, start, out):
    q = shmq.Queue(name)
    start.wait()
    n = 0
    t0 = time.perf_counter()
    while n < count:
        try:
            m = q.receive(timeout=0.2)
        except shmq.Empty:
            if q.stats()["depth"] == 0 and q.stats()["in_flight"] == 0:
                break
            continue
        m.ack()
        n += 1
    out.put((n, time.perf_counter() - t0))
    q.close()


def consume_rate(n, groups, tag):
    name = f"bench-groups-{os.getpid()}-{tag}"
    q = shmq.Queue(name, create=True, ack=True, capacity="256MiB", visibility_timeout=60)
    try:
        for i in range(n):
            if groups:
                q.send(BODY, group=f"g{i % groups}")
            else:
                q.send(BODY)
        ctx = mp.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=_consumer, args=(name, n, start, out)) for _ in range(2)]
        for p in ps:
            p.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        start.set()
        done = [out.get(timeout=600) for _ in ps]
        wall = time.perf_counter() - t0
        for p in ps:
            p.join(30)
        total = sum(c for c, _ in done)
        assert total == n, (total, n)
        return n / wall
    finally:
        q.close()
        shmq.unlink(name)
        shmq.unlink(name + ".dlq")


def step_rate(n, use_forward, tag):
    names = [f"bench-fwd-{os.getpid()}-{tag}-{i}" for i in range(2)]
    src, dst = (shmq.Queue(x, create=True, ack=True, capacity="256MiB") for x in names)
    try:
        for _ in range(n):
            src.send(BODY)
        t0 = time.perf_counter()
        for _ in range(n):
            m = src.receive(timeout=5)
            if use_forward:
                m.forward(dst, BODY)
            else:
                dst.send(BODY)
                m.ack()
        return n / (time.perf_counter() - t0)
    finally:
        for q, x in zip((src, dst), names):
            q.close()
            shmq.unlink(x)
            shmq.unlink(x + ".dlq")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = {"host": host_info(), "messages": a.messages, "groups": a.groups, "repeats": a.repeats}
    best = lambda f: max(f(r) for r in range(a.repeats))   # noqa: E731
    res["ungrouped_msgs_s"] = best(lambda r: consume_rate(a.messages, 0, f"u{r}"))
    res["grouped_msgs_s"] = best(lambda r: consume_rate(a.messages, a.groups, f"g{r}"))
    res["grouped_ratio"] = res["grouped_msgs_s"] / res["ungrouped_msgs_s"]
    res["receive_send_ack_steps_s"] = best(lambda r: step_rate(a.messages, False, f"p{r}"))
    res["forward_steps_s"] = best(lambda r: step_rate(a.messages, True, f"f{r}"))
    res["forward_ratio"] = res["forward_steps_s"] / res["receive_send_ack_steps_s"]
    h = res["host"]
    print(f"host: {h}")
    print(f"2 consumers, receive+ack, 64 B, {a.messages} msgs: ungrouped {res['ungrouped_msgs_s']:,.0f}/s, "
          f"{a.groups} groups {res['grouped_msgs_s']:,.0f}/s ({res['grouped_ratio']:.2f}x)")
    print(f"one pipeline step, 64 B: receive+send+ack {res['receive_send_ack_steps_s']:,.0f}/s, "
          f"forward {res['forward_steps_s']:,.0f}/s ({res['forward_ratio']:.2f}x)")
    if a.json:
        write_json(res, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
