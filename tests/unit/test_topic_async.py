"""asyncio on topic subscriptions (DESIGN §5.6): get_async / get_many_async / async for, woken
by publishers from other threads and processes, timeouts as the blocking calls, cancellation
that takes nothing, close() ending waiting coroutines."""
import asyncio
import subprocess
import sys
import threading
import time

import pytest

import shmq


@pytest.fixture
def topic(qname):
    made = []

    def make(suffix="", **options):
        options.setdefault("capacity", "1MiB")
        t = shmq.Topic(qname + suffix, create=True, **options)
        made.append(t)
        return t

    yield make
    for t in made:
        name = t.name
        t.close()
        try:
            shmq.unlink(name)
        except shmq.QueueNotFound:
            pass


def test_get_async_is_woken_by_a_publisher_in_another_process(topic):
    t = topic()
    sub = t.subscribe()

    async def main():
        waiter = asyncio.ensure_future(sub.get_async(timeout=30))
        await asyncio.sleep(0.05)
        assert not waiter.done()                  # asleep: nothing published yet
        code = f"import shmq; t = shmq.Topic({t.name!r}); t.publish('from afar'); t.close()"
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: subprocess.run([sys.executable, "-c", code], check=True, timeout=60))
        m = await asyncio.wait_for(waiter, 30)
        return m

    m = asyncio.run(main())
    assert m.body == "from afar" and m.seq == 1


def test_timeout_raises_empty_and_the_loop_keeps_running(topic):
    sub = topic().subscribe()
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main():
        tk = asyncio.ensure_future(ticker())
        try:
            with pytest.raises(shmq.Empty):
                await sub.get_async(timeout=0.2)
        finally:
            tk.cancel()

    asyncio.run(main())
    assert len(ticks) >= 5                        # the loop ran while the coroutine waited


def test_a_cancelled_get_async_takes_nothing_from_a_group(topic):
    t = topic()
    a = t.subscribe("workers", start="earliest")

    async def main():
        w = asyncio.ensure_future(a.get_async())
        await asyncio.sleep(0.05)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        t.publish("kept")
        return await a.get_async(timeout=5)

    assert asyncio.run(main()).body == "kept"     # the cancelled one did not take it


def test_async_for_and_many_waiters_on_one_loop(topic):
    t = topic()
    subs = [t.subscribe() for _ in range(100)]

    def publish_later():
        time.sleep(0.1)
        t.publish_many(list(range(3)))

    async def main():
        th = threading.Thread(target=publish_later)
        th.start()
        got = await asyncio.wait_for(asyncio.gather(*(s.get_many_async(3, timeout=30) for s in subs)), 60)
        th.join(10)
        return got

    got = asyncio.run(main())
    assert all([m.body for m in batch][0] == 0 for batch in got)

    sub = t.subscribe()
    t.publish("x")
    t.publish("y")
    closer = []

    async def iterate():
        out = []
        async for m in sub:                       # ends when close() (another thread) wakes it
            out.append(m.body)
            if len(out) == 2:
                closer.append(threading.Timer(0.1, sub.close))
                closer[0].start()
        return out

    assert asyncio.run(asyncio.wait_for(iterate(), 30)) == ["x", "y"]
    closer[0].join(10)
