"""Records already in the topics stay readable: fixtures written by the encoder before fastavro.

`fixtures/records.json` holds single-object Avro records written by the hand-written
encoder that preceded fastavro (commit 6b02738), for every record type and every writer
schema version (current, and records carrying a v1 BlogRequest), plus bytes from Java
and JSON requests, each with the value the old decoder returned. Never regenerate it:
add new fixtures when a schema version is added. A fixture's `decoded` value is what
the reader of its day returned: fields added to BlogRequest since then read as their
defaults (`as_read_now`): `priority` and `retry` in a BlogRequest, `retry` in a BlogResult.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams.contract import decode, decode_request, encode
from streams.contract.catalog import RECORD_NAMES, contract, fingerprint

FIXTURES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "fixtures" / "records.json").read_text("utf-8"))[
    "fixtures"
]


def defaults(record: str) -> dict[str, Any]:
    return {f["name"]: f["default"] for f in contract().reader(record)["fields"] if "default" in f}


def as_read_now(record: str, decoded: dict[str, Any]) -> dict[str, Any]:
    """`decoded` with the defaults of fields added after the fixture was written (to the record, and to
    the BlogRequest it carries)."""
    value = json.loads(json.dumps(decoded))
    for name, default in defaults(record).items():
        value.setdefault(name, default)
    request = value if record == "BlogRequest" else value.get("request")
    if request is not None:
        for name, default in defaults("BlogRequest").items():
            request.setdefault(name, default)
    return value


def label(fixture: dict[str, Any]) -> str:
    return f"{fixture['record']}-{fixture['writer']}-{fixture['hex'][20:32]}"


@pytest.mark.parametrize("fixture", FIXTURES, ids=label)
def test_fixture_decodes_to_what_the_old_decoder_returned(fixture: dict[str, Any]) -> None:
    data = bytes.fromhex(fixture["hex"])
    if fixture["fingerprint"] is None:  # a JSON request
        assert decode_request(data) == as_read_now("BlogRequest", fixture["decoded"])
    else:
        assert data[2:10].hex() == fixture["fingerprint"]
        assert decode(fixture["record"], data) == as_read_now(fixture["record"], fixture["decoded"])


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if f["fingerprint"] == fingerprint(f["record"]).hex()], ids=label
)
def test_current_version_is_encoded_byte_for_byte_as_before(fixture: dict[str, Any]) -> None:
    assert encode(fixture["record"], fixture["decoded"]) == bytes.fromhex(fixture["hex"])


def test_fixtures_cover_every_known_writer_schema() -> None:
    covered = {f["fingerprint"] for f in FIXTURES if f["fingerprint"] is not None}
    known = {fingerprint.hex() for fingerprint in contract().writers}
    assert covered == known, "a new schema version needs fixtures written with it"
    assert {f["record"] for f in FIXTURES} == set(RECORD_NAMES)
