"""Growth of unbounded queues: small messages get dense areas (about 256 B of /dev/shm per queued
message, not 1 KiB), and a large message after them still fits (docs/guide/sizing.md)."""
import os

import shmq


def _committed(q):
    return os.stat(q.path).st_blocks * 512


def test_small_messages_cost_about_a_slot_each():
    n = 200_000
    q = shmq.Queue()
    try:
        q.put_many(range(n))
        per = _committed(q) / n
        # 144 B per slot at best; the newest dense area may be half empty: at most ~2x that plus
        # the first, default area. The default split alone costs ~1 KiB per message.
        assert per < 400, f"{per:.0f} bytes of /dev/shm per queued small message"
        got = q.get_many(n, timeout=5)
        while len(got) < n:
            got += q.get_many(n - len(got), timeout=5)
        assert got == list(range(n))
    finally:
        q.close()


def test_large_message_after_dense_growth():
    q = shmq.Queue()
    try:
        q.put_many(range(50_000))            # grows with dense areas
        big = os.urandom(3 << 20)
        q.put(big)                           # needs arena space no dense area has
        q.put_many(range(10))
        got = q.get_many(60_000, timeout=5)
        while len(got) < 50_011:
            got += q.get_many(60_000, timeout=5)
        assert got[:50_000] == list(range(50_000))
        assert got[50_000] == big and got[50_001:] == list(range(10))
        assert q.stats()["depth"] == 0
    finally:
        q.close()
