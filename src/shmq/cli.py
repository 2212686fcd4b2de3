"""The shmq command line: list, inspect and remove queues; run the benchmark."""
import argparse
import datetime
import json
import os
import sys
import time

from . import __version__, _codec, _core, _latency, _names
from .errors import MessageTooLargeError, QueueClosedError, QueueNotFound, ShmqError
from .stats import complete_stats, entry_kind, inspect_path, kind_name, scan

# argparse (standard library): the CLI needs subcommands, --help and exit codes, nothing a
# third-party library would add enough to justify a runtime dependency.

from ._sweep import judge as _gc_one

PEEK_MAX_BYTES = 1 << 24     # --bytes: the prefix is copied into one buffer first


def _show(name):
    """A name as it may be printed to a terminal: anyone can plant a /dev/shm entry whose name
    holds escape sequences or newlines (to forge rows or drive the terminal), so text output
    shows anything non-printable, and spaces, as Python escapes."""
    if name.isprintable() and " " not in name:
        return name
    return name.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


def _count(limit=None):
    """An argparse type: an int >= 0 (and <= limit), else a usage error (exit status 2)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
        if limit is not None and v > limit:
            raise argparse.ArgumentTypeError(f"must be <= {limit}, got {v}")
        return v
    return parse


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


_PATH_PREFIX = _names.SHM_DIR + "/" + _names.PREFIX


def _queue_name(text):
    """An argparse type: a queue name, or its file's path as `ls -l /dev/shm` shows it (pasted)."""
    return text[len(_PATH_PREFIX):] if text.startswith(_PATH_PREFIX) and len(text) > len(_PATH_PREFIX) else text


def _resolve(name):
    if name.startswith(_names.ANON_MARK):
        return _names.SHM_DIR + "/" + _names.PREFIX + name
    _names.check_name(name)
    return _names.path_of(name)


def _fmt_age(seconds):
    """An age as an operator reads it: 4.2s, 3m07s, 2h05m, 3d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ack(st):
    return st is not None and bool(st["flags"] & _core.F_ACK)


def _kind(qi, st):
    """The KIND column: an at-least-once queue is `ack`, its dead-letter queue `dead-letter`
    (an ack queue that names no dead-letter queue of its own: only dead-letter queues do)."""
    if _ack(st):
        ack = "ack" if st["dead_letter"] else "dead-letter"
        return f"priority-{ack}" if qi.kind == "priority" else ack
    return qi.kind


def _held(st):
    """(IN_FLIGHT, DELAYED, AGE) cells: `-` where a queue has no such thing."""
    if st is None:
        return "-", "-", "-"
    age = _fmt_age(st["oldest_age_s"]) if st["depth"] else "-"
    if not _ack(st):
        return "-", "-", age
    return str(st["in_flight"]), str(st["delayed"]), age


def _sub_rows(st, head):
    """A topic's named subscriptions under its row: DEPTH is the subscription's lag, AGE
    says what it missed; where the table has latency columns, the subscription's own (publish
    to delivery, receive to ack) and, for ack ones, IN_FLIGHT."""
    rows = []
    for name, s in sorted(((st or {}).get("subscriptions") or {}).items()):
        row = ["-"] * len(head)
        kind = "ack" if s.get("ack") else s["on_slow"]
        row[0], row[1], row[2] = f"  {_show(name)}", f"sub:{kind}", str(s["lag"])
        row[head.index("AGE")] = f"missed={s['missed']}"
        row[head.index("CONSUMERS")] = str(s["consumers"])
        for col, key in (("WAIT_P50", "wait_p50_s"), ("WAIT_P99", "wait_p99_s"), ("PROC_P50", "process_p50_s"),
                         ("PROC_P99", "process_p99_s")):
            if col in head:
                row[head.index(col)] = _fmt_secs(s.get(key))
        if "IN_FLIGHT" in head and s.get("ack"):
            row[head.index("IN_FLIGHT")] = str(s["in_flight"])
        rows.append(tuple(row))
    return rows
def _depth(qi, st):
    """The DEPTH cell: a priority queue's adds its non-empty levels, highest first: `5 (9:2 0:3)`."""
    if qi.depth is None:
        return "-"
    levels = (st or {}).get("levels")
    if not levels or not qi.depth:
        return str(qi.depth)
    return f"{qi.depth} (" + " ".join(f"{p}:{n}" for p, n in reversed(list(enumerate(levels))) if n) + ")"


def _ls_rows(entries):
    rows = []
    for qi, st in entries:
        dash = lambda v: "-" if v is None else v  # noqa: E731
        rows.append((_show(qi.name), _kind(qi, st), _depth(qi, st), *_held(st),
                     "-" if qi.bytes_used is None else _fmt_bytes(qi.bytes_used),
                     str(dash(qi.consumers)), str(dash(qi.producers)), str(dash(qi.attached))))
        rows += _sub_rows(st, _LS_HEAD)
    return rows


_LS_HEAD = ("NAME", "KIND", "DEPTH", "IN_FLIGHT", "DELAYED", "AGE", "BYTES", "CONSUMERS", "PRODUCERS", "ATTACHED")


def _ls_json(qi, st):
    row = qi._asdict()
    ack = _ack(st)
    if st is not None and "subscriptions" in st:
        row.update(subscriptions=st["subscriptions"], next_seq=st["next_seq"])
    row.update(at_least_once=ack, dead_letter_queue=ack and not st["dead_letter"],
               in_flight=st["in_flight"] if ack else None, delayed=st["delayed"] if ack else None,
               oldest_age_s=None if st is None else st["oldest_age_s"])
    if st is not None and "levels" in st:
        row.update(levels=st["levels"], max_wait=st["max_wait"])
    return row


def _table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head] + rows]


def _backend(args):
    """The Redis URL ls/stat/peek look at (--backend, else $SHMQ_BACKEND), or None: shared memory."""
    from ._redis import pick
    return pick(getattr(args, "backend", None))


def cmd_ls(args):
    url = _backend(args)
    if url:
        from ._redis.inspect import scan as redis_scan
        entries = redis_scan(url)
    else:
        entries = scan()
    if args.json:
        print(json.dumps([_ls_json(qi, st) for qi, st in entries], indent=2))
        return 0
    for line in _table(_LS_HEAD, _ls_rows(entries)):
        print(line)
    return 0


def _iso(ts):
    """Seconds since the epoch as ISO 8601 in local time with its offset."""
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


# options whose 0 means "not set" (no limit, no TTL, ...): shown as None by `stat`
_UNSET_IF_ZERO = ("maxsize", "default_ttl")
_ACK_ONLY = ("visibility_timeout", "max_deliveries", "default_delay", "default_ttl", "dedup_window",
             "dedup_capacity", "dead_letter")
_FLAG_NAMES = ((_core.F_ACK, "ack"), (_core.F_GROWABLE, "growable"), (_core.F_JOINABLE, "joinable"),
               (_core.F_RAW, "raw"))


_STAT_NAMES = ("name", "dead_letter")     # names anyone could have chosen: shown escaped


def _stat_text(st):
    """stat's values as an operator reads them: the mode in octal, times in ISO 8601, None for
    an option that is not set."""
    out = dict(st)
    ack = bool(st["flags"] & _core.F_ACK)
    out["mode"] = oct(st["mode"])
    out["created_at"] = _iso(st["created_at"]) if st["created_at"] else None
    names = [n for f, n in _FLAG_NAMES if st["flags"] & f]
    out["flags"] = f"{st['flags']} ({', '.join(names)})" if names else str(st["flags"])
    if st["flags"] & _core.F_GROWABLE:
        out["capacity"] = None      # unbounded: grows on demand
    for k in _UNSET_IF_ZERO:
        if not st[k]:
            out[k] = None
    for k in _ACK_ONLY:
        if not ack or (k == "dead_letter" and not st[k]):
            out[k] = None            # at-most-once queues have no such option; a DLQ names none
    return out


def cmd_stat(args):
    url = _backend(args)
    if url:
        from ._redis.inspect import open_any
        h = open_any(args.name, url)
        try:
            st = h.stats()
        finally:
            h.close()
    else:
        path = _resolve(args.name)
        try:
            st = inspect_path(path)
        except FileNotFoundError:
            raise QueueNotFound(2, f"no such queue: {args.name!r}", path) from None
    st["name"] = args.name
    st["kind"] = kind_name(st)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        text = _stat_text(st)
        width = max(map(len, text))
        for k in sorted(text):
            v = text[k]
            print(f"{k:{width}}  {_show(v) if k in _STAT_NAMES and v is not None else v}")
    return 0


def cmd_rm(args):
    rc = 0
    for name in args.names:
        try:
            os.unlink(_resolve(name))
            print(f"removed {name}")
        except FileNotFoundError:
            print(f"shmq rm: no such queue: {name!r}", file=sys.stderr)
            rc = 1
        except OSError as e:     # a directory planted under the name, or not ours to remove: go on
            print(f"shmq rm: cannot remove {name!r}: {e.strerror or e}", file=sys.stderr)
            rc = 1
    return rc


def _open(name, attach):
    """A handle on the named queue: attached (to take messages) or an inspector (to look)."""
    path = _resolve(name)
    c = _core.Core()
    try:
        c._open(path, -1, attach)
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {name!r}", path) from None
    if attach and c._flags_value & _core.F_JOURNAL:
        from . import journal   # what this handle removes (purge, redrive) is recorded as removed
        journal.wait_ready(c, name)
    return c


def _headers(block):
    try:
        return repr(_codec.decode_headers(block))   # repr escapes what could drive the terminal
    except Exception:
        return "?"                                  # a header block we cannot read: say so, go on


def _printable(prefix):
    """The printable ASCII characters of a payload prefix, '.' for the others (and for spaces,
    so the line stays one token per field): a pickled "hello" shows ...hello.. Never unpickles."""
    return "".join(chr(b) if 0x21 <= b <= 0x7e else "." for b in prefix)


def _peek_json(info, ack, unpickle):
    out = {"id": info["id"], "time": _iso(info["timestamp"]), "type": info["kind"], "size": info["size"],
           "hex": info["prefix"].hex(), "text": _printable(info["prefix"])}
    if "priority" in info:      # a queue's message (a topic's has none)
        out["priority"] = info["priority"]
    if ack:
        out.update(state=info["state"], deliveries=info["delivery_count"], headers=_headers(info["headers"]))
    if unpickle:
        out["value"] = repr(info["value"]) if info["decoded"] else None
    return out


def _peek_line(info, ack, unpickle):
    prio = f" priority={info['priority']}" if "priority" in info else ""
    line = (f"id={info['id']}{prio} time={_iso(info['timestamp'])} type={info['kind']} "
            f"size={info['size']} "
            f"hex={info['prefix'].hex()} text={_printable(info['prefix'])}")
    if ack:
        line = (f"state={info['state']} deliveries={info['delivery_count']} headers={_headers(info['headers'])} "
                + line)
    if unpickle:
        line += f" value={info['value']!r}" if info["decoded"] else " value=?"
    return line


def _peek_messages(c, args, ack):
    """The messages peek shows: the next args.n ready ones in delivery order, then (an
    at-least-once queue) up to args.n in flight and args.n delayed, in-flight first, by id."""
    out = []
    for i in range(args.n):
        info = c._inspect(False, i, args.bytes, args.unpickle)
        if info is None:
            break
        out.append(info)
    if ack and args.n:        # those no consumer can take now: no ring holds them, so a walk
        held, pos, counts = [], 0, {"in-flight": 0, "delayed": 0}
        while min(counts.values()) < args.n:
            info = c._inspect(True, pos, args.bytes, args.unpickle)
            if info is None:
                break
            pos = info["next"]
            if counts.get(info["state"], args.n) < args.n:
                counts[info["state"]] += 1
                held.append(info)
        out += sorted(held, key=lambda m: (m["state"] != "in-flight", m["id"]))
    return out


def _peek_topic(c, args, st):
    """A topic's messages by sequence number, from --seq (default: the oldest in the log)."""
    first = args.seq if args.seq is not None else st["oldest_seq"]
    msgs = []
    for seq in range(first, min(first + args.n, st["next_seq"])):
        m = _core._topic_peek(c, seq)
        if m is None:
            continue
        seq, ts, kind, hdr, payload = m
        info = {"id": seq, "timestamp": ts / 1e9, "kind": _codec.KIND_NAMES.get(kind, "?"), "size": len(payload),
                "prefix": payload[:args.bytes], "decoded": False, "value": None}
        if args.unpickle:
            try:
                info["value"] = _codec.decode(kind, memoryview(payload), False, seq)
                info["decoded"] = True
            except Exception:
                pass
        info["headers"] = hdr
        msgs.append(info)
    if args.json:
        out = []
        for m in msgs:
            j = _peek_json(m, False, args.unpickle)
            j["seq"] = j.pop("id")
            j["headers"] = _headers(m["headers"])
            out.append(j)
        print(json.dumps(out, indent=1))
        return 0
    print(f"{_show(args.name)}: topic, seq {st['oldest_seq']}..{st['next_seq'] - 1} in the log, "
          f"{len(st['subscriptions'])} named subscription(s)")
    for m in msgs:
        print("seq" + _peek_line(m, False, args.unpickle)[2:] + f" headers={_headers(m['headers'])}")
    if not msgs and args.n:
        print("(empty)")
    return 0


def _peek_redis(args, url):
    from ._redis.inspect import peek
    st, kind, msgs = peek(args.name, url, args.n, args.bytes, args.unpickle, args.seq)
    ack = kind == "ack"
    if args.json:
        out = []
        for m in msgs:
            j = _peek_json(m, ack, args.unpickle)
            if kind == "topic":
                j["seq"] = j.pop("id")
                j["headers"] = _headers(m["headers"])
            out.append(j)
        print(json.dumps(out, indent=1))
        return 0
    if kind == "topic":
        print(f"{_show(args.name)}: topic, seq {st['oldest_seq']}..{st['next_seq'] - 1} in the log, "
              f"{len(st['subscriptions'])} named subscription(s)")
        for m in msgs:
            print("seq" + _peek_line(m, False, args.unpickle)[2:] + f" headers={_headers(m['headers'])}")
    else:
        _print_peeked_queue(args, st, msgs, ack)
    if not msgs and args.n:
        print("(empty)")
    return 0


def cmd_peek(args):
    url = _backend(args)
    if url:
        return _peek_redis(args, url)
    c = _open(args.name, attach=False)
    try:
        st = complete_stats(c, c._raw_stats())
        if st["kind"] == _core.KIND_TOPIC:
            return _peek_topic(c, args, st)
        ack = _ack(st)
        msgs = _peek_messages(c, args, ack)
    finally:
        c._close()
    if args.json:
        print(json.dumps([_peek_json(m, ack, args.unpickle) for m in msgs], indent=1))
        return 0
    _print_peeked_queue(args, st, msgs, ack)
    if not msgs and args.n:
        print("(empty)")
    return 0


def _print_peeked_queue(args, st, msgs, ack):
    """shmq peek's table for a queue or priority queue (either backend)."""
    if ack:
        print(f"{_show(args.name)}: {st['depth']} ready, {st['in_flight']} in flight, {st['delayed']} delayed")
    else:
        print(f"{_show(args.name)}: {st['depth']} queued")
    if "levels" in st:
        print("ready per priority, highest first: "
              + " ".join(f"{p}:{n}" for p, n in reversed(list(enumerate(st["levels"])))))
    for m in msgs:
        print(_peek_line(m, ack, args.unpickle))


def cmd_purge(args):
    c = _open(args.name, attach=True)
    try:
        n = c._purge(args.all)
        st = complete_stats(c, c._raw_stats())
    finally:
        c._close()
    print(f"purged {n} message(s) from {_show(args.name)}"
          + (" (ready, in flight and delayed)" if args.all and _ack(st) else ""))
    if _ack(st) and not args.all and (st["in_flight"] or st["delayed"]):
        print(f"left {st['in_flight']} in flight and {st['delayed']} delayed (purge --all discards them too)")
    return 0


class _RedriveError(ShmqError, ValueError):
    """A redrive that cannot go on (exit status 1: not a usage error)."""


def _redrive_target(name, cache):
    """The at-least-once queue `name`, opened once per run."""
    from .queue import Queue
    from .reliable import ReliableQueue
    q = cache.get(name)
    if q is None:
        try:
            q = Queue(name)
        except FileNotFoundError:
            raise _RedriveError(f"no such queue: {name!r}") from None
        except ValueError as e:     # a source header naming no valid queue (--to is checked before)
            raise _RedriveError(str(e)) from None
        if not isinstance(q, ReliableQueue):
            q.close()
            raise _RedriveError(f"{name!r} is not an at-least-once queue (created without ack=True): "
                                "messages cannot be redriven to it")
        cache[name] = q
    return q


def cmd_redrive(args):
    from .queue import Queue
    from .reliable import ReliableQueue, _redrive
    try:
        dlq = Queue(args.name)
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {args.name!r}", _resolve(args.name)) from None
    targets = {}
    try:
        if not isinstance(dlq, ReliableQueue):
            raise _RedriveError(f"{args.name!r} is not a dead-letter queue (it is an at-most-once queue)")
        if dlq.dead_letter_queue and args.to is None:
            raise _RedriveError(f"{args.name!r} is not a dead-letter queue (its own is "
                                f"{dlq.dead_letter_queue!r}); pass --to QUEUE to move its messages anyway")
        if args.to is not None:
            _names.check_name(args.to)      # a bad --to is a usage error (exit status 2)
            _redrive_target(args.to, targets)
        try:
            n = _redrive(dlq, args.to, args.max, 0.0, lambda name: _redrive_target(name, targets),
                         lambda mid: _RedriveError(f"message {mid} in {args.name!r} has no x-dead-letter-source "
                                                   "header: pass --to QUEUE to say where it goes"))
        except MessageTooLargeError as e:
            where = f" {args.to!r}" if args.to else ""
            raise _RedriveError(f"a message does not fit its target queue{where} ({e}); it stays in "
                                f"{args.name!r}") from None
    finally:
        for q in targets.values():
            q.close()
        dlq.close()
    print(f"moved {n} message(s) from {_show(args.name)}")
    return 0


_TOP_HEAD = ("NAME", "KIND", "DEPTH", "IN_FLIGHT", "DELAYED", "AGE", "BYTES", "IN/s", "OUT/s", "CONSUMERS",
             "PRODUCERS", "LAG", "ACK/s", "ERR/s", "WAIT_P50", "WAIT_P99", "PROC_P50", "PROC_P99")
_ERR_KEYS = ("nacked", "redelivered", "dead_lettered", "expired")


def _fmt_secs(s):
    """A latency cell: "-" for none, else us / ms / s with three significant digits."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g}us"
    if s < 1.0:
        return f"{s * 1e3:.3g}ms"
    return f"{s:.3g}s"


def _window_quantiles(cur, prev, base):
    """(p50, p99) of the samples taken since the previous refresh (bucket differences), the
    queue's whole life on the first one; (None, None) when there was none."""
    if not cur or not cur.get(base):
        return None, None
    counts = cur[base]
    if prev and prev.get(base) and len(prev[base]) == len(counts):
        counts = [max(0, a - b) for a, b in zip(counts, prev[base])]
    return _latency.quantile(counts, 0.5), _latency.quantile(counts, 0.99)


def _top_row(qi, st, now, p):
    """The cells of one queue and what the next refresh compares with."""
    hist = st.get("histograms")
    errs = sum(st.get(k, 0) for k in _ERR_KEYS)
    rin = rout = rack = rerr = 0.0
    if p:
        dt = max(now - p[0], 1e-9)
        rin, rout = (st["enqueued"] - p[1]) / dt, (st["dequeued"] - p[2]) / dt
        rack, rerr = (st.get("acked", 0) - p[3]) / dt, (errs - p[4]) / dt
    w50, w99 = _window_quantiles(hist, p[5] if p else None, "wait")
    p50, p99 = _window_quantiles(hist, p[5] if p else None, "process")
    lag = st["depth"] + st.get("in_flight", 0) + st.get("delayed", 0)   # messages not settled yet
    cells = (_show(qi.name), _kind(qi, st), _depth(qi._replace(depth=st["depth"]), st), *_held(st), _fmt_bytes(st["bytes_used"]),
             f"{rin:.0f}", f"{rout:.0f}", str(st["consumers"]), str(st["producers"]), str(lag),
             f"{rack:.0f}" if _ack(st) else "-", f"{rerr:.0f}" if _ack(st) else "-",
             _fmt_secs(w50), _fmt_secs(w99), _fmt_secs(p50), _fmt_secs(p99))
    nums = {"depth": st["depth"], "in_flight": st.get("in_flight", 0), "delayed": st.get("delayed", 0), "lag": lag,
            "oldest_age_s": st["oldest_age_s"], "in_per_s": rin, "out_per_s": rout, "ack_per_s": rack,
            "errors_per_s": rerr, "wait_p50_s": w50, "wait_p99_s": w99, "process_p50_s": p50, "process_p99_s": p99}
    return cells, nums, (now, st["enqueued"], st["dequeued"], st.get("acked", 0), errs, hist)


def cmd_top(args):
    prev = {}
    it = 0
    try:
        while args.iterations is None or it < args.iterations:
            now = time.monotonic()
            rows = []
            figures = []
            for qi, st in scan():
                if st is None:  # not a queue, or unreadable: listed, with no counters
                    rows.append((_show(qi.name), qi.kind) + ("-",) * (len(_TOP_HEAD) - 2))
                    figures.append({})
                    continue
                cells, nums, prev[qi.name] = _top_row(qi, st, now, prev.get(qi.name))
                rows.append(cells)
                figures.append(nums)
                subs = _sub_rows(st, _TOP_HEAD)     # a topic's named subscriptions, under it
                rows += subs
                figures += [{}] * len(subs)
            if args.json:                          # one JSON object per refresh, one per line
                print(json.dumps({"time": time.time(), "queues": [{**dict(zip(_TOP_HEAD, r)), "figures": f}
                                                                  for r, f in zip(rows, figures)]}))
                sys.stdout.flush()
                it += 1
                if args.iterations is None or it < args.iterations:
                    time.sleep(args.interval)
                continue
            if sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")
            print(time.strftime("%H:%M:%S"), f"{len(rows)} queue(s)")
            for line in _table(_TOP_HEAD, rows):
                print(line)
            sys.stdout.flush()
            it += 1
            if args.iterations is None or it < args.iterations:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_gc(args):
    """Remove anonymous segments whose creator is dead and that no live process holds, and
    temporary creation files of dead creators. Each entry is judged on its own: one that is
    not a regular file, names an impossible pid or may not be removed is reported and skipped."""
    removed = skipped = failed = 0
    try:
        files = sorted(os.listdir(_names.SHM_DIR))
    except FileNotFoundError:
        files = []
    for f in files:
        if not f.startswith(_names.PREFIX):
            continue
        name = f[len(_names.PREFIX):]
        ok, msg, err = _gc_one(name, _show(name), os.path.join(_names.SHM_DIR, f))
        removed += ok
        failed += err
        skipped += bool(msg) and not ok and not err
        if msg:
            print(("shmq gc: " + msg) if err else msg, file=sys.stderr if err else sys.stdout)
    print(f"{removed} segment(s) removed" + (f", {skipped} skipped" if skipped else "")
          + (f", {failed} could not be removed" if failed else ""))
    return 1 if failed else 0


def cmd_metrics(args):
    """Print render() once (--once), or serve it over HTTP at /metrics until Ctrl-C or SIGTERM."""
    import signal
    from . import metrics
    if args.once:
        sys.stdout.write(metrics.render())
        return 0
    server = metrics.make_server(args.host, args.port)

    def stop(signum, frame):
        raise KeyboardInterrupt          # serve_forever() returns; the socket is closed below
    old = signal.signal(signal.SIGTERM, stop)
    try:
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"serving http://{shown}:{port}/metrics (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass                             # the way to stop a server: not a failure
    finally:
        signal.signal(signal.SIGTERM, old)
        server.server_close()
    return 0


def cmd_bench(args, rest):
    from . import _bench
    return _bench.main(rest)


def build_parser():
    p = argparse.ArgumentParser(prog="shmq", description="Inspect and manage shmq queues in /dev/shm. "
                                "A queue is named by its name or by its file's path (/dev/shm/shmq.NAME).")
    p.add_argument("--version", action="version", version=f"shmq {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("ls", help="list queues",
                       description="List every queue: name, kind (ack, dead-letter for at-least-once queues), depth, "
                                   "in-flight and delayed messages, age of the oldest ready message, bytes, "
                                   "consumers, producers, attached handles.")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--backend", default=None, metavar="URL",
                   help="a Redis server (redis://host:port/db, rediss://, unix://; default $SHMQ_BACKEND, "
                        "'shm' for shared memory)")
    s = sub.add_parser("stat", help="show one queue's counters", description="Show the counters of one queue.")
    s.add_argument("name", type=_queue_name)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--backend", default=None, metavar="URL",
                   help="a Redis server (redis://host:port/db, rediss://, unix://; default $SHMQ_BACKEND, "
                        "'shm' for shared memory)")
    s = sub.add_parser("rm", help="remove queues", description="Remove queues by name (attached processes keep working).")
    s.add_argument("names", nargs="+", metavar="NAME", type=_queue_name)
    s = sub.add_parser("peek", help="show queued messages without taking them",
                       description="Show id, time, type, size and a hex prefix of the next messages, without consuming "
                                   "them; for an at-least-once queue also their state, delivery count and headers, "
                                   "and the messages in flight and delayed. Unpickles only with --unpickle: "
                                   "unpickling runs code chosen by whoever can write the queue.")
    s.add_argument("name", type=_queue_name)
    s.add_argument("-n", type=_count(), default=10,
                   help="how many messages (default 10); of an at-least-once queue, of each state")
    s.add_argument("--bytes", type=_count(PEEK_MAX_BYTES), default=32,
                   help=f"hex prefix length (default 32, at most {PEEK_MAX_BYTES})")
    s.add_argument("--unpickle", action="store_true", help="also show the decoded value (runs pickle: trust the writers)")
    s.add_argument("--seq", type=_count(), default=None,
                   help="a topic: the first sequence number to show (default: the oldest in the log)")
    s.add_argument("--json", action="store_true", help="print JSON (a list of messages)")
    s.add_argument("--backend", default=None, metavar="URL",
                   help="a Redis server (redis://host:port/db, rediss://, unix://; default $SHMQ_BACKEND, "
                        "'shm' for shared memory)")
    s = sub.add_parser("purge", help="discard every queued message",
                       description="Take and discard every queued message. With --all, an at-least-once queue's "
                                   "in-flight and delayed messages too: their consumers' leases end (a later ack "
                                   "raises LeaseExpiredError) and nothing goes to the dead-letter queue.")
    s.add_argument("name", type=_queue_name)
    s.add_argument("--all", action="store_true", help="also the in-flight and delayed messages (at-least-once queues)")
    s = sub.add_parser("top", help="live view of queues with rates", description="Refresh `ls` with rates, lag and "
                       "latency (since the previous refresh) until Ctrl-C.")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    s.add_argument("--iterations", type=_count(), default=None, help="stop after N refreshes")
    s.add_argument("--json", action="store_true", help="print one JSON object per refresh, one per line")
    s = sub.add_parser("redrive", help="move dead letters back",
                       description="Move messages of a dead-letter queue back to the queue each came from "
                                   "(x-dead-letter-source), or to --to. Acked in the dead-letter queue only after "
                                   "the copy was sent, de-duplicated by id.")
    s.add_argument("name", help="the dead-letter queue", type=_queue_name)
    s.add_argument("--to", default=None, type=_queue_name, metavar="QUEUE",
                   help="send every message to this queue instead")
    s.add_argument("--max", type=_count(), default=None, help="move at most this many")
    sub.add_parser("gc", help="remove anonymous queues of dead processes",
                   description="Remove anonymous segments whose creator is dead and that no live process holds.")
    s = sub.add_parser("metrics", help="serve Prometheus metrics of every queue",
                       description="Serve every queue of this user in the Prometheus text format at "
                                   "http://HOST:PORT/metrics (read without attaching), until Ctrl-C or SIGTERM; "
                                   "with --once, print it and exit.")
    s.add_argument("--port", type=_count(65535), default=9108, help="TCP port (default 9108; 0 picks a free one)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--once", action="store_true", help="print the metrics to stdout and exit")
    s = sub.add_parser("bridge", help="forward a queue to another backend (shared memory <-> Redis)",
                       description="Forward the at-least-once queue SRC to DEST until SIGTERM/Ctrl-C (or --max, "
                                   "--idle-exit). An endpoint is NAME (the default backend: $SHMQ_BACKEND, else shared "
                                   "memory), NAME@shm, or NAME@redis://host:port/db (also rediss://, unix://). Each "
                                   "batch is acked at SRC only after DEST accepted it; copies carry a dedup id, so a "
                                   "bridge that crashes and restarts doubles nothing. See docs/guide/redis.md.")
    s.add_argument("src", metavar="SRC")
    s.add_argument("dest", metavar="DEST")
    s.add_argument("--batch", type=_count(100000), default=256, help="messages per batch (default 256)")
    s.add_argument("--max", type=_count(), default=None, help="stop after forwarding this many")
    s.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="stop when nothing came for this long")
    s.add_argument("--progress", type=float, default=None, metavar="SECONDS",
                   help="print the counts to stderr every SECONDS")
    s.add_argument("--create", action="store_true", help="create DEST (ack=True) if it does not exist")
    s.add_argument("--json", action="store_true", help="print the final counts as JSON")
    sub.add_parser("bench", help="benchmark against multiprocessing.Queue and installed peers", add_help=False,
                   description="Run the benchmark harness (see `shmq bench --help`).")
    s = sub.add_parser("journal", help="inspect a queue's journal directory",
                       description="stat: records, bytes, segments, live messages, first/last id. verify: check "
                                   "every record (exit code 1 on corruption). The queue need not be open.")
    s.add_argument("action", choices=("stat", "verify"))
    s.add_argument("dir", help="the journal directory (journal= of the queue)")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def cmd_journal(args):
    from . import journal
    if args.action == "stat":
        st = journal.stat(args.dir)
        if args.json:
            print(json.dumps(st, indent=2, sort_keys=True))
        else:
            width = max(map(len, st))
            for k in sorted(st):
                print(f"{k:{width}}  {st[k]}")
        return 0
    ok, text = journal.verify(args.dir)
    if args.json:
        print(json.dumps({"ok": ok, "report": text}))
    else:
        print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _cmd_bridge(args):
    from .bridge import cmd_bridge
    return cmd_bridge(args)


def _quiet_stdout():
    """The reader of our output went away (`shmq ls | head -1`): what is left to print goes
    nowhere, so neither we nor the interpreter's flush at exit report a broken pipe."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, AttributeError, ValueError):
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rc = _main(argv)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return 0   # the reader stopped reading: not a failure of the command
    except KeyboardInterrupt:
        return 130


def _main(argv):
    parser = build_parser()
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    try:
        return {"ls": cmd_ls, "stat": cmd_stat, "rm": cmd_rm, "gc": cmd_gc, "peek": cmd_peek, "purge": cmd_purge,
                "top": cmd_top, "redrive": cmd_redrive, "metrics": cmd_metrics, "journal": cmd_journal,
                "bridge": _cmd_bridge}[args.cmd](args)
    except BrokenPipeError:
        raise                       # main() ends quietly
    except (_RedriveError, MessageTooLargeError, QueueClosedError) as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 1                    # ValueErrors, but not usage errors: the command could not be done
    except ValueError as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 2
    except (ShmqError, OSError) as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
