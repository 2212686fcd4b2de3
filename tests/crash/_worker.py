"""Crash-test worker, run as a separate program (SHMQ_CRASH_AT is read when shmq loads).

usage: _worker.py produce NAME COUNT RECORD SIZE_MODE   -> records "p <seq>" after each put returns
       _worker.py consume NAME COUNT RECORD             -> records "c <seq>" after each get returns
       _worker.py attach  NAME
       _worker.py repair  NAME                              -> repairs dead participants, prints how many
"""
import os
import struct
import sys

import shmq


def payload(seq, mode):
    head = struct.pack("<Q", seq)
    if mode == "small":
        return head
    if mode == "large":
        return head + bytes(3000 + (seq % 7) * 1000)
    if mode == "huge":
        return head + bytes(2 * 1024 * 1024)
    return head + bytes((seq * 37) % 2000)  # mixed: inline and arena


def main():
    op, name = sys.argv[1], sys.argv[2]
    if op == "attach":
        q = shmq.Queue(name)
        q.close()
        return 0
    if op == "repair":
        q = shmq.Queue(name)
        print(q._repair(), flush=True)
        q.close()
        return 0
    count, record = int(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "mixed"
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    q = shmq.Queue(name)
    if op == "produce":
        for seq in range(count):
            q.put(payload(seq, mode), timeout=30)
            os.write(fd, b"p %d\n" % seq)
    else:
        for _ in range(count):
            data = q.get(timeout=30)
            os.write(fd, b"c %d\n" % struct.unpack_from("<Q", data)[0])
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
