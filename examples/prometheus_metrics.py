"""Prometheus metrics of shmq queues: render(), the HTTP server of `shmq metrics`, and (when
prometheus_client is installed) the Collector."""
import os
import threading
import urllib.request

import shmq
import shmq.metrics

NAME = f"example-prometheus-{os.getpid()}"


def main():
    q = shmq.Queue(NAME, create=True, capacity="1MiB", ack=True, dead_letter=NAME + ".dlq")
    dlq = shmq.Queue(NAME + ".dlq")
    try:
        for i in range(4):
            q.send({"job": i})
        q.receive(timeout=5).ack()
        q.receive(timeout=5).nack(requeue=False)     # rejected: to the dead-letter queue
        held = q.receive(timeout=5)                  # in flight while we look

        # 1. The text itself: one line per queue and metric, labelled queue= and kind=.
        text = shmq.metrics.render()
        mine = [line for line in text.splitlines() if f'queue="{NAME}' in line and "_total" not in line]
        print("\n".join(mine[:6]))
        assert f'shmq_in_flight{{queue="{NAME}",kind="ack"}} 1' in text
        assert f'shmq_dead_lettered_total{{queue="{NAME}",kind="ack"}} 1' in text
        assert f'shmq_depth{{queue="{NAME}.dlq",kind="dead-letter"}} 1' in text

        # 2. Served over HTTP, as `shmq metrics --port 9108` does (here on a free port).
        server = shmq.metrics.make_server("127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read().decode()
            print(f"GET {url}: {resp.status}, {len(body.splitlines())} lines")
        finally:
            server.shutdown()
            server.server_close()

        # 3. The same figures through prometheus_client, when it is installed.
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            print("prometheus_client is not installed: pip install 'shmq[metrics]' for shmq.metrics.Collector")
        else:
            registry = CollectorRegistry()
            registry.register(shmq.metrics.Collector())
            out = generate_latest(registry).decode()
            line = next(x for x in out.splitlines() if x.startswith("shmq_acked_total") and NAME + '"' in x)
            print("prometheus_client:", line)
        held.ack()
    finally:
        dlq.close()
        q.close()
        for n in (NAME, NAME + ".dlq"):
            try:
                shmq.unlink(n)
            except shmq.QueueNotFound:
                pass


if __name__ == "__main__":
    main()
