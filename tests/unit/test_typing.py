"""Issue 13 item 8: user code of the public API passes `mypy --strict` (no untyped call, typed
Message attributes, stats and errors), and the types are real: mistakes are reported."""
import os
import subprocess
import sys

import pytest

# A small user program touching the public API (it also runs, so it stays a real program).
PROGRAM = '''\
from __future__ import annotations

import sys
from typing import Any, Optional

import shmq
from shmq import Message


def produce(q: shmq.Queue) -> int:
    q.put({"n": 1})
    q.put(b"x", block=True, timeout=1.0)
    q.put_nowait("y")
    n: int = q.put_many([1, 2, 3], timeout=2)
    return n + q.qsize()


def consume(q: shmq.Queue) -> list[Any]:
    out: list[Any] = [q.get(timeout=1.0), q.get_nowait()]
    out.extend(q.get_many(10, timeout=0.5))
    ok: bool = q.empty() or q.full()
    return out if ok else []


def at_least_once(name: str) -> None:
    with shmq.Queue(name, create=True, ack=True, capacity="1MiB", visibility_timeout=5.0,
                    max_deliveries=3) as q:
        mid: int = q.send(b"job", headers={"k": "v"}, priority=1, dedup_id="a")
        plain: dict[str, str] = {"trace": "t-1"}       # a dict of str values fits the headers type
        q.send(b"job2", headers=plain, ttl=60.0, delay=0.0)
        q.receive(timeout=1.0).ack()
        m: Message = q.receive(timeout=1.0)
        body: Any = m.body
        hdrs: dict[str, str | bytes] = m.headers
        when: float = m.timestamp
        count: int = m.delivery_count + m.priority + m.id + mid
        m.extend(10.0)
        acked: bool = m.ack()
        q.send("again")
        for m2 in q.receive_many(8, timeout=1.0):
            m2.nack(requeue=False, delay=0.0)
        n: int = q.ack_many([])
        dlq: Optional[str] = q.dead_letter_queue
        print(body, hdrs, when, count, acked, n, dlq)
    moved: int = shmq.redrive(name + ".dlq", to=name, max_messages=10, timeout=0.0)
    print("moved", moved)
    shmq.unlink(name)
    shmq.unlink(name + ".dlq")


def stats(q: shmq.Queue) -> None:
    st: dict[str, Any] = q.stats()
    depth: int = st["depth"]
    infos: list[shmq.QueueInfo] = shmq.list_queues(include_anonymous=False)
    for qi in infos:
        cap: Optional[int] = qi.capacity
        print(qi.name, qi.kind, cap)
    print(depth, q.name, q.path, q.closed, repr(q))


def errors(q: shmq.Queue) -> None:
    try:
        q.put_nowait(1)
    except shmq.Full as e:
        why: Optional[str] = e.reason
        print(why)
    except (shmq.QueueClosedError, shmq.MessageTooLargeError, shmq.ShmqError) as e:
        print(e)
    try:
        q.get(timeout=0)
    except shmq.Empty:
        pass
    except shmq.LeaseExpiredError as e:
        ids: list[int] = e.ids
        print(ids)


def main() -> None:
    q = shmq.Queue(maxsize=10)
    s = shmq.SimpleQueue()
    j = shmq.JoinableQueue(5)
    s.put(1)
    print(s.get(), s.empty())
    j.put(1)
    j.get()
    j.task_done()
    done: Optional[bool] = j.join(timeout=1.0)
    print(done)
    produce(q)
    consume(q)
    stats(q)
    errors(q)
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    s.close()
    j.close()
    shmq.set_spin_us(5.0)
    spin: float = shmq.get_spin_us()
    print(spin, shmq.__version__, len(shmq.crash_points()))
    at_least_once(sys.argv[1])


if __name__ == "__main__":
    main()
'''

# Mistakes mypy must catch: the annotations are precise, not Any.
MISTAKES = """\
import shmq

q = shmq.Queue()
q.put(1, timeout="soon")                 # error: a timeout is a number
n: str = q.qsize()                       # error: qsize() is an int
m = q.receive()
m.id + "x"                               # error: a message id is an int
shmq.Queue(capacity=1.5)                 # error: capacity is an int, a size string or None
q.close(1)                               # error: close() takes no argument
"""


def _mypy(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(source)
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
                           str(tmp_path / ".mypy_cache"), str(path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.timeout(600)
def test_user_program_passes_mypy_strict(tmp_path):
    r = _mypy(tmp_path, "user_program.py", PROGRAM)
    assert r.returncode == 0 and "Success" in r.stdout, r.stdout + r.stderr


@pytest.mark.timeout(600)
def test_mypy_reports_mistakes_against_the_public_api(tmp_path):
    r = _mypy(tmp_path, "mistakes.py", MISTAKES)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    flagged = sorted({int(ln.split(":")[1]) for ln in lines})
    assert flagged == [4, 5, 7, 8, 9], r.stdout
    assert "untyped" not in r.stdout, r.stdout


@pytest.mark.timeout(60)
def test_user_program_runs(tmp_path, qname):
    path = tmp_path / "user_program.py"
    path.write_text(PROGRAM)
    try:
        r = subprocess.run([sys.executable, str(path), qname], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "moved 1" in r.stdout, r.stdout
    finally:
        for n in (qname, qname + ".dlq"):
            try:
                os.unlink(f"/dev/shm/shmq.{n}")
            except FileNotFoundError:
                pass


def test_headers_take_any_mapping_as_their_type_says(make_queue):
    import types
    q = make_queue(capacity="1MiB", ack=True)
    q.send(b"x", headers=types.MappingProxyType({"k": "v", "b": b"\x00"}))
    m = q.receive(timeout=5)
    assert m.headers == {"k": "v", "b": b"\x00"}
    m.ack()
