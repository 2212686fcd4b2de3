"""A participant that is stopped (SIGSTOP) while its owner id stamps a shared lock word: the same
state as a process stopped inside the lock's critical section, made deterministic by forging
the stamp of a live, stopped participant."""
import contextlib
import os
import signal
import subprocess
import sys
import time

from _forge import slot_of_pid, owner_id, write, read

HOLDER = """
import shmq, sys, time
q = shmq.Queue(sys.argv[1])
q.put_nowait(b"attached")   # takes a slot, and the producer role
q.get_nowait()
print("attached", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def stopped_holder(qname, path, word_off):
    """Start a participant, stop it, stamp word_off with its owner id; undo everything after."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, qname], stdout=subprocess.PIPE, text=True)
    old = read(path, word_off, "<I")[0]
    try:
        assert p.stdout.readline().strip() == "attached"
        sg = slot_of_pid(path, p.pid)
        assert sg is not None, "the holder's slot was not found"
        os.kill(p.pid, signal.SIGSTOP)
        write(path, word_off, "<I", owner_id(*sg))
        yield p
    finally:
        write(path, word_off, "<I", old)
        with contextlib.suppress(OSError):
            os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait(10)
        p.stdout.close()
