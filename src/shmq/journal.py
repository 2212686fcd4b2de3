"""The journal of a named queue: options, recovery on create, the batch sync timer, stats, `shmq journal`."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any, NamedTuple, Optional

from . import _core, _options
from .errors import ArgumentError, ArgumentTypeError, CorruptJournalError, JournalError, QueueExistsError

__all__ = ["JournalOptions", "resolve", "scan", "stat", "verify"]

log = logging.getLogger("shmq.journal")

MODES = ("always", "batch", "never")
RECOVERY = ("strict", "skip")
DEFAULT_INTERVAL = 0.010                 # fsync="batch": a background sync every 10 ms (DESIGN §7)
DEFAULT_SEGMENT = 32 * 1024 * 1024       # bytes of one segment file (preallocated once, recycled)
READY_WAIT_S = 60.0                      # an opener waits this long for a creator's recovery
PROGRESS_BYTES = 256 * 1024 * 1024       # recoveries of journals this large show progress
MAINTENANCE_S = 0.05                     # how often the background thread builds the next segment ahead
# stats() keys (0 / None on a queue without a journal)
STATS_KEYS = ("journal_bytes", "journal_segments", "journal_durable_position", "journal_position",
              "journal_syncs", "journal_fsync_errors", "journal_last_sync_age_s", "journal_mode")


class JournalOptions(NamedTuple):
    dir: str
    mode: str
    interval: float
    recovery: str
    segment_size: int

    def core_dict(self) -> dict:
        return {"dir": self.dir, "mode": _core.JOURNAL_MODES[self.mode], "segment_size": self.segment_size,
                "interval_ns": int(self.interval * 1e9)}


def resolve(journal, fsync, fsync_interval, journal_recovery, journal_segment_size, *, name, max_message):
    """The checked options (None without journal=). Raises ValueError/TypeError naming the option."""
    if journal is None:
        for opt, v in (("fsync", fsync), ("fsync_interval", fsync_interval), ("journal_recovery", journal_recovery),
                       ("journal_segment_size", journal_segment_size)):
            if v is not None:
                raise ArgumentError(f"{opt}= needs journal=DIR (a directory for the queue's journal)")
        return None
    if name is None:
        raise ArgumentError("journal= needs a named queue (an anonymous queue dies with its creator)")
    if not isinstance(journal, (str, os.PathLike)):
        raise ArgumentTypeError(f"journal must be a directory path (str or os.PathLike), not {type(journal).__name__}")
    d = os.path.abspath(os.fsdecode(journal))
    if len(os.fsencode(d)) >= _core.JOURNAL_DIR_MAX:
        raise ArgumentError(f"journal directory path is too long (at most {_core.JOURNAL_DIR_MAX - 1} bytes)")
    mode = "always" if fsync is None else fsync
    if mode not in MODES:
        raise ArgumentError(f"fsync must be one of 'always', 'batch', 'never', got {fsync!r}")
    interval = DEFAULT_INTERVAL if fsync_interval is None else fsync_interval
    if fsync_interval is not None:
        ns = _options.seconds_ns(fsync_interval, "fsync_interval", allow_zero=False)
        interval = ns / 1e9
    rec = "strict" if journal_recovery is None else journal_recovery
    if rec not in RECOVERY:
        raise ArgumentError(f"journal_recovery must be 'strict' or 'skip', got {journal_recovery!r}")
    seg = DEFAULT_SEGMENT
    if journal_segment_size is not None:
        seg = _options.size(journal_segment_size, "journal_segment_size")
    if max_message:
        seg = max(seg, _round_up(max_message + 2 * 4096 + 256, 1 << 20))   # the largest record fits a segment
    seg = _round_up(max(seg, _core.JOURNAL_MIN_SEGMENT), 4096)
    return JournalOptions(d, mode, interval, rec, seg)


def _round_up(x, a):
    return (x + a - 1) // a * a


def prepare_dir(opts: JournalOptions) -> None:
    """Create the directory (0700) if needed; warn when it is on tmpfs."""
    try:
        os.makedirs(opts.dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise JournalError(e.errno, f"journal directory {opts.dir!r}: {e.strerror}") from None
    if not os.path.isdir(opts.dir):
        raise ArgumentError(f"journal={opts.dir!r} is not a directory")
    if _core.journal_on_tmpfs(opts.dir) == 1:
        warnings.warn(f"journal directory {opts.dir!r} is on tmpfs (memory): it does not survive a reboot; "
                      "put the journal on a disk", RuntimeWarning, stacklevel=4)


def check_existing(core, opts: Optional[JournalOptions], explicit_fsync, name) -> None:
    """An existing queue opened with journal options: they must be its own."""
    have = core._journal_dir
    if opts is None:
        return
    if have is None:
        raise ArgumentError(f"queue {name!r} exists without a journal; journal={opts.dir!r} cannot be added to a "
                            "live queue (remove it with shmq rm, then create it with journal=)")
    if os.path.realpath(have) != os.path.realpath(opts.dir):
        raise ArgumentError(f"queue {name!r} exists with journal={have!r}, not journal={opts.dir!r}")
    if explicit_fsync is not None:
        mode = {v: k for k, v in _core.JOURNAL_MODES.items()}.get(core._journal_stats()["mode"])
        if mode != explicit_fsync:
            raise ArgumentError(f"queue {name!r} exists with fsync={mode!r}, not fsync={explicit_fsync!r}")


def wait_ready(core, name) -> None:
    """An opener of a journaled queue: wait for its creator's recovery, then record our writes."""
    if core._journal_dir is None:
        return
    deadline = time.monotonic() + READY_WAIT_S
    while core._journal_state() != _core.JOURNAL_READY:
        pid = core._raw_stats()["creator_pid"]
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive or time.monotonic() > deadline:
            core._close()
            why = "died" if not alive else f"did not finish in {READY_WAIT_S:.0f} s"
            raise JournalError(5, f"queue {name!r}: the recovery of its journal by its creator (pid {pid}) {why}; "
                               f"remove the queue with `shmq rm {name}` and create it again (the journal is kept)")
        time.sleep(0.001)
    core._journal_enable()


class _Progress:
    """Recovery progress: a bar on a terminal, a log line otherwise (large journals only)."""

    def __init__(self, name):
        self.name = name
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if total <= 0 or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        frac = done / total
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\rshmq: recovering {self.name!r} [{bar:<30}] {frac:4.0%}")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            log.info("recovering queue %r: %.0f%% of %d bytes", self.name, frac * 100, total)


def recover(core, name: str, opts: JournalOptions) -> dict:
    """A creator's recovery into its new, still empty queue, then the journal takes appends.
    Raises CorruptJournalError, JournalError/OSError, Full, ValueError (a journal of another kind)."""
    core._journal_claim()
    pre = _core.journal_scan(opts.dir, opts.recovery == "skip")
    if pre["rc"] == 0 and pre.get("qkind") and pre["qkind"] != _core._kind_of(core):
        from .queue import _KIND_WORDS
        have = _KIND_WORDS.get(pre["qkind"], (f"kind {pre['qkind']}", "shmq.open"))
        raise ArgumentError(f"journal {opts.dir!r} holds {have[0]}; create queue {name!r} with {have[1]} to "
                            "recover it")
    if pre["rc"] == 0 and pre["qflags"] and (pre["qflags"] & _core.F_ACK) != (core._flags_value & _core.F_ACK):
        what = "an at-least-once queue (ack=True)" if pre["qflags"] & _core.F_ACK else "an at-most-once queue"
        raise ArgumentError(f"journal {opts.dir!r} holds {what}; create queue {name!r} with the same ack= to "
                            "recover it")
    big = pre.get("segments", 0) * opts.segment_size >= PROGRESS_BYTES
    rep = core._journal_recover(opts.dir, _core.JSCAN_SKIP if opts.recovery == "skip" else 0,
                                _Progress(name) if big else None)
    rc = rep["rc"]
    if rc != 0:
        raise _scan_error(rep, opts.dir, name)
    core._journal_start(rep["last_seg"], rep["next_lsn"])
    summary = summarize(rep)
    if rep["records"]:
        log.info("queue %r recovered from %s: %s", name, opts.dir, summary)
    if rep["torn"]:
        log.warning("journal %s: torn tail cut (%d record, %d bytes at segment %d offset %d)", opts.dir,
                    rep["torn"], rep["truncated_bytes"], rep["torn_seg"], rep["torn_off"])
    if rep["corrupt"]:
        log.warning("journal %s: %d corrupt range(s) skipped (%d bytes; first at segment %d offset %d)", opts.dir,
                    rep["corrupt"], rep["skipped_bytes"], rep["corrupt_seg"], rep["corrupt_off"])
    return rep


def summarize(rep: dict) -> str:
    return (f"{rep['records']} records, {rep['live']} live messages, {rep['truncated_bytes']} bytes truncated, "
            f"{rep['skipped_bytes']} bytes skipped, {rep['elapsed_ns'] / 1e9:.3f} s")


def _seg_file(d, seg):
    return os.path.join(d, f"{seg:016x}.wal")


def _scan_error(rep, d, name=None):
    rc = rep["rc"]
    rcs = _core.RC
    if rc == rcs["ECORRUPT"]:
        path = _seg_file(d, rep["corrupt_seg"])
        e = CorruptJournalError(5, f"{path}: corrupt journal record at offset {rep['corrupt_off']} (valid records "
                                "follow it, so this is not a torn tail); open with journal_recovery='skip' to drop "
                                "the damaged records and keep the rest", path)
        e.offset = rep["corrupt_off"]
        return e
    if rc == rcs["ESYS"]:
        err = rep["err"]
        return JournalError(err, f"journal {d!r}: {os.strerror(err)}")
    if rc in (rcs["FULL"], rcs["ETOOBIG"]):
        return JournalError(28, f"queue {name!r} is too small for the {rep['live']} messages of its journal "
                            f"{d!r}; create it with a larger capacity (or capacity=None)")
    return JournalError(5, f"journal {d!r}: recovery failed: {rep['rc_name']}")


# -- batch mode: one background thread per process syncs every journaled handle --------------
_handles: "weakref.WeakSet[Any]" = weakref.WeakSet()
_lock = threading.Lock()
_thread: Optional[threading.Thread] = None


def attached(handle) -> None:
    """Every handle on a journaled queue, once open: wait for the creator's recovery, record our
    writes, and in batch mode join the background sync."""
    core = handle._core
    wait_ready(core, handle.name)
    st = core._journal_stats()
    handle._jbatch = st["mode"] == _core.JOURNAL_MODES["batch"]
    # batch: the sync timer; every mode: the next segment file is built ahead of need
    handle._jinterval = max(st["interval_ns"], 100_000) / 1e9 if handle._jbatch else MAINTENANCE_S
    _register(handle)


def _register(handle) -> None:
    global _thread
    with _lock:
        _handles.add(handle)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="shmq-journal-sync", daemon=True)
            _thread.start()


def _run():
    global _thread
    while True:
        with _lock:
            hs = [h for h in _handles if not h.closed]
            if not hs:              # nothing journaled is open: the thread ends (the next
                _thread = None      # attached handle starts another), never polls forever
                return
        time.sleep(min(h._jinterval for h in hs))
        now = time.monotonic()
        for h in hs:
            try:
                core = h._core
                if core is None or core.closed:
                    continue
                if h._jbatch:
                    core._journal_sync(1.0)
                if now - getattr(h, "_jmaint", 0.0) >= MAINTENANCE_S:
                    h._jmaint = now
                    core._journal_prepare_spare()
            except Exception:
                pass    # counted in journal_fsync_errors / reported by the next send that needs it


def _after_fork():
    # The parent's sync thread may have held _lock at the fork: the child's copy would stay locked
    # forever (a forked child then hung in this very hook, or in its own fork's). A new lock.
    global _thread, _lock
    _lock = threading.Lock()
    _thread = None
    live = [h for h in list(_handles) if not h.closed]
    if live:
        _register(live[0])


os.register_at_fork(after_in_child=_after_fork)


def stats_of(core) -> dict:
    """The journal keys of stats()."""
    out = dict.fromkeys(STATS_KEYS, 0)
    out["journal_last_sync_age_s"] = None
    out["journal_mode"] = None
    if core is None or core._journal_dir is None:
        return out
    st = core._journal_stats()
    out["journal_bytes"] = st["bytes"]
    out["journal_segments"] = st["segments"]
    out["journal_durable_position"] = st["durable_pos"]
    out["journal_position"] = st["write_pos"]
    out["journal_syncs"] = st["sync_count"]
    out["journal_fsync_errors"] = st["fsync_errors"]
    if st["last_sync_ns"]:
        out["journal_last_sync_age_s"] = max(0.0, (time.monotonic_ns() - st["last_sync_ns"]) / 1e9)
    out["journal_mode"] = {v: k for k, v in _core.JOURNAL_MODES.items()}.get(st["mode"])
    out["journal"] = core._journal_dir
    return out


# -- `shmq journal stat|verify DIR` --------------------------------------------------------------
def scan(directory: str, skip: bool = False) -> dict:
    if not os.path.isdir(directory):
        raise JournalError(2, f"no journal directory {directory!r}")
    return _core.journal_scan(os.path.abspath(directory), skip)


def stat(directory: str) -> dict:
    """records, bytes, segments, live messages, first/last id of a journal (its queue need not be open)."""
    rep = scan(directory, skip=True)
    if rep["rc"] not in (0, _core.RC["ECORRUPT"]):
        raise _scan_error(rep, directory)
    return {"directory": os.path.abspath(directory), "records": rep["records"], "bytes": rep["bytes"],
            "segments": rep["segments"], "live_messages": rep["live"], "first_id": rep["first_id"] or None,
            "last_id": rep["last_id"] or None, "next_id": rep["next_id"], "puts": rep["puts"],
            "removes": rep["removes"], "torn_tail_bytes": rep["truncated_bytes"], "corrupt_ranges": rep["corrupt"]}


def verify(directory: str) -> tuple[bool, str]:
    """(ok, text): every record checked; a torn tail is reported but is not corruption."""
    rep = scan(directory, skip=False)
    if rep["rc"] == 0:
        tail = (f"; torn tail of {rep['truncated_bytes']} bytes at segment {rep['torn_seg']} offset {rep['torn_off']} "
                "(recovery cuts it)") if rep["torn"] else ""
        return True, f"ok: {rep['records']} records in {rep['segments']} segments, {rep['live']} live messages{tail}"
    return False, str(_scan_error(rep, os.path.abspath(directory)))


# -- create / open with journal= (shmq.queue calls this) ------------------------------------------
def make_core(spec, opts: JournalOptions, explicit_fsync, kind=_core.KIND_QUEUE, levels=0, max_wait_ns=0):
    """(attached binding object, created) for a named queue with journal=: a create recovers from
    the journal before anyone else uses the queue; a failed recovery leaves no queue behind.
    kind, levels, max_wait_ns: a PriorityQueue's (shmq.priority)."""
    from . import _names
    from ._handle import open_core
    from .errors import QueueNotFound
    from .stats import settings
    path = _names.path_of(spec.name)
    if not spec.create:
        core = open_core(path, spec.name)
        created = False
    else:
        prepare_dir(opts)
        core = _core.Core()
        created = core._create(path, kind, spec.flags | _core.F_JOURNAL, spec.capacity, spec.max_message,
                               spec.maxsize, spec.mode, spec.slots, spec.exist_ok, spec.ack, True,
                               levels=levels, max_wait_ns=max_wait_ns, journal=opts.core_dict())
    if not created:
        try:
            st = settings(core._raw_stats())
            if st["kind"] != kind:   # DESIGN §5.2: the class must match the segment's kind
                from .queue import _wrong_kind
                raise _wrong_kind(spec.name, st["kind"], kind)
            problems = _options.problems(spec.explicit, st, kind)
            if problems:
                raise ArgumentError(f"queue {spec.name!r} exists with other options: " + "; ".join(problems))
            check_existing(core, opts, explicit_fsync, spec.name)
        except BaseException:
            core._close()
            raise
        return core, False
    try:
        recover(core, spec.name, opts)
    except BaseException:
        core._close()
        try:
            os.unlink(path)   # a recovery that fails leaves no queue behind (DESIGN §7)
        except FileNotFoundError:
            pass
        raise
    return core, True


# -- asyncio sends with fsync="always": one waiter thread per process, one sync per batch ------
class _Durability:
    def __init__(self):
        self.cv = threading.Condition()
        self.pending = []          # (core, pos, loop, future)
        self.thread = None

    def add(self, core, pos, loop, fut):
        with self.cv:
            self.pending.append((core, pos, loop, fut))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="shmq-journal-durable", daemon=True)
                self.thread.start()
            self.cv.notify()

    def _run(self):
        while True:
            with self.cv:
                while not self.pending:
                    if not self.cv.wait(5.0):
                        if not self.pending:
                            self.thread = None
                            return
                batch, self.pending = self.pending, []
            by_core = {}
            for item in batch:
                by_core.setdefault(id(item[0]), []).append(item)
            for items in by_core.values():
                core = items[0][0]
                err = None
                try:
                    core._journal_wait(max(i[1] for i in items), None)   # one sync covers them all
                except BaseException as e:
                    err = e
                for _core_, _pos, loop, fut in items:
                    loop.call_soon_threadsafe(_settle, fut, err)


def _settle(fut, err):
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)


_durability = _Durability()


def durable_future(core, pos):
    """An asyncio future done when every journal record before pos is on disk."""
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    _durability.add(core, pos, loop, fut)
    return fut


def _durability_after_fork():
    global _durability
    _durability = _Durability()


os.register_at_fork(after_in_child=_durability_after_fork)
