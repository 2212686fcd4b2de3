"""Time in queue and processing time of an at-least-once queue: stats() quantiles and the
Prometheus histograms behind them."""
import os
import time

import shmq
import shmq.metrics

NAME = f"example-latency-{os.getpid()}"


def main():
    q = shmq.Queue(NAME, create=True, capacity="1MiB", ack=True, dead_letter=NAME + ".dlq")
    try:
        for i in range(20):
            q.send({"job": i})
        for _ in range(20):
            m = q.receive(timeout=5)
            time.sleep(0.002)               # the "work": about 2 ms each
            m.ack()
        q.send("bad")
        q.receive(timeout=5).nack(requeue=False)   # rejected: a nack, dead-lettered
        st = q.stats()
        print(f"wait p50={st['wait_p50_s'] * 1e3:.3f} ms p99={st['wait_p99_s'] * 1e3:.3f} ms")
        print(f"process p50={st['process_p50_s'] * 1e3:.3f} ms p99={st['process_p99_s'] * 1e3:.3f} ms")
        print(f"nacked={st['nacked']} dead_lettered={st['dead_lettered']}")
        assert st["process_p50_s"] >= 0.001 and st["nacked"] == 1
        lines = [ln for ln in shmq.metrics.render().splitlines()
                 if ln.startswith("shmq_process_seconds") and f'queue="{NAME}"' in ln]
        print("\n".join(lines[-4:]))         # the last buckets, _sum and _count
        assert lines[-1].endswith(" 20")     # _count: 20 acks
    finally:
        q.close()
        for n in (NAME, NAME + ".dlq"):
            shmq.unlink(n)


if __name__ == "__main__":
    main()
