"""Named queues across unrelated programs, permissions, lifecycle, inventory and the CLI."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import shmq

SHM = "/dev/shm"


def _py(code, timeout=60, **kw):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=timeout)


def test_unrelated_programs_share_a_queue_by_name(qname):
    with shmq.Queue(qname, create=True, capacity="4MiB") as q:
        r = _py(f"""
            import shmq
            q = shmq.Queue({qname!r})
            for i in range(100):
                q.put({{"i": i}})
            print(q.get(timeout=10))
            q.close()
        """)
        assert r.returncode == 0, r.stderr
        assert [q.get(timeout=5)["i"] for _ in range(99)] == list(range(1, 100))
    shmq.unlink(qname)


def test_open_missing_raises_queue_not_found(qname):
    with pytest.raises(shmq.QueueNotFound, match="create=True"):
        shmq.Queue(qname)
    with pytest.raises(FileNotFoundError):
        shmq.unlink(qname)


def test_contradicting_options_name_the_option(make_queue, qname):
    q = make_queue(capacity="1MiB", maxsize=5)
    with pytest.raises(ValueError, match="maxsize"):
        shmq.Queue(qname, maxsize=7)
    with pytest.raises(ValueError, match="raw"):
        shmq.Queue(qname, raw=True)
    with pytest.raises(ValueError, match="capacity"):
        shmq.Queue(qname, create=True, exist_ok=True, capacity="8MiB")
    with pytest.raises(ValueError, match="capacity=None"):
        shmq.Queue(qname, capacity=None)
    ok = shmq.Queue(qname, maxsize=5)
    ok.close()


def test_capacity_strings(qname):
    for cap, expect in (("512KiB", 512 * 1024), ("1MiB", 1 << 20), (2 * 1024 * 1024, 2 << 20), ("1.5MiB", 1536 * 1024)):
        q = shmq.Queue(qname, create=True, capacity=cap)
        assert q.stats()["capacity"] == expect
        q.close()
        shmq.unlink(qname)


def test_growable_named_queue(make_queue, qname):
    q = make_queue(capacity=None)
    big = os.urandom(5 << 20)
    q.put(big)
    assert q.stats()["capacity"] == 0 and q.stats()["areas"] >= 2
    other = shmq.Queue(qname)
    assert other.get(timeout=5) == big
    other.close()


def test_permission_denied_names_the_queue(make_queue, qname):
    q = make_queue(capacity="1MiB", mode=0o600)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)  # nobody: not the owner, not root
            try:
                shmq.Queue(qname)
            except PermissionError as e:
                code = 0 if qname in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_mode_widened_on_purpose_lets_others_in(make_queue, qname):
    q = make_queue(capacity="1MiB", mode=0o666)
    assert os.stat(q.path).st_mode & 0o777 == 0o666
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            other = shmq.Queue(qname)
            other.put("from nobody")
            other.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert q.get(timeout=5) == "from nobody"


def test_racing_creators_end_with_one_queue(qname):
    code = f"""
        import shmq, sys, time
        q = shmq.Queue({qname!r}, create=True, exist_ok=True, capacity="2MiB")
        q.put(int(sys.argv[1]))
        q.close()
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)]) for i in range(8)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    q = shmq.Queue(qname)
    try:
        assert sorted(q.get_many(100, timeout=5)) == list(range(8))
        assert not [f for f in os.listdir(SHM) if f.startswith(f"shmq.{qname}~")]  # no temp files left
    finally:
        q.close()
        shmq.unlink(qname)


@pytest.mark.parametrize("ending", ["normal", "exception", "sys.exit(3)", "multiprocessing-child"])
def test_anonymous_queue_removed_when_creator_exits(ending):
    before = {f for f in os.listdir(SHM) if f.startswith("shmq.@")}
    body = {
        "normal": "q = shmq.Queue(); q.put(1)",
        "exception": "q = shmq.Queue(); q.put(1); raise RuntimeError('boom')",
        "sys.exit(3)": "q = shmq.Queue(); q.put(1); sys.exit(3)",
        "multiprocessing-child": textwrap.dedent("""
            import multiprocessing as mp
            def child():
                q = shmq.Queue(); q.put(1)
            if __name__ == '__main__':
                p = mp.get_context('fork').Process(target=child); p.start(); p.join()
        """),
    }[ending]
    r = _py("import shmq, sys\n" + body)
    assert r.returncode in (0, 1, 3)
    after = {f for f in os.listdir(SHM) if f.startswith("shmq.@")}
    # the creator (and its child) are gone: no segment of a dead creator may remain
    leftovers = [f for f in after - before if not os.path.exists(f"/proc/{f.split('@')[1].split('-')[0]}")]
    assert not leftovers, leftovers


def test_list_queues_reports_participants(make_queue, qname):
    q = make_queue(capacity="1MiB")
    q.put(b"x")
    infos = {qi.name: qi for qi in shmq.list_queues()}
    qi = infos[qname]
    assert qi.kind == "queue" and qi.depth == 1 and qi.capacity == 1 << 20 and qi.attached == 1
    assert qi.creator_pid == os.getpid() and abs(qi.created_at - time.time()) < 600
    assert qi.producers == 1 and qi.consumers == 0
    # a dead process is never counted
    pid = os.fork()
    if pid == 0:
        other = shmq.Queue(qname)
        other.get(timeout=5)
        os._exit(0)  # no close: like a crash
    os.waitpid(pid, 0)
    qi = {i.name: i for i in shmq.list_queues()}[qname]
    assert qi.attached == 1 and qi.consumers == 0


def test_inspection_does_not_attach(make_queue, qname):
    q = make_queue(capacity="1MiB")
    for _ in range(3):
        assert _cli("ls").returncode == 0
        assert _cli("stat", qname).returncode == 0
        assert _cli("peek", qname).returncode == 0
    st = q.stats()
    assert st["attached"] == 1 and st["repairs"] == 0


def test_cli_end_to_end(make_queue, qname):
    q = make_queue(capacity="1MiB")
    q.put(b"\x01\x02hello")
    q.put({"k": "v"})
    r = _cli("ls")
    assert r.returncode == 0 and qname in r.stdout and "DEPTH" in r.stdout
    r = _cli("ls", "--json")
    assert any(row["name"] == qname and row["depth"] == 2 for row in json.loads(r.stdout))
    r = _cli("stat", qname, "--json")
    st = json.loads(r.stdout)
    assert st["depth"] == 2 and st["kind"] == "queue"
    r = _cli("peek", qname, "-n", "5")
    assert r.returncode == 0 and "0102" in r.stdout and "type=pickle" in r.stdout and "value=" not in r.stdout
    r = _cli("peek", qname, "--unpickle")
    assert "value={'k': 'v'}" in r.stdout
    assert q.qsize() == 2  # peek does not consume
    r = _cli("top", "--iterations", "2", "--interval", "0.05")
    assert r.returncode == 0 and "IN/s" in r.stdout
    r = _cli("purge", qname)
    assert r.returncode == 0 and "purged 2" in r.stdout and q.qsize() == 0
    for cmd in (["stat", "no-such-queue-x"], ["peek", "no-such-queue-x"], ["purge", "no-such-queue-x"]):
        r = _cli(*cmd)
        assert r.returncode == 1 and "no such queue" in r.stderr
    r = _cli("stat", "bad/name")
    assert r.returncode == 2 and "invalid queue name" in r.stderr
    r = _cli("peek", qname, "-n", "-1")
    assert r.returncode == 2
    for cmd in ("ls", "stat", "peek", "purge", "rm", "gc", "top"):
        r = _cli(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout
    r = _cli("rm", qname)
    assert r.returncode == 0 and not os.path.exists(q.path)
    assert _cli("rm", qname).returncode == 1


def test_gc_removes_only_dead_anonymous_segments():
    # ours first: a new anonymous queue sweeps dead creators' ones itself (test_04_sigterm_sweep)
    live = shmq.Queue()
    r = _py("import shmq, os; q = shmq.Queue(); print(q.path); os._exit(0)")  # dies without cleanup
    path = r.stdout.strip()
    assert os.path.exists(path)
    try:
        r = _cli("gc")
        assert r.returncode == 0 and os.path.basename(path)[5:] in r.stdout
        assert not os.path.exists(path) and os.path.exists(live.path)
    finally:
        live.close()
