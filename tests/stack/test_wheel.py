"""The package as its users get it: the lock files, and the wheel installed away from the repository.

The wheel test builds the wheel from what the Dockerfile's wheel stage copies, installs it with
--no-deps into a fresh venv in a temporary folder, and runs its `blogstream` command from a folder
outside the repository against a worker on the local stack. Downloading every dependency into that
venv would take minutes each run, so the venv reaches them through a .pth file naming the current
environment's site-packages; only a plain path goes in that file, so the editable install's hook
there (which would put the repository on sys.path) is never run, and `import streams` must find
the installed copy.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stack.harness import Outcomes, Pipeline, Simulators, summarize
from tests.integration.conftest import FAST

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PATCHED = ("faust-streaming", "aiokafka")  # streams/faust_fixes.py and the limiter patch their internals
SCHEMAS = sorted(p.name for p in (ROOT / "streams/contract/schemas").glob("*.avsc"))


def lock(name: str) -> dict[str, str]:
    """{canonical name: version} of a lock file; every requirement in it must be an exact pin."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{name}: an option in a lock file: {line}"
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"{name}: not an exact pin: {line}"
        pins[canonicalize_name(req.name)] = spec.version
    assert pins, f"{name} is empty"
    return pins


def assert_pinned(requirements: list[str], pins: dict[str, str], where: str) -> None:
    env = default_environment()
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{where} lacks {req.name} (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{where}: {name}=={pins[name]} is not {req}"


# --------------------------------------------------------------------------- the locks


def test_the_locks_pin_every_dependency_of_pyproject():
    runtime, test = lock("requirements.lock"), lock("requirements-test.lock")
    assert_pinned(PYPROJECT["project"]["dependencies"], runtime, "requirements.lock")
    assert_pinned(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"],
                  test, "requirements-test.lock")
    # the test lock is the service's lock plus the test extra, at the same versions
    assert {name: test.get(name) for name in runtime} == runtime


def test_faust_and_aiokafka_are_pinned_exactly_to_what_runs_here():
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    runtime = lock("requirements.lock")
    for name in PATCHED:
        (spec,) = declared[name].specifier
        assert spec.operator == "==", f"pyproject.toml must pin {name} exactly: {declared[name]}"
        assert runtime[name] == spec.version
        assert importlib.metadata.version(name) == spec.version, f"this environment runs another {name}"


def test_make_install_takes_the_lock_and_make_lock_writes_both():
    """(The Dockerfile's use of requirements.lock is checked in test_docker_compose.py.)"""
    makefile = (ROOT / "Makefile").read_text()
    rule = makefile.split(".venv/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "requirements-test.lock" in rule.splitlines()[0], "the install rule must depend on the lock"
    assert "-r requirements-test.lock" in rule and "--no-deps -e ." in rule
    target = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "-o requirements.lock" in target and "-o requirements-test.lock" in target
    assert "piptools compile" in makefile


# --------------------------------------------------------------------------- the wheel


def wheel_stage_sources() -> list[str]:
    """What the Dockerfile's wheel stage copies, so the test builds the image's wheel."""
    stage = (ROOT / "Dockerfile").read_text().split(" AS wheel", 1)[1].split("\nFROM ", 1)[0]
    return [s.rstrip("/") for line in re.findall(r"^COPY\s+(.+)$", stage, re.M) for s in line.split()[:-1]]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, wheel): the project's wheel installed with --no-deps into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in wheel_stage_sources():
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp / "dist"), str(src)])
    (wheel,) = (tmp / "dist").glob("blogstream-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = Path(run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_blogstream_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)])
    return venv, wheel


@pytest.fixture
def outside(tmp_path) -> tuple[Path, dict[str, str]]:
    """A working folder outside the repository and an environment that points nowhere into it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return folder, env


@pytest.mark.integration
def test_the_wheel_holds_the_schemas_and_imports_its_own_copy(installed, outside):
    venv, wheel = installed
    folder, env = outside
    with zipfile.ZipFile(wheel) as whl:
        shipped = sorted(Path(n).name for n in whl.namelist() if re.fullmatch(r"streams/contract/schemas/[^/]+\.avsc", n))
    assert shipped == SCHEMAS

    probe = run([str(venv / "bin/python"), "-c", (
        "import json, sys, streams, streams.contract as c\n"
        "from importlib.resources import files\n"
        "print(json.dumps({'file': streams.__file__, 'contract': c.__file__, 'path': sys.path,\n"
        "  'schemas': sorted(p.name for p in (files('streams.contract') / 'schemas').iterdir() if p.name.endswith('.avsc'))}))"
    )], cwd=folder, env=env)
    seen = json.loads(probe.stdout)
    site = str(venv / "lib")
    assert seen["file"].startswith(site) and seen["contract"].startswith(site), seen
    assert not any(p and Path(p).resolve() == ROOT for p in seen["path"]), "the repository is on sys.path"
    assert seen["schemas"] == SCHEMAS

    version = run([str(venv / "bin/blogstream"), "--version"], cwd=folder, env=env)
    assert PYPROJECT["project"]["version"] in version.stdout


@pytest.mark.integration
async def test_the_installed_command_submits_to_a_worker(installed, outside):
    venv, _ = installed
    folder, env = outside
    sim = Simulators.start(FAST)
    outcomes = await Outcomes.private()
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url)
    try:
        worker = pipeline.start_worker()
        await pipeline.wait_ready()
        site = f"{pipeline.name}-wheel"
        await outcomes.add_sites([site])
        requests = [pipeline.request(site, n) for n in range(3)]
        path = folder / "requests.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests))

        done = run([str(venv / "bin/blogstream"), "submit", "--file", path.name, "--worker", worker.url(), "--quiet"],
                   cwd=folder, env=env, timeout=120)
        assert f"submitted {len(requests)} request(s)" in done.stdout, done.stdout + done.stderr

        rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=120, workers=pipeline.workers)
        assert summarize(rows) == {"DONE": len(requests)}
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()
