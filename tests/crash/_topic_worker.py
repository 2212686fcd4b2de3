"""Child process of the topic crash and multi-process tests: publishes or reads checkable messages
and records what returned to it in a file (one line per event, flushed at once)."""
import os
import struct
import sys
import time

import shmq

HDR = struct.Struct("<IIQ")   # publisher id, index, seq the publisher expects nothing of (0)


def payload(pub, i):
    filler = bytes((i + k) & 255 for k in range(i % 97))
    return HDR.pack(pub, i, len(filler)) + filler


def check(body):
    """(pub, i) of a message, or None if torn."""
    if len(body) < HDR.size:
        return None
    pub, i, n = HDR.unpack_from(body)
    filler = body[HDR.size:]
    if n != len(filler) or filler != bytes((i + k) & 255 for k in range(i % 97)):
        return None
    return pub, i


def main():
    mode, name, out = sys.argv[1:4]
    args = sys.argv[4:]
    f = open(out, "a", buffering=1)
    t = shmq.Topic(name)
    if mode == "publish":
        n, pub = int(args[0]), int(args[1])
        batch = int(args[2]) if len(args) > 2 else 1
        i = 0
        while i < n:
            k = min(batch, n - i)
            if k == 1:
                seqs = [t.publish(payload(pub, i), timeout=30)]
            else:
                seqs = t.publish_many([payload(pub, i + j) for j in range(k)], timeout=30)
            for j, s in enumerate(seqs):
                f.write(f"P {s} {pub} {i + j}\n")
            i += k
    elif mode == "read":
        sub_name, idle, limit = args[0], float(args[1]), int(args[2])
        start = args[3] if len(args) > 3 else "latest"
        on_slow = args[4] if len(args) > 4 else None
        delay = float(args[5]) if len(args) > 5 else 0.0
        first = float(args[6]) if len(args) > 6 else idle   # how long to wait for the first message
        kw = {} if on_slow in (None, "-") else {"on_slow": on_slow}
        sub = t.subscribe(None if sub_name == "-" else sub_name, start=start if start in ("latest", "earliest")
                          else int(start), **kw)
        f.write("READY\n")
        got = 0
        while got < limit:
            try:
                m = sub.get(timeout=idle if got else first)
            except shmq.Empty:
                break
            pi = check(m.body)
            f.write(f"R {m.seq} {pi[0]} {pi[1]}\n" if pi else f"BAD {m.seq}\n")
            got += 1
            if delay:
                time.sleep(delay)
        f.write(f"M {sub.missed}\n")
    elif mode == "receive":
        # ack=True member: receive, record, ack (hold > 0: keep that many unacked, then sleep)
        sub_name, idle, hold = args[0], float(args[1]), int(args[2])
        sub = t.subscribe(sub_name, ack=True, visibility_timeout=60)
        f.write("READY\n")
        held = []
        while True:
            try:
                m = sub.get(timeout=idle)
            except shmq.Empty:
                break
            f.write(f"R {m.seq} {m.delivery_count}\n")
            if len(held) < hold:
                held.append(m)
                if len(held) == hold:
                    f.write("HOLDING\n")
                    time.sleep(600)
            else:
                m.ack()
                f.write(f"A {m.seq}\n")
    elif mode == "subscribe":
        t.subscribe(args[0], start="earliest")
        f.write("SUBSCRIBED\n")
    f.close()
    t.close()


if __name__ == "__main__":
    main()
