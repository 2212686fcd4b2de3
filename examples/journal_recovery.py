"""A journaled queue survives the death of every process and the loss of its shared memory.

A child process sends 1,000 orders with fsync="always" (each send returns once it is on disk),
takes and acks the first 300, then kills itself with SIGKILL in the middle of its work. The
parent removes the shared memory (as a reboot would), creates the queue again with the same
journal, and finds exactly the 700 orders that were sent and not acked, in order.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import shmq

NAME = f"example-journal-{os.getpid()}"


def child(name, journal):
    q = shmq.Queue(name, journal=journal)
    for i in range(1000):
        q.send({"order": i})
    for _ in range(300):
        q.receive(timeout=1).ack()
    q.receive(timeout=1)                 # in flight when we die: it comes back (delivery_count 2)
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    journal = os.path.join(tempfile.mkdtemp(prefix="shmq-example-"), "orders")
    q = shmq.Queue(NAME, create=True, ack=True, journal=journal, fsync="always")
    q.close()
    try:
        r = subprocess.run([sys.executable, __file__, "child", NAME, journal], timeout=120)
        print(f"child ended by signal {-r.returncode} (SIGKILL = {int(signal.SIGKILL)})")
        shmq.unlink(NAME)                # the shared memory is gone; the journal is not
        q = shmq.Queue(NAME, create=True, ack=True, journal=journal, fsync="always")
        orders = []
        while True:
            try:
                m = q.receive(timeout=0.1)
            except shmq.Empty:
                break
            orders.append((m.body["order"], m.delivery_count))
            m.ack()
        q.close()
        print(f"recovered {len(orders)} orders: {orders[0]} ... {orders[-1]}")
        assert [o for o, _ in orders] == list(range(300, 1000))
        assert orders[0][1] == 2         # the one in flight at the crash counts its failed delivery
        print(shmq.journal.verify(journal)[1])
    finally:
        for n in (NAME, NAME + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass
        shutil.rmtree(os.path.dirname(journal), ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
