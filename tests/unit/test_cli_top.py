"""`shmq top` with lag, error rates and windowed latency; --json on every table; the exit
statuses 0 (done), 1 (could not be done), 2 (usage) (issue 18 item 5)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

SHMQ = os.path.join(os.path.dirname(sys.executable), "shmq")   # the console script pip installed


def run(*args, timeout=60):
    return subprocess.run([SHMQ, *args], capture_output=True, text=True, timeout=timeout)


def test_top_shows_rates_lag_and_latency(make_queue, qname):
    q = make_queue(capacity="1MiB", ack=True, dead_letter=qname + ".dlq")
    for i in range(30):
        q.send(i)
    for _ in range(10):
        q.receive(timeout=5).ack()
    m = q.receive(timeout=5)
    m.nack()
    stop = threading.Event()

    def traffic():                    # messages move while top watches
        while not stop.is_set():
            q.send(b"x")
            q.receive(timeout=5).ack()
            time.sleep(0.002)
    t = threading.Thread(target=traffic)
    t.start()
    try:
        r = run("top", "--json", "--iterations", "3", "--interval", "0.3")
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(frames) == 3
    rows = [next(row for row in f["queues"] if row["NAME"] == qname) for f in frames]
    first, last = rows[0], rows[-1]
    assert first["figures"]["lag"] == first["figures"]["depth"] + first["figures"]["in_flight"] + first["figures"]["delayed"]
    assert first["figures"]["lag"] >= 19
    assert first["WAIT_P99"] != "-" and first["PROC_P99"] != "-"       # lifetime figures on the first refresh
    assert last["figures"]["ack_per_s"] > 0 and last["figures"]["in_per_s"] > 0
    assert last["figures"]["process_p99_s"] is not None               # samples in the last window
    for k in ("LAG", "ACK/s", "ERR/s", "WAIT_P50", "WAIT_P99", "PROC_P50", "PROC_P99"):
        assert k in last


def test_top_text_table(make_queue):
    q = make_queue(capacity="1MiB")
    q.put(1)
    r = run("top", "--iterations", "1", "--interval", "0")
    assert r.returncode == 0, r.stderr
    head = next(ln for ln in r.stdout.splitlines() if ln.startswith("NAME"))
    for col in ("DEPTH", "IN_FLIGHT", "IN/s", "OUT/s", "LAG", "WAIT_P99", "PROC_P99"):
        assert col in head.split()
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(q.name))
    assert row.split()[2] == "1"


@pytest.mark.parametrize("args", [["ls"], ["stat", "{q}"], ["peek", "{q}"], ["top", "--iterations", "1",
                                                                              "--interval", "0"]])
def test_every_table_has_json(make_queue, args):
    q = make_queue(capacity="1MiB")
    q.put("hello")
    r = run(*[a.format(q=q.name) for a in args], "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines() if line.strip()] if args[0] == "top" \
        else json.loads(r.stdout)


@pytest.mark.parametrize("args,status", [
    (["ls"], 0),
    (["metrics", "--once"], 0),
    ([], 2),                               # no command: usage
    (["frobnicate"], 2),                   # unknown command
    (["peek"], 2),                         # a missing argument
    (["top", "--interval", "soon"], 2),    # a bad value
    (["stat", "bad/name"], 2),             # a name no queue can have
    (["stat", "no-such-queue-anywhere"], 1),   # well formed, but it could not be done
    (["rm", "no-such-queue-anywhere"], 1),
])
def test_exit_statuses(args, status):
    r = run(*args)
    assert r.returncode == status, (args, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    if status:
        assert r.stderr.strip() or "usage:" in r.stdout   # a failure says why
