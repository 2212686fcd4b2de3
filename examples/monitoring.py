"""Watch a named queue: stats(), list_queues() and the shmq command line."""
import os
import subprocess
import sys

import shmq

NAME = f"example-monitoring-{os.getpid()}"


def main():
    q = shmq.Queue(NAME, create=True, capacity="1MiB")
    try:
        q.put_many([{"job": i} for i in range(5)])
        q.get()
        st = q.stats()
        print(f"depth={st['depth']} enqueued={st['enqueued']} dequeued={st['dequeued']} "
              f"bytes_used={st['bytes_used']} oldest_age_s={st['oldest_age_s']:.3f}")
        info = next(qi for qi in shmq.list_queues() if qi.name == NAME)
        print(f"list_queues: {info.name} kind={info.kind} depth={info.depth} attached={info.attached}")
        # The command line sees the same queue without attaching to it.
        for cmd in (["ls"], ["stat", NAME], ["peek", NAME, "-n", "2"]):
            out = subprocess.run([sys.executable, "-m", "shmq", *cmd], capture_output=True, text=True, check=True)
            print(f"$ shmq {' '.join(cmd)}\n{out.stdout.rstrip()}")
        assert st["depth"] == 4 and info.depth == 4
    finally:
        q.close()
        shmq.unlink(NAME)


if __name__ == "__main__":
    main()
