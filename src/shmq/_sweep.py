"""Segments of dead creators: anonymous queues and temporary creation files, judged one at a
time by `shmq gc`, and swept when a process creates an anonymous queue. A creator stopped by
SIGTERM (`timeout`, `docker stop`, systemd, `Process.terminate()`), SIGKILL or the OOM killer runs
no exit hook, so nothing else would remove its anonymous queues before `shmq gc`."""
import os
import re
import threading
import time

from . import _names
from .errors import ShmqError
from .stats import entry_kind, inspect_path

TMP_RE = re.compile(r"~c(\d+)\.\d+\Z")
ANON_RE = re.compile(r"@(\d+)-[0-9a-f]+\Z")
PID_MAX_LIMIT = 1 << 22      # the kernel's hard ceiling for pid_max (64-bit): no process has a larger pid
SWEEP_EVERY_S = 60.0         # a process sweeps at its first anonymous create, then at most this often

_last_sweep = None
_sweep_lock = threading.Lock()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def judge(name, shown, path):
    """(removed?, message or None, error?) for one shmq.* entry (name without the prefix, shown
    as it may be printed); removes it if its creator is dead and no live process holds it.
    Never raises for the entry's sake."""
    m_tmp = TMP_RE.search(name)
    m_anon = None if m_tmp else ANON_RE.match(name)
    m = m_tmp or m_anon
    if not m:
        return False, None, False       # a named queue: only `shmq rm` removes it
    pid = int(m.group(1))
    if not 0 < pid <= PID_MAX_LIMIT:
        return False, f"skipped {shown}: pid {m.group(1)} is out of range (no process can have it): not made by shmq", \
            False
    if pid_alive(pid):
        return False, None, False
    kind = entry_kind(path)
    if kind is False:
        return False, None, False       # gone meanwhile
    if kind is not None:
        return False, f"skipped {shown}: not a regular file (never opened, never removed by gc)", False
    what = f"temporary file of dead creator {pid}" if m_tmp else f"anonymous queue of dead creator {pid}"
    if m_anon:
        try:
            if inspect_path(path)["attached"]:
                return False, None, False   # a live process (a child of the creator) still uses it
        except (ShmqError, OSError):
            pass  # a corrupt anonymous segment of a dead creator is garbage too
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False, None, False
    except PermissionError:
        try:
            owner = f"owner uid {os.lstat(path).st_uid}"
        except OSError:
            owner = "owner unknown"
        return False, f"skipped {shown}: {what}, but not permitted to remove it ({owner})", False
    except OSError as e:
        return False, f"could not remove {shown}: {e.strerror or e}", True
    return True, f"removed {shown} ({what})", False


def sweep_dead(force=False):
    """Remove this user's anonymous queues whose creator is dead and that no live process holds.
    Conservative where `shmq gc` is thorough: only a regular file that opens as a valid segment
    naming the same dead creator; anything else (a corrupt or planted entry, a temporary file)
    is left for `shmq gc`. Rate-limited (SWEEP_EVERY_S per process) unless force; returns how many
    were removed; never raises. Cost: one listdir of /dev/shm and one kill(pid, 0) per anonymous
    entry; only a dead creator's entry is opened (read-only look, no participant slot taken)."""
    global _last_sweep
    now = time.monotonic()
    with _sweep_lock:
        if not force and _last_sweep is not None and now - _last_sweep < SWEEP_EVERY_S:
            return 0
        _last_sweep = now
    try:
        files = os.listdir(_names.SHM_DIR)
    except OSError:
        return 0
    uid, removed = os.geteuid(), 0
    for f in files:
        if not f.startswith(_names.PREFIX + _names.ANON_MARK):
            continue
        m = ANON_RE.match(f[len(_names.PREFIX):])
        if not m:
            continue
        pid = int(m.group(1))
        if not 0 < pid <= PID_MAX_LIMIT or pid_alive(pid):
            continue
        path = os.path.join(_names.SHM_DIR, f)
        try:
            if entry_kind(path) is not None or os.lstat(path).st_uid != uid:
                continue                    # not a file, or another user's: theirs to collect
            st = inspect_path(path)
            if st["creator_pid"] != pid or st["attached"]:
                continue                    # not what its name says, or a live process holds it
            os.unlink(path)
            removed += 1
        except Exception:
            continue
    return removed
