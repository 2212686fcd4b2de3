"""Helpers for the hardening tests: child processes with a hard timeout, and hostile writes into
a live segment at the offsets of the layout (csrc/segment.h, layout v1)."""
import os
import signal
import struct
import subprocess
import sys
import textwrap

SHM = "/dev/shm"

# shmq_header_t field offsets (csrc/segment.h; the _Static_asserts there pin the blocks)
H_MAX_AREAS = 84
H_FILE_SIZE = 128
H_GROW_LOCK = 136
H_AREA_TAIL = 140
H_COUNT = 640
H_AREAS = 896          # shmq_area_ent_t[64], 32 bytes each: off u64, size u64, state u32
H_ACK = 896 + 32 * 64  # shmq_ack_hdr_t
H_TIMER_LOCK = H_ACK + 256 + 8
SLOTS = 4096           # shmq_slot_t[max_slots], 64 bytes each: state u32, gen u32, pid i32
A_ARENA_LOCK = 128     # in the area header
A_CELLS_LOG2 = 12
A_CELLS_OFF = 32


def owner_id(slot, gen):
    """shmq_owner_make (csrc/common.h)."""
    return ((slot + 1) << 21) | (gen & ((1 << 21) - 1))


def read(path, off, fmt):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def write(path, off, fmt, *vals):
    """A hostile (or forging) write straight into the file: the mapping of every process sees it."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack(fmt, *vals), off)
    finally:
        os.close(fd)


def area0_off(path):
    return read(path, H_AREAS, "<Q")[0]


def slot_of_pid(path, pid, max_slots=128):
    """(slot, gen) of the ATTACHED slot whose pid field is pid, or None."""
    for s in range(max_slots):
        state, gen, spid = read(path, SLOTS + 64 * s, "<IIi")
        if state == 1 and spid == pid:
            return s, gen
    return None


def signame(rc):
    if rc is not None and rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def run_py(code, timeout=30, env=None, prefix=()):
    """Run code in a fresh interpreter (optionally under a prefix command such as unshare or
    setpriv). Returns (returncode, stdout, stderr); a child still running at the timeout is
    killed and reported as returncode None, so a hang is a failure message, never a hang."""
    full_env = dict(os.environ)
    full_env.pop("SHMQ_CRASH_AT", None)
    full_env.update(env or {})
    p = subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err


def check_child(res, what):
    """Assert a child from run_py exited 0; otherwise say how it failed (signal, hang, error)."""
    rc, out, err = res
    if rc is None:
        raise AssertionError(f"{what}: the child hung (killed at the timeout)\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    if rc != 0:
        raise AssertionError(f"{what}: the child ended with {signame(rc)}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}")
    return out


def unshare_prefix(size="8m"):
    """Prefix for run_py: a private mount namespace whose /dev/shm is a fresh tmpfs of this size
    (needs root and mount namespaces); the child runs the code inside it."""
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && exec "$0" "$@"')


def can_unshare():
    if os.geteuid() != 0:
        return "needs root for a private mount namespace with its own tmpfs"
    try:
        r = subprocess.run([*unshare_prefix("1m"), "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -m not usable here: {e}"
    if r.returncode != 0:
        return f"unshare -m + mount tmpfs failed here: {r.stderr.decode(errors='replace').strip()}"
    return None


def other_user_prefix(uid=65534):
    """Prefix for run_py: run as another uid (setpriv), or None with the reason."""
    import shutil
    if os.geteuid() != 0:
        return None, "needs root to run a child as another user"
    if not shutil.which("setpriv"):
        return None, "setpriv is not installed"
    prefix = ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")
    # the other user must be able to run this interpreter and import the installed shmq (a venv
    # under a 0700 directory is not readable to it)
    r = subprocess.run([*prefix, sys.executable, "-c", "import shmq"], capture_output=True, text=True,
                       timeout=30, cwd="/")
    if r.returncode != 0:
        return None, f"uid {uid} cannot import shmq from {sys.executable}: {r.stderr.strip()[-300:]}"
    return prefix, None
