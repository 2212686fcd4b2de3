"""Every argument error is a ShmqError and the builtin that fits (issue 11 item 13): sizes past
64 bits, bools where ints are meant, bad durations, bad names; no OverflowError, no bare OSError."""
import errno
import os

import pytest

import shmq
from shmq import errors

BIG = 2 ** 64
HUGE = 2 ** 70


def _expect(exc_type, call):
    with pytest.raises(shmq.ShmqError) as ei:
        call()
    assert isinstance(ei.value, exc_type), (type(ei.value).__mro__, ei.value)
    assert not isinstance(ei.value, OverflowError), ei.value
    return ei.value


# (id, builtin, callable(qname) -> raises)
CONSTRUCTOR_CASES = [
    ("maxsize-2**64", ValueError, lambda n: shmq.Queue(BIG)),
    ("maxsize-kw-2**64", ValueError, lambda n: shmq.Queue(maxsize=BIG)),
    ("maxsize-str", TypeError, lambda n: shmq.Queue(maxsize="3")),
    ("maxsize-float", TypeError, lambda n: shmq.Queue(1.5)),
    ("maxsize-none-positional", TypeError, lambda n: shmq.Queue(None)),
    ("maxsize-twice", TypeError, lambda n: shmq.Queue(3, maxsize=4)),
    ("capacity-2**64", ValueError, lambda n: shmq.Queue(n, create=True, capacity=BIG)),
    ("capacity-bool", TypeError, lambda n: shmq.Queue(n, create=True, capacity=True)),
    ("capacity-unit", ValueError, lambda n: shmq.Queue(n, create=True, capacity="12 parsecs")),
    ("capacity-negative", ValueError, lambda n: shmq.Queue(n, create=True, capacity=-1)),
    ("capacity-float", TypeError, lambda n: shmq.Queue(n, create=True, capacity=1.5e6)),
    ("anon-capacity-2**64", ValueError, lambda n: shmq.Queue(capacity=BIG)),
    ("max_message-2**64", ValueError, lambda n: shmq.Queue(n, create=True, max_message=BIG)),
    ("max_message-zero", ValueError, lambda n: shmq.Queue(n, create=True, max_message=0)),
    ("max_message-over-capacity", ValueError, lambda n: shmq.Queue(n, create=True, capacity="1MiB",
                                                                  max_message="2MiB")),
    ("mode-bool", TypeError, lambda n: shmq.Queue(n, create=True, mode=True)),
    ("mode-str", TypeError, lambda n: shmq.Queue(n, create=True, mode="600")),
    ("mode-negative", ValueError, lambda n: shmq.Queue(n, create=True, mode=-1)),
    ("mode-too-wide", ValueError, lambda n: shmq.Queue(n, create=True, mode=0o4777)),
    ("mode-2**64", ValueError, lambda n: shmq.Queue(n, create=True, mode=BIG)),
    ("max_participants-zero", ValueError, lambda n: shmq.Queue(n, create=True, max_participants=0)),
    ("max_participants-2**64", ValueError, lambda n: shmq.Queue(n, create=True, max_participants=BIG)),
    ("max_participants-bool", TypeError, lambda n: shmq.Queue(n, create=True, max_participants=True)),
    ("max_participants-str", TypeError, lambda n: shmq.Queue(n, create=True, max_participants="4")),
    ("name-empty", ValueError, lambda n: shmq.Queue("", create=True)),
    ("name-slash", ValueError, lambda n: shmq.Queue("a/b")),
    ("name-bytes", TypeError, lambda n: shmq.Queue(b"abc")),
    ("create-anonymous", ValueError, lambda n: shmq.Queue(create=True)),
    ("ack-anonymous", ValueError, lambda n: shmq.Queue(ack=True)),
    ("ack-str", TypeError, lambda n: shmq.Queue(n, create=True, ack="yes")),
    ("ack-option-without-ack", ValueError, lambda n: shmq.Queue(n, create=True, max_deliveries=3)),
    ("visibility-zero", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, visibility_timeout=0)),
    ("visibility-str", TypeError, lambda n: shmq.Queue(n, create=True, ack=True, visibility_timeout="1")),
    ("visibility-bool", TypeError, lambda n: shmq.Queue(n, create=True, ack=True, visibility_timeout=True)),
    ("visibility-too-long", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, visibility_timeout=2e9)),
    ("visibility-nan", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, visibility_timeout=float("nan"))),
    ("max_deliveries-zero", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, max_deliveries=0)),
    ("max_deliveries-2**64", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, max_deliveries=BIG)),
    ("max_deliveries-bool", TypeError, lambda n: shmq.Queue(n, create=True, ack=True, max_deliveries=True)),
    ("dedup_capacity-not-pow2", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, dedup_capacity=17)),
    ("dedup_capacity-2**64", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, dedup_capacity=BIG)),
    ("dedup_window-zero", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, dedup_window=0)),
    ("delay-negative", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, delay=-1)),
    ("ttl-zero", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, ttl=0)),
    ("dead_letter-bad-name", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, dead_letter="a/b")),
    ("dead_letter-int", TypeError, lambda n: shmq.Queue(n, create=True, ack=True, dead_letter=3)),
    ("dead_letter-itself", ValueError, lambda n: shmq.Queue(n, create=True, ack=True, dead_letter=n)),
    ("unlink-int", TypeError, lambda n: shmq.unlink(3)),
    ("unlink-bad-name", ValueError, lambda n: shmq.unlink(".x")),
    ("spin-negative", ValueError, lambda n: shmq.set_spin_us(-1)),
    ("spin-str", TypeError, lambda n: shmq.set_spin_us("1")),
]


@pytest.mark.parametrize("exc_type,call", [c[1:] for c in CONSTRUCTOR_CASES], ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_bad_constructor_and_module_arguments(qname, exc_type, call):
    _expect(exc_type, lambda: call(qname))
    assert not os.path.exists(f"/dev/shm/shmq.{qname}")       # nothing was created


# (id, builtin, callable(q) -> raises) on an open queue
CALL_CASES = [
    ("get_many-2**70", ValueError, lambda q: q.get_many(HUGE, timeout=0)),
    ("get_many-zero", ValueError, lambda q: q.get_many(0, timeout=0)),
    ("get_many-negative", ValueError, lambda q: q.get_many(-1, timeout=0)),
    ("get_many-str", TypeError, lambda q: q.get_many("3", timeout=0)),
    ("get_many-bool", TypeError, lambda q: q.get_many(True, timeout=0)),
    ("get-timeout-negative", ValueError, lambda q: q.get(timeout=-1)),
    ("get-timeout-nan", ValueError, lambda q: q.get(timeout=float("nan"))),
    ("get-timeout-str", TypeError, lambda q: q.get(timeout="1")),
    ("get-timeout-list", TypeError, lambda q: q.get(timeout=[1])),
    ("put-timeout-negative", ValueError, lambda q: q.put(1, timeout=-0.5)),
    ("put_many-timeout-str", TypeError, lambda q: q.put_many([1], timeout=b"1")),
    ("peek-negative-cap", ValueError, lambda q: q._peek(0, -1)),
]


@pytest.mark.parametrize("exc_type,call", [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_bad_call_arguments(make_queue, exc_type, call):
    q = make_queue(capacity="1MiB")
    _expect(exc_type, lambda: call(q))
    assert q.qsize() == 0


ACK_CASES = [
    ("receive_many-2**70", ValueError, lambda q: q.receive_many(HUGE, timeout=0)),
    ("receive_many-zero", ValueError, lambda q: q.receive_many(0, timeout=0)),
    ("receive-timeout-negative", ValueError, lambda q: q.receive(timeout=-1)),
    ("send-priority-10", ValueError, lambda q: q.send(b"x", priority=10)),
    ("send-priority-2**64", ValueError, lambda q: q.send(b"x", priority=BIG)),
    ("send-priority-bool", ValueError, lambda q: q.send(b"x", priority=True)),
    ("send-delay-negative", ValueError, lambda q: q.send(b"x", delay=-1)),
    ("send-delay-too-long", ValueError, lambda q: q.send(b"x", delay=2e9)),
    ("send-ttl-zero", ValueError, lambda q: q.send(b"x", ttl=0)),
    ("send-headers-str", TypeError, lambda q: q.send(b"x", headers="k=v")),
    ("send-header-value-int", TypeError, lambda q: q.send(b"x", headers={"k": 1})),
    ("send-header-name-int", TypeError, lambda q: q.send(b"x", headers={1: "v"})),
    ("send-headers-too-large", ValueError, lambda q: q.send(b"x", headers={"k": "v" * 70000})),
    ("send-dedup-int", TypeError, lambda q: q.send(b"x", dedup_id=3)),
    ("ack_many-not-messages", TypeError, lambda q: q.ack_many(["m"])),
]


@pytest.mark.parametrize("exc_type,call", [c[1:] for c in ACK_CASES], ids=[c[0] for c in ACK_CASES])
def test_bad_at_least_once_arguments(make_queue, exc_type, call):
    q = make_queue(ack=True, capacity="1MiB")
    _expect(exc_type, lambda: call(q))
    assert q.stats()["depth"] == 0


def test_bad_settle_arguments(make_queue):
    q = make_queue(ack=True, visibility_timeout=30, capacity="1MiB")
    q.send(b"x")
    m = q.receive(timeout=5)
    _expect(ValueError, lambda: m.extend(-1))
    _expect(ValueError, lambda: m.nack(delay=float("nan")))
    _expect(TypeError, lambda: m.extend("10"))
    assert m.ack() is True
    _expect(ValueError, lambda: m.nack())


def test_plain_queue_refuses_at_least_once_calls(make_queue):
    q = make_queue(capacity="1MiB")
    for call in (lambda: q.send(b"x"), lambda: q.receive(timeout=0), lambda: q.receive_many(timeout=0),
                 lambda: q.ack_many([])):
        e = _expect(ValueError, call)
        assert "ack=True" in str(e)
    assert q.dead_letter_queue is None


def test_joinable_bad_arguments():
    q = shmq.JoinableQueue()
    try:
        _expect(ValueError, lambda: q.join(timeout=-1))
        _expect(ValueError, q.task_done)
    finally:
        q.close()


def test_system_errors_are_shmq_errors():
    for e in (errno.EIO, errno.EMFILE, errno.ENOENT, errno.EACCES, errno.ENOSPC, errno.ENOMEM, errno.EINVAL):
        err = errors._oserror(e, "/dev/shm/shmq.x")
        assert isinstance(err, shmq.ShmqError), (e, type(err))
        assert "'x'" in str(err)


def test_out_of_descriptors_is_a_shmq_error(qname):
    # A process out of file descriptors opens a queue: a ShmqError naming the cause, not a
    # bare OSError (each handle holds one descriptor of the segment).
    import resource
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, hard))
            held = []
            try:
                for _ in range(64):
                    held.append(shmq.Queue(qname))
                code = 2
            except shmq.ShmqError as e:
                code = 0 if isinstance(e, OSError) and "descriptor" in str(e) else 3
            except OSError:
                code = 4
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        q.close()
        shmq.unlink(qname)
