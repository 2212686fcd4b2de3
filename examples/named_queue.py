"""A named queue shared by two unrelated processes.

This script creates the queue "example-<pid>", starts a second Python interpreter that
knows nothing but the name, lets it send a few messages back, and removes the queue.
"""
import os
import subprocess
import sys

import shmq

NAME = f"example-{os.getpid()}"

CHILD = """
import sys
import shmq
with shmq.Queue(sys.argv[1]) as q:             # open by name; QueueNotFound if absent
    for i in range(3):
        q.put({"from": "child", "seq": i})
"""

if __name__ == "__main__":
    q = shmq.Queue(NAME, create=True, capacity="4MiB", mode=0o600)
    try:
        subprocess.run([sys.executable, "-c", CHILD, NAME], check=True, timeout=30)
        for _ in range(3):
            print(q.get(timeout=10))
        print("depth now:", q.qsize())
    finally:
        q.close()
        shmq.unlink(NAME)                       # a named queue lives until unlinked
    try:
        shmq.Queue(NAME)
    except shmq.QueueNotFound:
        print(f"{NAME} is gone")
