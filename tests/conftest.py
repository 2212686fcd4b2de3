"""Shared fixtures: every test fails if it leaks a shared-memory segment or a child process."""
import multiprocessing
import os
import re
import sys

import pytest

SHM = "/dev/shm"

# Tests must run against the installed package, never the source tree.
_src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
sys.path[:] = [p for p in sys.path if os.path.abspath(p) != _src]


def _segments():
    try:
        return {n for n in os.listdir(SHM) if n.startswith("shmq.")}
    except FileNotFoundError:
        return set()


def _children():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            pids = {int(p) for p in f.read().split()}
    except OSError:
        return set()
    # the forkserver and resource tracker are long-lived helpers of multiprocessing, not leaks
    helpers = set()
    for mod in ("forkserver", "resource_tracker"):
        m = sys.modules.get(f"multiprocessing.{mod}")
        inst = getattr(m, f"_{mod}", None) if m else None
        pid = getattr(inst, "_forkserver_pid", None) or getattr(inst, "_pid", None)
        if pid:
            helpers.add(pid)
    return pids - helpers


def _in_our_tree(pid):
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def _foreign(seg):
    """A segment made by a live process outside this test run (another user of the machine)."""
    # Names made by this project embed the creator's pid (@<pid>-..., t-<pid>-..., fuzz-<pid>).
    for num in re.findall(r"\d+", seg):
        pid = int(num)
        if 1 < pid < 1 << 22 and os.path.exists(f"/proc/{pid}") and not _in_our_tree(pid):
            return True
    return False


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a shmq segment or a child process behind (and clean up)."""
    before_segs = _segments()
    before_kids = _children()
    yield
    for p in multiprocessing.active_children():
        p.join(timeout=5)
    leaked_kids = _children() - before_kids
    for pid in leaked_kids:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass
    leaked_segs = {s for s in _segments() - before_segs if not _foreign(s)}
    for n in leaked_segs:
        try:
            os.unlink(os.path.join(SHM, n))
        except OSError:
            pass
    if request.node.get_closest_marker("allow_leaks") is None:
        assert not leaked_segs, f"test leaked shared-memory segments: {sorted(leaked_segs)}"
        assert not leaked_kids, f"test leaked child processes: {sorted(leaked_kids)}"


@pytest.fixture
def qname(request):
    """A unique queue name for this test; the queue is unlinked afterwards if it exists."""
    name = f"t-{os.getpid()}-{request.node.name[:80]}".replace("[", "-").replace("]", "").replace("/", "-")
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name)
    yield name
    try:
        os.unlink(os.path.join(SHM, "shmq." + name))
    except FileNotFoundError:
        pass


@pytest.fixture
def make_queue(qname):
    """Factory of named queues: make_queue(suffix="", **options) creates queue qname + suffix
    (shmq.Queue(qname + suffix, create=True, **options)) and returns the handle. Every queue
    it made is closed and unlinked afterwards, with its dead-letter queue, also when the test
    fails."""
    import shmq

    made = []

    def make(suffix="", **options):
        q = shmq.Queue(qname + suffix, create=True, **options)
        made.append(q)
        return q

    yield make
    for q in made:
        names = (q.name, getattr(q, "dead_letter_queue", None))
        try:
            q.close()
        finally:
            for n in names:
                if n:
                    try:
                        shmq.unlink(n, backend=getattr(q, "backend", "shm"))   # (the Redis backend's: tests/_redisfix.py)
                    except shmq.QueueNotFound:
                        pass


START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def mpctx(request):
    return multiprocessing.get_context(request.param)


# The Redis backend (DESIGN §11): a real redis-server and the both-backends parametrization
# (modules with BACKENDS = ("shm", "redis")); see tests/_redisfix.py.
from _redisfix import backend, pytest_generate_tests, redis_server, redis_url  # noqa: E402,F401
