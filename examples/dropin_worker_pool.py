"""A pool of worker processes fed through shmq.Queue, exactly as with multiprocessing.Queue.

One task queue, one result queue, four workers started with the "spawn" method (the
strictest: the queues reach the children by pickling). Each worker stops at a None.
"""
import multiprocessing as mp

import shmq

N_WORKERS = 4
N_TASKS = 200


def worker(tasks, results):
    while True:
        n = tasks.get()
        if n is None:
            break
        results.put((n, n * n))
    tasks.close()
    results.close()


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    tasks = shmq.Queue()          # anonymous, unbounded: the multiprocessing drop-in
    results = shmq.Queue()
    procs = [ctx.Process(target=worker, args=(tasks, results)) for _ in range(N_WORKERS)]
    for p in procs:
        p.start()

    for n in range(N_TASKS):
        tasks.put(n)
    for _ in procs:
        tasks.put(None)           # one stop marker per worker

    squares = dict(results.get(timeout=30) for _ in range(N_TASKS))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0, p.exitcode

    assert squares == {n: n * n for n in range(N_TASKS)}
    print(f"{N_WORKERS} workers computed {len(squares)} squares; sum = {sum(squares.values())}")
    tasks.close()                 # the creator's close removes an anonymous queue
    results.close()
