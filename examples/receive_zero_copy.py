"""receive(copy=False) on an at-least-once queue: a worker process reads 4 MB numpy frames as
read-only views, acks each one while it still holds the view, and the memory is freed when the
view goes."""
import multiprocessing as mp
import os

import numpy as np

import shmq

NAME = f"example-ack-frames-{os.getpid()}"
FRAMES = 10


def worker(results):
    q = shmq.Queue(NAME)
    for _ in range(FRAMES):
        m = q.receive(timeout=10, copy=False)
        frame = m.body                          # no copy: a view into shared memory
        assert not frame.flags.writeable
        total = float(frame.sum())
        m.ack()                                 # acked now: never delivered again
        results.put((m.id, total))
        del m, frame                            # the frame's memory is freed here
    q.close()


def main():
    q = shmq.Queue(NAME, create=True, capacity="64MiB", ack=True)
    results = shmq.Queue()
    try:
        p = mp.Process(target=worker, args=(results,))
        p.start()
        for i in range(FRAMES):
            q.send(np.full((1000, 1000), i, dtype=np.float32), timeout=30)   # ~4 MB each
        got = sorted(results.get(timeout=30) for _ in range(FRAMES))
        p.join(30)
        st = q.stats()
        print("sums:", [s for _, s in got][:4], "... acked:", st["acked"], "bytes still used:", st["bytes_used"])
        assert st["acked"] == FRAMES and st["bytes_used"] == 0 and p.exitcode == 0
    finally:
        q.close()
        results.close()
        for n in (NAME, NAME + ".dlq"):
            shmq.unlink(n)


if __name__ == "__main__":
    main()
