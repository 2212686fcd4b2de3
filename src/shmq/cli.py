"""The shmq command line: list, inspect and remove queues; run the benchmark."""
import argparse
import json
import os
import sys
import time

from . import _core, _names
from .errors import QueueNotFound, ShmqError
from .stats import entry_kind, inspect_path, kind_name, list_queues, scan

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


def _resolve(name):
    if name.startswith(_names.ANON_MARK):
        return _names.SHM_DIR + "/" + _names.PREFIX + name
    _names.check_name(name)
    return _names.path_of(name)


def _ls_rows():
    rows = []
    for qi in list_queues():
        dash = lambda v: "-" if v is None else v  # noqa: E731
        rows.append((_show(qi.name), qi.kind, str(dash(qi.depth)),
                     "-" if qi.bytes_used is None else _fmt_bytes(qi.bytes_used),
                     str(dash(qi.consumers)), str(dash(qi.producers)), str(dash(qi.attached))))
    return rows


_LS_HEAD = ("NAME", "KIND", "DEPTH", "BYTES", "CONSUMERS", "PRODUCERS", "ATTACHED")


def _table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head] + rows]


def cmd_ls(args):
    if args.json:
        print(json.dumps([qi._asdict() for qi in list_queues()], indent=2))
        return 0
    for line in _table(_LS_HEAD, _ls_rows()):
        print(line)
    return 0


def cmd_stat(args):
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
        for k in sorted(st):
            print(f"{k:16} {st[k]}")
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
    return c


def cmd_peek(args):
    c = _open(args.name, attach=False)
    try:
        shown = 0
        for i in range(args.n):
            info = c._peek(i, args.bytes)
            if info is None:
                break
            mid, ts, kind, size, prefix = info
            line = f"id={mid} time={time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} type={kind} size={size} hex={prefix.hex()}"
            if args.unpickle:
                line += f" value={c._peek_body(i)!r}"
            print(line)
            shown += 1
        if not shown:
            print("(empty)")
    finally:
        c._close()
    return 0


def cmd_purge(args):
    c = _open(args.name, attach=True)
    try:
        n = c._purge()
    finally:
        c._close()
    print(f"purged {n} message(s) from {args.name}")
    return 0


def cmd_redrive(args):
    from .queue import Queue, redrive
    try:
        dlq = Queue(args.name)
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {args.name!r}", _resolve(args.name)) from None
    try:
        n = redrive(dlq, to=args.to, max_messages=args.max)
    finally:
        dlq.close()
    print(f"moved {n} message(s) from {args.name}")
    return 0


def cmd_top(args):
    prev = {}
    it = 0
    try:
        while args.iterations is None or it < args.iterations:
            now = time.monotonic()
            rows = []
            for qi, st in scan():
                if st is None:  # not a queue, or unreadable: listed, with no counters
                    rows.append((_show(qi.name), qi.kind, "-", "-", "-", "-", "-", "-"))
                    continue
                p = prev.get(qi.name)
                rin = rout = 0.0
                if p:
                    dt = max(now - p[0], 1e-9)
                    rin, rout = (st["enqueued"] - p[1]) / dt, (st["dequeued"] - p[2]) / dt
                prev[qi.name] = (now, st["enqueued"], st["dequeued"])
                rows.append((_show(qi.name), qi.kind, str(st["depth"]), _fmt_bytes(st["bytes_used"]), f"{rin:.0f}",
                             f"{rout:.0f}", str(st["consumers"]), str(st["producers"])))
            if sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")
            print(time.strftime("%H:%M:%S"), f"{len(rows)} queue(s)")
            for line in _table(("NAME", "KIND", "DEPTH", "BYTES", "IN/s", "OUT/s", "CONSUMERS", "PRODUCERS"), rows):
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


def cmd_bench(args, rest):
    from . import _bench
    return _bench.main(rest)


def build_parser():
    p = argparse.ArgumentParser(prog="shmq", description="Inspect and manage shmq queues in /dev/shm.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("ls", help="list queues", description="List every queue: name, kind, depth, bytes, consumers, producers.")
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("stat", help="show one queue's counters", description="Show the counters of one queue.")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("rm", help="remove queues", description="Remove queues by name (attached processes keep working).")
    s.add_argument("names", nargs="+", metavar="NAME")
    s = sub.add_parser("peek", help="show queued messages without taking them",
                       description="Show id, type, size and a hex prefix of the next messages, without consuming them. "
                                   "Unpickles only with --unpickle: unpickling runs code chosen by whoever can write the queue.")
    s.add_argument("name")
    s.add_argument("-n", type=_count(), default=10, help="how many messages (default 10)")
    s.add_argument("--bytes", type=_count(PEEK_MAX_BYTES), default=32,
                   help=f"hex prefix length (default 32, at most {PEEK_MAX_BYTES})")
    s.add_argument("--unpickle", action="store_true", help="also show the decoded value (runs pickle: trust the writers)")
    s = sub.add_parser("purge", help="discard every queued message", description="Take and discard every queued message.")
    s.add_argument("name")
    s = sub.add_parser("top", help="live view of queues with rates", description="Refresh `ls` with in/out rates until Ctrl-C.")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    s.add_argument("--iterations", type=int, default=None, help="stop after N refreshes")
    s = sub.add_parser("redrive", help="move dead letters back",
                       description="Move messages of a dead-letter queue back to the queue each came from "
                                   "(x-dead-letter-source), or to --to. Acked in the dead-letter queue only after "
                                   "the copy was sent, de-duplicated by id.")
    s.add_argument("name", help="the dead-letter queue")
    s.add_argument("--to", default=None, help="send every message to this queue instead")
    s.add_argument("--max", type=int, default=None, help="move at most this many")
    sub.add_parser("gc", help="remove anonymous queues of dead processes",
                   description="Remove anonymous segments whose creator is dead and that no live process holds.")
    sub.add_parser("bench", help="benchmark against multiprocessing.Queue and installed peers", add_help=False,
                   description="Run the benchmark harness (see `shmq bench --help`).")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    try:
        return {"ls": cmd_ls, "stat": cmd_stat, "rm": cmd_rm, "gc": cmd_gc, "peek": cmd_peek, "purge": cmd_purge,
                "top": cmd_top, "redrive": cmd_redrive}[args.cmd](args)
    except ValueError as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 2
    except (ShmqError, OSError) as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
