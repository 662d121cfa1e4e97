"""Any value in any request field: refused at the door naming the field, or stored by a real Postgres.

The property the issue asks for, end to end without Kafka: a request the intake accepts
(or a raw Kafka JSON record the generate stage would take) encodes, decodes, becomes
the sink's row (`outcome_row`) and is inserted into `blogstream_test`, then reads back
as it was sent. What the contract refuses is a 4xx that names the field, never an
exception and never a 5xx.
"""
from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.api.validation import check_items, invalid
from streams.app import requests_topic
from streams.contract import RecordError, decode_request, encode_checked
from streams.pipeline.sink import outcome_row
from tests.contract.robustness import HOSTILE_REQUESTS

from .conftest import RUN, database_on_own_loop, uid

NOW_MS = 1_750_000_000_000


@pytest.fixture(scope="module")
def pg():
    """A Database on a loop of its own: hypothesis runs the examples synchronously."""
    with database_on_own_loop() as (loop, database):
        yield loop, database
        loop.run_until_complete(database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}-%"))


def stored(pg: Any, record: dict[str, Any], data: bytes) -> dict[str, Any]:
    loop, database = pg
    row = outcome_row(requests_topic.get_topic_name(), data, record["site_id"].encode())
    assert row is not None and row.request == record
    report = loop.run_until_complete(database.store_outcomes([row]))
    assert (report.changed, report.foreign) == (1, frozenset())
    return loop.run_until_complete(database.get_generation(record["request_id"]))


@settings(database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow,
                                                                                   HealthCheck.function_scoped_fixture])
@given(value=HOSTILE_REQUESTS, batch=st.booleans())
def test_a_request_is_refused_naming_its_field_or_stored_as_sent(pg: Any, value: dict[str, Any], batch: bool) -> None:
    requests, errors = check_items([value], batch=batch, now_ms=NOW_MS)
    if errors:
        answer = invalid(errors)
        assert answer.status == 422 and json.dumps(answer.body()).encode("utf-8")
        assert all(e.field for e in errors) or not isinstance(value, dict)
        return
    record = requests[0] | {"request_id": uid("hyp")}  # a fresh id per example (the id rules are tested apart)
    row = stored(pg, record, encode_checked("BlogRequest", record))
    assert (row["site_id"], row["status"], row["request"]) == (record["site_id"], "PENDING", record)


@settings(database=None, deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow,
                                                                                   HealthCheck.function_scoped_fixture])
@given(value=HOSTILE_REQUESTS)
def test_a_raw_kafka_json_request_is_dead_lettered_or_stored_as_sent(pg: Any, value: dict[str, Any]) -> None:
    value = value | {"request_id": uid("hyp")} if isinstance(value.get("request_id"), str) else value
    data = json.dumps(value).encode()
    # A record without `requested_at` gets "now" at each decode (here, then in the sink's row): one
    # clock reading for both, or the two differ whenever a millisecond ends in between.
    with mock.patch.object(time, "time_ns", return_value=NOW_MS * 1_000_000):
        try:
            record = decode_request(data)
        except RecordError as error:  # what the generate stage dead-letters, with a readable reason
            assert error.reason.encode("utf-8")
            return
        row = stored(pg, record, data)
    assert row["request"] == record
