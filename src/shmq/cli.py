"""The shmq command line: list, inspect and remove queues; run the benchmark."""
import argparse
import json
import os
import re
import sys
import time

from . import _core, _names
from .errors import CorruptQueueError, IncompatibleQueueError, QueueNotFound, ShmqError

# argparse (standard library): the CLI needs subcommands, --help and exit codes, nothing a
# third-party library would add enough to justify a runtime dependency.

_TMP_RE = re.compile(r"~c(\d+)\.\d+\Z")
_ANON_RE = re.compile(r"@(\d+)-[0-9a-f]+\Z")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries():
    """(name, path) of every queue segment in /dev/shm (temporary creation files excluded)."""
    try:
        files = sorted(os.listdir(_names.SHM_DIR))
    except FileNotFoundError:
        return []
    out = []
    for f in files:
        if f.startswith(_names.PREFIX) and "~" not in f:
            out.append((f[len(_names.PREFIX):], os.path.join(_names.SHM_DIR, f)))
    return out


def _inspect(path):
    """Stats of a segment without attaching to it (inspection never disturbs participants)."""
    c = _core.Core()
    c._open(path, -1, False)
    try:
        return c._raw_stats()
    finally:
        c._close()


def _kind_name(st):
    kinds = {_core.KIND_QUEUE: "queue", _core.KIND_PRIORITY: "priority", _core.KIND_TOPIC: "topic"}
    k = kinds.get(st["kind"], "?")
    if st["flags"] & _core.F_JOINABLE:
        k = "joinable"
    return k


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


def cmd_ls(args):
    rows = []
    for name, path in _entries():
        try:
            st = _inspect(path)
            rows.append((name, _kind_name(st), str(st["depth"]), _fmt_bytes(st["bytes_used"]),
                         str(st["consumers"]), str(st["producers"]), str(st["attached"])))
        except (CorruptQueueError, IncompatibleQueueError) as e:
            rows.append((name, "corrupt" if isinstance(e, CorruptQueueError) else "incompatible", "-", "-", "-", "-", "-"))
        except OSError as e:
            rows.append((name, f"unreadable ({e.strerror})", "-", "-", "-", "-", "-"))
    if args.json:
        keys = ("name", "kind", "depth", "bytes", "consumers", "producers", "attached")
        print(json.dumps([dict(zip(keys, r)) for r in rows], indent=2))
        return 0
    head = ("NAME", "KIND", "DEPTH", "BYTES", "CONSUMERS", "PRODUCERS", "ATTACHED")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    for r in [head] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())
    return 0


def cmd_stat(args):
    path = _resolve(args.name)
    try:
        st = _inspect(path)
    except FileNotFoundError:
        raise QueueNotFound(2, f"no such queue: {args.name!r}", path) from None
    st["name"] = args.name
    st["kind"] = _kind_name(st)
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
    return rc


def cmd_gc(args):
    """Remove anonymous segments whose creator is dead and that no live process holds, and
    temporary creation files of dead creators."""
    removed = 0
    try:
        files = sorted(os.listdir(_names.SHM_DIR))
    except FileNotFoundError:
        files = []
    for f in files:
        if not f.startswith(_names.PREFIX):
            continue
        path = os.path.join(_names.SHM_DIR, f)
        name = f[len(_names.PREFIX):]
        m = _TMP_RE.search(name)
        if m:
            if not _pid_alive(int(m.group(1))):
                os.unlink(path)
                print(f"removed {name} (temporary file of dead creator {m.group(1)})")
                removed += 1
            continue
        m = _ANON_RE.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            st = _inspect(path)
            if st["attached"]:
                continue
        except (ShmqError, OSError):
            pass  # a corrupt anonymous segment of a dead creator is garbage too
        try:
            os.unlink(path)
            print(f"removed {name} (anonymous queue of dead creator {m.group(1)})")
            removed += 1
        except FileNotFoundError:
            pass
    print(f"{removed} segment(s) removed")
    return 0


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
        return {"ls": cmd_ls, "stat": cmd_stat, "rm": cmd_rm, "gc": cmd_gc}[args.cmd](args)
    except ValueError as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 2
    except (ShmqError, OSError) as e:
        print(f"shmq {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
