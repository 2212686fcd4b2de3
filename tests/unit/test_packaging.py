"""The project's own files declare everything its tests need (CI runs them in a fresh venv)."""
import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# import name -> distribution name, where they differ
DIST = {"Cython": "cython", "yaml": "pyyaml", "prometheus_client": "prometheus-client"}
# subprocess-level needs of tests that do not show as imports
IMPLIED = {"tests/unit/test_sanitized_extension.py": ["Cython", "setuptools"],
           "tests/unit/test_stubs.py": ["mypy"]}


def _declared():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(r"^test\s*=\s*\[(.*?)\]", text, re.S | re.M)
    assert m, "pyproject.toml has no test extra"
    names = re.findall(r'"([A-Za-z0-9_.\-]+)', m.group(1))
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
    names += re.findall(r'"([A-Za-z0-9_.\-]+)', deps.group(1)) if deps else []
    return {n.lower().replace("_", "-") for n in names}


def _local_modules():
    mods = {"shmq", "conftest", "benchmarks"}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tests")):
        mods.update(f[:-3] for f in files if f.endswith(".py"))
    return mods


def _third_party_imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_every_module_the_tests_import_is_declared():
    declared, local = _declared(), _local_modules()
    missing = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tests")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, ROOT)
            for mod in list(_third_party_imports(path)) + IMPLIED.get(rel, []):
                if mod in sys.stdlib_module_names or mod in local:
                    continue
                if DIST.get(mod, mod).lower().replace("_", "-") not in declared:
                    missing.setdefault(mod, []).append(rel)
    assert not missing, f"imported by tests but not in the test extra of pyproject.toml: {missing}"


def test_ci_runs_the_readme_commands_in_a_fresh_venv():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "python3 -m venv" in ci and "activate" in ci, "CI must not run in the machine's own Python"
    for cmd in re.findall(r"```sh\n(.*?)\n```", readme, re.S):
        for part in cmd.split("&&"):
            assert part.strip() in ci, f"README command {part.strip()!r} is not run by .ci/run"
