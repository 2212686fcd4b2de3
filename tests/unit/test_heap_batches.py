"""Batches of large messages do not refault the heap on every batch (issue 12 item 2): shmq._heap."""
import os
import subprocess
import sys
import textwrap

import pytest

import shmq
from shmq import _heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc policy")

# A fresh interpreter per case: the heap thresholds are process-wide and set once.
_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    import shmq
    from shmq import _heap
    size, batches = int(sys.argv[1]), int(sys.argv[2])
    q = shmq.Queue()
    body = os.urandom(size)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def one_batch():
        q.put_many([body] * 64)
        got = []
        while len(got) < 64:
            got += q.get_many(64 - len(got))
        assert all(g == body for g in got)
    for _ in range(3):
        one_batch()           # warm-up: the queue's pages and the heap grow once
    f0 = faults()
    for _ in range(batches):
        one_batch()
    per_msg = (faults() - f0) / (64 * batches)
    q.close()
    print(json.dumps({"faults_per_msg": per_msg, "state": _heap.state()}))
""")


def _run(size, batches, env_extra=None):
    env = dict(os.environ)
    for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
              "GLIBC_TUNABLES", "SHMQ_HEAP_TUNE"):
        env.pop(v, None)
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", _CHILD, str(size), str(batches)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc():
    import platform
    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the policy acts on glibc's malloc only")
@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_large_batches_do_not_refault(size):
    # Before the policy: 16 faults per 64 KiB message and 256 per 1 MiB message (the whole body
    # faulted in again after glibc trimmed the previous batch). A page fault count is not a
    # clock: it does not depend on the machine's load.
    r = _run(size, 6 if size > 64 * 1024 else 20)
    assert r["state"]["tuned"], r
    assert r["state"]["mmap_threshold"] == _heap.MMAP_THRESHOLD
    assert r["state"]["trim_threshold"] >= 2 * 64 * size
    pages = size // 4096
    assert r["faults_per_msg"] < pages / 8, r


@pytest.mark.skipif(not _glibc(), reason="the policy acts on glibc's malloc only")
def test_untuned_baseline_refaults():
    # The measurement above can fail: with the policy off, the same loop refaults every page.
    r = _run(64 * 1024, 20, {"SHMQ_HEAP_TUNE": "0"})
    assert not r["state"]["tuned"]
    assert r["state"]["why_not"] == "SHMQ_HEAP_TUNE=0"
    assert r["faults_per_msg"] > 16 / 2, r


@pytest.mark.parametrize("var,value", [("MALLOC_TRIM_THRESHOLD_", "1000000"), ("MALLOC_MMAP_THRESHOLD_", "1000000"),
                                       ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")])
def test_user_settings_are_left_alone(var, value):
    r = _run(64 * 1024, 1, {var: value})
    assert not r["state"]["tuned"]
    assert var in r["state"]["why_not"]


def test_small_batches_set_nothing():
    r = _run(512, 2)
    assert not r["state"]["tuned"] and r["state"]["why_not"] is None


def test_policy_thresholds():
    # pure function of the batch sizes seen (called here directly, not through a batch)
    assert _heap._next(_heap.TRIM_FLOOR) == _heap.TRIM_FLOOR // 2 + 1
    assert _heap._next(_heap.TRIM_CEILING) == _heap.NEVER
    assert _heap.TRIM_FLOOR == 2 * _heap.MMAP_THRESHOLD


def test_receive_many_large_bodies(make_queue):
    # receive_many counts its bodies for the policy too (the same bookkeeping as get_many)
    q = make_queue(ack=True)
    q.send(b"x" * (128 * 1024))
    q.send(b"y" * (128 * 1024))
    got = q.receive_many(8)
    assert [len(m.body) for m in got] == [128 * 1024] * 2
    for m in got:
        m.ack()
