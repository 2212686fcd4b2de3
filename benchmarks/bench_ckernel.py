"""Benchmark: the C core alone, 64 B, 1 producer process -> 1 consumer process (csrc/tests/bench_ring.c).

    python -m benchmarks.bench_ckernel [--quick] [--json FILE] [--messages N] [--repeats R]

Builds csrc/tests/bench_ring.c with the C core (csrc/*.c) using gcc into a temporary directory
and runs it once per placement: the scheduler's choice, pinned to two CPUs, both on one CPU.
It lives in the source tree, not in the wheel: nothing the package installs compiles C. Reports
the best and median rate of each placement with the machine (CPU model, cores, Python); asserts
nothing."""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Skip(Exception):
    """The C benchmark cannot run here (the reason is printed)."""


def _cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def host_info():
    try:
        from shmq._bench.harness import host_info as info   # the same machine report as `shmq bench`
        return info()
    except ImportError:
        import platform
        return {"cpu_model": platform.processor() or "?", "cores": os.cpu_count(), "usable_cpus": _cpus(),
                "python": sys.version.split()[0], "implementation": platform.python_implementation(),
                "platform": platform.platform()}


def ckernel(messages, repeats, root=ROOT):
    """{"compile": command, "runs": [{mode, msgs, best_msgs_per_s, median_msgs_per_s, command}]}."""
    src = os.path.join(root, "csrc", "tests", "bench_ring.c")
    if not os.path.exists(src):
        raise Skip(f"{src} not found (run from the source tree)")
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Skip("gcc not found")
    with tempfile.TemporaryDirectory(prefix="shmq-bench-c-") as tmp:
        exe = os.path.join(tmp, "bench_ring")
        cmd = [gcc, "-std=gnu11", "-O2", "-mcx16", "-o", exe, src]
        cmd += sorted(glob.glob(os.path.join(root, "csrc", "*.c")))
        cmd += ["-lpthread"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("bench_ring.c failed to compile:\n" + r.stderr)
        out = []
        for mode in ("any", "pinned", "same"):
            if mode == "pinned" and len(_cpus()) < 2:
                continue
            args = [exe, str(messages), str(repeats), mode]
            r = subprocess.run(args, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"bench_ring failed ({r.returncode}):\n{r.stdout}{r.stderr}")
            for line in r.stdout.splitlines():
                if line.startswith("RESULT "):
                    kv = dict(x.split("=", 1) for x in line.split()[1:])
                    out.append({"mode": mode, "msgs": int(kv["msgs"]), "best_msgs_per_s": float(kv["best"]),
                                "median_msgs_per_s": float(kv["median"]), "command": " ".join(args)})
        return {"compile": " ".join(cmd), "runs": out}


def _rate(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def report(res):
    m = res["machine"]
    out = ["# C core alone (csrc/tests/bench_ring.c), 64 B, 1 producer process -> 1 consumer process", "",
           f"- CPU: {m['cpu_model']}, {m['cores']} cores (usable: {m['usable_cpus']})",
           f"- Python (reporting only): {m['implementation']} {m['python']} on {m['platform']}", ""]
    if res.get("skipped"):
        out.append(f"skipped: {res['skipped']}")
        return "\n".join(out)
    out += ["| placement | msgs per run | best msg/s | median msg/s |", "|---|---:|---:|---:|"]
    for r in res["ckernel"]["runs"]:
        out.append(f"| {r['mode']} | {r['msgs']} | {_rate(r['best_msgs_per_s'])} | {_rate(r['median_msgs_per_s'])} |")
    best = max((r["best_msgs_per_s"] for r in res["ckernel"]["runs"]), default=0)
    out += ["", f"DESIGN section 9 goal, MPMC >= 20 M msg/s: best {_rate(best)}msg/s "
            f"({'met' if best >= 20e6 else 'NOT met'})", "", f"built with: `{res['ckernel']['compile']}`"]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000,000 messages, one run per placement")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--messages", type=int, metavar="N", help="messages per run (default 5,000,000)")
    ap.add_argument("--repeats", type=int, metavar="R", help="runs per placement (default 3)")
    a = ap.parse_args(argv)
    n = a.messages or (2_000_000 if a.quick else 5_000_000)
    reps = a.repeats or (1 if a.quick else 3)
    res = {"machine": host_info(), "quick": a.quick, "ckernel": None, "skipped": None}
    try:
        res["ckernel"] = ckernel(n, reps)
    except Skip as e:
        res["skipped"] = str(e)
    print(report(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
