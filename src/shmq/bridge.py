"""`shmq bridge SRC DEST`: forward an at-least-once queue between backends (shared memory and
Redis), at least once: a batch is acked at the source only after the destination accepted
every message of it, and each copy carries a dedup id derived from (source, message id), so a
bridge that crashes between the two steps and forwards the batch again doubles nothing (within
the destination's dedup_window)."""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Optional

from . import _codec, _core
from .errors import ArgumentError, Empty, Full

__all__ = ["Bridge", "parse_endpoint"]


def parse_endpoint(spec):
    """(name, backend) of "NAME" (the default backend: $SHMQ_BACKEND, else shared memory),
    "NAME@shm" or "NAME@redis://host:port/db" (also rediss://, unix://). Raises ValueError."""
    from . import _names, _redis
    name, at, url = spec.partition("@")
    _names.check_name(name)
    if not at:
        return name, None
    if url in ("shm", ""):
        return name, "shm"
    _redis.check_url(url, f"{spec!r}:")
    return name, url


class Bridge:
    """Forwards messages from an at-least-once queue to another queue (any backend).

    src/dest: open handles. Messages keep their body as stored (never unpickled here), their
    headers and priority; the source's delay and TTL are not carried over (the destination's
    defaults apply). A destination that is at-most-once gets put() (no dedup: a crash may
    double a batch there)."""

    def __init__(self, src, dest, batch=256, timeout=0.5):
        from .reliable import ReliableQueue
        if not isinstance(src, ReliableQueue):
            raise ArgumentError(f"bridge source {src.name!r} must be an at-least-once queue (ack=True): "
                                "an at-most-once get cannot be given back if the destination refuses it")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ArgumentError(f"bridge batch must be an int >= 1, got {batch!r}")
        self.src, self.dest, self.batch, self.timeout = src, dest, batch, timeout
        self.forwarded = 0
        self.batches = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._src_redis = getattr(src, "_redis", False)
        self._dest_redis = getattr(dest, "_redis", False)
        self._dest_ack = isinstance(dest, ReliableQueue)

    def stop(self):
        self._stop.set()

    @property
    def stopping(self):
        return self._stop.is_set()

    def _take(self):
        """Up to `batch` raw records (body as (kind, payload)); [] when none came in time."""
        try:
            if self._src_redis:
                return self.src._take(self.batch, True, self.timeout, raw=True)
            core = self.src._core
            recs = [core._receive(True, self.timeout, True)]
            while len(recs) < self.batch:
                try:
                    recs.append(core._receive(False, 0, True))
                except Empty:
                    break
            return recs
        except Empty:
            return []

    def _forward(self, recs):
        src_name = self.src.name
        if self._dest_redis and self._dest_ack:
            from ._redis.queue import _io, group_field, pack_args
            from .message import dedup_key
            d = self.dest
            args = [5]
            for (kind, payload), hdr, mid, _ts, _count, prio, _tok, *_grp in recs:
                grp = _grp[0] if _grp and _grp[0] is not None else (None, 0)   # a group stays a group
                args += pack_args(kind, bytes(payload), hdr, prio, -1, -1, dedup_key(f"bridge:{src_name}:{mid}").hex(),
                                  group_field(*grp))
            with _io(d):
                out = d._scripts["send"](keys=[d._p], args=args)   # one script for the batch
            if any(out[i] == 2 for i in range(1, len(out), 3)):
                raise Full(f"bridge destination {d.name!r} is full (maxsize)")
            return
        from .message import dedup_key
        for (kind, payload), hdr, mid, _ts, _count, prio, _tok, *_grp in recs:   # shm adds the group
            if self._dest_ack:      # shared memory
                grp = _grp[0] if _grp and _grp[0] is not None else (None, 0)   # a group stays a group
                if grp[0] is not None and self.dest._core._flags_value & _core.F_JOURNAL:
                    grp = (None, 0)   # a journaled queue takes no groups yet (docs/guide/groups.md)
                self.dest._core._send(payload, hdr, prio, _core.USE_DEFAULT, _core.USE_DEFAULT,
                                      dedup_key(f"bridge:{src_name}:{mid}"), True, None, kind, grp[0], grp[1])
            else:                   # at most once, either backend: no dedup there
                self.dest.put(_codec.decode(kind, memoryview(payload), False, mid))

    def _ack(self, recs):
        if self._src_redis:
            self.src._settle("ack", 0, [r[6] for r in recs])
        else:
            self.src._core._ack_many([(r[6], r[2]) for r in recs])

    def _give_back(self, recs):
        for r in recs:
            try:
                self.src._nack(r[6], r[2], True, 0)
            except Exception:
                pass          # its lease ended meanwhile: it is back already

    def run_once(self):
        """Forward one batch; returns how many messages (0: none came within the timeout)."""
        recs = self._take()
        if not recs:
            return 0
        try:
            self._forward(recs)
        except BaseException:
            self._give_back(recs)          # delivered again at once, counted as a failed delivery
            raise
        self._ack(recs)
        self.forwarded += len(recs)
        self.batches += 1
        return len(recs)

    def run(self, max_messages: Optional[int] = None, idle_exit: Optional[float] = None,
            progress: Optional[float] = None, out=sys.stderr):
        """Forward until stop() (SIGTERM/SIGINT in the CLI), max_messages, or idle_exit seconds
        with nothing to forward. progress: print a line every that many seconds."""
        idle_since = time.monotonic()
        last_report = time.monotonic()
        while not self._stop.is_set():
            if max_messages is not None and self.forwarded >= max_messages:
                break
            if max_messages is not None:
                self.batch = max(1, min(self.batch, max_messages - self.forwarded))
            n = self.run_once()
            now = time.monotonic()
            if n:
                idle_since = now
            elif idle_exit is not None and now - idle_since >= idle_exit:
                break
            if progress and now - last_report >= progress:
                last_report = now
                print(self.report_line(), file=out, flush=True)
        if progress:
            print(self.report_line() + (" (stopped)" if self._stop.is_set() else ""), file=out, flush=True)
        return self.counts()

    def counts(self):
        el = max(1e-9, time.monotonic() - self.started)
        return dict(source=self.src.name, destination=self.dest.name, forwarded=self.forwarded,
                    batches=self.batches, seconds=round(el, 3), rate=round(self.forwarded / el, 1))

    def report_line(self):
        c = self.counts()
        return f"shmq bridge: {c['forwarded']} forwarded in {c['batches']} batches, {c['rate']:.0f}/s"


def install_signal_handlers(bridge):
    """SIGTERM and SIGINT stop the bridge after the batch in hand (acked or given back)."""
    def handler(signum, frame):
        bridge.stop()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handler)


def cmd_bridge(args):
    """The `shmq bridge` command (shmq.cli): open both ends, forward, print the counts."""
    import json
    from .queue import Queue
    sname, sback = parse_endpoint(args.src)
    dname, dback = parse_endpoint(args.dest)
    if (sname, sback) == (dname, dback):
        raise ArgumentError("bridge source and destination are the same queue")
    src = Queue(sname, backend=sback)
    try:
        if args.create:
            dest = Queue(dname, create=True, exist_ok=True, ack=True, backend=dback)
        else:
            dest = Queue(dname, backend=dback)
        try:
            b = Bridge(src, dest, batch=args.batch)
            install_signal_handlers(b)
            counts = b.run(max_messages=args.max, idle_exit=args.idle_exit, progress=args.progress)
        finally:
            dest.close()
    finally:
        src.close()
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"forwarded {counts['forwarded']} messages from {args.src} to {args.dest} in {counts['batches']} "
              f"batches ({counts['rate']:.0f}/s)")
    return 0
