"""Sending numpy arrays: the array data travels out of band, straight into shared memory.

A child process receives arrays, doubles them and sends them back. get() returns an
ordinary, writable array (a copy out of shared memory).
"""
import multiprocessing as mp

import numpy as np

import shmq


def doubler(inbox, outbox):
    while True:
        a = inbox.get()
        if a is None:
            break
        outbox.put(a * 2)
    inbox.close()
    outbox.close()


if __name__ == "__main__":
    inbox, outbox = shmq.Queue(), shmq.Queue()
    p = mp.get_context("spawn").Process(target=doubler, args=(inbox, outbox))
    p.start()

    arrays = [np.arange(n, dtype=np.float64).reshape(-1, 4) for n in (4, 4096, 1 << 20)]
    for a in arrays:
        inbox.put(a)
    inbox.put(None)
    for a in arrays:
        b = outbox.get(timeout=30)
        assert b.dtype == a.dtype and b.shape == a.shape and b.flags.writeable
        assert np.array_equal(b, a * 2)
        print(f"got {b.shape} {b.dtype} array back, {b.nbytes} bytes")

    # Arrays inside containers travel the same way.
    inbox2 = shmq.Queue()
    inbox2.put({"weights": np.ones(1000, dtype=np.float32), "step": 7})
    msg = inbox2.get()
    print("dict with an array:", msg["step"], msg["weights"].sum())

    p.join(timeout=30)
    assert p.exitcode == 0
    for q in (inbox, outbox, inbox2):
        q.close()
