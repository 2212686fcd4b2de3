"""Every script in examples/ runs to completion against the installed package."""
import os
import signal
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")) if os.path.isdir(EXAMPLES) else []


def test_examples_exist():
    assert {"dropin_worker_pool.py", "named_queue.py", "numpy_arrays.py", "batching.py", "joinable.py",
            "monitoring.py", "raw_bytes.py", "timeouts_and_errors.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHMQ_CRASH_AT")}
    # From a temporary directory, so the source tree cannot shadow the installed package.
    # In its own session: if it hangs, the whole group goes (the processes and the redis-server an
    # example may have started), not only the script, whose children would outlive the test.
    p = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{script} did not finish in 60 s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # what it left running (normally nothing)
        except ProcessLookupError:
            pass
    assert p.returncode == 0, f"{script} exited with {p.returncode}\nstdout:\n{out}\nstderr:\n{err}"
