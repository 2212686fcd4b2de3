"""pytest-benchmark wrappers over shmq._bench: they record timings and never assert a speed.

Not collected by the default test run (pytest's testpaths is tests/). Run them with
    pytest benchmarks/test_perf.py --benchmark-enable
(pyproject's addopts disables pytest-benchmark by default; disabled, each body runs once.)
Each round forks the producer/consumer processes anew; what is timed is the whole run,
and the harness's own msgs/s (timed inside the children) is kept in extra_info.
"""
import pytest

from shmq import _bench

KiB = 1024
MiB = 1024 * 1024
N_SMALL = 100_000
N_LARGE = 500

PEERS = {p.name: p for p in _bench.all_peers() + _bench.ack_peers()}
ACK = [p.name for p in _bench.ack_peers()]
SINGLE = ["multiprocessing.Queue", "faster-fifo", "pyzmq PUSH/PULL ipc://", "os.pipe (length-prefixed)",
          "shmq", "shmq (put_many/get_many)", "shmq raw (put_many/get_many)"]


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    _bench.peers.shutdown()      # the Redis server the Redis Streams peer started


def _peer(name):
    p = PEERS[name]
    why = p.available()
    if why:
        pytest.skip(f"{name}: {why}")
    return p


def _tp(benchmark, peer, spec, n, producers=1, consumers=1):
    out = {}

    def once():
        try:
            out.update(_bench.throughput(peer, spec, n, producers, consumers))
        except _bench.Skip as e:
            pytest.skip(str(e))

    benchmark.pedantic(once, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({k: out[k] for k in ("msgs", "msgs_per_s", "bytes_per_s")})
    assert out["msgs"] == n * producers


@pytest.mark.parametrize("name", SINGLE)
@pytest.mark.parametrize("size", [64, KiB, 64 * KiB, MiB], ids=["64B", "1KiB", "64KiB", "1MiB"])
def test_throughput_bytes(benchmark, name, size):
    _tp(benchmark, _peer(name), ("bytes", size), N_SMALL if size <= KiB else N_LARGE)


@pytest.mark.parametrize("name", ["multiprocessing.Queue", "faster-fifo", "shmq", "shmq (put_many/get_many)"])
def test_throughput_dict(benchmark, name):
    _tp(benchmark, _peer(name), ("dict", 0), N_SMALL)


@pytest.mark.parametrize("name", ["multiprocessing.Queue", "faster-fifo", "shmq"])
def test_throughput_numpy(benchmark, name):
    pytest.importorskip("numpy")
    _tp(benchmark, _peer(name), ("numpy", MiB), N_LARGE)


@pytest.mark.parametrize("name", ["multiprocessing.Queue", "faster-fifo", "pyzmq PUSH/PULL ipc://", "shmq",
                                  "shmq (put_many/get_many)"])
def test_throughput_mpmc(benchmark, name):
    _tp(benchmark, _peer(name), ("bytes", 64), N_SMALL // 2, producers=2, consumers=2)


@pytest.mark.parametrize("name", ["multiprocessing.Queue", "pyzmq PUSH/PULL ipc://", "os.pipe (length-prefixed)",
                                  "shmq"])
@pytest.mark.parametrize("placement", ["different", "same"])
def test_ping_pong(benchmark, name, placement):
    cpus = _bench._cpus()
    if placement == "different" and len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    pair = (cpus[0], cpus[1]) if placement == "different" else (cpus[0], cpus[0])
    out = {}

    def once():
        out.update(_bench.ping_pong(_peer(name), 5000, 1.0, pair))

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update({k: out[k] for k in ("round_trips", "p50_us", "p99_us", "p999_us")})


@pytest.mark.parametrize("name", ["multiprocessing.Queue"] + ACK)
@pytest.mark.parametrize("pc", [(1, 1), (2, 2)], ids=["1-1", "2-2"])
def test_ack(benchmark, name, pc):
    peer = _peer(name)
    n = max(1000, int(N_SMALL * peer.trial_scale)) // pc[0]
    _tp(benchmark, peer, ("seq", 64), n, producers=pc[0], consumers=pc[1])
