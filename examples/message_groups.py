"""Message groups: strict order per customer, parallelism across customers.

Messages sent with group=key are delivered in send order within their group, and only one of
them is out (received, not yet acked) at a time: a second consumer skips a busy group and takes
another group's message instead. A nacked message comes back before its group's later ones.
"""
import os
import threading

import shmq

NAME = f"example-groups-{os.getpid()}"


def worker(name, wid, log, lock):
    q = shmq.Queue(name)
    while True:
        try:
            m = q.receive(timeout=0.5)
        except shmq.Empty:
            break
        if m.body["event"] == "pay" and m.delivery_count == 1:
            m.nack()             # a transient failure: retried before this customer's later events
            continue
        with lock:
            log.append((m.group, m.body["event"], wid))
        m.ack()
    q.close()


if __name__ == "__main__":
    q = shmq.Queue(NAME, create=True, ack=True, capacity="1MiB")
    try:
        for customer in ("ada", "bob", "cy"):
            for event in ("open", "add", "pay", "ship"):
                q.send({"customer": customer, "event": event}, group=customer)
        q.send({"customer": None, "event": "newsletter"})   # ungrouped: never held up
        log, lock = [], threading.Lock()
        ts = [threading.Thread(target=worker, args=(NAME, w, log, lock)) for w in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        for customer in ("ada", "bob", "cy"):
            events = [e for g, e, _ in log if g == customer]
            print(f"{customer}: {events}")
            assert events == ["open", "add", "pay", "ship"]
        print("ungrouped:", [e for g, e, _ in log if g is None])
    finally:
        q.close()
        shmq.unlink(NAME)
        shmq.unlink(NAME + ".dlq")
