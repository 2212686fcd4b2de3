"""The project's own files declare everything its tests need (CI runs them in a fresh venv)."""
import ast
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# import name -> distribution name, where they differ
DIST = {"Cython": "cython", "yaml": "pyyaml", "prometheus_client": "prometheus-client"}
# subprocess-level needs of tests that do not show as imports
IMPLIED = {"tests/unit/test_sanitized_extension.py": ["Cython", "setuptools"],
           "tests/unit/test_stubs.py": ["mypy"],
           "tests/unit/test_packaging.py": ["build", "auditwheel"]}


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


# -- building: the sdist holds everything needed to build, the wheel everything needed to run ------

def _source_files():
    """The project's own files (tracked or new, not ignored): what a clean clone has."""
    r = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"not a git checkout, cannot tell the project's files from build outputs: {r.stderr!r}")
    return [f for f in r.stdout.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python -m build` of a copy of the project (so the source tree gets no build outputs): the
    sdist first, then the wheel built from that sdist, which proves the sdist is complete."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for f in _source_files():
        os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(src, f))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHMQ_DEBUG", "SHMQ_SANITIZE")}
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"python -m build failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    # setuptools announces with a deadline what it will stop accepting: such a build breaks later
    dep = [ln for ln in (r.stdout + r.stderr).splitlines() if re.search(r"deprecat", ln, re.I)]
    assert not dep, "python -m build warns of deprecated configuration:\n" + "\n".join(dep)
    sdists = glob.glob(os.path.join(out, "shmq-*.tar.gz"))
    wheels = glob.glob(os.path.join(out, "shmq-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return sdists[0], wheels[0]


def _pyproject():
    tomllib = pytest.importorskip("tomllib")   # standard library from Python 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_the_sdist_holds_every_source_the_build_needs(built):
    sdist, _ = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    need = {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in"}
    for pattern in ("csrc/*.c", "csrc/*.h", "src/shmq/*.py", "src/shmq/*.pyx", "src/shmq/*.pxd",
                    "src/shmq/*.pyi", "src/shmq/py.typed", "src/shmq/_bench/*.py"):
        found = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern))}
        assert found, f"{pattern} matches nothing in the source tree"
        need |= found
    assert not need - names, f"missing from the sdist: {sorted(need - names)}"


def test_the_wheel_has_the_extension_the_stubs_and_the_metadata(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
        entry = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert any(re.fullmatch(r"shmq/_core\.cpython-[^/]*\.so", n) for n in names), sorted(names)
    assert {"shmq/py.typed", "shmq/_core.pyi", "shmq/__init__.py", "shmq/cli.py"} <= names
    assert "shmq = shmq.cli:main" in entry
    assert re.search(r"^Author(-email)?: \S", meta, re.M), "no author in the wheel's metadata"
    urls = re.findall(r"^Project-URL: ([^,]+), (https://\S+)$", meta, re.M)
    assert {"Homepage", "Source", "Issues", "Documentation"} <= {k for k, _ in urls}, urls
    assert "Requires-Python: >=3.9" in meta


def test_the_wheel_needs_no_shared_library_beyond_the_c_library(built):
    """What auditwheel repair would have to bundle into a manylinux wheel: nothing. A wheel built
    here is tagged linux_x86_64 and consistent with some manylinux tag (the one of this machine's
    glibc); cibuildwheel builds the published ones on manylinux_2_28."""
    _, wheel = built
    r = subprocess.run([sys.executable, "-m", "auditwheel", "show", "--json", wheel], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert not report["pure"]
    assert report["external_libs"] == {}, f"libraries a manylinux wheel would have to bundle: {report['external_libs']}"
    assert set(report["versioned_symbols"]) <= {"libc.so.6", "libpthread.so.0", "libm.so.6", "libdl.so.2", "librt.so.1"}
    assert re.fullmatch(r"manylinux_2_\d+_x86_64", report["overall_tag"]), report["overall_tag"]
    assert not report["unsupported_isa"]


def test_cibuildwheel_builds_manylinux_x86_64_wheels_for_every_supported_python():
    proj = _pyproject()
    cibw = proj["tool"]["cibuildwheel"]
    build = cibw["build"].split() if isinstance(cibw["build"], str) else cibw["build"]
    lowest = int(re.fullmatch(r">=3\.(\d+)", proj["project"]["requires-python"]).group(1))
    assert sorted(build) == sorted(f"cp3{m}-manylinux_x86_64" for m in range(lowest, 14))
    assert cibw["archs"] == ["x86_64"]
    assert cibw["manylinux-x86_64-image"].startswith("manylinux_2_")


def test_the_cibuildwheel_smoke_test_passes_against_the_installed_package(tmp_path):
    cmd = _pyproject()["tool"]["cibuildwheel"]["test-command"]
    assert cmd.startswith("python -c ") and "{" not in cmd   # cibuildwheel's placeholders are in braces
    code = shlex.split(cmd)[2]
    assert "put" in code and "get" in code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_the_readme_says_what_building_needs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for word in ("gcc", "Python headers", "x86_64", "cmpxchg16b", "/dev/shm", "futex"):
        assert word in readme, f"README.md does not mention {word!r} among the build requirements"
