"""shmq.metrics (issue 18 item 4): render() in the Prometheus text format, checked with
prometheus_client's own parser against stats(); the `shmq metrics` HTTP server; the Collector."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmq
from shmq import metrics

SHM = "/dev/shm"

# metric -> the stats() key it carries (and its divisor): written out here, not taken from the
# module, so a renamed or re-keyed metric fails this test.
GAUGES = {"shmq_depth": "depth", "shmq_in_flight": "in_flight", "shmq_delayed": "delayed",
          "shmq_unfinished": "unfinished", "shmq_used_bytes": "bytes_used", "shmq_capacity_bytes": "capacity",
          "shmq_file_bytes": "file_size", "shmq_attached": "attached", "shmq_producers": "producers",
          "shmq_consumers": "consumers", "shmq_creation_time_seconds": "created_at"}
COUNTERS = {"shmq_enqueued_total": "enqueued", "shmq_dequeued_total": "dequeued", "shmq_acked_total": "acked",
            "shmq_redelivered_total": "redelivered", "shmq_dead_lettered_total": "dead_lettered",
            "shmq_dead_letter_failed_total": "dead_letter_failed", "shmq_expired_total": "expired",
            "shmq_dedup_hits_total": "dedup_hits", "shmq_repairs_total": "repairs",
            "shmq_corrupt_skipped_total": "corrupt_skipped"}


def parse(text):
    """({sample name: {labels as a sorted tuple: value}}, {family name: type}) of a text exposition."""
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples, types


def queue_samples(samples, queue):
    """{metric: (kind, value)} of one queue."""
    out = {}
    for name, rows in samples.items():
        for labels, v in rows.items():
            d = dict(labels)
            if d.get("queue") == queue and "quantile" not in d:
                out[name] = (d["kind"], v)
    return out


def check_against_stats(samples, queue, kind, st):
    got = queue_samples(samples, queue)
    for metric, key in {**GAUGES, **COUNTERS}.items():
        if metric == "shmq_capacity_bytes" and not st["capacity"]:
            assert metric not in got      # growable: no capacity sample
            continue
        assert got[metric] == (kind, st[key]), (metric, got.get(metric), st[key])
    assert got["shmq_last_repair_seconds"] == (kind, st["last_repair_ms"] / 1000)
    k, age = got["shmq_oldest_age_seconds"]
    assert k == kind and (age == 0.0) == (st["oldest_age_s"] == 0.0) and abs(age - st["oldest_age_s"]) < 5


def anon_id(q):
    return os.path.basename(q.path)[len("shmq."):]


def test_plain_queue_matches_stats(make_queue):
    q = make_queue(capacity="64KiB")
    for i in range(3):
        q.put(i)
    assert q.get(timeout=5) == 0
    text = metrics.render()
    samples, types = parse(text)
    st = q.stats()
    assert st["depth"] == 2 and st["enqueued"] == 3 and st["dequeued"] == 1
    check_against_stats(samples, q.name, "queue", st)
    for metric in GAUGES:
        assert types[metric] == "gauge"
    for metric in COUNTERS:                # the parser names a counter family without _total
        assert types[metric[:-len("_total")]] == "counter"
    assert text.endswith("\n") and "# HELP shmq_depth " in text and "# TYPE shmq_depth gauge" in text


def test_ack_queue_in_flight_delayed_dead_lettered(make_queue, qname):
    q = make_queue(capacity="64KiB", ack=True, dead_letter=qname + ".dlq")
    dlq = shmq.Queue(qname + ".dlq")
    try:
        for body in ("a", "b", "c"):
            q.send(body)
        q.send("later", delay=60)
        held = q.receive(timeout=5)                 # stays in flight
        q.receive(timeout=5).nack(requeue=False)    # rejected: dead-lettered
        q.receive(timeout=5).ack()
        samples, _ = parse(metrics.render())
        st, dst = q.stats(), dlq.stats()
        assert (st["in_flight"], st["delayed"], st["dead_lettered"], st["acked"], st["depth"]) == (1, 1, 1, 1, 0)
        check_against_stats(samples, q.name, "ack", st)
        assert dst["depth"] == 1
        check_against_stats(samples, qname + ".dlq", "dead-letter", dst)
        held.ack()
    finally:
        dlq.close()


def test_anonymous_and_growable_queue_by_its_id():
    q = shmq.Queue()
    try:
        q.put(b"x")
        samples, _ = parse(metrics.render())
        st = q.stats()
        assert st["capacity"] == 0
        check_against_stats(samples, anon_id(q), "queue", st)
    finally:
        q.close()


def test_render_takes_no_participant_slot(make_queue):
    q = make_queue(capacity="64KiB")
    q.put(1)
    before = q.stats()["attached"]
    samples, _ = parse(metrics.render())
    assert queue_samples(samples, q.name)["shmq_attached"][1] == before
    assert q.stats()["attached"] == before == 1


def test_import_shmq_does_not_import_prometheus_client():
    code = ("import sys, shmq; shmq.metrics.render(); "
            "assert 'prometheus_client' not in sys.modules, sorted(m for m in sys.modules if 'prom' in m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def planted():
    """Entries planted under /dev/shm (str or bytes names); each removed afterwards."""
    made = []

    def plant(name, how, target=None):
        path = (os.fsencode(SHM) + b"/shmq." + name) if isinstance(name, bytes) else os.path.join(SHM, "shmq." + name)
        made.append(path)
        if how == "dir":
            os.mkdir(path)
        elif how == "symlink":
            os.symlink(target, path)
        elif how == "fifo":
            os.mkfifo(path)
        elif how == "copy":
            shutil.copyfile(target, path)
        else:
            with open(path, "wb") as f:
                f.write(b"planted" * 1000)
        return path

    yield plant
    for path in made:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass


def _errors(samples):
    return {dict(k)["reason"]: v for k, v in samples["shmq_scrape_errors"].items()}


def test_planted_and_corrupt_entries_are_skipped_and_counted(make_queue, planted):
    q = make_queue(capacity="64KiB")
    q.put(1)
    base, _ = parse(metrics.render())
    pid = os.getpid()
    planted(f"m-dir-{pid}", "dir")
    planted(f"m-link-{pid}", "symlink", target=q.path)     # to a real queue: never followed
    planted(f"m-fifo-{pid}", "fifo")                      # opening it would block: never opened
    planted(f"m-corrupt-{pid}", "file")
    planted(f'm-evil-{pid}"}} 1\nshmq_depth{{queue="x"', "copy", target=q.path)  # a real segment, forged name
    planted(f"m-\x1b[2J-{pid}", "file")
    planted(b"m-\xff\xfe-" + str(pid).encode(), "file")   # not UTF-8
    text = metrics.render()
    text.encode("utf-8")                                  # servable as it is
    samples, _ = parse(text)
    before, after = _errors(base), _errors(samples)
    delta = {r: after[r] - before[r] for r in after}
    assert delta == {"not-a-queue": 3, "corrupt": 1, "bad-name": 3, "incompatible": 0, "no-permission": 0,
                     "unreadable": 0}, delta
    assert samples["shmq_scrape_queues"][()] == base["shmq_scrape_queues"][()]
    queues = {dict(k)["queue"] for k in samples["shmq_depth"]}
    assert q.name in queues and queues == {dict(k)["queue"] for k in base["shmq_depth"]}
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@") for n in queues)


def test_label_values_are_escaped_per_the_format():
    value = 'a"b\\c\nd'
    text = f'# TYPE x gauge\nx{{queue="{metrics._escape_label(value)}"}} 1\n'
    samples, _ = parse(text)
    assert samples["x"] == {(("queue", value),): 1.0}


def test_latency_quantiles_rendered_when_stats_has_them(make_queue, monkeypatch):
    q = make_queue(capacity="64KiB")
    samples, types = parse(metrics.render())
    assert not any(dict(k).get("queue") == q.name for k in samples.get("shmq_wait_quantile_seconds", {}))
    real = metrics._scrape_stats          # the one reader of render() (it was inspect_path)
    figures = {"wait_p50_s": 0.001, "wait_p99_s": 0.25, "process_p50_s": 0.5, "process_p99_s": None}

    def with_latency(core, prev=None):
        st = real(core, prev)
        if core.path == q.path:
            st.update(figures)
        return st
    monkeypatch.setattr(metrics, "_scrape_stats", with_latency)
    metrics._line_cache.clear()           # the figures change behind the signature: no cached lines
    samples, types = parse(metrics.render())
    lab = (("kind", "queue"), ("quantile", "0.5"), ("queue", q.name))
    lab99 = (("kind", "queue"), ("quantile", "0.99"), ("queue", q.name))
    assert types["shmq_wait_quantile_seconds"] == types["shmq_process_quantile_seconds"] == "gauge"
    assert samples["shmq_wait_quantile_seconds"][lab] == 0.001
    assert samples["shmq_wait_quantile_seconds"][lab99] == 0.25
    assert samples["shmq_process_quantile_seconds"] == {lab: 0.5}   # None: no sample, no invented number


def test_collector_gives_the_same_figures(make_queue, qname):
    from prometheus_client import CollectorRegistry, generate_latest
    q = make_queue(capacity="64KiB", ack=True, dead_letter=qname + ".dlq")
    q.send("a")
    q.send("b")
    q.receive(timeout=5).ack()
    reg = CollectorRegistry()
    reg.register(metrics.Collector())
    got, got_types = parse(generate_latest(reg).decode())
    want, want_types = parse(metrics.render())
    assert got_types == want_types
    for name in ("shmq_scrape_duration_seconds", "shmq_oldest_age_seconds"):   # time-dependent
        assert got.pop(name).keys() == want.pop(name).keys()
    assert got == want
    assert queue_samples(got, q.name)["shmq_acked_total"] == ("ack", 1)


def test_collector_without_prometheus_client_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ImportError, match=r"shmq\[metrics\]"):
        metrics.Collector()


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_once_prints_render(make_queue):
    q = make_queue(capacity="64KiB")
    q.put(1)
    r = _cli("metrics", "--once")
    assert r.returncode == 0, r.stderr
    samples, _ = parse(r.stdout)
    assert queue_samples(samples, q.name)["shmq_depth"] == ("queue", 1)


def test_cli_bad_port_is_a_usage_error():
    r = _cli("metrics", "--port", "70000")
    assert r.returncode == 2 and "65535" in r.stderr


def test_http_server_serves_metrics_404_elsewhere_and_stops_on_sigterm(make_queue):
    q = make_queue(capacity="64KiB")
    q.put(1)
    p = subprocess.Popen([sys.executable, "-m", "shmq", "metrics", "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()       # "serving http://127.0.0.1:PORT/metrics ..."
        assert line.startswith("serving http://127.0.0.1:"), (line, p.poll())
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            samples, _ = parse(resp.read().decode("utf-8"))
        assert queue_samples(samples, q.name)["shmq_depth"] == ("queue", 1)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=30)
        assert e.value.code == 404
        e.value.close()
        assert q.stats()["attached"] == 1    # the server read the queue without attaching
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()


def test_cached_lines_follow_every_change(make_queue):
    """render() reuses an idle queue's lines and the joined families: the age of its oldest
    message still moves on, and a queue that changes gets new lines at the next scrape."""
    q = make_queue(capacity="64KiB")
    q.put(b"x")
    age = "shmq_oldest_age_seconds"

    def mine():
        samples, _ = parse(metrics.render())
        return {m: v for m, (k, v) in queue_samples(samples, q.name).items()}
    first = mine()
    t0 = time.time()
    while time.time() == t0:
        pass                              # the clock has moved: the age must have too
    second = mine()
    assert second[age] > first[age] > 0
    assert {k: v for k, v in second.items() if k != age} == {k: v for k, v in first.items() if k != age}
    q.put(b"y")
    third = mine()
    assert third["shmq_depth"] == 2 and third["shmq_enqueued_total"] == 2
    q.get()
    q.get()
    fourth = mine()
    assert fourth["shmq_depth"] == 0 and fourth[age] == 0 and fourth["shmq_dequeued_total"] == 2
