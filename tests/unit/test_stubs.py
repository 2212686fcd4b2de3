"""The compiled binding matches its type stub (_core.pyi), checked by mypy.stubtest."""
import subprocess
import sys


def test_core_stub_matches_binding(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "shmq._core", "--ignore-missing-stub"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
