"""A record another producer wrote to blog.requests, with any key at all, is dead-lettered once.

The stage reads a refused record's request id to give it a FAILED row; when the record names
no well-formed site, the row's site came from the message key, whatever its bytes. Postgres
refuses text with NUL, so such a key made the FAILED row raise after the record was already
in blog.dlq: the runner tried the event again, forever, with a copy in blog.dlq each time,
and the partition's offset never passed it. Here, against the real test database, any key
gives one dead letter and returns.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.database import Database, DatabaseError
from streams.contract import decode_request
from streams.pipeline import factory
from tests.store.conftest import DSN

RUN = f"dlkey{uuid.uuid4().hex[:8]}"


class Topic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, *, key: bytes, value: bytes, headers: dict[str, bytes]) -> Any:
        self.sent.append({"key": key, "value": value, **headers})
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture(scope="module")
def pg():
    loop = asyncio.new_event_loop()
    database = Database(DSN, min_size=1, max_size=2)
    try:
        loop.run_until_complete(database.start())
    except DatabaseError as exc:
        loop.close()
        pytest.skip(f"test database not reachable: {exc}")
    yield loop, database
    loop.run_until_complete(database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}-%"))
    loop.run_until_complete(database.close())
    loop.close()


def wire(monkeypatch: Any, database: Database) -> Topic:
    async def ready() -> None:
        return None

    dlq = Topic()
    monkeypatch.setattr(factory, "deps", SimpleNamespace(db=database, ready=ready))
    monkeypatch.setattr(factory, "dlq_topic", dlq)
    return dlq


def event(key: bytes | None, value: bytes) -> Any:
    message = SimpleNamespace(topic="blog.requests", partition=0, offset=7, key=key, value=value)
    return SimpleNamespace(message=message, value=value, key=key)


async def never(record: dict[str, Any]) -> None:
    raise AssertionError("a refused record must not reach the step")


BODIES = st.sampled_from([
    {"topic": "no site at all"},
    {"site_id": "shop 1", "topic": "a site id that is not an id"},
    {"site_id": 5, "topic": "a site id that is not text"},
])


@settings(database=None, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.binary(max_size=200) | st.sampled_from([b"\x00", b"shop-1\x00", b"\xff\xfe", b"a" * 5000]), body=BODIES)
def test_any_key_on_a_refused_record_gives_one_dead_letter_and_a_storable_failed_row(
        pg: Any, monkeypatch: Any, key: bytes, body: dict[str, Any]) -> None:
    loop, database = pg
    dlq = wire(monkeypatch, database)
    request_id = f"{RUN}-{uuid.uuid4().hex}"
    value = json.dumps({"request_id": request_id, **body}).encode()
    loop.run_until_complete(factory.run_stage_event("generate", event(key, value), decode_request, never))
    assert len(dlq.sent) == 1 and dlq.sent[0]["key"] == key and dlq.sent[0]["value"] == value
    row = loop.run_until_complete(database.get_generation(request_id))
    assert row is not None and row["status"] == "FAILED" and "invalid generate input" in row["error"]
