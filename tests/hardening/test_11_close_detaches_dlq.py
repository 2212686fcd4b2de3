"""Issue 11 item 11: close() of an at-least-once handle must detach its dead-letter queue handle
too (today it stays attached while the closed handle object lives: 127 open/close cycles fill
the dead-letter queue's participant table and the queue can no longer be opened)."""
import pytest

import shmq


@pytest.mark.timeout(60)
def test_closed_ack_handles_leave_no_dead_letter_attachment(qname):
    q = shmq.Queue(qname, create=True, ack=True, capacity="1MiB")
    dlq = shmq.Queue(qname + ".dlq")
    closed = []                                   # handle objects kept (a registry, a traceback...)
    try:
        base = dlq.stats()["attached"]
        for i in range(140):
            h = shmq.Queue(qname)
            h.close()
            closed.append(h)
            attached = dlq.stats()["attached"]
            assert attached == base, f"after {i + 1} open/close cycles the dead-letter queue has {attached} attached (was {base})"
        shmq.Queue(qname).close()
    finally:
        closed.clear()
        dlq.close()
        q.close()
        shmq.unlink(qname + ".dlq")
