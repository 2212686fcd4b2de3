"""Message-group and forward crash worker, run as a separate program (SHMQ_CRASH_AT is read at import).

usage: _group_worker.py send    NAME GROUPS PER RECORD   send PER messages to each of GROUPS groups, round robin
       _group_worker.py consume NAME COUNT RECORD        receive + ack COUNT messages
       _group_worker.py forward SRC DST COUNT RECORD     receive from SRC + forward to DST, COUNT times
Bodies are "<group> <seq>". Records "s <group> <seq>" after each send returns, "r <group> <seq> <count>"
after each receive, "a <group> <seq>" after each ack returns, "f <seq> <new id>" after each forward returns.
"""
import os
import sys

import shmq


def main():
    op = sys.argv[1]
    if op == "forward":
        src, dst = shmq.Queue(sys.argv[2]), shmq.Queue(sys.argv[3])
        fd = os.open(sys.argv[5], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for _ in range(int(sys.argv[4])):
            m = src.receive(timeout=10)
            os.write(fd, b"r %s %d\n" % (m.body.encode(), m.delivery_count))
            nid = m.forward(dst, "fwd " + m.body)
            os.write(fd, b"f %s %d\n" % (m.body.split()[1].encode(), nid))
        return 0
    q = shmq.Queue(sys.argv[2])
    if op == "send":
        groups, per = int(sys.argv[3]), int(sys.argv[4])
        fd = os.open(sys.argv[5], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for s in range(per):
            for g in range(groups):
                q.send(f"g{g} {s}", group=f"g{g}")
                os.write(fd, b"s g%d %d\n" % (g, s))
        return 0
    fd = os.open(sys.argv[4], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for _ in range(int(sys.argv[3])):
        m = q.receive(timeout=10)
        os.write(fd, b"r %s %d\n" % (m.body.encode(), m.delivery_count))
        m.ack()
        os.write(fd, b"a %s\n" % m.body.encode())
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
