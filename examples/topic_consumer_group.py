"""A consumer group on a topic, and a replay from the earliest message.

Two worker processes subscribe under one name ("workers"): each message goes to one of them.
A second named subscription created later with start="earliest" replays the whole log.
"""
import os
import subprocess
import sys

import shmq

NAME = f"example-jobs-{os.getpid()}"

WORKER = """
import sys
import time
import shmq
with shmq.Topic(sys.argv[1]) as t:
    sub = t.subscribe("workers")
    done = []
    while True:
        try:
            done += [m.seq for m in sub.get_many(8, timeout=1.0)]
            time.sleep(0.01)             # the work: meanwhile the other member takes the next batch
        except shmq.Empty:
            break
    print(sys.argv[2], "handled", len(done), "messages")
"""

if __name__ == "__main__":
    t = shmq.Topic(NAME, create=True, capacity="1MiB")
    try:
        t.subscribe("workers", start="earliest").close()
        t.publish_many([f"job {i}" for i in range(200)])
        kids = [subprocess.Popen([sys.executable, "-c", WORKER, NAME, f"worker-{i}"]) for i in range(2)]
        for k in kids:
            assert k.wait(timeout=60) == 0
        info = {i.name: i for i in t.subscriptions()}["workers"]
        print("group lag", info.lag, "delivered", info.delivered, "consumers now", info.consumers)
        replay = t.subscribe("replay", start="earliest")
        first = replay.get(timeout=1)
        print("replay starts at seq", first.seq, first.body)
    finally:
        t.close()
        shmq.unlink(NAME)
