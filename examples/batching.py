"""put_many / get_many: move many small messages per call.

A producer process sends 100 000 small byte strings in batches; the consumer (this
process) drains them with get_many, which returns as soon as at least one item is there.
"""
import multiprocessing as mp
import time

import shmq

N = 100_000
BATCH = 256


def producer(q):
    for start in range(0, N, BATCH):
        q.put_many(b"msg-%d" % i for i in range(start, min(start + BATCH, N)))
    q.put(b"")                      # end marker
    q.close()


if __name__ == "__main__":
    q = shmq.Queue(capacity="16MiB", raw=True)   # raw: bytes-like bodies only, never pickled
    p = mp.get_context("spawn").Process(target=producer, args=(q,))
    t0 = time.perf_counter()
    p.start()

    received, calls, done = 0, 0, False
    while not done:
        batch = q.get_many(max_items=BATCH, timeout=30)   # 1..BATCH items
        calls += 1
        for body in batch:
            if body == b"":
                done = True
                break
            assert body == b"msg-%d" % received           # FIFO from one producer
            received += 1
    elapsed = time.perf_counter() - t0
    p.join(timeout=30)
    assert p.exitcode == 0 and received == N
    print(f"received {received} messages in {calls} get_many calls ({elapsed:.2f} s incl. process start)")
    q.close()
