"""Fixtures for the operations tests: promtool (from Debian's prometheus package, `make prometheus`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"


def find_tool(name: str) -> str:
    """The tool's path; skips when it is missing, unless CI is set: there the project must install it."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing on CI: `make prometheus` installs it (apt-get install -y prometheus)")
    pytest.skip(f"{name} not installed (make prometheus)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


def run_promtool(promtool: str, *args: str, stdin: str | None = None, cwd: Path = PROMETHEUS_DIR) -> str:
    """Run promtool; fail the test with its output unless it exits 0. Returns stdout + stderr."""
    done = subprocess.run([promtool, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output
