"""get(copy=False): a producer process sends 4 MiB numpy frames; the consumer reads them as
read-only views into shared memory, without copying, and releases each one when done."""
import multiprocessing as mp
import os

import numpy as np

import shmq

NAME = f"example-frames-{os.getpid()}"
FRAMES = 20


def producer():
    q = shmq.Queue(NAME)
    for i in range(FRAMES):
        q.put(np.full((1024, 1024), i, dtype=np.float32), timeout=10)
    q.close()


def main():
    q = shmq.Queue(NAME, create=True, capacity="64MiB")
    p = mp.Process(target=producer)
    p.start()
    try:
        sums = []
        for _ in range(FRAMES):
            frame = q.get(copy=False, timeout=10)    # a view: no 4 MiB copy
            assert not frame.flags.writeable
            sums.append(float(frame[0, 0]))
            del frame                                # release it: the producer may reuse the room
        print("frames:", sums[:5], "...", "bytes still taken:", q.stats()["bytes_used"])
    finally:
        p.join(10)
        q.close()
        shmq.unlink(NAME)


if __name__ == "__main__":
    main()
