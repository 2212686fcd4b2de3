"""Issue 11 item 13: every error is a ShmqError and the builtin that fits (DESIGN §5), argument
errors included: no bare ValueError/TypeError/OverflowError/OSError, and a bool is not a mode."""
import pytest

import shmq
from _forge import can_unshare, check_child, run_py, unshare_prefix

pytestmark = [pytest.mark.timeout(60)]


def _raises(builtin, fn):
    with pytest.raises(Exception) as ei:
        fn()
    e = ei.value
    assert isinstance(e, shmq.ShmqError) and isinstance(e, builtin), \
        f"{type(e).__name__}({e}) should be a shmq.ShmqError and a {builtin.__name__}"


def test_an_invalid_name_is_a_shmq_error():
    _raises(ValueError, lambda: shmq.Queue("bad name!"))


def test_a_maxsize_too_large_is_a_shmq_error():
    _raises(ValueError, lambda: shmq.Queue(2 ** 64))


def test_a_capacity_too_large_is_a_shmq_error(qname):
    _raises(ValueError, lambda: shmq.Queue(qname, create=True, capacity=2 ** 64))


def test_get_many_with_a_huge_count_is_not_an_overflow_error():
    q = shmq.Queue()
    try:
        q.put(1)
        try:
            got = q.get_many(2 ** 70, timeout=1)
        except Exception as e:   # a clean refusal is fine too
            assert isinstance(e, shmq.ShmqError) and isinstance(e, ValueError), f"{type(e).__name__}: {e}"
        else:
            assert got == [1]
    finally:
        q.close()


def test_a_bool_is_not_a_mode(qname):
    try:
        _raises(TypeError, lambda: shmq.Queue(qname, create=True, mode=True).close())
    finally:
        try:
            shmq.unlink(qname)
        except shmq.QueueNotFound:
            pass


def test_a_failed_open_is_a_shmq_error_not_a_bare_oserror():
    why = can_unshare()
    if why:
        pytest.skip(why)
    code = """
import os, shmq
os.mkdir("/dev/shm/shmq.adir")                  # a directory where a queue file should be
try:
    shmq.Queue("adir")
except Exception as e:
    assert isinstance(e, shmq.ShmqError) and isinstance(e, OSError), f"{type(e).__mro__}: {e}"
else:
    raise AssertionError("opened a directory as a queue")
print("child-ok")
"""
    out = check_child(run_py(code, timeout=30, prefix=unshare_prefix("4m")), "opening a directory as a queue")
    assert "child-ok" in out
