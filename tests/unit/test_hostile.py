"""Hostile segments: garbage anywhere in a real segment never crashes the process; it raises
CorruptQueueError/IncompatibleQueueError at open, or the queue keeps answering with errors or
data. Byte-by-byte corruption of a real header, hypothesis-driven corruption of the structured
part, and the C fuzz driver (gcc + ASan + UBSan) for a bounded time."""
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
FUZZ_SECONDS = os.environ.get("SHMQ_FUZZ_SECONDS", "20")

OK_ERRORS = (shmq.ShmqError, ValueError, OSError, EOFError, TypeError, KeyError, AttributeError,
             ImportError, IndexError, RecursionError, UnicodeDecodeError, MemoryError, OverflowError)


def _template(name):
    q = shmq.Queue(name, create=True, capacity="128KiB")
    q.put(b"inline message")
    q.put(b"x" * 5000)
    q.put({"pickled": [1, 2, 3]})
    q.get()
    q.close()
    with open(q.path, "rb") as f:
        return q.path, f.read()


def _exercise(name):
    """Open and use a possibly corrupt queue; only clean exceptions are acceptable."""
    try:
        q = shmq.Queue(name)
    except (shmq.CorruptQueueError, shmq.IncompatibleQueueError, ValueError):
        return "refused"
    try:
        for _ in range(3):
            try:
                q.get_nowait()
            except OK_ERRORS:
                pass
            except Exception as e:  # unpickling garbage may raise anything Python-level
                if isinstance(e, (SystemError,)):
                    raise
        for obj in (b"a", b"b" * 3000, {"k": 1}):
            try:
                q.put_nowait(obj)
            except OK_ERRORS:
                pass
        q.stats()
        q._peek(0)
        q._consistency()
    except OK_ERRORS:
        pass
    finally:
        q.close()
    return "used"


def test_every_header_byte_corrupted(qname):
    path, image = _template(qname)
    outcomes = {}
    try:
        for off in range(0, 4096 + 256):
            data = bytearray(image)
            data[off] ^= 0xA5
            with open(path, "wb") as f:
                f.write(data)
            outcome = _exercise(qname)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        shmq.unlink(qname)
    assert outcomes.get("refused", 0) > 20  # magic, version, sizes, offsets... are checked


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_corruption_of_structures(qname_h, data):
    path, image = qname_h
    buf = bytearray(image)
    n = data.draw(st.integers(1, 16))
    for _ in range(n):
        off = data.draw(st.integers(0, min(len(buf) - 1, 40000)))
        val = data.draw(st.sampled_from([0, 1, 0xFF, 0x7F, 0x80]) | st.integers(0, 255))
        buf[off] = val
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    with open(path, "wb") as f:
        f.write(buf)
    _exercise(os.path.basename(path)[len("shmq."):])


@pytest.fixture
def qname_h(qname):
    path, image = _template(qname)
    yield path, image
    try:
        shmq.unlink(qname)
    except FileNotFoundError:
        pass


def test_c_fuzz_driver_under_asan_ubsan(tmp_path):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for the fuzz driver"
    out = str(tmp_path / "fuzz_segment")
    srcs = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))
    subprocess.run([gcc, "-std=gnu11", "-g", "-O1", "-mcx16", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", "-DSHMQ_FUZZ_DRIVER", "-o", out,
                    os.path.join(CSRC, "tests", "fuzz_segment.c"), *srcs], check=True, timeout=240)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([out, FUZZ_SECONDS, "12345"], capture_output=True, text=True, timeout=int(float(FUZZ_SECONDS)) + 120,
                       env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    assert "no crash" in r.stdout
