"""An asyncio worker: coroutines wait on shmq queues without blocking the event loop.

A producer process sends jobs to an at-least-once queue with plain blocking calls. In the main
process, an asyncio service runs three workers that take jobs with `async for`, reply on an
at-most-once queue with put_async, and ack; meanwhile a heartbeat task keeps ticking (the loop
is never blocked by a waiting worker). A get_async with a timeout shows the timeout rule, and a
cancelled receive_async shows that cancellation takes nothing. Closing the jobs queue ends
the workers' `async for` loops.
"""
import asyncio
import multiprocessing as mp
import os
import time

import shmq

JOBS = f"example-jobs-{os.getpid()}"
DONE = f"example-done-{os.getpid()}"
N = 30


def producer(jobs_name):
    with shmq.Queue(jobs_name) as jobs:
        for i in range(N):
            jobs.send({"job": i}, headers={"from": "producer"})
            time.sleep(0.002)


async def worker(wid, jobs, done):
    async for m in jobs:                       # ends quietly when jobs is closed
        await done.put_async((wid, m.body["job"] * m.body["job"]))
        m.ack()


async def heartbeat(stop):
    beats = 0
    while not stop.is_set():
        await asyncio.sleep(0.01)
        beats += 1
    return beats


async def main(jobs, done):
    # a timeout as in the blocking calls: Empty after 0.1 s
    try:
        await done.get_async(timeout=0.1)
    except shmq.Empty:
        print("nothing done yet (Empty after the timeout)")

    # a cancelled receive_async takes nothing
    t = asyncio.ensure_future(jobs.receive_async())
    await asyncio.sleep(0.01)
    t.cancel()
    try:
        await t
    except asyncio.CancelledError:
        print("a cancelled receive_async took nothing")

    stop = asyncio.Event()
    beat = asyncio.ensure_future(heartbeat(stop))
    workers = [asyncio.ensure_future(worker(w, jobs, done)) for w in range(3)]
    p = mp.get_context("fork").Process(target=producer, args=(JOBS,))
    p.start()
    results = []
    while len(results) < N:
        results += await done.get_many_async(16, timeout=10)
    await asyncio.get_running_loop().run_in_executor(None, p.join, 10)
    jobs.close()                               # the workers' async for loops end
    await asyncio.gather(*workers)
    stop.set()
    beats = await beat
    per_worker = {w: sum(1 for x, _ in results if x == w) for w in range(3)}
    assert sorted(sq for _, sq in results) == [i * i for i in range(N)]
    print(f"{len(results)} jobs done, per worker {per_worker}; the heartbeat ticked {beats} times meanwhile")


if __name__ == "__main__":
    jobs = shmq.Queue(JOBS, create=True, ack=True, capacity="1MiB")
    done = shmq.Queue(DONE, create=True, capacity="1MiB")
    try:
        try:
            import uvloop
            print("running under uvloop")
            loop = uvloop.new_event_loop()
        except ImportError:
            print("running under asyncio")
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main(jobs, done))
        finally:
            loop.close()
    finally:
        jobs.close()
        done.close()
        for name in (JOBS, DONE, JOBS + ".dlq"):
            try:
                shmq.unlink(name)
            except shmq.QueueNotFound:
                pass
