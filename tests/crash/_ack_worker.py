"""At-least-once crash worker, run as a separate program (SHMQ_CRASH_AT is read at import).

usage: _ack_worker.py receive NAME COUNT RECORD      receive + ack COUNT messages
       _ack_worker.py nack    NAME COUNT RECORD R    receive + nack (R=1 requeue, 0 dead-letter)
       _ack_worker.py expire  NAME VIS RECORD        receive one, outlive its lease, run the timer scan
       _ack_worker.py dedup   NAME KEY               send one message with dedup_id KEY
       _ack_worker.py close   NAME COUNT RECORD      receive COUNT messages, settle none, close
Records "r <seq> <delivery_count>" after each receive and "a|n <seq>" after each ack/nack returns.
"""
import os
import struct
import sys
import time

import shmq


def main():
    op, name = sys.argv[1], sys.argv[2]
    q = shmq.Queue(name)
    if op == "dedup":
        q.send(b"worker", dedup_id=sys.argv[3])
        q.close()
        return 0
    fd = os.open(sys.argv[4], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if op == "expire":
        m = q.receive(timeout=10)
        os.write(fd, b"r %d %d\n" % (struct.unpack_from("<Q", m.body)[0], m.delivery_count))
        time.sleep(float(sys.argv[3]) * 1.5)
        q._timers_run()
        q.close()
        return 0
    for _ in range(int(sys.argv[3])):
        m = q.receive(timeout=10)
        seq = struct.unpack_from("<Q", m.body)[0]
        os.write(fd, b"r %d %d\n" % (seq, m.delivery_count))
        if op == "close":
            continue
        if op == "receive":
            m.ack()
            os.write(fd, b"a %d\n" % seq)
        else:
            m.nack(requeue=sys.argv[5] == "1")
            os.write(fd, b"n %d\n" % seq)
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
