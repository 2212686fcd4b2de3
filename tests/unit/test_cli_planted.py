"""Entries planted in /dev/shm by anyone (issue 11 item 8): each is judged on its own and
reported, never fatal for the listing, gc or the rest of the command line."""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import shmq

SHM = "/dev/shm"
PID = os.getpid()


def _cli(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True, timeout=timeout,
                          **kw)


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait(timeout=30)
    return p.pid


@pytest.fixture
def planted():
    """Make entries under /dev/shm by name; every one is removed afterwards, whatever happens."""
    made = []

    def plant(name, how, target=None):
        path = os.path.join(SHM, "shmq." + name)
        made.append(path)
        if how == "dir":
            os.mkdir(path)
        elif how == "symlink":
            os.symlink(target, path)
        elif how == "fifo":
            os.mkfifo(path)
        else:
            with open(path, "wb") as f:
                f.write(b"planted")
        return path

    yield plant
    for path in made:
        _remove(path)


def test_listing_reports_planted_directory_symlink_and_fifo(planted, qname):
    d, ln, fifo = f"planted-dir-{PID}", f"planted-link-{PID}", f"planted-fifo-{PID}"
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        q.put(b"x")
        planted(d, "dir")
        planted(ln, "symlink", target=q.path)      # pointing at a real queue: still not followed
        planted(fifo, "fifo")
        infos = {qi.name: qi for qi in shmq.list_queues()}
        assert infos[qname].kind == "queue" and infos[qname].depth == 1
        for name in (d, ln, fifo):
            assert infos[name].kind == "not-a-queue" and infos[name].depth is None, infos[name]
        r = _cli("ls")
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
        assert rows[qname] == "queue" and rows[d] == rows[ln] == rows[fifo] == "not-a-queue"
        r = _cli("ls", "--json")
        assert r.returncode == 0, r.stderr
        kinds = {row["name"]: row["kind"] for row in json.loads(r.stdout)}
        assert kinds[qname] == "queue" and kinds[d] == kinds[ln] == kinds[fifo] == "not-a-queue"
        r = _cli("top", "--iterations", "1", "--interval", "0.01")
        assert r.returncode == 0, r.stderr
        assert qname in r.stdout and d in r.stdout and "Traceback" not in r.stderr
        r = _cli("stat", d)
        assert r.returncode == 1 and "Traceback" not in r.stderr and d in r.stderr
        # rm goes on past an entry it cannot remove
        r = _cli("rm", d, qname)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"removed {qname}" in r.stdout and not os.path.exists(q.path) and os.path.isdir(SHM + "/shmq." + d)
    finally:
        q.close()
        try:
            shmq.unlink(qname)
        except shmq.QueueNotFound:
            pass


def test_names_with_escapes_newlines_or_undecodable_bytes_are_shown_escaped(planted):
    planted(f"planted-{PID}-esc\x1b[2J\nforged-row  queue", "file")
    raw = os.path.join(os.fsencode(SHM), b"shmq.planted-%d-\xff\xfe" % PID)
    with open(raw, "wb") as f:
        f.write(b"planted")
    try:
        for cmd in (["ls"], ["top", "--iterations", "1", "--interval", "0.01"], ["gc"]):
            r = _cli(*cmd, errors="replace")
            assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
            assert "\x1b" not in r.stdout and not any(line.startswith("forged-row") for line in r.stdout.splitlines())
        r = _cli("ls", errors="replace")
        assert f"planted-{PID}-esc\\x1b[2J\\nforged-row\\x20\\x20queue" in r.stdout
        assert f"planted-{PID}-\\udcff\\udcfe" in r.stdout
        r = _cli("ls", "--json", errors="replace")
        assert r.returncode == 0 and f"planted-{PID}-esc\x1b[2J\nforged-row  queue" in {
            row["name"] for row in json.loads(r.stdout)}
    finally:
        _remove(raw)


def test_gc_survives_names_with_huge_pids(planted):
    huge = "9" * 25
    bad_tmp = planted(f"planted-{PID}-a~c{huge}.0", "file")
    bad_anon = planted(f"@{huge}-0f0f", "file")
    stale = planted(f"planted-{PID}-b~c{_dead_pid()}.0", "file")
    r = _cli("gc")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "OverflowError" not in r.stderr
    assert not os.path.exists(stale), "gc stopped before the stale temporary file"
    # a pid no process can have: not made by shmq, reported and left alone
    assert os.path.exists(bad_tmp) and os.path.exists(bad_anon)
    out = r.stdout + r.stderr
    assert os.path.basename(bad_tmp)[5:] in out and os.path.basename(bad_anon)[5:] in out


def test_gc_skips_planted_directory_and_symlink(planted, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    dead = _dead_pid()
    d = planted(f"planted-{PID}-a~c{dead}.0", "dir")
    ln = planted(f"@{dead}-0a0a", "symlink", target=str(target))
    stale = planted(f"planted-{PID}-b~c{dead}.0", "file")
    r = _cli("gc")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(stale)
    assert os.path.isdir(d) and os.path.islink(ln) and target.read_bytes() == b"keep me"
    assert os.path.basename(d)[5:] in r.stdout + r.stderr


def _other_uid_gc_possible():
    if os.geteuid() != 0:
        return "needs root to plant a file that another uid may not delete"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed: cannot run gc as another uid"
    if not os.stat(SHM).st_mode & stat.S_ISVTX:
        return f"{SHM} is not sticky: another uid could delete the root-owned file"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                        "import shmq"], capture_output=True, text=True, timeout=60, cwd="/")
    if r.returncode != 0:
        return f"uid 65534 cannot import the installed shmq: {r.stderr.strip()[-200:]}"
    return None


def test_gc_as_another_user_goes_on_past_a_file_it_may_not_delete(planted):
    why = _other_uid_gc_possible()
    if why:
        pytest.skip(why)
    dead = _dead_pid()
    root_owned = planted(f"planted-{PID}-a~c{dead}.0", "file")          # sorted first: gc meets it first
    own = planted(f"planted-{PID}-b~c{dead}.0", "file")
    os.chown(own, 65534, 65534)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "shmq",
                        "gc"], capture_output=True, text=True, timeout=60, cwd="/")
    assert "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(own), f"gc stopped at the file it may not delete:\n{r.stdout}{r.stderr}"
    assert os.path.exists(root_owned)
    assert os.path.basename(root_owned)[5:] in r.stdout + r.stderr
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["-1", "-100", str(1 << 70)])
def test_peek_bytes_out_of_range_is_a_usage_error(qname, value):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        q.put(b"hello")
        r = _cli("peek", qname, "--bytes", value)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "--bytes" in r.stderr and "SystemError" not in r.stderr and "Traceback" not in r.stderr
        r = _cli("peek", qname, "--bytes", "0")
        assert r.returncode == 0 and "size=5" in r.stdout
    finally:
        q.close()
        shmq.unlink(qname)
