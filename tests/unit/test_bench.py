"""The benchmark harness (shmq._bench) as installed: every workload kind runs with a tiny count
and reports ratios, `shmq bench --quick --json` writes the expected JSON, absent peers are
reported as skipped. No speed is ever asserted here (STYLE habit 7)."""
import json
import os
import struct
import subprocess
import sys

import pytest

import shmq
from shmq import _bench
from shmq._bench import peers as bench_peers

PEERS = {p.name: p for p in _bench.all_peers() + _bench.ack_peers()}
SHMQ_AT_MOST_ONCE = ["shmq", "shmq (put_many/get_many)"]


def _suite(group, names, messages, quick=True, **kw):
    s = _bench.Suite(quick=quick, only=[group], peers=[PEERS[n] for n in names], messages=messages, repeats=1,
                     log=lambda m: None, **kw)
    return s.run()


def _no_failures(res):
    failed = [s for s in res["skipped"] if s["reason"].startswith("FAILED")]
    assert not failed, failed


# group -> (peers, messages per producer, full run of the group?, result key, workloads expected)
KINDS = {
    "throughput": (["multiprocessing.Queue"] + SHMQ_AT_MOST_ONCE, 40, True, "throughput",
                   {"64 B", "1 KiB", "4 KiB", "16 KiB", "64 KiB", "1 MiB", "small dict (pickled)"}),
    "numpy": (["multiprocessing.Queue", "shmq"], 10, True, "throughput", {"1 MiB numpy float64"}),
    "mpmc": (["multiprocessing.Queue"] + SHMQ_AT_MOST_ONCE, 200, False, "throughput", {"64 B"}),
    "ack": (["multiprocessing.Queue", "shmq ack (send/receive/ack)", "shmq ack (receive_many/ack_many)"], 200, True,
            "ack", {"64 B at-least-once"}),
}


@pytest.mark.parametrize("group", sorted(KINDS))
def test_each_throughput_kind_reports_ratios_against_mp_queue(group):
    if group == "numpy":
        pytest.importorskip("numpy")
    names, n, full, key, workloads = KINDS[group]
    res = _suite(group, names, n, quick=not full)
    _no_failures(res)
    rows = res[key]
    assert {r["workload"] for r in rows} == workloads
    for wl in workloads:
        for pc in {(r["producers"], r["consumers"]) for r in rows if r["workload"] == wl}:
            same = [r for r in rows if r["workload"] == wl and (r["producers"], r["consumers"]) == pc]
            by_peer = {r["peer"]: r for r in same}
            assert "multiprocessing.Queue" in by_peer, (wl, pc, sorted(by_peer))
            assert by_peer["multiprocessing.Queue"]["vs_mp_queue"] == pytest.approx(1.0)
            shmq_rows = [r for r in same if r["family"] == "shmq"]
            assert shmq_rows, (wl, pc, sorted(by_peer))
            for r in shmq_rows:
                assert r["msgs"] == n * pc[0] and r["msgs_per_s"] > 0
                assert r["vs_mp_queue"] == pytest.approx(r["msgs_per_s"] / by_peer["multiprocessing.Queue"]["msgs_per_s"])
                assert r["best_peer"] == "multiprocessing.Queue"
    if group == "mpmc":
        assert {(r["producers"], r["consumers"]) for r in rows} == {(2, 2)}
    if group == "ack":
        assert {(r["producers"], r["consumers"]) for r in rows} == {(1, 1), (2, 2)}
        assert all(r["at_least_once"] for r in rows if r["family"] == "shmq")
    text = _bench.report(res)
    assert "x mp.Queue" in text and "CPU:" in text and "Python:" in text


def test_ping_pong_and_idle_report_against_mp_queue():
    res = _suite("latency", ["multiprocessing.Queue", "shmq"], 50)
    _no_failures(res)
    modes = {r["cpus"] for r in res["latency"]}
    assert "same CPU" in modes
    for mode in modes:
        rows = {r["peer"]: r for r in res["latency"] if r["cpus"] == mode}
        assert set(rows) == {"multiprocessing.Queue", "shmq"}
        assert rows["multiprocessing.Queue"]["vs_mp_queue"] == pytest.approx(1.0)
        assert rows["shmq"]["vs_mp_queue"] > 0 and rows["shmq"]["round_trips"] == 50
    res = _suite("idle", ["multiprocessing.Queue", "shmq"], None)
    _no_failures(res)
    assert {r["peer"] for r in res["idle"]} == {"multiprocessing.Queue", "shmq"}
    assert all(r["wall_s"] > 0 for r in res["idle"])


def test_an_absent_peer_is_reported_as_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_fifo", None)      # import faster_fifo now fails
    res = _suite("throughput", ["multiprocessing.Queue", "faster-fifo", "shmq"], 40)
    _no_failures(res)
    assert {r["peer"] for r in res["throughput"]} == {"multiprocessing.Queue", "shmq"}
    why = [s for s in res["skipped"] if s["peer"] == "faster-fifo"]
    assert why and "not installed" in why[0]["reason"]
    assert res["machine"]["peers"]["faster-fifo"].startswith("skipped:")
    assert "faster-fifo: 64 B 1->1: not installed" in _bench.report(res)


class _DuplicatingChan:
    """Delivers message 2 twice and message 1 never: the count is right, the messages are not."""

    def __init__(self, inner):
        self.inner = inner

    def receiver(self):
        self.inner.receiver()
        return self

    def sender(self):
        self.inner.sender()
        return self

    def send(self, obj):
        if obj[:8] == struct.pack("<Q", 1):
            obj = struct.pack("<Q", 2) + obj[8:]
        self.inner.send(obj)

    def recv(self):
        return self.inner.recv()

    def close_end(self):
        self.inner.close_end()

    def close(self):
        self.inner.close()


class _DuplicatingPeer(bench_peers._MPQueue):
    name = "duplicating test peer"
    family = "test"
    key = "duplicating"
    ack = True

    def channel(self, kind, size, depth):
        return _DuplicatingChan(super().channel(kind, size, depth))


def test_wrong_messages_are_a_failure_and_exit_status_1(monkeypatch, capsys):
    res = _bench.Suite(quick=True, only=["ack"], peers=[_DuplicatingPeer()], messages=50, repeats=1,
                       log=lambda m: None).run()
    assert not res["ack"]
    reasons = [s["reason"] for s in res["skipped"] if s["peer"] == _DuplicatingPeer.name]
    assert reasons and all(r.startswith("FAILED (wrong messages)") for r in reasons), reasons
    monkeypatch.setattr(_bench, "ack_peers", lambda: [_DuplicatingPeer()])
    assert _bench.main(["--only", "ack", "--messages", "50", "--peers", "duplicating"]) == 1
    assert "FAILED (wrong messages)" in capsys.readouterr().out
    assert _bench.main(["--only", "ack", "--messages", "50", "--peers", "mp"]) == 0


def test_redis_without_a_server_binary_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_peers, "redis_server_path", str(tmp_path / "no-redis-server"))
    res = _suite("ack", ["multiprocessing.Queue", "shmq ack (send/receive/ack)",
                         "Redis Streams (XADD; XREADGROUP 1 + XACK)"], 100)
    _no_failures(res)
    skipped = {s["peer"]: s["reason"] for s in res["skipped"]}
    reason = skipped["Redis Streams (XADD; XREADGROUP 1 + XACK)"]
    assert "no-redis-server" in reason or "redis client is not installed" in reason
    assert {r["peer"] for r in res["ack"]} == {"multiprocessing.Queue", "shmq ack (send/receive/ack)"}
    assert all(r["vs_redis"] is None for r in res["ack"] if r["at_least_once"])


def test_redis_streams_peer_starts_and_stops_its_own_server():
    pytest.importorskip("redis", reason="the redis client (bench extra) is not installed")
    binary, why = bench_peers.find_redis_server()
    if binary is None:
        pytest.skip(why)
    names = ["shmq ack (send/receive/ack)", "Redis Streams (XADD; XREADGROUP 1 + XACK)",
             "Redis Streams (pipelined XADD 64; XREADGROUP 64 + XACK)"]
    res = _suite("ack", names, 200)
    _no_failures(res)
    rows = {(r["peer"], r["producers"]): r for r in res["ack"]}
    for p in (1, 2):
        assert rows[(names[0], p)]["vs_redis_peer"] == names[1]
        assert rows[(names[0], p)]["vs_redis"] > 0 and rows[(names[1], p)]["msgs"] == 200 * p
    assert bench_peers.RedisServer._current is None      # stopped when the suite ended


def test_cli_quick_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "shmq", "bench", "--quick", "--json", str(out)], capture_output=True,
                       text=True, timeout=200, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "# shmq bench (--quick)" in r.stdout and f"wrote {out}" in r.stdout
    assert "DESIGN" not in r.stdout and "goal" not in r.stdout.lower()
    assert "compared with the peers this run measured" in r.stdout and "left out: ckernel" in r.stdout
    res = json.loads(out.read_text())
    assert {"machine", "quick", "throughput", "latency", "idle", "ack", "skipped", "config", "elapsed_s"} <= set(res)
    assert res["quick"] is True
    assert {"cpu_model", "cores", "python", "usable_cpus", "peers"} <= set(res["machine"])
    for key in ("throughput", "ack"):
        peers = {row["peer"] for row in res[key]}
        assert "multiprocessing.Queue" in peers and any(p.startswith("shmq") for p in peers), (key, peers)
        for row in res[key]:
            assert {"workload", "peer", "producers", "consumers", "msgs_per_s", "vs_mp_queue", "vs_best_peer"} <= set(row)
    assert {row["peer"] for row in res["latency"]} >= {"multiprocessing.Queue", "shmq"}
    assert not [s for s in res["skipped"] if s["reason"].startswith("FAILED")], res["skipped"]


def test_a_group_that_needs_the_source_tree_is_left_out_with_one_line():
    # issue 13 item 7: was a usage error (exit status 2)
    r = subprocess.run([sys.executable, "-m", "shmq", "bench", "--only", "ckernel"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("left out: ckernel") and "benchmarks.bench_ckernel" in lines[0]


def test_the_report_compares_with_the_peers_it_ran_and_grades_against_no_goals(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_fifo", None)      # a peer that cannot run
    res = _suite("throughput", ["multiprocessing.Queue", "faster-fifo", "shmq"], 40)
    _no_failures(res)
    text = _bench.report(res)
    assert "DESIGN" not in text and "goal" not in text.lower() and "| met |" not in text
    assert "compared with the peers this run measured, on this machine: multiprocessing.Queue;" in text
    assert "not run, so not compared: faster-fifo: not installed" in text
    assert "## shmq against the peers of this run" in text
    assert "- 64 B 1->1: shmq " in text and "x multiprocessing.Queue" in text
    # the project's goals stay available to the source tree's benchmarks/ scripts (--goals)
    assert _bench.goals(res)
    assert "| goal | measured | met |" in _bench.report(res, goals_table=True)


def test_goals_is_no_user_option():
    r = subprocess.run([sys.executable, "-m", "shmq", "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--goals" not in r.stdout and "goal" not in r.stdout.lower()


def test_cli_usage_errors():
    r = subprocess.run([sys.executable, "-m", "shmq", "bench", "--only", "nope"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "unknown group" in r.stderr
    for cmd in (["shmq", "bench"], ["shmq._bench"]):
        r = subprocess.run([sys.executable, "-m", *cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for flag in ("--quick", "--json", "--plot", "--only", "--peers", "--messages", "--repeats", "--redis-server"):
            assert flag in r.stdout


def test_the_installed_harness_compiles_nothing():
    d = os.path.dirname(_bench.__file__)
    assert os.path.basename(d) == "_bench" and os.path.dirname(d) == os.path.dirname(shmq.__file__)
    mods = sorted(f for f in os.listdir(d) if f.endswith(".py"))
    assert {"__init__.py", "harness.py", "peers.py", "workloads.py", "report.py"} <= set(mods)
    for f in mods:
        text = open(os.path.join(d, f)).read()
        assert "gcc" not in text and "csrc" not in text, f"{f} builds C: that belongs in benchmarks/"
    # the single-module harness this package replaced, shipped again by a stale build/ directory
    top = os.path.dirname(shmq.__file__)
    for f in sorted(os.listdir(top)):
        if f.endswith(".py"):
            assert "gcc" not in open(os.path.join(top, f)).read(), f"shmq/{f} builds C (a stale build/? rm -rf build)"


def _small_result():
    res = _suite("throughput", ["multiprocessing.Queue", "shmq"], 40)
    res["ack"] = _suite("ack", ["multiprocessing.Queue", "shmq ack (send/receive/ack)"], 100)["ack"]
    _no_failures(res)
    return res


def test_plot_writes_a_png_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (bench extra) is not installed")
    out = tmp_path / "bench.png"
    assert _bench.plot(_small_result(), str(out)) is True
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "bench.png"
    assert _bench.plot(_small_result(), str(out)) is False
    assert not out.exists()


def test_every_size_has_a_batched_shmq_row():
    # issue 12 item 6: one call per message and put_many/get_many side by side at every size
    res = _suite("throughput", ["multiprocessing.Queue", "shmq", "shmq (put_many/get_many)"], 20, quick=False)
    _no_failures(res)
    from shmq._bench.workloads import SIZES
    for label, _spec in SIZES:
        peers = {r["peer"] for r in res["throughput"] if r["workload"] == label}
        assert {"shmq", "shmq (put_many/get_many)"} <= peers, (label, peers)
