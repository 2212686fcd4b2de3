"""Fan-out with a topic: every subscriber process gets every event, each stored once.

Creates the topic "example-events-<pid>", starts three subscriber processes that each open it
by name with a named (durable) subscription of their own, publishes ten events, and shows what
each subscriber received. A private subscription in this process shows the lossy real-time
feed: it starts at "latest" and counts what it missed instead of slowing the publisher.
"""
import os
import subprocess
import sys

import shmq

NAME = f"example-events-{os.getpid()}"

SUBSCRIBER = """
import sys
import shmq
name, who = sys.argv[1], sys.argv[2]
with shmq.Topic(name) as t:
    sub = t.subscribe(who)               # created by the parent with start="earliest"
    got = [m.body["n"] for m in (sub.get(timeout=10) for _ in range(10))]
    print(who, "got", got, "lag", sub.lag)
"""

if __name__ == "__main__":
    t = shmq.Topic(NAME, create=True, capacity="1MiB")
    try:
        for who in ("billing", "audit", "search"):
            t.subscribe(who, start="earliest").close()   # durable: keeps its position while nobody reads
        feed = t.subscribe()                            # private, lossy, starts at "latest"
        kids = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, NAME, who])
                for who in ("billing", "audit", "search")]
        for n in range(10):
            seq = t.publish({"n": n, "what": "order-placed"}, headers={"source": "example"})
        print("last seq", seq)
        for k in kids:
            assert k.wait(timeout=60) == 0
        latest = feed.get_many(64, timeout=1)
        print("real-time feed saw", len(latest), "events, missed", feed.missed)
        for info in t.subscriptions():
            print(info)
    finally:
        t.close()
        shmq.unlink(NAME)
