"""`shmq ls`, `shmq stat` and `shmq peek` on a Redis server (--backend URL or $SHMQ_BACKEND):
they show the queues and messages and change nothing (no delivery counted, no lease taken)."""
import json
import subprocess
import sys

import pytest

import shmq

redis = pytest.importorskip("redis")


def cli(*args, env_url=None):
    import os
    env = {k: v for k, v in os.environ.items() if k != "SHMQ_BACKEND"}
    if env_url:
        env["SHMQ_BACKEND"] = env_url
    r = subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def queues(redis_url, qname):
    made = []
    q = shmq.Queue(qname + "-a", create=True, ack=True, backend=redis_url)
    made.append(q)
    q.send("hello", headers={"k": "v"})
    q.send(b"g0", group="g")
    q.send(b"g1", group="g")
    q.send("later", delay=60)
    held = q.receive(timeout=1)
    p = shmq.PriorityQueue(qname + "-p", create=True, levels=3, backend=redis_url)
    made.append(p)
    p.put("lo", 0)
    p.put("hi", 2)
    t = shmq.Topic(qname + "-t", create=True, backend=redis_url)
    made.append(t)
    t.publish("news")
    yield q, held, p, t
    for h in made:
        h.close()


def test_ls_lists_every_kind(queues, redis_url, qname):
    rc, out, err = cli("ls", "--backend", redis_url)
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows[qname + "-a"][1:5] == ["ack", "2", "1", "1"]           # 2 ready (g0, g1 waits), 1 held, 1 delayed
    assert rows[qname + "-a.dlq"][1] == "dead-letter"
    assert rows[qname + "-p"][1:4] == ["priority", "2", "(2:1"]
    assert rows[qname + "-t"][1] == "topic"
    rc, out, err = cli("ls", "--json", env_url=redis_url)              # $SHMQ_BACKEND as the default
    assert rc == 0, err
    by = {r["name"]: r for r in json.loads(out)}
    assert by[qname + "-a"]["at_least_once"] and by[qname + "-a"]["in_flight"] == 1
    assert by[qname + "-p"]["levels"] == [1, 0, 1]
    rc, out, _ = cli("ls", "--backend", "shm", env_url=redis_url)      # shm names shared memory explicitly
    assert qname + "-a" not in out


def test_peek_shows_states_and_changes_nothing(queues, redis_url, qname):
    q, held, _p, _t = queues
    before = q.stats()
    rc, out, err = cli("peek", qname + "-a", "--backend", redis_url, "--unpickle")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{qname}-a: 2 ready, 1 in flight, 1 delayed"
    states = [(line.split()[0], line.split("value=")[1]) for line in lines[1:]]
    assert states == [("state=ready", "b'g0'"), ("state=ready", "b'g1'"), ("state=in-flight", "'hello'"),
                      ("state=delayed", "'later'")]
    assert "headers={'k': 'v'}" in lines[3]
    after = q.stats()
    assert {k: after[k] for k in ("depth", "in_flight", "delayed", "dequeued", "redelivered")} == \
           {k: before[k] for k in ("depth", "in_flight", "delayed", "dequeued", "redelivered")}
    held.ack()                                                         # the peek did not touch the lease
    rc, out, err = cli("peek", qname + "-a", "--backend", redis_url, "--json", "-n", "1")
    assert rc == 0, err
    assert [m["state"] for m in json.loads(out)] == ["ready", "delayed"]


def test_peek_priority_topic_and_missing(queues, redis_url, qname):
    rc, out, err = cli("peek", qname + "-p", "--backend", redis_url, "--unpickle")
    assert rc == 0, err
    assert "ready per priority, highest first: 2:1 1:0 0:1" in out
    assert [line.split("value=")[1] for line in out.splitlines()[2:]] == ["'hi'", "'lo'"]
    _q, _held, _p, t = queues
    t.publish_many([b"hello", {"x": 1}], headers={"h": "v"})
    rc, out, err = cli("peek", qname + "-t", "--backend", redis_url)
    assert rc == 0, err
    assert out.splitlines()[1].startswith("seq=1 ") and "text=hello" in out
    rc, out, err = cli("peek", qname + "-t", "--backend", redis_url, "--json", "--seq", "3")
    assert rc == 0, err
    peek = json.loads(out)
    assert [p["seq"] for p in peek] == [3] and peek[0]["type"] == "pickle" and "'h': 'v'" in peek[0]["headers"]
    rc, out, err = cli("peek", qname + "-none", "--backend", redis_url)
    assert rc != 0 and "no such queue" in err


def test_stat(queues, redis_url, qname):
    rc, out, err = cli("stat", qname + "-a", "--backend", redis_url, "--json")
    assert rc == 0, err
    st = json.loads(out)
    assert (st["kind"], st["depth"], st["in_flight"], st["backend"]) == ("queue", 2, 1, redis_url)
    rc, out, err = cli("stat", qname + "-p", "--backend", redis_url)
    assert rc == 0 and "priority" in out, err


def test_a_bad_backend_url_is_a_clear_error():
    rc, out, err = cli("ls", "--backend", "http://nowhere")
    assert rc != 0 and "unknown scheme" in err
