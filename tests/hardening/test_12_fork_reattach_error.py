"""Issue 11 item 12: a forked child whose re-attach failed (participant table full, no descriptor
left) must say why and what to do on first use, not just "queue ... is closed"."""
import pytest

from _forge import check_child, run_py

CHILD = """
import os, shmq
q = shmq.Queue({name!r}, create=True, capacity="1MiB", max_participants=1)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        q.put("from the child", timeout=1)
        msg = "no error"
    except BaseException as e:
        msg = f"{{type(e).__name__}}: {{e}}"
    os.write(w, msg.encode())
    os._exit(0)
os.close(w)
msg = os.read(r, 4096).decode()
os.waitpid(pid, 0)
q.close()
shmq.unlink({name!r})
print(msg)
"""


@pytest.mark.timeout(60)
def test_a_forked_child_that_could_not_reattach_says_why(qname):
    out = check_child(run_py(CHILD.format(name=qname), timeout=30), "forked child with a full participant table")
    msg = out.strip()
    assert msg != "no error", "the child had no slot but its put succeeded"
    low = msg.lower()
    assert "fork" in low and ("participant" in low or "descriptor" in low), \
        f"the child's error does not say why it has no handle: {msg!r}"
