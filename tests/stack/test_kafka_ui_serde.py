"""The Kafka UI serde's test vectors (kafka-ui-serde/) are what the Python encoder writes today.

The Java tests (`make test-java`) decode kafka-ui-serde/src/test/resources/vectors.json;
this test regenerates it in memory with the current contract and compares, so a schema
or encoder change can't leave the Java side testing stale bytes. Fix a failure with
`.venv/bin/python kafka-ui-serde/make_test_vectors.py`, then `make test-java`.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERDE = ROOT / "kafka-ui-serde"
VECTORS = SERDE / "src" / "test" / "resources" / "vectors.json"

pytestmark = pytest.mark.skipif(shutil.which("mvn") is None, reason="mvn is not installed: the Java serde is not built here")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_test_vectors", SERDE / "make_test_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_vectors_match_the_python_encoder() -> None:
    committed = VECTORS.read_text(encoding="utf-8")
    fresh = _generator().render()
    if committed != fresh:
        old = {v["name"]: v for v in json.loads(committed)["vectors"]}
        new = {v["name"]: v for v in json.loads(fresh)["vectors"]}
        changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
        pytest.fail(
            f"{VECTORS.relative_to(ROOT)} is stale ({len(changed)} vectors differ, e.g. {changed[:3]}): "
            "run .venv/bin/python kafka-ui-serde/make_test_vectors.py, then make test-java"
        )


def test_vectors_cover_every_record_and_an_older_version() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    assert {v["record"] for v in vectors} == {"BlogRequest", "BlogDraft", "BlogIllustrated", "BlogResult"}
    assert any(v["writer"] != "current" for v in vectors), "no record written with an older schema version"
    for vector in vectors:
        data = bytes.fromhex(vector["hex"])
        assert data[:2] == b"\xc3\x01" and data[2:10].hex() == vector["fingerprint"], vector["name"]
