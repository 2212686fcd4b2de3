"""get_many of large messages: a batch of 64 KiB bodies, and the page faults it costs.

A producer process puts 64 KiB messages in batches of 64 into a bounded queue; this process
takes them with get_many and counts its own page faults per message. shmq keeps glibc from
returning each batch's memory to the kernel (see docs/guide/batching.md, "Large messages and
the heap"), so after the first batches the count stays around one per message or below
(the queue's own growth) instead of 16 per message.
"""
import multiprocessing as mp
import os
import resource

import shmq

SIZE = 64 * 1024
BATCH = 64
BATCHES = 50


def producer(q):
    body = os.urandom(SIZE)
    for _ in range(BATCHES):
        q.put_many([body] * BATCH, timeout=30)
    q.close()


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


if __name__ == "__main__":
    q = shmq.Queue(maxsize=4 * BATCH)        # bounded: at most 256 messages (16 MiB) in flight
    p = mp.get_context("fork").Process(target=producer, args=(q,))
    p.start()
    got, f0 = 0, None
    while got < BATCH * BATCHES:
        batch = q.get_many(BATCH, timeout=30)
        assert all(len(b) == SIZE for b in batch)
        got += len(batch)
        if f0 is None and got >= 4 * BATCH:   # after the heap and the queue grew once
            f0, n0 = faults(), got
    p.join(30)
    per_msg = (faults() - f0) / max(1, got - n0)
    print(f"received {got} messages of {SIZE // 1024} KiB in batches; {per_msg:.2f} page faults per message")
    q.close()
