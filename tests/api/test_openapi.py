"""docs/openapi.json is the document workers serve, and it describes every route they register.

The served document is `streams.api.openapi.document()` (GET /api/openapi.json answers it
as it is; tests/api/test_schemathesis.py fetches it from a running worker and compares
again). Regenerate the file with `.venv/bin/python -m streams.api.openapi > docs/openapi.json`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from streams.api import openapi
from streams.api.access import ACCESS, MUTATING
from streams.contract import check_request

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"


def test_the_committed_document_is_the_generated_one():
    assert COMMITTED.read_text(encoding="utf-8") == openapi.text(), (
        "docs/openapi.json is out of date: .venv/bin/python -m streams.api.openapi > docs/openapi.json"
    )


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the worker registers (Faust's own pages come at start, not from us)."""
    code = ("import json, streams; app = streams.app; "
            "print(json.dumps(sorted({(r.method, r.resource.canonical) for r in app.web.web_app.router.routes()})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    return {(m, p) for m, p in json.loads(out.stdout.strip().splitlines()[-1]) if m not in ("HEAD", "OPTIONS")}


def test_every_registered_route_is_described_and_guarded():
    routes = registered_routes()
    described = {(method.upper(), path) for path, ops in openapi.document()["paths"].items() for method in ops}
    assert routes == described
    assert set(ACCESS) == described  # streams/api/access.py knows every route's token
    assert len(described) == 18


def test_each_operation_says_its_token_and_what_every_route_of_its_kind_answers():
    for path, ops in openapi.document()["paths"].items():
        for method, op in ops.items():
            access = ACCESS[(method.upper(), path)]
            schemes = {name for requirement in op["security"] for name in requirement}
            assert schemes == {None: set(), "intake": {"intakeToken", "adminToken"}, "admin": {"adminToken"}}[access.token]
            assert ("401" in op["responses"]) == (access.token is not None), (method, path)
            if method.upper() in MUTATING:
                assert {"403", "415"} <= set(op["responses"]), (method, path)
            assert ("requestBody" in op) == access.body, (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert "Error" in json.dumps(schema) or schema["$ref"].split("/")[-1] in openapi.SCHEMAS


def validator(name: str) -> Draft202012Validator:
    """A validator for one of the document's schemas (its $refs resolve within the document)."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": openapi.document()["components"]})


def test_every_schema_is_valid_json_schema_2020_12():
    for name, schema in openapi.SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
    assert openapi.document()["openapi"].startswith("3.1")


GOOD = {"site_id": "shop-1", "topic": "How to choose summer sandals"}


@pytest.mark.parametrize("request_", [
    GOOD,
    {**GOOD, "request_id": "a.b:c_d-1", "keywords": ["sandals", "summer"], "language": "en-US", "tone": "calm",
     "target_words": 100, "requested_at": 1_700_000_000_000, "audience": None},
    {**GOOD, "target_words": 5000, "language": "es-419", "audience": "<b>runners</b>", "topic": "x" * 300},
])
def test_requests_the_schema_takes_the_contract_takes(request_):
    assert list(validator("BlogRequest").iter_errors(request_)) == []
    record, problems = check_request({"request_id": "r1", "requested_at": 1_700_000_000_000, **request_})
    assert problems == [] and record is not None


@pytest.mark.parametrize("field, value", [
    ("site_id", "has space"), ("site_id", ""), ("topic", ""), ("topic", "x" * 301), ("topic", "line\nbreak"),
    ("keywords", ["k"] * 21), ("keywords", [""]), ("keywords", "a,b"), ("language", "english"), ("tone", "t" * 41),
    ("target_words", 99), ("target_words", 5001), ("target_words", "800"), ("target_words", True),
    ("target_words", 800.5), ("requested_at", 1), ("audience", "a" * 201), ("request_id", "x" * 129),
    ("colour", "red"),
])
def test_requests_the_schema_refuses_the_contract_refuses(field, value):
    request_ = {**GOOD, "request_id": "r1", "requested_at": 1_700_000_000_000, field: value}
    assert list(validator("BlogRequest").iter_errors(request_)) != []
    assert check_request(request_)[1] != []


@pytest.mark.parametrize("controls, ok", [
    ({"weight": 0.01}, True), ({"weight": 100}, True), ({"max_in_flight": 1000, "paused": True}, True),
    ({"max_queued": 100_000}, True), ({}, False), ({"weight": 0}, False), ({"weight": 101}, False),
    ({"max_in_flight": 1.5}, False), ({"max_queued": 0}, False), ({"paused": "yes"}, False), ({"colour": 1}, False),
])
def test_site_controls_schema_has_the_stores_ranges(controls, ok):
    from streams.api.sites import parse_controls

    assert (list(validator("SiteControls").iter_errors(controls)) == []) == ok
    parsed, errors = parse_controls(controls)
    assert (not errors and bool(parsed)) == ok
