"""A record with a huge list or thousands of unknown fields gets a short answer, not one error per item.

The intake takes bodies of up to 2 MB and a raw Kafka record may be 1 MB. Every problem was
listed: a body of 660,000 empty keywords (2 MB) gave 660,001 errors, a 422 of 71 MB and about
3 s of CPU on the worker's event loop (every stage and the effect claims' renewals waited); one
of a million `1`s, 990,000 errors. A handful of such posts held a worker for longer than the
effect ledger's lease. Now a list reports its first few bad items and how many it has, and an
object its first few unknown fields and how many more there are.
"""
from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.api.validation import check_items, invalid
from streams.contract import RecordError, check_request, decode_request

NOW_MS = 1_750_000_000_000
REQUEST = {"request_id": "r-1", "site_id": "shop-1", "topic": "Tea", "requested_at": NOW_MS}
MOST_ERRORS = 64  # per request, whatever its size
BAD_ITEMS = st.sampled_from(["", " ", "x" * 61, "\x00", "a\nb", 1, None, [], {}, True, 1.5])


@st.composite
def wide(draw: Any) -> dict[str, Any]:
    size = draw(st.sampled_from([21, 100, 5_000, 300_000]))
    shape = draw(st.sampled_from(["keywords", "unknown fields", "both"]))
    value = dict(REQUEST)
    if shape in ("keywords", "both"):
        item = draw(BAD_ITEMS | st.just("fine"))
        value["keywords"] = [item] * size
    if shape in ("unknown fields", "both"):
        value.update({f"x{i}": 0 for i in range(size)})
    return value


@given(value=wide(), batch=st.booleans())
def test_the_intake_answers_a_wide_request_with_a_bounded_list_of_problems(value: dict[str, Any], batch: bool) -> None:
    requests, errors = check_items([value], batch=batch, now_ms=NOW_MS)
    assert errors and len(errors) <= MOST_ERRORS, len(errors)
    body = invalid(errors).body()
    assert len(json.dumps(body)) < 20_000
    assert {error["field"].split("[")[0].split(".")[-1] for error in body["errors"]} <= {
        "", "keywords", "requests", *(k for k in value if k.startswith("x"))}  # "": the request itself


@given(value=wide())
def test_a_wide_raw_kafka_record_is_refused_with_a_bounded_list_of_problems(value: dict[str, Any]) -> None:
    data = json.dumps(value, separators=(",", ":")).encode()
    try:
        decode_request(data)
    except RecordError as error:
        assert error.errors == () or len(error.errors) <= MOST_ERRORS, len(error.errors)
        assert error.request_id == "r-1"
    else:
        raise AssertionError("a request with more than 20 keywords or unknown fields was taken")


def test_a_list_says_how_many_items_it_has_and_shows_the_first_bad_ones() -> None:
    _, errors = check_request(REQUEST | {"keywords": [""] * 100_000})
    shown = [str(error) for error in errors]
    assert shown[0] == "keywords: must have at most 20 keywords (it has 100000)"
    assert "keywords[0]: must be 1-60 characters (not counting surrounding spaces)" in shown
    _, errors = check_request(REQUEST | {"keywords": [1] * 100_000})
    assert [str(error) for error in errors][-1] == (
        "keywords: 99990 more items are not valid (only the first 10 are listed)")
