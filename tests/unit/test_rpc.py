"""Request-reply (shmq.Requester / shmq.Responder): replies by correlation id, the errors of
DESIGN 5.4 (no responders at once, a dead responder within the repair bound, timeouts with late
replies dropped and counted, remote errors), reliable mode, submit() and asyncio."""
import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

import shmq

CTX = mp.get_context("fork")
BACKENDS = ("shm", "redis")   # each test runs on shared memory and on Redis (tests/_redisfix.py)


def _serve(name, reliable=False, ready=None):
    """A responder process: echo, or act on the request's body."""
    srv = shmq.Responder(name, reliable=reliable)
    if ready is not None:
        ready.set()
    for req in srv:
        b = req.body
        if b == b"die":
            os.kill(os.getpid(), signal.SIGKILL)
        elif b == b"fail":
            req.fail("it went wrong")
        elif isinstance(b, tuple) and b[0] == "sleep":
            time.sleep(b[1])
            req.reply(("slept", b[2]))
        elif isinstance(b, tuple) and b[0] == "twice":
            req.reply("once")
            try:
                req.reply("twice")
            except ValueError as e:
                pass
            else:
                os._exit(3)
        else:
            req.reply(("echo", b, os.getpid(), req.headers, req.delivery_count))
    os._exit(0)


def _rpc_env(qname, reliable):
    """((name, start(n=1, target=_serve, extra=()) -> [Process], handles), cleanup)."""
    procs, handles = [], []

    def start(n=1, target=_serve, extra=()):
        for _ in range(n):
            ready = CTX.Event()
            args = (qname, reliable, ready) if target is _serve else (qname, *extra, ready)
            p = CTX.Process(target=target, args=args)
            p.start()
            assert ready.wait(20)
            procs.append(p)
        return procs[-n:]

    def cleanup():
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
        for h in handles:
            h.close()
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass

    opts = {"visibility_timeout": 60} if reliable else {}
    handles.append(shmq.Responder(qname, create=True, reliable=reliable, **opts))  # the request queue
    return (qname, start, handles), cleanup


@pytest.fixture
def rpc(qname):
    """(name, start_responder(reliable=False) -> Process); everything cleaned up after."""
    env, cleanup = _rpc_env(qname, False)
    yield env
    cleanup()


@pytest.fixture
def rpc_reliable(qname):
    """rpc with a reliable=True request queue (visibility_timeout 60 s)."""
    env, cleanup = _rpc_env(qname, True)
    yield env
    cleanup()


def _requester(name, handles):
    cli = shmq.Requester(name)
    handles.insert(0, cli)
    return cli


def test_request_reply_across_processes(rpc):
    name, start, handles = rpc
    (p,) = start()
    cli = _requester(name, handles)
    for i in range(50):
        tag, body, pid, hdr, count = cli.request(("job", i), timeout=10, headers={"trace": f"t{i}"})
        assert (tag, body, pid, hdr, count) == ("echo", ("job", i), p.pid, {"trace": f"t{i}"}, 1)
    st = cli.stats()
    assert st["sent"] == 50 and st["replied"] == 50 and st["late_replies"] == 0 and st["pending"] == 0


def test_no_responders_at_once_and_nothing_left_behind(qname):
    shmq.Responder(qname, create=True).close()         # the queue exists; nobody serves it
    try:
        with shmq.Requester(qname) as cli:
            with pytest.raises(shmq.NoRespondersError):
                cli.request(b"hello", timeout=30)
            assert cli.stats()["depth"] == 0 and cli.stats()["no_responders"] == 1
    finally:
        for n in (qname, qname + ".dlq"):
            shmq.unlink(n)


def test_a_requester_without_a_request_queue_says_so(qname):
    with pytest.raises(shmq.QueueNotFound, match="no Responder"):
        shmq.Requester(qname)


def test_remote_error_and_one_reply_per_request(rpc):
    name, start, handles = rpc
    (p,) = start()
    cli = _requester(name, handles)
    with pytest.raises(shmq.RemoteError, match="it went wrong"):
        cli.request(b"fail", timeout=10)
    assert cli.request(("twice",), timeout=10) == "once"
    assert cli.request(b"still serving", timeout=10)[0] == "echo"   # the responder did not exit(3)
    assert p.is_alive()


def test_timeout_then_the_late_reply_is_dropped_and_counted(rpc):
    name, start, handles = rpc
    start()
    cli = _requester(name, handles)
    with pytest.raises(shmq.RequestTimeout) as ei:
        cli.request(("sleep", 0.5, "late"), timeout=0.1)
    assert isinstance(ei.value, TimeoutError)
    # the next request gets its own reply, never the late one
    assert cli.request(b"next", timeout=10)[:2] == ("echo", b"next")
    st = cli.stats()
    assert st["late_replies"] == 1 and st["timeouts"] == 1, st


def test_a_responder_that_dies_holding_the_request(rpc):
    name, start, handles = rpc
    dying, other = start(n=2)
    cli = _requester(name, handles)
    t0 = time.monotonic()
    with pytest.raises(shmq.ResponderDiedError):
        cli.request(b"die", timeout=30)
    assert time.monotonic() - t0 < 20                   # within the repair bound, not the timeout
    # not handed to the other responder (it is dead-lettered for the operator to see)
    with shmq.Queue(name + ".dlq") as dlq:
        m = dlq.receive(timeout=5)
        assert m.body == b"die" and m.headers["x-dead-letter-reason"] == "max_deliveries"
        m.ack()
    # the survivor still serves
    survivor = dying if dying.is_alive() else other
    assert cli.request(b"after", timeout=10)[2] == survivor.pid
    assert cli.stats()["responder_died"] == 1


def test_a_reliable_request_whose_responders_all_died_waits_until_its_timeout(rpc_reliable):
    qname, start, handles = rpc_reliable
    start(n=2)
    handles.pop().close()                 # the creating responder: attached, never receiving
    with shmq.Requester(qname) as cli:
        assert cli.reliable
        # each responder that takes it dies; redelivered to the other, which dies too: then
        # it waits, queued, for a responder that comes back, until its timeout removes it
        r1 = cli.submit(b"die", timeout=3)
        with pytest.raises(shmq.RequestTimeout):
            r1.result(timeout=40)
        st = cli.stats()
        assert st["depth"] == 0 and st["in_flight"] == 0, st
        (p,) = start()
        tag, body, pid, _h, count = cli.request(b"fine", timeout=10)
        assert (tag, body, pid, count) == ("echo", b"fine", p.pid, 1)


def _die_once_then_serve(name, flag_path, ready):
    srv = shmq.Responder(name, reliable=True)
    ready.set()
    for req in srv:
        if not os.path.exists(flag_path):
            open(flag_path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        req.reply(("served", req.delivery_count, os.getpid()))


def test_a_reliable_request_is_redelivered_after_a_death(rpc_reliable, tmp_path):
    qname, start, handles = rpc_reliable
    procs = start(n=2, target=_die_once_then_serve, extra=(str(tmp_path / "died"),))
    handles.pop().close()
    with shmq.Requester(qname) as cli:
        tag, count, pid = cli.request(b"job", timeout=30)
        assert tag == "served" and count == 2
        assert [q.pid for q in procs if q.is_alive()] == [pid]


def test_thousands_in_flight_from_many_threads(rpc):
    name, start, handles = rpc
    start(n=2)
    cli = _requester(name, handles)
    results, errors = {}, []

    def client(k):
        try:
            futs = [(i, cli.submit((k, i), timeout=60)) for i in range(300)]
            for i, f in futs:
                results[(k, i)] = f.result(timeout=60)[1]
            for i in range(50):                          # request() mixed with submit()
                results[(k, "r", i)] = cli.request((k, "r", i), timeout=60)[1]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 4 * 350 and all(v == k for k, v in results.items())
    assert cli.stats()["pending"] == 0 and cli.stats()["late_replies"] == 0


def test_asyncio_requests_and_a_cancelled_one_leaves_nothing(rpc):
    name, start, handles = rpc
    cli = _requester(name, handles)
    held = handles[-1]                # the creating Responder: attached, never receives

    async def main():
        t = asyncio.ensure_future(cli.request_async(b"never taken", timeout=30))
        await asyncio.sleep(0.05)
        assert cli.stats()["depth"] == 1
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert cli.stats()["depth"] == 0 and cli.stats()["pending"] == 0   # removed, not left queued
        start()
        out = await asyncio.gather(*(cli.request_async(("a", i), timeout=20) for i in range(100)))
        assert [o[1] for o in out] == [("a", i) for i in range(100)]

    asyncio.run(main())
    assert held.stats()["depth"] == 0


@pytest.mark.shm_only("the inbox is an anonymous shared-memory file that gc sweeps; on Redis a reply list "
                      "expires by itself (PEXPIRE), tested in tests/redis/test_redis_backend.py")
def test_a_sigkilled_requester_never_wedges_the_responders(rpc):
    name, start, handles = rpc
    start()
    code = (f"import os, shmq, signal\n"
            f"cli = shmq.Requester({name!r})\n"
            f"f = [cli.submit(('sleep', 0.2, i), timeout=30) for i in range(5)]\n"
            f"print(cli._path, flush=True)\n"
            f"os.kill(os.getpid(), signal.SIGKILL)\n")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    inbox = r.stdout.strip()
    assert r.returncode == -9 and inbox.startswith("/dev/shm/shmq.@")
    cli = _requester(name, handles)
    # the responder answers the dead requester's five (into nothing), then ours
    assert cli.request(b"alive?", timeout=30)[:2] == ("echo", b"alive?")
    # the responder lets go of the dead requester's inbox within a second or two; then a new
    # anonymous queue (in a fresh process: the sweep is rate-limited per process) sweeps it
    for _ in range(100):
        subprocess.run([sys.executable, "-c", "import shmq; shmq.Queue().close()"], timeout=60, check=True)
        if not os.path.exists(inbox):
            break
        time.sleep(0.1)
    assert not os.path.exists(inbox)


def test_bad_arguments(rpc):
    name, start, handles = rpc
    start()
    cli = _requester(name, handles)
    with pytest.raises(ValueError, match="x-correlation-id"):
        cli.request(b"x", timeout=5, headers={"x-correlation-id": "forged"})
    with pytest.raises(TypeError):
        cli.request(b"x", timeout=5, headers=["not", "a", "dict"])
    with pytest.raises(ValueError, match="a request adds"):      # fits alone, not with the envelope
        cli.request(b"x", timeout=5, headers={"k": "v" * 65520})
    with pytest.raises(ValueError):
        cli.request(b"x", timeout=-1)
    with pytest.raises(ValueError, match="reliable=True"):
        shmq.Responder(name, max_deliveries=3)
    with pytest.raises(ValueError, match="not a request queue"):
        plain = shmq.Queue(name + "-plain", create=True, capacity="1MiB")
        try:
            shmq.Requester(name + "-plain")
        finally:
            plain.close()
            shmq.unlink(name + "-plain")
    cli.close()
    with pytest.raises(shmq.QueueClosedError):
        cli.request(b"x", timeout=5)


def test_async_for_over_a_responder(qname):
    srv = shmq.Responder(qname, create=True)
    try:
        async def serve():
            n = 0
            async for req in srv:
                req.reply(("async", req.body))
                n += 1
                if n == 3:
                    return n

        async def main():
            loop = asyncio.get_running_loop()
            with shmq.Requester(qname) as cli:
                server = asyncio.ensure_future(serve())
                replies = await asyncio.gather(*(cli.request_async(i, timeout=20) for i in range(3)))
                assert sorted(replies) == [("async", 0), ("async", 1), ("async", 2)]
                assert await asyncio.wait_for(server, 20) == 3
                # a cancelled receive_async takes no request: the next receive gets it
                t = asyncio.ensure_future(srv.receive_async())
                await asyncio.sleep(0.02)
                t.cancel()
                f = cli.submit("after cancel", timeout=20)
                req = await srv.receive_async(timeout=10)
                req.reply(req.body)
                assert await asyncio.wrap_future(f) == "after cancel"
                assert loop.is_running()

        asyncio.run(main())
    finally:
        srv.close()
        for n in (qname, qname + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass


def test_a_requester_is_per_process(rpc):
    name, start, handles = rpc
    start()
    cli = _requester(name, handles)
    assert cli.request(b"parent", timeout=10)[1] == b"parent"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                cli.request(b"child", timeout=5)
            except ValueError as e:
                code = 0 if "belongs to the process" in str(e) else 2
            with shmq.Requester(name) as own:
                code = code or (0 if own.request(b"own", timeout=10)[1] == b"own" else 3)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cli.request(b"parent again", timeout=10)[1] == b"parent again"


def test_a_message_that_is_not_a_request_is_dead_lettered_and_serving_goes_on(rpc):
    name, start, handles = rpc
    start()
    with shmq.Queue(name) as raw:
        raw.send(b"no envelope")                                   # no correlation id, no inbox
        raw.send(b"forged", headers={"x-correlation-id": "1"})      # no inbox
        raw.send(b"garbage inbox", headers={"x-correlation-id": "2", "x-reply-to": "/etc/passwd"})
    cli = _requester(name, handles)
    assert cli.request(b"real", timeout=10)[:2] == ("echo", b"real")
    with shmq.Queue(name + ".dlq") as dlq:
        dead = [dlq.receive(timeout=10) for _ in range(2)]
        assert sorted(m.body for m in dead) == [b"forged", b"no envelope"]
        assert [m.headers["x-dead-letter-reason"] for m in dead] == ["rejected", "rejected"]
        for m in dead:
            m.ack()
    # a well-formed request whose inbox is not an anonymous queue is answered into nothing
    assert cli.stats()["depth"] == 0


def test_a_request_settled_behind_many_unread_replies_is_not_called_dead(rpc):
    # the look-after finds the request gone (answered and acked) while its reply sits behind
    # more than one read's worth of others in the inbox: it must read them all, not call the
    # responder dead. Sent without futures, so no thread reads the inbox meanwhile.
    name, start, handles = rpc
    start()
    cli = _requester(name, handles)
    pend = [cli._send(i, 30, None) for i in range(600)]
    for _ in range(3000):
        st = cli.stats()
        if not st["depth"] and not st["in_flight"]:
            break
        time.sleep(0.01)
    cli._look_after(pend[-1])                 # its request is gone; 600 replies wait unread
    status, body = pend[-1].result
    assert status == 0 and body[:2] == ("echo", 599), pend[-1].result   # its reply, not a death
    assert all(p.result is not None for p in pend)
    assert cli.stats()["responder_died"] == 0 and cli.stats()["pending"] == 0
