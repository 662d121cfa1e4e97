"""A record another producer wrote to blog.requests, with any key or size at all, is dead-lettered once.

Keys: the stage reads a refused record's request id to give it a FAILED row; when the record names
no well-formed site, the row's site came from the message key, whatever its bytes. Postgres
refuses text with NUL, so such a key made the FAILED row raise after the record was already
in blog.dlq: the runner tried the event again, forever, with a copy in blog.dlq each time,
and the partition's offset never passed it. Here, against the real test database, any key
gives one dead letter and returns.

Sizes: a record is refused past MAX_RECORD_BYTES, but the broker takes records up to its
message.max.bytes (1,048,588 by default), and our producer sends at most
producer_max_request_size (1,000,000). The dead letter carried the whole record plus its
headers: one of about 999,000 bytes or more never fit, so the send failed, the event was tried
again forever and the partition's offset never passed it. Here the dead letter is checked with
the producer's own size estimate.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.exceptions import ProducerSendError

from store.database import Database
from streams.app import app
from streams.contract import decode_request
from streams.pipeline import factory
from tests.store.conftest import uid
from tests.store.test_hostile_requests import pg  # Postgres on a loop of its own; deletes the rows of uid()

__all__ = ["pg"]


class Topic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, *, key: bytes, value: bytes, headers: dict[str, bytes]) -> Any:
        # What aiokafka checks before sending, and how Faust's producer raises it.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers.items()))
        if size > app.conf.producer_max_request_size:
            try:
                raise MessageSizeTooLargeError(f"The message is {size} bytes")
            except KafkaError as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        self.sent.append({"key": key, "value": value, **headers})
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


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
    request_id = uid("dlq")
    value = json.dumps({"request_id": request_id, **body}).encode()
    loop.run_until_complete(factory.run_stage_event("generate", event(key, value), decode_request, never))
    assert len(dlq.sent) == 1 and dlq.sent[0]["key"] == key and dlq.sent[0]["value"] == value
    row = loop.run_until_complete(database.get_generation(request_id))
    assert row is not None and row["status"] == "FAILED" and "invalid generate input" in row["error"]


BROKER_MAX = 1_048_588  # Kafka's message.max.bytes default: what another producer can write


@settings(database=None, deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.integers(0, BROKER_MAX - 200) | st.sampled_from([999_000, 1_000_000, 1_000_001, BROKER_MAX - 200]),
       key_share=st.sampled_from([0.0, 0.0001, 0.5, 1.0]),
       shape=st.sampled_from(["garbage", "json"]))
def test_a_record_of_any_size_gives_one_dead_letter_that_says_where_the_whole_one_is(
        pg: Any, monkeypatch: Any, size: int, key_share: float, shape: str) -> None:
    loop, database = pg
    dlq = wire(monkeypatch, database)
    key = b"k" * int(size * key_share)
    request_id = uid("dlq")
    head = json.dumps({"request_id": request_id, "site_id": "shop-1", "topic": ""})[:-1].encode() + b', "x": "'
    value = (head + b"y" * max(0, size - len(key) - len(head) - 2) + b'"}') if shape == "json" else b"\xff" * (size - len(key))
    loop.run_until_complete(factory.run_stage_event("generate", event(key, value), decode_request, never))
    (letter,) = dlq.sent
    assert letter["blogstream-source"] == b"blog.requests/0/7"
    if letter["value"] != value or letter["key"] != key:  # cut to fit: it says so, and where the whole one is
        assert value.startswith(letter["value"]) and key.startswith(letter["key"])
        assert str(len(key) + len(value)).encode() in letter["blogstream-cut"]
