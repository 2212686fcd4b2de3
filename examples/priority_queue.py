"""A priority queue shared by worker processes: urgent jobs first, old jobs not starved.

Run: python examples/priority_queue.py
"""
import multiprocessing as mp

import shmq

URGENT, NORMAL, BULK = 2, 1, 0


def worker(jobs, done):
    while True:
        job = jobs.get(timeout=10)
        if job is None:
            return
        done.put((job["name"], job["priority"]))


def main():
    # 3 levels; a job ready for more than 2 s is served before younger ones of any level
    jobs = shmq.PriorityQueue(levels=3, max_wait=2.0)
    done = shmq.Queue()
    for i in range(5):
        jobs.put({"name": f"bulk-{i}", "priority": BULK}, priority=BULK)
    for i in range(3):
        jobs.put({"name": f"normal-{i}", "priority": NORMAL}, priority=NORMAL)
    jobs.put({"name": "urgent-0", "priority": URGENT}, priority=URGENT)
    print("ready per level:", jobs.stats()["levels"])        # [5, 3, 1]

    # one worker: the order is exactly priority order, FIFO within a level
    w = mp.Process(target=worker, args=(jobs, done))
    w.start()
    order = [done.get(timeout=10) for _ in range(9)]
    jobs.put(None, priority=BULK)                             # stop after everything else
    w.join(10)
    print("served:", [name for name, _ in order])
    assert [p for _, p in order] == sorted((p for _, p in order), reverse=True)
    jobs.close()
    done.close()


if __name__ == "__main__":
    main()
