"""Journal fault worker, run as a separate program (SHMQ_CRASH_AT and the SHMQ_JOURNAL_* fault
settings are read once at load).

usage: _journal_worker.py create  NAME DIR MODE SEG          create the at-least-once queue, close
       _journal_worker.py produce NAME DIR MODE LOG TAG      send forever: "s BODY" after each send returned
       _journal_worker.py consume NAME DIR MODE LOG          receive forever: "r BODY" on receipt, "a BODY" after ack
       _journal_worker.py cycle   NAME DIR MODE LOG TAG N    N x (send, receive, ack), logged as above
       _journal_worker.py eio     NAME DIR                   always-mode sends until a sync fails: JSON report
       _journal_worker.py enospc  NAME DIR FLAG              burst with the disk "full", then freed: JSON report
"""
import hashlib
import json
import os
import sys

import shmq


def body(tag, i):
    head = f"{tag}:{i}:".encode()
    pad = hashlib.sha256(head).hexdigest().encode()
    return (head + pad * 4)[:128]


def well_formed(b):
    parts = b.split(b":", 2)
    if len(parts) != 3:
        return False
    return b == body(parts[0].decode(), int(parts[1]))


def log(fd, tag, b):
    os.write(fd, tag + b" " + b + b"\n")


def main():
    op, name, d = sys.argv[1], sys.argv[2], sys.argv[3]
    if op == "create":
        q = shmq.Queue(name, create=True, ack=True, dead_letter=None, journal=d, fsync=sys.argv[4],
                       journal_segment_size=int(sys.argv[5]), visibility_timeout=3600, raw=True)
        q.close()
        return 0
    if op == "eio":
        q = shmq.Queue(name, journal=d)
        out = {"ok": 0, "errors": [], "later_ok": 0}
        for i in range(400):
            try:
                q.send(body("e", i))
                out["ok" if not out["errors"] else "later_ok"] += 1
            except shmq.JournalError as e:
                out["errors"].append(e.errno)
        try:
            q.sync()
            out["sync"] = "ok"
        except shmq.JournalError as e:
            out["sync"] = e.errno
        out["fsync_errors"] = q.stats()["journal_fsync_errors"]
        q.close()
        print(json.dumps(out))
        return 0
    if op == "enospc":
        flag = sys.argv[4]
        q = shmq.Queue(name, journal=d)
        out = {"sent": [], "failed": 0, "depth_before": 0, "after": 0}
        open(flag, "w").close()
        i = 0
        while out["failed"] < 20 and i < 100000:
            depth = q.stats()["depth"]
            try:
                q.send(body("n", i))
                out["sent"].append(i)
            except shmq.JournalError as e:
                assert e.errno == 28, e
                assert q.stats()["depth"] == depth   # failed cleanly: nothing enqueued
                out["failed"] += 1
            i += 1
        os.unlink(flag)                              # space is free again
        for k in range(50):
            q.send(body("n", i + k))
            out["sent"].append(i + k)
            out["after"] += 1
        q.close()
        print(json.dumps(out))
        return 0
    mode, logpath = sys.argv[4], sys.argv[5]
    fd = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    q = shmq.Queue(name, journal=d, fsync=mode)
    if op == "produce":
        tag = sys.argv[6]
        i = 0
        while True:
            b = body(tag, i)
            q.send(b)
            log(fd, b"s", b)
            i += 1
    if op == "consume":
        while True:
            try:
                m = q.receive(timeout=0.05)
            except shmq.Empty:
                continue
            log(fd, b"r", m.body)
            m.ack()
            log(fd, b"a", m.body)
    if op == "cycle":
        tag, n = sys.argv[6], int(sys.argv[7])
        for i in range(n):
            b = body(tag, i)
            q.send(b)
            log(fd, b"s", b)
            if i % 3 == 2:
                continue          # some stay queued: retention must keep their segments
            m = q.receive(timeout=5)
            log(fd, b"r", m.body)
            m.ack()
            log(fd, b"a", m.body)
        q.close()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
