"""stack/harness.py: the workers a test or benchmark starts run the code of the tree it was started from."""
from __future__ import annotations

import os
import subprocess
import sys

from stack.harness import ROOT, Pipeline


def test_a_worker_imports_this_tree_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = Pipeline(name="runtest").env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    # What the worker's interpreter then imports, started from outside the tree as `faust` is.
    found = subprocess.run(
        [sys.executable, "-c", "import streams; print(streams.__file__)"],
        env=env, cwd="/", capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert found == str(ROOT / "streams" / "__init__.py")
