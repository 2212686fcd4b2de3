"""Issue 11 item 6: a stopped process holding the timer-scan try-lock must not freeze lease
expiry (nor delays and TTLs) for everyone."""
import time

import pytest

import shmq
from _forge import H_TIMER_LOCK
from _stopped import stopped_holder


@pytest.mark.timeout(60)
def test_lease_expires_while_a_stopped_process_holds_the_timer_lock(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB", ack=True, visibility_timeout=0.2)
    try:
        with stopped_holder(qname, q.path, H_TIMER_LOCK):
            q.send(b"lease me")
            m = q.receive(timeout=5)
            assert m.delivery_count == 1
            time.sleep(0.4)                        # the lease is over; never acked
            try:
                again = q.receive(timeout=5)
            except shmq.Empty:
                pytest.fail("the expired lease was not redelivered within 5 s: "
                            "a stopped process holding the timer lock froze expiry")
            assert again.body == b"lease me" and again.delivery_count == 2
            again.ack()
    finally:
        q.close()
        shmq.unlink(qname + ".dlq")
