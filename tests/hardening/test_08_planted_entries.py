"""Issue 11 item 8: entries planted in /dev/shm (a directory or symlink named shmq.<x>, a name
with a huge pid, a file the caller may not delete) must not break `shmq ls`, `ls --json`, `top`,
`gc` or list_queues() for everyone: each entry is judged on its own and reported. Also
`shmq peek NAME --bytes -1` must be a clean argument error. Each test runs in a private mount
namespace with its own small /dev/shm, so the planted entries never reach other tests."""
import pytest

from _forge import can_unshare, check_child, other_user_prefix, run_py, unshare_prefix

pytestmark = [pytest.mark.timeout(120)]

COMMON = """
import os, subprocess, sys, shmq
def cli(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=30)
def clean(r, what):
    assert "Traceback" not in r.stderr, f"{what}: {r.stderr[-1500:]}"
q = shmq.Queue("real", create=True, capacity="1MiB")
q.put("x")
"""


def _run(body):
    why = can_unshare()
    if why:
        pytest.skip(why)
    out = check_child(run_py(COMMON + body, timeout=90, prefix=unshare_prefix("16m")), "planted /dev/shm entries")
    assert "child-ok" in out, out
def test_a_directory_or_symlink_named_like_a_queue_does_not_break_listing():
    _run("""
os.mkdir("/dev/shm/shmq.adir")
os.symlink("/etc/passwd", "/dev/shm/shmq.alink")
names = [qi.name for qi in shmq.list_queues()]
assert "real" in names, names
for args in (("ls",), ("ls", "--json"), ("top", "--iterations", "1", "--interval", "0")):
    r = cli(*args)
    clean(r, args)
    assert r.returncode == 0 and "real" in r.stdout, (args, r.returncode, r.stdout, r.stderr)
print("child-ok")
""")
def test_gc_survives_a_file_name_with_a_huge_pid():
    _run("""
open("/dev/shm/shmq.@99999999999999999999999-abcdef", "w").close()
open("/dev/shm/shmq.x~c99999999999999999999999.0", "w").close()
r = cli("gc")
clean(r, "gc")
assert r.returncode == 0, (r.stdout, r.stderr)
assert os.path.exists("/dev/shm/shmq.real")
print("child-ok")
""")
def test_gc_as_another_user_goes_on_past_a_file_it_may_not_delete():
    prefix, why = other_user_prefix()
    if prefix is None:
        pytest.skip(why)
    _run(f"""
dead = 4194301
while os.path.exists(f"/proc/{{dead}}"):
    dead -= 1
mine_path = f"/dev/shm/shmq.@{{dead}}-bbbb"
root_path = f"/dev/shm/shmq.@{{dead}}-aaaa"          # sorted first; not deletable by uid 65534
open(root_path, "w").close()
open(mine_path, "w").close()
os.chown(mine_path, 65534, 65534)
r = cli("gc", prefix={prefix!r})
clean(r, "gc as uid 65534")
assert not os.path.exists(mine_path), ("the caller's own dead segment was not removed", r.stdout, r.stderr)
assert os.path.exists(root_path)
assert "aaaa" in r.stdout + r.stderr, ("the entry it could not remove is not reported", r.stdout, r.stderr)
print("child-ok")
""")
def test_peek_with_a_negative_byte_count_is_a_clean_argument_error():
    _run("""
r = cli("peek", "real", "--bytes", "-1")
clean(r, "peek --bytes -1")
assert "SystemError" not in r.stderr, r.stderr
assert r.returncode == 0 or "bytes" in r.stderr, (r.returncode, r.stderr)   # refused naming --bytes, or shown
print("child-ok")
""")
