"""An exactly-once pipeline of three stages: ingest -> enrich -> bill.

The entry send carries a dedup_id (a retried submission enqueues nothing new); each stage hands
its result on with Message.forward, which acks the input and sends the output as one step, so a
stage that crashes anywhere neither loses an order nor bills it twice. Here the enrich stage is
SIGKILLed right after its forward sent the output and before it acked the input: the input comes
back, the stage forwards it again, and that second forward sends nothing new.
"""
import multiprocessing as mp
import os

import shmq

PID = os.getpid()
NAMES = [f"example-pipe-{stage}-{PID}" for stage in ("ingest", "enrich", "bill")]


def enrich_once_then_crash(src_name, dst_name):
    # a fresh interpreter (spawn) with SHMQ_CRASH_AT set: the crash point was armed at import
    src, dst = shmq.Queue(src_name), shmq.Queue(dst_name)
    m = src.receive(timeout=10)
    m.forward(dst, {**m.body, "enriched": True})        # killed inside, after the send
    raise SystemExit("not reached")


if __name__ == "__main__":
    qs = [shmq.Queue(n, create=True, ack=True, capacity="1MiB", visibility_timeout=30) for n in NAMES]
    ingest, enrich, bill = qs
    try:
        for order in (1, 2, 3):
            ingest.send({"order": order}, dedup_id=f"order-{order}")
        ingest.send({"order": 1}, dedup_id="order-1")    # a retried submission: nothing new
        for _ in range(3):                               # stage 1: ingest -> enrich
            m = ingest.receive(timeout=5)
            m.forward(enrich, {**m.body, "checked": True})
        p = mp.get_context("spawn").Process(target=enrich_once_then_crash, args=(NAMES[1], NAMES[2]))
        os.environ["SHMQ_CRASH_AT"] = "forward_after_send"   # for the child only: read at its import
        p.start()
        del os.environ["SHMQ_CRASH_AT"]
        p.join(60)
        print("enrich stage exit code:", p.exitcode, "(killed inside forward)")
        while True:                                      # stage 2 again: the killed one's input is back
            try:
                m = enrich.receive(timeout=0.5)
            except shmq.Empty:
                break
            nid = m.forward(bill, {**m.body, "enriched": True})
            print(f"enrich: order {m.body['order']} (delivery {m.delivery_count}) -> bill id {nid}")
        billed = []
        while True:                                      # stage 3: the side effect
            try:
                m = bill.receive(timeout=0.5)
            except shmq.Empty:
                break
            billed.append(m.body["order"])
            m.ack()
        print("billed:", sorted(billed))
        assert sorted(billed) == [1, 2, 3]
    finally:
        for q, n in zip(qs, NAMES):
            q.close()
            shmq.unlink(n)
            shmq.unlink(n + ".dlq")
