"""Priority crash worker, run as a separate program (SHMQ_CRASH_AT is read when shmq loads).

usage: _prio_worker.py produce NAME COUNT RECORD LEVELS  put seq at priority seq % LEVELS; "p <seq>" after each returns
       _prio_worker.py consume NAME COUNT RECORD         "c <seq>" after each get returns
       _prio_worker.py nack    NAME COUNT RECORD         receive + nack(requeue); "n <seq> <priority>" after each
       _prio_worker.py reject  NAME COUNT RECORD         receive + nack(requeue=False): dead-lettered
       _prio_worker.py ack     NAME COUNT RECORD         receive + ack; "n <seq> <priority>" after each
       _prio_worker.py hold    NAME COUNT RECORD         receive COUNT, settle none, then sleep (killed by the test)
Bodies are an 8-byte sequence number and padding.
"""
import os
import struct
import sys
import time

import shmq


def main():
    op, name, count, record = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    q = shmq.PriorityQueue(name)
    if op == "produce":
        levels = int(sys.argv[5])
        for seq in range(count):
            q.put(struct.pack("<Q", seq) + bytes((seq * 37) % 2000), priority=seq % levels, timeout=30)
            os.write(fd, b"p %d\n" % seq)
    elif op == "consume":
        for _ in range(count):
            data = q.get(timeout=30)
            os.write(fd, b"c %d\n" % struct.unpack_from("<Q", data)[0])
    else:
        for _ in range(count):
            m = q.receive(timeout=30)
            seq = struct.unpack_from("<Q", m.body)[0]
            if op == "hold":
                os.write(fd, b"r %d %d\n" % (seq, m.priority))
                continue
            if op == "ack":
                m.ack()
            else:
                m.nack(requeue=op == "nack")
            os.write(fd, b"n %d %d\n" % (seq, m.priority))
        if op == "hold":
            time.sleep(60)
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
