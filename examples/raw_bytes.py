"""A raw queue carries bytes-like bodies only and never unpickles: for data from less-trusted writers."""
import multiprocessing as mp
import os

import shmq

NAME = f"example-raw-{os.getpid()}"


def producer(name, n):
    q = shmq.Queue(name)          # opened by name in the child
    for i in range(n):
        q.put(b"frame %d" % i)
    q.close()


def main():
    q = shmq.Queue(NAME, create=True, capacity="1MiB", raw=True)
    try:
        try:
            q.put({"not": "bytes"})
        except TypeError as e:
            print("refused:", e)
        p = mp.get_context("spawn").Process(target=producer, args=(NAME, 1000))
        p.start()
        frames = []
        while len(frames) < 1000:
            frames.extend(q.get_many(256, timeout=30))
        p.join(30)
        print(f"received {len(frames)} frames, first {frames[0]!r}, last {frames[-1]!r}")
        assert frames[0] == b"frame 0" and frames[-1] == b"frame 999"
    finally:
        q.close()
        shmq.unlink(NAME)


if __name__ == "__main__":
    main()
