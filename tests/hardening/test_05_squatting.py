"""Issue 11 item 5: another local user must not be able to squat a queue's `<name>.dlq` (or the
main name opened with exist_ok=True) and read its dead letters or plant pickles; `redrive` moves
bodies without unpickling them."""
import os
import stat

import pytest

import shmq
from _forge import SHM, check_child, other_user_prefix, run_py

SQUATTER_UID = 65534

SQUAT = """
import shmq, sys
from shmq.queue import _create_dlq
q = (_create_dlq if {ack} else shmq.Queue)({name!r}, create=True, ack={ack}, mode=0o666)
q.close()
print("squatted")
"""


def _squat(name, ack):
    """Create queue `name` as another user, with mode 0o666 (as an attacker would)."""
    prefix, why = other_user_prefix(SQUATTER_UID)
    if prefix is None:
        pytest.skip(f"cannot run a child as another user: {why}")
    if not os.access(os.path.dirname(os.path.dirname(shmq.__file__)), os.R_OK) or \
            os.stat(os.path.dirname(shmq.__file__)).st_mode & stat.S_IROTH == 0:
        pytest.skip("the installed package is not readable by another user")
    res = run_py(SQUAT.format(name=name, ack=ack), timeout=30, prefix=prefix)
    check_child(res, f"squatting {name!r} as uid {SQUATTER_UID}")
    path = os.path.join(SHM, "shmq." + name)
    assert os.stat(path).st_uid == SQUATTER_UID
    return path


def _remove(*names):
    for n in names:
        try:
            os.unlink(os.path.join(SHM, "shmq." + n))
        except FileNotFoundError:
            pass


def _assert_names_the_file(e, path):
    msg = str(e)
    assert os.path.basename(path) in msg or path in msg, msg
    assert str(SQUATTER_UID) in msg or "nobody" in msg, f"the message should name the owner: {msg}"
    assert "666" in msg, f"the message should name the mode: {msg}"


@pytest.mark.timeout(60)
def test_a_dead_letter_queue_squatted_by_another_user_is_refused(qname):
    dlq_path = _squat(qname + ".dlq", True)
    try:
        with pytest.raises(shmq.ShmqError) as ei:
            shmq.Queue(qname, create=True, ack=True)
        assert isinstance(ei.value, PermissionError), type(ei.value).__mro__
        _assert_names_the_file(ei.value, dlq_path)
    finally:
        _remove(qname, qname + ".dlq")


@pytest.mark.timeout(60)
def test_opening_a_queue_squatted_by_another_user_with_exist_ok_is_refused(qname):
    path = _squat(qname, False)
    try:
        with pytest.raises(shmq.ShmqError) as ei:
            shmq.Queue(qname, create=True, exist_ok=True)
        assert isinstance(ei.value, PermissionError), type(ei.value).__mro__
        _assert_names_the_file(ei.value, path)
    finally:
        _remove(qname)


@pytest.mark.timeout(60)
def test_exist_ok_refuses_our_own_file_with_a_wider_mode_than_asked(qname):
    q = shmq.Queue(qname, create=True, mode=0o666)
    try:
        with pytest.raises(shmq.QueuePermissionError) as ei:
            shmq.Queue(qname, create=True, exist_ok=True, mode=0o600)
        assert "666" in str(ei.value) and "600" in str(ei.value), str(ei.value)
        # the same mode, or a narrower request than the file... of its own owner: fine
        shmq.Queue(qname, create=True, exist_ok=True, mode=0o666).close()
        shmq.Queue(qname, create=True, exist_ok=True, mode=0o777).close()
    finally:
        q.close()


@pytest.mark.timeout(60)
def test_an_existing_dead_letter_queue_with_a_wider_mode_than_its_queue_is_refused(qname):
    dlq = shmq.queue._create_dlq(qname + ".dlq", create=True, ack=True, mode=0o666)
    try:
        with pytest.raises(shmq.QueuePermissionError):
            shmq.Queue(qname, create=True, ack=True, mode=0o600)
        # our own dead-letter queue as created by us: fine, also when opened by name later
        _remove(qname)
        dlq.close()
        _remove(qname + ".dlq")
        q = shmq.Queue(qname, create=True, ack=True, mode=0o640)
        q.close()
        shmq.Queue(qname).close()
    finally:
        dlq.close()
        _remove(qname, qname + ".dlq")


MARK = os.path.join("/tmp", f"shmq-redrive-pwned-{os.getpid()}")


def _plant():
    """Runs when unpickled: proves code from the queue ran."""
    with open(MARK, "w") as f:
        f.write("pwned")
    return "planted"


class Planted:
    def __reduce__(self):
        return (_plant, ())


@pytest.mark.timeout(60)
def test_redrive_moves_bodies_without_unpickling(qname):
    if os.path.exists(MARK):
        os.unlink(MARK)
    src = shmq.Queue(qname, create=True, ack=True)
    dlq = shmq.Queue(qname + ".dlq")
    try:
        dlq.send(Planted(), headers={"x-dead-letter-source": qname, "keep": "me"}, priority=3)
        dlq.send(b"raw bytes", headers={"x-dead-letter-source": qname})
        dlq.send(bytearray(b"a bytearray"), headers={"x-dead-letter-source": qname})
        assert shmq.redrive(qname + ".dlq") == 3
        assert not os.path.exists(MARK), "redrive unpickled a dead letter (ran code from the queue)"
        m = src.receive(timeout=5)
        assert m.headers == {"keep": "me"} and m.priority == 3
        assert m.body == "planted"                       # unpickled here: by the consumer, on purpose
        assert os.path.exists(MARK)
        m.ack()
        m = src.receive(timeout=5)
        assert m.body == b"raw bytes" and type(m.body) is bytes
        m.ack()
        m = src.receive(timeout=5)
        assert m.body == bytearray(b"a bytearray") and type(m.body) is bytearray
        m.ack()
        assert dlq.qsize() == 0 and dlq.stats()["in_flight"] == 0
    finally:
        dlq.close()
        src.close()
        _remove(qname + ".dlq")
        if os.path.exists(MARK):
            os.unlink(MARK)


@pytest.mark.timeout(60)
def test_a_queue_shared_on_purpose_by_another_user_still_opens_with_its_dead_letter_queue(qname):
    """The dead-letter queue is trusted when it belongs to the queue's own owner: opening another
    user's deliberately shared ack queue by name keeps working."""
    prefix, why = other_user_prefix(SQUATTER_UID)
    if prefix is None:
        pytest.skip(f"cannot run a child as another user: {why}")
    code = """
import shmq
q = shmq.Queue({name!r}, create=True, ack=True, mode=0o666)
q.close()
print("shared")
"""
    check_child(run_py(code.format(name=qname), timeout=30, prefix=prefix), "creating a shared ack queue as another user")
    try:
        q = shmq.Queue(qname)
        try:
            assert q.dead_letter_queue == qname + ".dlq"
            q.send(b"hello")
            m = q.receive(timeout=5)
            assert m.body == b"hello"
            m.ack()
        finally:
            q.close()
    finally:
        _remove(qname, qname + ".dlq")
