"""Issue 13 item 3: when /dev/shm has room for an at-least-once queue but not for its dead-letter
queue, the create fails and leaves nothing behind (it left the queue, and every later open or
create of the name failed). Run in a private mount namespace with a 64 MiB tmpfs on /dev/shm."""
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, shmq
    def left():
        return sorted(f for f in os.listdir("/dev/shm") if f.startswith("shmq."))
    try:
        shmq.Queue("orders", create=True, ack=True, capacity="40MiB")   # 40 fits, 40 + 40 does not
        print("created")
    except shmq.NoSpaceError as e:
        print("nospace", "orders.dlq" in str(e), any("not created either" in n for n in getattr(e, "__notes__", [])))
    print("left", left())
    with shmq.Queue("orders", create=True, ack=True, capacity="16MiB") as q:   # the name is free
        q.send(b"x")
        m = q.receive(timeout=5)
        assert m.ack()
    print("left", left())
    shmq.unlink("orders"); shmq.unlink("orders.dlq")
    print("left", left())
""")


def _private_shm_available():
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.timeout(60)
def test_no_room_for_the_dead_letter_queue_creates_neither():
    if not _private_shm_available():
        pytest.skip("needs unshare -m (a private mount namespace) to give /dev/shm a 64 MiB tmpfs")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" -c "$1"', sys.executable, SCRIPT],
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "nospace True True",
        "left []",
        "left ['shmq.orders', 'shmq.orders.dlq']",
        "left []",
    ], r.stdout + r.stderr
