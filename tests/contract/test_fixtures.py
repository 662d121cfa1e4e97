"""Records already in the topics stay readable: fixtures written by the encoder before fastavro.

`fixtures/records.json` holds single-object Avro records written by the hand-written
encoder that preceded fastavro (commit 6b02738), for every record type and every writer
schema version (current, and records carrying a v1 BlogRequest), plus bytes from Java
and JSON requests, each with the value the old decoder returned. Never regenerate it:
add new fixtures when a schema version is added.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams.contract import decode, decode_request, encode
from streams.contract.catalog import RECORD_NAMES, contract

FIXTURES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "fixtures" / "records.json").read_text("utf-8"))[
    "fixtures"
]


def label(fixture: dict[str, Any]) -> str:
    return f"{fixture['record']}-{fixture['writer']}-{fixture['hex'][20:32]}"


@pytest.mark.parametrize("fixture", FIXTURES, ids=label)
def test_fixture_decodes_to_what_the_old_decoder_returned(fixture: dict[str, Any]) -> None:
    data = bytes.fromhex(fixture["hex"])
    if fixture["fingerprint"] is None:  # a JSON request
        assert decode_request(data) == fixture["decoded"]
    else:
        assert data[2:10].hex() == fixture["fingerprint"]
        assert decode(fixture["record"], data) == fixture["decoded"]


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f["writer"] == "current"], ids=label)
def test_current_version_is_encoded_byte_for_byte_as_before(fixture: dict[str, Any]) -> None:
    assert encode(fixture["record"], fixture["decoded"]) == bytes.fromhex(fixture["hex"])


def test_fixtures_cover_every_known_writer_schema() -> None:
    covered = {f["fingerprint"] for f in FIXTURES if f["fingerprint"] is not None}
    known = {fingerprint.hex() for fingerprint in contract().writers}
    assert covered == known, "a new schema version needs fixtures written with it"
    assert {f["record"] for f in FIXTURES} == set(RECORD_NAMES)
