"""Issue 11 item 9: creating a queue must not depend on a predictable temporary name that anyone
can pre-create (today `shmq.<name>~c<pid>.<n>` with n from 0: a false QueueExistsError even with
exist_ok=True while no queue exists)."""
import os

import pytest

import shmq
from _forge import SHM, check_child, run_py

CHILD = """
import os, shmq
name = {name!r}
# What another user can do: guess this process's temporary names and create them first.
for n in range(64):
    fd = os.open(f"/dev/shm/shmq.{{name}}~c{{os.getpid()}}.{{n}}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
try:
    for kw in ({{}}, {{"exist_ok": True}}):
        q = shmq.Queue(name, create=True, capacity="1MiB", **kw)
        q.put("made", timeout=5)
        assert q.get(timeout=5) == "made"
        q.close()
        shmq.unlink(name)
    q = shmq.Queue(capacity="1MiB")                      # anonymous queues too
    q.put(1); assert q.get(timeout=5) == 1; q.close()
    print("created")
finally:
    for n in range(64):
        try:
            os.unlink(f"/dev/shm/shmq.{{name}}~c{{os.getpid()}}.{{n}}")
        except FileNotFoundError:
            pass
"""


@pytest.mark.timeout(60)
def test_precreated_temporary_names_do_not_stop_creation(qname):
    out = check_child(run_py(CHILD.format(name=qname), timeout=30), "creating a queue whose temporary names were taken")
    assert "created" in out
    assert not os.path.exists(os.path.join(SHM, "shmq." + qname))


@pytest.mark.timeout(60)
def test_creation_leaves_no_temporary_file(qname):
    before = {n for n in os.listdir(SHM) if "~" in n}
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    q.close()
    after = {n for n in os.listdir(SHM) if "~" in n and qname in n}
    assert not after - before, f"temporary files left: {after - before}"
