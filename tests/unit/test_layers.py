"""DESIGN §1: the C files call each other downward only (no cycle between files), and the queue
knows nothing of the kinds layered over it."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")


def _symbols(tmp_path):
    gcc, nm = shutil.which("gcc") or shutil.which("cc"), shutil.which("nm")
    if not gcc or not nm:
        pytest.fail("gcc and nm are needed to check the C layering")
    defs, undef = {}, {}
    for src in sorted(glob.glob(os.path.join(CSRC, "*.c"))):
        f = os.path.basename(src)
        obj = str(tmp_path / (f + ".o"))
        r = subprocess.run([gcc, "-std=gnu11", "-mcx16", "-O1", "-c", "-I", CSRC, src, "-o", obj],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{f} does not compile alone:\n{r.stderr}"
        rows = [line.split() for line in subprocess.run([nm, obj], capture_output=True, text=True).stdout.splitlines()]
        defs[f] = {r[-1] for r in rows if len(r) == 3 and r[1] in "TDBR"}
        undef[f] = {r[-1] for r in rows if r and r[0] == "U"}
    return defs, undef


def _cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_c_files_form_a_dag(tmp_path):
    defs, undef = _symbols(tmp_path)
    owner = {s: f for f, ds in defs.items() for s in ds}
    graph = {f: {owner[u] for u in us if u in owner and owner[u] != f} for f, us in undef.items()}
    cycles = _cycles(graph)
    detail = {f: sorted(graph[f]) for c in cycles for f in c}
    assert not cycles, f"C files call each other in a circle: {cycles}; edges: {detail}"


def test_cycle_checker_finds_a_cycle():
    # the checker itself can fail: a two-file cycle and a three-file one
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_queue_knows_no_kind_above_it():
    for f in ("queue.c", "queue.h", "queue_int.h", "segment.c", "participants.c", "lock.c"):
        text = open(os.path.join(CSRC, f)).read()
        assert "SHMQ_F_ACK" not in text, f"{f} branches on at-least-once"
        assert "lease.h" not in text and "dedup.h" not in text, f"{f} includes a layer above it"
