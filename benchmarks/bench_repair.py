"""Death -> repaired: how long a producer blocked on a full queue waits after the consumer
that held the queue's only slot of room is SIGKILLed.

    python -m benchmarks.bench_repair [--trials N] [--json FILE]

A consumer of a maxsize=1 queue is killed (SHMQ_CRASH_AT=after_take) while it holds the one
message: its descriptor and the queue's only unit of room stay claimed by a dead process. The
producer's put then blocks until a sleeper's liveness sweep repairs the dead consumer. Time is
measured from the moment the consumer's death is seen (waitpid) to the put's return; the put was already
asleep, so it notices at its next 50 ms liveness slice (a put that arrives after the death
sweeps at once). Reports p50/p99/max in ms."""
import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import shmq
from shmq._bench.harness import host_info, write_json

CHILD = textwrap.dedent("""
    import os, sys, shmq
    q = shmq.Queue(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()       # wait until the producer is asleep on the full queue
    q.get(timeout=30)          # killed inside, at the crash point after_take (SHMQ_CRASH_AT)
""")


def one_trial(name):
    q = shmq.Queue(name, create=True, capacity="1MiB", maxsize=1)
    try:
        q.put(b"m")
        env = dict(os.environ, SHMQ_CRASH_AT="after_take")
        child = subprocess.Popen([sys.executable, "-c", CHILD, name], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        done = []
        producer = shmq.Queue(name)

        def blocked_put():
            producer.put(b"n", timeout=30)   # asleep until a sweep repairs the dead consumer
            done.append(time.monotonic())

        t = threading.Thread(target=blocked_put)
        t.start()
        time.sleep(0.12)                     # past its first sweep: now it only sleeps in slices
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(timeout=30)               # dead at after_take, holding the message and the unit
        t_dead = time.monotonic()
        t.join(30)
        producer.close()
        return (done[0] - t_dead) * 1000.0
    finally:
        q.close()
        shmq.unlink(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    name = f"bench-repair-{os.getpid()}"
    ms = sorted(one_trial(name) for _ in range(a.trials))
    m = host_info()
    res = {"trials": len(ms), "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
           "max_ms": ms[-1], "cores": m["cores"], "machine": m}
    print(f"death -> repaired (blocked put resumes): p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
          f"max {res['max_ms']:.1f} ms over {res['trials']} kills ({m['cpu_model']}, {m['cores']} cores, "
          f"Python {m['python']})")
    if a.json:
        write_json(res, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
