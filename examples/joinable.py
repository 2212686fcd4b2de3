"""JoinableQueue: wait until every item put has been processed (task_done)."""
import multiprocessing as mp

import shmq


def worker(jobs, done):
    while True:
        item = jobs.get()
        try:
            if item is None:
                return
            done.put(item.upper())
        finally:
            jobs.task_done()        # one task_done per get, also for the stop marker
            if item is None:
                jobs.close()
                done.close()


if __name__ == "__main__":
    jobs = shmq.JoinableQueue()
    done = shmq.Queue()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(jobs, done)) for _ in range(2)]
    for p in procs:
        p.start()

    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    for w in words:
        jobs.put(w)
    # join(timeout) returns True once every put was task_done'd, False if the time ran out.
    assert jobs.join(timeout=30), "workers did not finish in time"
    print("all jobs done:", sorted(done.get(timeout=5) for _ in words))

    for _ in procs:
        jobs.put(None)
    jobs.join()                      # without a timeout: returns None, as multiprocessing does
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    jobs.close()
    done.close()
