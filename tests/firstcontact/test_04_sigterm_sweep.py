"""Issue 13 item 4: a process stopped by SIGTERM (timeout, docker stop, systemd,
Process.terminate()) runs no exit hook and left its anonymous queues in /dev/shm until `shmq gc`.
A new anonymous queue sweeps dead creators' ones (this user's, held by no live process)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest


def _py(code, **kw):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, **kw)


def _sweeping_create():
    # a fresh process: its first anonymous queue sweeps (the sweep is rate-limited per process)
    r = _py("import shmq; shmq.Queue().close()")
    assert r.returncode == 0, r.stderr


def _started(code):
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


@pytest.mark.timeout(60)
def test_a_sigtermed_creators_anonymous_queue_is_swept_by_the_next_anonymous_create():
    p, path = _started("""
        import shmq, time
        q = shmq.Queue(); q.put("left behind")
        print(q.path, flush=True)
        time.sleep(60)
    """)
    try:
        assert path.startswith("/dev/shm/shmq.@") and os.path.exists(path)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == -signal.SIGTERM
        assert os.path.exists(path)           # no exit hook ran
        _sweeping_create()
        assert not os.path.exists(path)
    finally:
        p.kill()
        p.wait(10)
        p.stdout.close()
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.timeout(60)
def test_a_queue_a_live_process_holds_is_not_swept_and_a_live_creators_neither():
    # the creator forks a worker that uses the queue, then dies of SIGTERM: the worker still holds
    # it; once the worker is gone too, the next sweep removes it
    p, line = _started("""
        import os, shmq, time
        q = shmq.Queue()
        pid = os.fork()
        if pid == 0:
            q.put("from the worker")          # attaches: the worker holds a slot now
            print(q.path, os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """)
    path, worker = line.split()
    worker = int(worker)
    try:
        _sweeping_create()
        assert os.path.exists(path)           # the creator is alive
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        _sweeping_create()
        assert os.path.exists(path)           # the worker is alive and attached
        os.kill(worker, signal.SIGKILL)
        for _ in range(100):                  # reaped by init (its parent is gone)
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        _sweeping_create()
        assert not os.path.exists(path)
    finally:
        for pid in (worker, p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(10)
        p.stdout.close()
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.timeout(60)
def test_the_sweep_leaves_a_corrupt_or_planted_entry_to_shmq_gc():
    r = _py("import os; print(os.getpid())")
    dead = int(r.stdout)
    path = f"/dev/shm/shmq.@{dead}-0badc0de"
    with open(path, "wb") as f:
        f.write(b"not a segment" * 100)
    try:
        _sweeping_create()
        assert os.path.exists(path)
    finally:
        os.unlink(path)
