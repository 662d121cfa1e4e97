"""Properties over generated values (hypothesis): round trips, nothing but RecordError on garbage,
and any value in any request field refused naming the field, or good all the way through."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.contract import RecordError, check_request, decode, decode_request, encode, validate_request
from streams.contract.catalog import RECORD_NAMES, contract
from tests.contract.robustness import FIELDS, HOSTILE_REQUESTS, IDS, REQUIRED, decoded_as, line

# No example database: nothing written into the work tree.
properties = settings(database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# any str that is valid UTF-8 and that Postgres can store (no NUL: rules.py)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))

VALID_REQUESTS = st.fixed_dictionaries(
    {
        "request_id": IDS,
        "site_id": IDS,
        "topic": line(300),
        "keywords": st.lists(line(60), max_size=20),
        "language": st.from_regex(r"[A-Za-z]{2,3}(-([A-Za-z]{2}|[0-9]{3}))?", fullmatch=True),
        "tone": line(40),
        "target_words": st.integers(100, 5000),
        "requested_at": st.integers(946_684_800_000, 1_700_000_000_000),
        "audience": st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200),
        "priority": st.sampled_from(["interactive", "bulk"]),
        "retry": st.integers(0, 2**31 - 1),
    }
)
# Right types, any values: what encode/decode accept (the request rules are decode_request's).
SHAPED_REQUESTS = st.fixed_dictionaries(
    {
        "request_id": ANY_TEXT,
        "site_id": ANY_TEXT,
        "topic": ANY_TEXT,
        "keywords": st.lists(ANY_TEXT),
        "language": ANY_TEXT,
        "tone": ANY_TEXT,
        "target_words": INT32,
        "requested_at": INT64,
        "audience": st.none() | ANY_TEXT,
        "priority": ANY_TEXT,
        "retry": INT32,
    }
)


@properties
@given(VALID_REQUESTS)
def test_valid_requests_round_trip(request: dict[str, Any]) -> None:
    assert validate_request(request) == []
    data = encode("BlogRequest", request)
    assert decode("BlogRequest", data) == request
    assert decode_request(data) == request


@properties
@given(SHAPED_REQUESTS)
def test_any_well_shaped_request_round_trips_through_decode(request: dict[str, Any]) -> None:
    assert decode("BlogRequest", encode("BlogRequest", request)) == request


@properties
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_record_error(data: bytes) -> None:
    decoded_as(data)


@pytest.mark.parametrize("record", RECORD_NAMES)
@properties
@given(body=st.binary(max_size=200))
def test_known_header_with_arbitrary_body_raises_nothing_but_record_error(record: str, body: bytes) -> None:
    # Bytes that get past the header check into fastavro (random bytes mostly stop at the marker).
    decoded_as(b"\xc3\x01" + contract().current[record] + body)


@properties
@given(VALID_REQUESTS, st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_requests_raise_nothing_but_record_error(request: dict[str, Any], flips: list[tuple[int, int]]) -> None:
    data = bytearray(encode("BlogRequest", request))
    for position, byte in flips:
        data[position % len(data)] = byte
    decoded_as(bytes(data))


# --------------------------------------------------------------------------- hostile values for every field

@settings(database=None, deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_REQUESTS)
def test_any_value_in_any_field_is_refused_naming_the_field_or_survives_every_later_step(value: dict[str, Any]) -> None:
    record, errors = check_request(value)
    if record is None:
        assert errors
        for error in errors:
            top = error.field.split("[")[0].split(".")[0]
            assert top in value or top in REQUIRED or top.startswith('"'), (error, sorted(value))
            assert error.message
            str(error).encode("utf-8")  # the answer that names it can be sent
        return
    assert errors == [] and set(record) == set(FIELDS)
    data = encode("BlogRequest", record)
    assert decode_request(data) == record
    assert decode_request(json.dumps(value).encode()) == record  # the same value as raw Kafka JSON


@settings(database=None, deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_REQUESTS)
def test_raw_kafka_json_is_a_request_or_a_record_error_with_readable_ids(value: dict[str, Any]) -> None:
    try:
        data = json.dumps(value).encode()
    except ValueError:
        return
    try:
        record = decode_request(data)
    except RecordError as error:
        assert error.reason and error.reason.encode("utf-8")
        assert error.request_id is None or re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", error.request_id)
        return
    assert validate_request(record) == [] and decode_request(encode("BlogRequest", record)) == record
