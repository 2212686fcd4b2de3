"""Request-reply under SIGKILL at each named point of shmq.rpc (SHMQ_CRASH_AT, as the core's
points): a dead requester's inbox and requests never wedge responders; a dead responder's
requester learns it (ResponderDiedError) or, reliable, gets its reply from another responder."""
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

import shmq
from shmq import rpc

BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)

RESPONDER = textwrap.dedent("""
    import sys, shmq
    srv = shmq.Responder(sys.argv[1], reliable=sys.argv[2] == "1")
    print("up", flush=True)
    for req in srv:
        req.reply(("answer", req.body, req.delivery_count))
""")

REQUESTER = textwrap.dedent("""
    import sys, shmq
    cli = shmq.Requester(sys.argv[1])
    print(cli._path, flush=True)
    try:
        print(cli.request(b"from the dying requester", timeout=20), flush=True)
    except BaseException as e:
        print(type(e).__name__, e, flush=True)
""")


def _spawn(code, *args, point=None):
    env = {k: v for k, v in os.environ.items() if k != "SHMQ_CRASH_AT"}
    if point:
        env["SHMQ_CRASH_AT"] = point
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def reqq(qname):
    procs = []

    def spawn(code, *args, point=None):
        p = _spawn(code, *args, point=point)
        procs.append(p)
        return p

    yield qname, spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)
    for path in _dead_inboxes:          # SIGKILLed requesters' inboxes (a sweep would take them later)
        if os.path.exists(path):
            os.unlink(path)
    _dead_inboxes.clear()
    for n in (qname, qname + ".dlq"):
        try:
            shmq.unlink(n)
        except shmq.QueueNotFound:
            pass


_dead_inboxes = []


def _settled(cli):
    """stats() once the responder's ack of the last reply landed (it acks right after replying)."""
    for _ in range(500):
        st = cli.stats()
        if st["in_flight"] == 0:
            break
        time.sleep(0.01)
    return st


def _responder(spawn, name, reliable=False, point=None):
    p = spawn(RESPONDER, name, "1" if reliable else "0", point=point)
    assert p.stdout.readline().strip() == "up"
    return p


def test_every_rpc_crash_point_has_a_kill_test():
    with open(__file__) as f:
        used = set(re.findall(r'point="(\w+)"', f.read()))
    assert set(rpc.CRASH_POINTS) <= used, f"rpc crash points without a kill test: {set(rpc.CRASH_POINTS) - used}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reliable", [False, True])
def test_responder_killed_after_take(reqq, reliable):
    name, spawn = reqq
    shmq.Responder(name, create=True, reliable=reliable, **({"visibility_timeout": 60} if reliable else {})).close()
    dying = _responder(spawn, name, reliable, point="rpc_after_take")
    with shmq.Requester(name) as cli:
        f = cli.submit(b"job", timeout=40)
        assert dying.wait(20) == -9
        if not reliable:
            with pytest.raises(shmq.ResponderDiedError):
                f.result(timeout=30)
            assert cli.stats()["responder_died"] == 1
        else:
            _responder(spawn, name, True)      # the request goes to the next responder
            assert f.result(timeout=30) == ("answer", b"job", 2)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reliable", [False, True])
@pytest.mark.shm_only("on Redis the reply is pushed and the request acked by one script: there is no instant "
                      "between them to crash in (docs/internals/redis.md)")
def test_responder_killed_after_reply_before_ack(reqq, reliable):
    name, spawn = reqq
    shmq.Responder(name, create=True, reliable=reliable, **({"visibility_timeout": 60} if reliable else {})).close()
    dying = _responder(spawn, name, reliable, point="rpc_after_reply")
    with shmq.Requester(name) as cli:
        assert cli.request(b"job", timeout=20) == ("answer", b"job", 1)   # the reply got out
        assert dying.wait(20) == -9
        other = _responder(spawn, name, reliable)
        if reliable:
            # the unacked request is answered again: the duplicate reply is dropped and counted
            cli._q._repair()
            assert cli.request(b"next", timeout=20) == ("answer", b"next", 1)
            for _ in range(200):
                if cli.stats()["late_replies"] == 1:
                    break
                cli.request(b"tick", timeout=20)
            assert cli.stats()["late_replies"] == 1
        else:
            # dead-lettered by repair (one delivery allowed), never answered twice
            cli._q._repair()
            with shmq.Queue(name + ".dlq") as dlq:
                m = dlq.receive(timeout=10)
                assert m.body == b"job"
                m.ack()
            assert cli.request(b"next", timeout=20) == ("answer", b"next", 1)
            assert cli.stats()["late_replies"] == 0
        assert other.poll() is None


@pytest.mark.timeout(90)
@pytest.mark.shm_only("checks that the dead requester's inbox is a shared-memory file; the Redis reply list "
                      "expires by itself (tests/redis/test_redis_backend.py)")
def test_requester_killed_after_send_leaves_responders_working(reqq):
    name, spawn = reqq
    shmq.Responder(name, create=True).close()
    _responder(spawn, name)
    dying = spawn(REQUESTER, name, point="rpc_after_send")
    inbox = dying.stdout.readline().strip()
    _dead_inboxes.append(inbox)
    assert dying.wait(20) == -9
    with shmq.Requester(name) as cli:
        # the responder answered into the dead requester's inbox (or dropped it) and goes on
        assert cli.request(b"mine", timeout=20) == ("answer", b"mine", 1)
        assert cli.request(b"again", timeout=20) == ("answer", b"again", 1)
        st = _settled(cli)
        assert st["depth"] == 0 and st["in_flight"] == 0, st
    assert inbox.startswith("/dev/shm/shmq.@")


@pytest.mark.timeout(90)
def test_requester_killed_while_looking_after_a_dead_responders_request(reqq):
    # rpc_mid_look: the requester found its request held by a dead responder and dies before
    # running repair: the next participant's repair dead-letters it; nothing is wedged
    name, spawn = reqq
    shmq.Responder(name, create=True).close()
    _responder(spawn, name, point="rpc_after_take")
    dying = spawn(REQUESTER, name, point="rpc_mid_look")
    _dead_inboxes.append(dying.stdout.readline().strip())
    assert dying.wait(30) == -9
    _responder(spawn, name)
    with shmq.Requester(name) as cli:
        assert cli.request(b"after", timeout=20) == ("answer", b"after", 1)
        cli._q._repair()
        assert _settled(cli)["in_flight"] == 0
    with shmq.Queue(name + ".dlq") as dlq:
        assert dlq.receive(timeout=10).body == b"from the dying requester"
