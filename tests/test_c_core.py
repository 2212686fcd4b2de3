"""Builds the C core's own tests with -Wall -Wextra -Werror and ASan+UBSan, and runs them.

Every csrc/tests/test_*.c is one binary (one file per primitive or state machine, STYLE.md);
the core is compiled once per module and linked into each. The multi-process stresses (the
queue, at-least-once and dedup under SIGKILL storms) run under ASan+UBSan too, the thread
stress under TSan."""
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
FLAGS = ["-std=gnu11", "-g", "-O1", "-mcx16", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
TSAN_FLAGS = [f for f in FLAGS if not f.startswith("-fsanitize") and "recover" not in f] + ["-fsanitize=thread"]
TEST_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CSRC, "tests", "test_*.c")))
# The primitives and state machines that must keep a test file of their own (issue 10 item 8).
REQUIRED = {"test_ring.c", "test_arena.c", "test_lock.c", "test_segment.c", "test_queue.c", "test_wait.c",
            "test_crashpoint.c", "test_lease.c", "test_dedup.c"}
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.M)


def _core_sources():
    return sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))


def _gcc():
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed to build the C core tests"
    return gcc


def _compile_objects(out_dir, flags):
    """Compile every csrc/*.c once (two at a time: the machine is shared)."""
    gcc = _gcc()

    def one(src):
        obj = os.path.join(out_dir, os.path.basename(src)[:-2] + ".o")
        r = subprocess.run([gcc, *flags, "-c", "-o", obj, src], capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, f"{src} failed to compile:\n{r.stderr}"
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        return list(ex.map(one, _core_sources()))


def _link(out_dir, test_c, objs, flags=FLAGS):
    out = os.path.join(out_dir, os.path.basename(test_c)[:-2])
    r = subprocess.run([_gcc(), *flags, "-o", out, os.path.join(CSRC, "tests", test_c), *objs, "-lpthread"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"{test_c} failed to build:\n{r.stderr}"
    return out


def _check_summary(stdout):
    m = SUMMARY.findall(stdout)
    assert m, f"no 'N passed, N failed' line:\n{stdout}"
    passed, failed = map(int, m[-1])
    assert failed == 0 and passed > 0, stdout
    assert "FAIL" not in stdout, stdout


def _run(binary, *args, timeout=240):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               TH_TIMEOUT_S=str(timeout - 10))
    env.pop("LD_PRELOAD", None)
    env.pop("SHMQ_CRASH_AT", None)
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{binary} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert " 0 failed" in r.stdout, r.stdout
    _check_summary(r.stdout)
    return r.stdout


@pytest.fixture(scope="module")
def tmp_bin(tmp_path_factory):
    return tmp_path_factory.mktemp("cbin")


@pytest.fixture(scope="module")
def asan_objs(tmp_bin):
    d = tmp_bin / "asan"
    d.mkdir()
    return _compile_objects(str(d), FLAGS)


def test_every_primitive_has_its_test_file():
    missing = REQUIRED - set(TEST_FILES)
    assert not missing, f"C test files missing from csrc/tests: {sorted(missing)}"


def test_every_crash_point_has_a_c_crash_test():
    """Each point of crashpoint.h's table is armed by some C test (th_spawn with SHMQ_CRASH_AT)."""
    with open(os.path.join(CSRC, "crashpoint.h")) as f:
        points = re.findall(r"^\s*X\((\w+),", f.read(), re.M)
    assert len(points) >= 10
    armed = set()
    for p in glob.glob(os.path.join(CSRC, "tests", "*.c")):
        with open(p) as f:
            text = f.read()
        armed |= set(re.findall(r'th_spawn\(\s*"(\w+)(?::\d+)?"', text))
        # table-driven tests list their points as string literals next to the spawn
        if "th_spawn(pts[i]" in text or "th_spawn(points[p]" in text:
            armed |= set(re.findall(r'"(\w+)"', text)) & set(points)
    missing = [p for p in points if p not in armed]
    assert not missing, f"crash points no C test kills a process at: {missing}"


_HARNESS_PROBE = r"""
#include "queue.h"
#include "tharness.h"
static void t_passes(void) { CHECK_EQ(1, 1); }
static void t_fails_holding_things(void)
{
    char path[128];
    th_path(path, sizeof path, "probe");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pid_t pid = th_fork();
    if (pid == 0) {
        for (;;)
            pause();
    }
    printf("child %d path %s\n", (int)pid, path);
    CHECK_EQ(shmq_depth(q), 1); /* fails: the queue is empty */
}
static void t_hangs(void) { if (getenv("PROBE_HANG")) th_sleep_ms(60000); }
int main(void)
{
    RUN(t_passes);
    RUN(t_fails_holding_things);
    RUN(t_hangs);
    TH_SUMMARY();
}
"""


def test_harness_reports_a_failure_and_cleans_up(tmp_bin, asan_objs):
    """The harness itself: a failed CHECK fails the binary and the summary, and the segment and
    child the failed test held are gone; the watchdog ends a hung test the same way."""
    probe = tmp_bin / "probe.c"
    probe.write_text(_HARNESS_PROBE)
    exe = str(tmp_bin / "probe")
    r = subprocess.run([_gcc(), *FLAGS, "-I", CSRC, "-I", os.path.join(CSRC, "tests"), "-o", exe, str(probe), *asan_objs,
                        "-lpthread"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    env.pop("LD_PRELOAD", None)
    for hang in (False, True):
        env.pop("PROBE_HANG", None)
        if hang:
            env.update(PROBE_HANG="1", TH_TIMEOUT_S="2")
        r = subprocess.run([exe], capture_output=True, text=True, timeout=60, env=env)
        m = re.search(r"child (\d+) path (\S+)", r.stdout)
        assert m, r.stdout
        pid, path = int(m.group(1)), m.group(2)
        assert not os.path.exists(path), "the failed test's segment was left behind"
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        assert "FAIL t_fails_holding_things" in r.stdout
        if hang:
            assert r.returncode == 3 and "watchdog" in r.stderr, (r.returncode, r.stdout, r.stderr)
        else:
            assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
            assert SUMMARY.findall(r.stdout)[-1] == ("2", "1"), r.stdout


@pytest.mark.parametrize("test_c", TEST_FILES)
def test_c_unit_tests_under_asan_ubsan(tmp_bin, asan_objs, test_c):
    out = _run(_link(str(tmp_bin), test_c, asan_objs))
    assert "FAIL" not in out


def test_c_multiprocess_stress_under_asan_ubsan(tmp_bin, asan_objs):
    # 4 producers x 3 consumers (processes), bounded, maxsize-bounded and growable queues.
    per = os.environ.get("SHMQ_STRESS_PER_PRODUCER", "20000")
    out = _run(_link(str(tmp_bin), "stress_queue.c", asan_objs), per, "4", "3")
    assert "FAIL" not in out


def test_c_lease_kill_storm_under_asan_ubsan(tmp_bin, asan_objs):
    # At-least-once with consumer processes SIGKILLed every few ms: no loss, nothing delivered
    # after a successful ack, counters that agree with what the consumers saw.
    per = os.environ.get("SHMQ_STRESS_LEASE_MESSAGES", "20000")
    out = _run(_link(str(tmp_bin), "stress_lease.c", asan_objs), per, "3")
    assert "kill storm:" in out


def test_c_dedup_kill_storm_under_asan_ubsan(tmp_bin, asan_objs):
    # Two senders of the same dedup keys SIGKILLed every few ms: every key exactly once.
    out = _run(_link(str(tmp_bin), "stress_dedup.c", asan_objs), os.environ.get("SHMQ_STRESS_DEDUP_KEYS", "6000"))
    assert "dedup kill storm:" in out


def _tsan_run(tmp_bin, stress_c):
    """Build csrc/tests/<stress_c> and the whole core with TSan and run it; the CompletedProcess."""
    gcc = _gcc()
    out = str(tmp_bin / (stress_c[:-2] + "_tsan"))
    r = subprocess.run([gcc, *TSAN_FLAGS, "-o", out, os.path.join(CSRC, "tests", stress_c), *_core_sources(), "-lpthread"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1", TH_TIMEOUT_S="230")
    r = subprocess.run([out], capture_output=True, text=True, timeout=240, env=env)
    if r.returncode != 0 and "unexpected memory mapping" in r.stderr:
        pytest.fail("TSan cannot run here (kernel ASLR layout); set vm.mmap_rnd_bits=28: " + r.stderr[:300])
    return r


def _assert_ok(r):
    # the first lines say what went wrong first; a TSan report at the end can be long
    err = r.stderr if len(r.stderr) < 8000 else r.stderr[:4000] + "\n[...]\n" + r.stderr[-4000:]
    assert r.returncode == 0, f"{r.stdout}\n{err}"
    assert " 0 failed" in r.stdout
    _check_summary(r.stdout)


def _xfail_if_only(r, known, reason):
    """An expected failure when the binary failed with exactly the known symptom (and the
    CHECK lines it causes), nothing else."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if r.returncode == 1 and known in lines and all(ln == known or "CHECK_EQ failed:" in ln for ln in lines):
        pytest.xfail(reason)


def test_c_thread_stress_under_tsan(tmp_bin):
    # TSan sees threads, not processes: the same core driven by threads of one process
    # (put/get, receive/ack/nack/extend with leases expiring under the consumers, dedup senders).
    r = _tsan_run(tmp_bin, "stress_threads.c")
    # (A getter of a growable queue that mapped an area just as it was retired used to get
    # SHMQ_ECORRUPT about one run in a hundred; it now sees the area as retired and moves on.)
    _assert_ok(r)


def test_c_peek_racing_a_getter_under_asan_ubsan(tmp_bin, asan_objs):
    # shmq_peek may answer SHMQ_EAGAIN while a getter takes the message, never an error, and
    # a copy it reports is never torn (it used to answer SHMQ_ECORRUPT: it validated size/chunk
    # read before re-checking the descriptor word).
    exe = _link(str(tmp_bin), "stress_peek.c", asan_objs)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               TH_TIMEOUT_S="200")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=240, env=env)
    _assert_ok(r)
