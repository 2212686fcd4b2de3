"""At-least-once delivery: a worker that crashes holding a message does not lose it.

A queue with ack=True keeps each message until a consumer acks it. Here a worker process
receives a job and is killed (SIGKILL) before acking: the job comes back to the next worker
with delivery_count 2. A job that always fails goes to the dead-letter queue after
max_deliveries, with headers that say why, and is moved back with shmq.redrive.
"""
import multiprocessing as mp
import os
import signal

import shmq

NAME = f"example-orders-{os.getpid()}"


def crashing_worker(name):
    q = shmq.Queue(name)
    m = q.receive(timeout=10)
    print(f"worker {os.getpid()}: got {m.body!r} (delivery {m.delivery_count}), crashing before ack")
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    q = shmq.Queue(NAME, create=True, ack=True, visibility_timeout=60, max_deliveries=2, capacity="1MiB")
    try:
        q.send({"order": 1}, headers={"customer": "ada"})
        p = mp.get_context("fork").Process(target=crashing_worker, args=(NAME,))
        p.start()
        p.join(30)
        m = q.receive(timeout=10)              # back at once, not after the 60 s lease
        print(f"main: got {m.body!r} again, delivery {m.delivery_count}, headers {m.headers}")
        m.ack()

        q.send({"order": 2, "poison": True})
        for _ in range(2):                     # max_deliveries=2: two failures, then dead-lettered
            m = q.receive(timeout=10)
            m.nack()
        with shmq.Queue(q.dead_letter_queue) as dlq:
            d = dlq.receive(timeout=10)
            print(f"dead letter: {d.body!r} reason={d.headers['x-dead-letter-reason']} "
                  f"deliveries={d.headers['x-delivery-count']}")
            d.nack()                           # leave it there for redrive
        print("redriven:", shmq.redrive(q.dead_letter_queue))
        m = q.receive(timeout=10)
        print(f"main: {m.body!r} is back in {q.name}")
        m.ack()

        a = q.send(b"once", dedup_id="invoice-9")
        b = q.send(b"once again", dedup_id="invoice-9")
        print("dedup: same id" if a == b else "dedup: BROKEN")
        q.receive(timeout=10).ack()
        st = q.stats()
        print({k: st[k] for k in ("depth", "in_flight", "acked", "redelivered", "dead_lettered")})
    finally:
        dlq_name = q.dead_letter_queue
        q.close()
        shmq.unlink(NAME)
        shmq.unlink(dlq_name)
