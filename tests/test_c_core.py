"""Builds the C core's own tests with -Wall -Wextra -Werror and ASan+UBSan, and runs them."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
FLAGS = ["-std=gnu11", "-g", "-O1", "-mcx16", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]


def _core_sources():
    return sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))


def _build(tmp_path, test_c, extra=()):
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed to build the C core tests"
    out = str(tmp_path / os.path.basename(test_c)[:-2])
    subprocess.run([gcc, *FLAGS, *extra, "-o", out, os.path.join(CSRC, "tests", test_c), *_core_sources()],
                   check=True, capture_output=True, text=True, timeout=240)
    return out


def _run(binary, *args, timeout=240):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{binary} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert " 0 failed" in r.stdout, r.stdout
    return r.stdout


@pytest.fixture(scope="module")
def tmp_bin(tmp_path_factory):
    return tmp_path_factory.mktemp("cbin")


def test_c_unit_tests_under_asan_ubsan(tmp_bin):
    out = _run(_build(tmp_bin, "test_core.c"))
    assert "FAIL" not in out


def test_c_multiprocess_stress_under_asan_ubsan(tmp_bin):
    # 4 producers x 3 consumers (processes), bounded, maxsize-bounded and growable queues.
    per = os.environ.get("SHMQ_STRESS_PER_PRODUCER", "20000")
    out = _run(_build(tmp_bin, "stress_queue.c"), per, "4", "3")
    assert "FAIL" not in out


def test_c_thread_stress_under_tsan(tmp_bin):
    # TSan sees threads, not processes: the same core driven by threads of one process.
    gcc = shutil.which("gcc")
    out = str(tmp_bin / "stress_threads_tsan")
    flags = [f for f in FLAGS if not f.startswith("-fsanitize") and "recover" not in f] + ["-fsanitize=thread", "-O1"]
    r = subprocess.run([gcc, *flags, "-o", out, os.path.join(CSRC, "tests", "stress_threads.c"), *_core_sources(),
                        "-lpthread"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1")
    r = subprocess.run([out], capture_output=True, text=True, timeout=240, env=env)
    if r.returncode != 0 and "unexpected memory mapping" in r.stderr:
        pytest.fail("TSan cannot run here (kernel ASLR layout); set vm.mmap_rnd_bits=28: " + r.stderr[:300])
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-4000:]}"
    assert " 0 failed" in r.stdout
