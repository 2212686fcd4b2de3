"""Builds the extension with SHMQ_SANITIZE=1 (ASan+UBSan) and drives it from Python."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKLOAD = textwrap.dedent(r"""
    import multiprocessing as mp, os, sys
    import numpy as np
    import shmq

    def child(q, out):
        for _ in range(2000):
            out.put(q.get(timeout=30))

    if __name__ == "__main__":
        assert "build" in shmq._core.__file__, shmq._core.__file__
        q = shmq.Queue(); out = shmq.Queue()
        objs = [b"", b"x" * 100, b"y" * 100000, {"a": [1, 2]}, np.arange(1000.0), bytearray(b"z" * 5000)]
        for o in objs:
            q.put(o)
        for o in objs:
            r = q.get(timeout=5)
            assert (r == o).all() if isinstance(o, np.ndarray) else r == o
        for method in ("fork", "spawn"):
            p = mp.get_context(method).Process(target=child, args=(q, out))
            p.start()
            for i in range(2000):
                q.put(i if i % 3 else os.urandom(i))
            got = [out.get(timeout=30) for _ in range(2000)]
            p.join(30)
            assert p.exitcode == 0 and len(got) == 2000
        for bad in (lambda: q.get(timeout=-1), lambda: q.put(lambda: 0)):
            try:
                bad()
            except Exception:
                pass
        n = shmq.Queue("asan-" + str(os.getpid()), create=True, capacity="256KiB")
        try:
            n.put(b"q" * 300000)
        except shmq.MessageTooLargeError:
            pass
        n.close(); shmq.unlink(n.name)
        # at-least-once: leases, expiry, nack, dead letters, dedup, a consumer killed holding leases
        import signal, time
        an = "asan-ack-" + str(os.getpid())
        a = shmq.Queue(an, create=True, ack=True, capacity="1MiB", visibility_timeout=0.2, max_deliveries=2)
        try:
            for i in range(300):
                a.send(os.urandom(i * 7), headers={"i": str(i)}, dedup_id=str(i % 250), ttl=30)
            ms = a.receive_many(64, timeout=5)
            a.ack_many(ms[:32])
            for m in ms[32:48]:
                m.nack()
            for m in ms[48:56]:
                m.nack(requeue=False)
            time.sleep(0.3)                      # the rest of ms expires
            def holder(name):
                h = shmq.Queue(name)
                h.receive_many(16, timeout=5)
                os.kill(os.getpid(), signal.SIGKILL)
            p = mp.get_context("fork").Process(target=holder, args=(an,))
            p.start(); p.join(30)
            a._repair()
            seen = 0
            while True:
                try:
                    m = a.receive(timeout=0.5)
                except shmq.Empty:
                    break
                m.ack(); seen += 1
            st = a.stats()
            assert st["depth"] == 0 and st["in_flight"] == 0, st
            d = shmq.Queue(a.dead_letter_queue)
            dead = len(d.receive_many(300, timeout=1))
            assert seen + dead + 32 >= 250, (seen, dead)
            d.close()
        finally:
            dl = a.dead_letter_queue
            a.close(); shmq.unlink(an); shmq.unlink(dl)
        q.close(); out.close()
        print("sanitized workload ok")
""")


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for the sanitizer build"
    work = tmp_path_factory.mktemp("asan")
    for item in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        if os.path.exists(os.path.join(ROOT, item)):
            shutil.copy(os.path.join(ROOT, item), work / item)
    shutil.copytree(os.path.join(ROOT, "csrc"), work / "csrc")
    shutil.copytree(os.path.join(ROOT, "src"), work / "src", ignore=shutil.ignore_patterns("*.so", "_core.c"))
    env = dict(os.environ, SHMQ_SANITIZE="1")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b", str(work / "build"), "-t", str(work / "tmp")],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the pure-Python modules next to the sanitized extension
    for f in os.listdir(work / "src" / "shmq"):
        if f.endswith(".py"):
            shutil.copy(work / "src" / "shmq" / f, work / "build" / "shmq" / f)
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return work, libasan


def _run_sanitized(sanitized_build, tmp_path, stem, code, done):
    """Run a workload script on the sanitized extension; it must print `done` and no sanitizer
    report (UBSan's "runtime error" lines; ASan aborts)."""
    work, libasan = sanitized_build
    script = tmp_path / f"{stem}.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(work / "build"), LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-5000:]}"
    assert done in r.stdout
    assert "runtime error" not in r.stderr  # UBSan reports


def test_python_workload_under_asan_ubsan(sanitized_build, tmp_path):
    _run_sanitized(sanitized_build, tmp_path, "workload", WORKLOAD, "sanitized workload ok")


ASYNC_WORKLOAD = textwrap.dedent(r"""
    import asyncio, multiprocessing as mp, os, time
    import shmq

    def producer(name):
        q = shmq.Queue(name)
        for i in range(200):
            q.put(i)
            time.sleep(0.0005)
        q.close()

    async def main(q, r):
        assert "build" in shmq._core.__file__, shmq._core.__file__
        p = mp.get_context("fork").Process(target=producer, args=(q.name,))
        p.start()
        got = await asyncio.gather(*[q.get_async(timeout=30) for _ in range(200)])
        p.join(30)
        assert sorted(got) == list(range(200)) and p.exitcode == 0
        t = asyncio.ensure_future(r.receive_async())
        await asyncio.sleep(0.05)
        t.cancel()
        await r.send_async(b"x")
        (await r.receive_async(timeout=5)).ack()
        # close while coroutines wait: the waiter thread is asleep in the core when the handle
        # closes, and the unmap waits for it
        waits = [asyncio.ensure_future(q.get_async()) for _ in range(20)]
        waits += [asyncio.ensure_future(r.receive_async()) for _ in range(5)]
        await asyncio.sleep(0.1)
        q.close()
        r.close()
        res = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(x, shmq.QueueClosedError) for x in res), res

    if __name__ == "__main__":
        pid = os.getpid()
        q = shmq.Queue("asan-aio-" + str(pid), create=True, capacity="1MiB")
        r = shmq.Queue("asan-aio-r-" + str(pid), create=True, capacity="1MiB", ack=True)
        try:
            asyncio.run(main(q, r))
        finally:
            for n in (q.name, r.name, r.name + ".dlq"):
                try:
                    shmq.unlink(n)
                except shmq.QueueNotFound:
                    pass
        print("sanitized asyncio workload ok")
""")


def test_asyncio_workload_under_asan_ubsan(sanitized_build, tmp_path):
    """The watcher path (issue 18 item 1): waiter threads asleep in the core, close under them."""
    _run_sanitized(sanitized_build, tmp_path, "aio_workload", ASYNC_WORKLOAD, "sanitized asyncio workload ok")


ZC_RPC_WORKLOAD = textwrap.dedent(r"""
    import gc, multiprocessing as mp, os, signal
    import numpy as np
    import shmq

    assert "build" in shmq._core.__file__, shmq._core.__file__
    # zero-copy views: pinned, released, kept mapped past close, a forked child's copy inert
    q = shmq.Queue(f"zc-{os.getpid()}", create=True, capacity="64MiB")   # 20 x 1 MiB buddy blocks
    for i in range(20):
        q.put(np.full(100000, i), timeout=30)
    views = q.get_many(10, timeout=5, copy=False) + [q.get(copy=False, timeout=5) for _ in range(10)]
    assert [int(v[0]) for v in views] == list(range(20))
    pid = os.fork()
    if pid == 0:
        ok = int(views[5][99999]) == 5
        del views
        gc.collect()
        os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    q.close()
    assert sum(float(v.sum()) for v in views) == sum(100000.0 * i for i in range(20))
    del views
    gc.collect()
    shmq.unlink(q.name)

    # request-reply: replies, a remote error, a responder killed holding a request
    name = f"rpc-{os.getpid()}"
    shmq.Responder(name, create=True).close()
    def serve(ready):
        srv = shmq.Responder(name)
        ready.set()
        for req in srv:
            if req.body == b"die":
                os.kill(os.getpid(), signal.SIGKILL)
            if req.body == b"bad":
                req.fail("no")
            else:
                req.reply(req.body)
    ready = mp.get_context("fork").Event()
    p = mp.get_context("fork").Process(target=serve, args=(ready,))
    p.start()
    assert ready.wait(30)
    with shmq.Requester(name) as cli:
        fs = [cli.submit(i, timeout=30) for i in range(200)]
        assert [f.result() for f in fs] == list(range(200))
        try:
            cli.request(b"bad", timeout=30)
            raise AssertionError("no RemoteError")
        except shmq.RemoteError:
            pass
        try:
            cli.request(b"die", timeout=30)
            raise AssertionError("no ResponderDiedError")
        except shmq.ResponderDiedError:
            pass
    p.join(30)
    shmq.unlink(name)
    shmq.unlink(name + ".dlq")
    print("sanitized zero-copy and rpc ok")
""")


def test_zero_copy_and_request_reply_under_asan_ubsan(sanitized_build, tmp_path):
    _run_sanitized(sanitized_build, tmp_path, "zc_rpc", ZC_RPC_WORKLOAD, "sanitized zero-copy and rpc ok")
