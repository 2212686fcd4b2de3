"""Every ```python snippet of docs/guide/*.md runs to completion against the installed package
and leaves nothing in /dev/shm.

A snippet is run on its own (each in a fresh interpreter, from a temporary directory, as
test_examples.py runs the examples), so it must import what it uses and close or unlink the
queues it makes. A snippet that starts with ``>>>`` is run as a doctest, so its shown output is
checked too. The one way out is a fence whose info string is ``python no-run: <reason>``: the
snippet is not run, and the reason is required (it says why to the reader of the page too).
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "docs", "guide")
SHM = "/dev/shm"

# A fence: optional indentation (snippets inside list items), three backticks, the info string.
_FENCE = re.compile(r"^( *)```(.*)$")


def snippets(text):
    """[(line number, info string, code)] of every fenced block of a markdown text."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info, start, body = m.group(1), m.group(2).strip(), i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        out.append((start, info, "\n".join(body) + "\n"))
    return out


def _pages():
    """(name as shown, path) of the guide's pages and the README, whose example is a snippet too."""
    pages = [(p, os.path.join(GUIDE, p)) for p in sorted(os.listdir(GUIDE)) if p.endswith(".md")]
    return pages + [("../../README.md", os.path.join(ROOT, "README.md"))]


def _guide_snippets():
    found = []
    for page, path in _pages():
        with open(path) as f:
            for line, info, code in snippets(f.read()):
                # every Python-looking fence, so that a ```py or ```pycon one cannot slip past the run
                if info.split(":")[0].split()[:1] in (["python"], ["py"], ["python3"], ["pycon"], ["ipython"]):
                    found.append(pytest.param(page, line, info, code, id=f"{os.path.basename(page)}:{line}"))
    return found


SNIPPETS = _guide_snippets()


def _segments():
    try:
        return {n for n in os.listdir(SHM) if n.startswith("shmq.")}
    except FileNotFoundError:
        return set()


def test_the_extractor_sees_every_kind_of_fence():
    text = textwrap.dedent("""\
        ```python
        a = 1
        ```
        - item:

          ```python no-run: needs a second host
          b = 2
          ```
        ```sh
        ls
        ```
        """)
    got = snippets(text)
    assert [(info, code) for _, info, code in got] == [
        ("python", "a = 1\n"), ("python no-run: needs a second host", "b = 2\n"), ("sh", "ls\n")]


def test_the_guide_has_snippets():
    pages = {p.values[0] for p in SNIPPETS}
    assert {"index.md", "dropin.md", "named-queues.md", "at-least-once.md", "monitoring.md"} <= pages


def _docs():
    """Every markdown page a user gets: README.md and docs/**.md."""
    out = [os.path.join(ROOT, "README.md")]
    for dirpath, _, files in os.walk(os.path.join(ROOT, "docs")):
        out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".md")]
    return out


def test_no_page_cites_the_design_document():
    """Users do not have DESIGN.md: a page states the rule or the reason itself."""
    cites = []
    for path in _docs():
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if re.search(r"DESIGN|§|\bsection \d", line):
                    cites.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not cites, "pages that cite the design document:\n" + "\n".join(cites)


def test_errors_page_lists_every_public_exception():
    import shmq
    with open(os.path.join(GUIDE, "errors.md")) as f:
        text = f.read()
    exceptions = [n for n in shmq.__all__ if isinstance(getattr(shmq, n), type)
                  and issubclass(getattr(shmq, n), BaseException)]
    assert "LeaseExpiredError" in exceptions
    missing = [n for n in exceptions if f"| `{n}` |" not in text and f"| `{n}` itself |" not in text]
    assert not missing, f"errors.md has no row saying when these are raised: {missing}"
    assert "not raised" not in text, "errors.md says an exception is never raised"


def run_snippet(code, tmp_path):
    """(completed process, names of shmq.* files it left in /dev/shm, which are removed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHMQ_CRASH_AT")}
    if code.lstrip().startswith(">>>"):
        path = tmp_path / "snippet.txt"
        cmd = [sys.executable, "-m", "doctest", str(path)]
    else:
        path = tmp_path / "snippet.py"
        cmd = [sys.executable, str(path)]
    path.write_text(code)
    before = _segments()
    try:
        # From a temporary directory, so the source tree cannot shadow the installed package.
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        left = _segments() - before
        for s in left:      # clean up even when the caller's assertions fail
            try:
                os.unlink(os.path.join(SHM, s))
            except OSError:
                pass
    return r, left


def test_the_runner_sees_a_failure_a_wrong_output_and_a_leak(tmp_path):
    r, _ = run_snippet("import shmq\nq = shmq.Queue()\nq.get(timeout=0.01)\n", tmp_path)
    assert r.returncode != 0 and "Empty" in r.stderr
    r, _ = run_snippet(">>> 1 + 1\n3\n", tmp_path)
    assert r.returncode != 0
    r, left = run_snippet("import shmq\nshmq.Queue('snippet-leak', create=True, capacity='64KiB')\n", tmp_path)
    assert r.returncode == 0 and left == {"shmq.snippet-leak"}
    assert "shmq.snippet-leak" not in _segments()


@pytest.mark.parametrize("page,line,info,code", SNIPPETS)
def test_guide_snippet_runs_and_cleans_up(page, line, info, code, tmp_path):
    where = f"docs/guide/{page}, the snippet at line {line}"
    if info != "python":
        m = re.fullmatch(r"python no-run:\s*(\S.*)", info)
        assert m, (f"{where}: unknown fence info string {info!r}; use ```python, or "
                   "```python no-run: <why it cannot run on its own>")
        pytest.skip(f"{where} is marked no-run: {m.group(1)}")
    r, left = run_snippet(code, tmp_path)
    assert r.returncode == 0, (f"{where} exited with {r.returncode}\n--- code:\n{code}\n"
                               f"--- stdout:\n{r.stdout}\n--- stderr:\n{r.stderr}")
    assert not left, f"{where} left files in /dev/shm: {sorted(left)} (close or unlink its queues)"
