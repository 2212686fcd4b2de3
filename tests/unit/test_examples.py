"""Every script in examples/ runs to completion against the installed package."""
import os
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
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{script} exited with {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
