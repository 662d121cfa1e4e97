"""The Avro contract (streams/contract/): wire format, evolution, request checks, robustness.

The `avro` package (test extra only) stands in for third-party producers: an Avro
implementation independent of fastavro, which the contract is built on.
"""
from __future__ import annotations

import copy
import io
import json
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from streams.contract import (
    FieldError,
    RecordError,
    check_request,
    decode,
    decode_request,
    encode,
    encode_checked,
    validate_request,
)
from streams.contract.conform import conformer
from streams.contract.errors import readable_id
from streams.contract.catalog import RECORD_NAMES, SCHEMA_DIR, canonical_form, contract, fingerprint, load_contract
from tests.contract.robustness import decoded_as

NOW = 1_700_000_000_000


def request(**overrides: Any) -> dict[str, Any]:
    value = {
        "request_id": "req-0001",
        "site_id": "site.example",
        "topic": "How to brew cold coffee",
        "keywords": ["coffee", "cold brew"],
        "language": "en-US",
        "tone": "friendly",
        "target_words": 900,
        "requested_at": NOW,
        "audience": "home baristas",
        "priority": "bulk",
        "retry": 2,
    }
    value.update(overrides)
    return value


ARTICLE = {
    "title": "Cold brew, <em>simply</em>",
    "slug": "cold-brew-simply",
    "excerpt": "Steep, wait, strain.",
    "body": "# Cold brew\n\nSteep coarse coffee for 16 hours.\n\n<script>alert(1)</script>",
    "tags": ["coffee"],
    "image_prompt": "a glass of cold brew on a wooden table",
    "image_alt": "Cold brew in a glass",
}
USAGE = {"prompt_tokens": 310, "completion_tokens": 1024}
IMAGE = {"url": "https://replicate.delivery/x/out.webp", "prediction_id": "p-123", "created_at": NOW + 5}

SAMPLES: dict[str, dict[str, Any]] = {
    "BlogRequest": request(),
    "BlogDraft": {"request": request(), "article": ARTICLE, "usage": USAGE, "attempts": 2, "drafted_at": NOW + 1},
    "BlogIllustrated": {
        "request": request(audience=None),
        "article": ARTICLE,
        "usage": USAGE,
        "image": IMAGE,
        "attempts": 1,
        "illustrated_at": NOW + 6,
    },
    "BlogResult": {
        "request_id": "req-0001",
        "site_id": "site.example",
        "status": "DONE",
        "stage": "publish",
        "post_id": "post-9",
        "post_url": "https://example.com/post/cold-brew-simply",
        "title": "Cold brew, simply",
        "error": None,
        "attempts": 1,
        "usage": USAGE,
        "finished_at": NOW + 9,
        "retry": 2,
    },
}


# --------------------------------------------------------------------------- fingerprints


def crc64_avro(data: bytes) -> int:
    """fastavro's CRC-64-AVRO of `data` as an unsigned int (it gives the little-endian bytes in hex)."""
    return int.from_bytes(bytes.fromhex(fastavro_fingerprint(data.decode(), "CRC-64-AVRO")), "little")


def bitwise_crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint one bit at a time (no table): an independent check of crc64_avro."""
    poly = 0xC15D213AA4D7A795
    fp = poly
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ poly if fp & 1 else fp >> 1
    return fp


def java_long(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# (input, canonical form, fingerprint as Java's signed long) from Avro's
# share/test/data/schema-tests.txt, which Java cross-checks with a direct implementation.
SPEC_VECTORS = [
    ('"int"', '"int"', 8247732601305521295),
    ('{"type":"null"}', '"null"', 7195948357588979594),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
        '{"name":"a.b.foo","type":"record","fields":[]}',
        -4616218487480524110,
    ),
    (
        # The spec file has "default":"true" here; fastavro refuses a string default for a
        # boolean, and defaults are not part of the canonical form anyway.
        '{"fields":[{"type":"boolean","aliases":[],"name":"f1","default":true},'
        '{"order":"descending","name":"f2","doc":"Hello","type":"int"}],"type":"record","name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
        '{"name":"x.y.z.foo","type":"fixed","size":32}',
        -3064184465700546786,
    ),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}', -589620603366471059),
    ('{ "values":"string", "type":"map"}', '{"type":"map","values":"string"}', -8732877298790414990),
    (
        '{"name":"PigValue","type":"record","fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


@pytest.mark.parametrize(("schema", "canonical", "expected"), SPEC_VECTORS)
def test_canonical_form_and_fingerprint_match_the_spec_vectors(schema: str, canonical: str, expected: int) -> None:
    assert to_parsing_canonical_form(json.loads(schema)) == canonical
    assert java_long(crc64_avro(canonical.encode())) == expected


@pytest.mark.parametrize("text", ['"int"', "", "blogstream", *map(canonical_form, RECORD_NAMES)])
def test_crc64_matches_a_bitwise_implementation(text: str) -> None:
    assert crc64_avro(text.encode()) == bitwise_crc64_avro(text.encode())


def test_fingerprint_of_int_is_the_published_one() -> None:
    assert crc64_avro(b'"int"').to_bytes(8, "little").hex() == "8f5c393f1ad57572"


def test_logical_types_are_stripped_like_java_does() -> None:
    # The avro package's own canonical_form keeps {"type":"long"} here; Java, the spec and fastavro don't.
    assert to_parsing_canonical_form({"type": "long", "logicalType": "timestamp-millis"}) == '"long"'
    assert avro.schema.parse(json.dumps(load("blog_request"))).fingerprint("CRC-64-AVRO") != fingerprint("BlogRequest")
    assert '"requested_at","type":"long"' in canonical_form("BlogRequest")


def test_fingerprint_is_computed_on_the_fully_resolved_schema() -> None:
    draft = canonical_form("BlogDraft")
    # Referenced types are inlined at first use, then named.
    assert '"type":{"name":"blogstream.BlogRequest","type":"record"' in draft
    result = canonical_form("BlogResult")
    assert '"usage","type":["null",{"name":"blogstream.TokenUsage"' in result
    for name in RECORD_NAMES:
        fp = fingerprint(name)
        assert fp == crc64_avro(canonical_form(name).encode()).to_bytes(8, "little")
    assert len({fingerprint(n) for n in RECORD_NAMES}) == len(RECORD_NAMES)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_round_trip(name: str) -> None:
    data = encode(name, SAMPLES[name])
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(name)
    assert decode(name, data) == SAMPLES[name]


def avro_package_bytes(name: str, value: dict[str, Any]) -> bytes:
    """What the avro package writes for a conformed value (an independent reference for fastavro)."""
    errors: list[FieldError] = []
    conformed = conformer(contract().reader(name))(value, "", errors)
    assert errors == []
    schema = avro.schema.parse(canonical_form(name))  # self-contained; no logical types, so ints are fine
    body = io.BytesIO()
    avro.io.DatumWriter(schema).write(conformed, avro.io.BinaryEncoder(body))
    return b"\xc3\x01" + fingerprint(name) + body.getvalue()


WRITER_CASES = [
    ("BlogRequest", request()),
    ("BlogRequest", request(keywords=[], audience=None, target_words=5000, requested_at=2**62 + 12345)),
    ("BlogRequest", request(topic="Ünïcödé ✓ 日本語 " * 10, keywords=["é"] * 20, request_id="x" * 128)),
    ("BlogRequest", {"request_id": "r", "site_id": "s", "topic": "t", "requested_at": 1}),
    ("BlogResult", SAMPLES["BlogResult"] | {"usage": None, "attempts": -(2**31), "error": "e" * 3000}),
    *((name, sample) for name, sample in SAMPLES.items()),
]


@pytest.mark.parametrize(("name", "value"), WRITER_CASES)
def test_fastavro_writes_what_the_avro_package_writes(name: str, value: dict[str, Any]) -> None:
    assert encode(name, value) == avro_package_bytes(name, value)


def test_check_request_then_encode_checked_equals_encode() -> None:
    minimal = {"request_id": "r-1", "site_id": "s", "topic": "t", "requested_at": NOW}
    record, errors = check_request(minimal)
    assert errors == [] and record == decode("BlogRequest", encode("BlogRequest", minimal))
    assert encode_checked("BlogRequest", record) == encode("BlogRequest", minimal)
    # a bad request gives no record, only the problems (the same validate_request reports)
    bad = minimal | {"target_words": 10, "colour": "red"}
    record, errors = check_request(bad)
    assert record is None and errors == validate_request(bad) and len(errors) == 2


def test_encode_fills_defaults() -> None:
    minimal = {"request_id": "r", "site_id": "s", "topic": "t", "requested_at": NOW}
    assert decode("BlogRequest", encode("BlogRequest", minimal)) == minimal | {
        "keywords": [],
        "language": "en",
        "tone": "informative",
        "target_words": 800,
        "audience": None,
        "priority": "interactive",
        "retry": 0,
    }
    failed = {"request_id": "r", "site_id": "s", "status": "FAILED", "stage": "generate", "finished_at": NOW}
    decoded = decode("BlogResult", encode("BlogResult", failed))
    assert decoded["post_id"] is None and decoded["usage"] is None and decoded["attempts"] == 0
    assert decoded["retry"] == 0


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("BlogRequest", {"topic": None}, "topic"),
        ("BlogRequest", {"target_words": True}, "target_words"),  # bool is not an int
        ("BlogRequest", {"target_words": 2**31}, "target_words"),
        ("BlogRequest", {"requested_at": "yesterday"}, "requested_at"),
        ("BlogRequest", {"keywords": ["ok", 3]}, "keywords[1]"),
        ("BlogRequest", {"keyword": ["typo"]}, "keyword"),
        ("BlogDraft", {"article": ARTICLE | {"title": 1}}, "article.title"),
        ("BlogDraft", {"usage": {"prompt_tokens": 1}}, "usage.completion_tokens"),
        ("BlogResult", {"status": "MAYBE"}, "status"),
        ("BlogResult", {"usage": {"prompt_tokens": "1", "completion_tokens": 2}}, "usage.prompt_tokens"),
    ],
)
def test_encode_rejects_invalid_values_naming_the_field(name: str, change: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as caught:
        encode(name, SAMPLES[name] | change)
    assert [e.field for e in caught.value.errors] == [field]
    assert field in caught.value.reason
    assert caught.value.request_id == "req-0001"


def test_encode_requires_fields_without_default() -> None:
    value = copy.deepcopy(SAMPLES["BlogIllustrated"])
    del value["image"]
    with pytest.raises(RecordError, match="image: is required"):
        encode("BlogIllustrated", value)


def test_unknown_record_name_is_a_caller_bug() -> None:
    with pytest.raises(KeyError):
        encode("BlogPost", {})
    with pytest.raises(KeyError):
        decode("BlogPost", b"")


def test_decode_rejects_the_wrong_record_type() -> None:
    with pytest.raises(RecordError, match="this is a BlogRequest, not a BlogDraft"):
        decode("BlogDraft", encode("BlogRequest", request()))


def test_decode_rejects_trailing_bytes() -> None:
    with pytest.raises(RecordError, match="unexpected bytes") as caught:
        decode("BlogRequest", encode("BlogRequest", request()) + b"\x00")
    assert caught.value.request_id == "req-0001"


def test_decode_rejects_unknown_fingerprint_but_reads_the_ids() -> None:
    # E.g. a producer whose library computes the canonical form wrong: make it visible.
    data = b"\xc3\x01" + bytes(8) + encode("BlogRequest", request())[10:]
    with pytest.raises(RecordError, match="unknown schema fingerprint 0000000000000000") as caught:
        decode_request(data)
    assert (caught.value.request_id, caught.value.site_id) == ("req-0001", "site.example")
    assert fingerprint("BlogRequest").hex() in caught.value.reason


# --------------------------------------------------------------------------- evolution

SCHEMAS = Path(SCHEMA_DIR)


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def single_object(schema_json: Any, value: dict[str, Any]) -> bytes:
    """What a third-party producer with the plain avro package writes (the docs/producing.md recipe).

    That package wants datetimes for timestamp-millis fields (see `at`).
    """
    schema = avro.schema.parse(json.dumps(schema_json))
    fp = crc64_avro(to_parsing_canonical_form(schema_json).encode()).to_bytes(8, "little")
    buffer = io.BytesIO()
    buffer.write(b"\xc3\x01" + fp)
    avro.io.DatumWriter(schema).write(value, avro.io.BinaryEncoder(buffer))
    return buffer.getvalue()


def at(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


V1_REQUEST = {k: v for k, v in request().items() if k not in ("audience", "priority", "retry")}
V1_REQUEST_AS_WRITTEN = V1_REQUEST | {"requested_at": at(NOW)}
V1_DEFAULTS = {"audience": None, "priority": "interactive", "retry": 0}


def test_current_reads_v1_requests() -> None:
    data = single_object(load("blog_request.v1"), V1_REQUEST_AS_WRITTEN)
    assert data[2:10] != fingerprint("BlogRequest")
    assert decode("BlogRequest", data) == V1_REQUEST | V1_DEFAULTS
    assert decode_request(data) == V1_REQUEST | V1_DEFAULTS


def test_current_reads_v2_requests_as_interactive() -> None:
    v2 = {k: v for k, v in request().items() if k not in ("priority", "retry")}
    data = single_object(load("blog_request.v2"), v2 | {"requested_at": at(NOW)})
    assert data[2:10] not in (fingerprint("BlogRequest"), single_object(load("blog_request.v1"), V1_REQUEST_AS_WRITTEN)[2:10])
    assert decode("BlogRequest", data) == v2 | {"priority": "interactive", "retry": 0}
    assert decode_request(data) == v2 | {"priority": "interactive", "retry": 0}


def test_current_reads_v3_requests_as_a_first_run() -> None:
    # Written before `retry` existed: every such record is of a request's first run (or of a retry sent
    # before the upgrade, which the sink then takes as one: it frees the slot of run 0, as it did then).
    v3 = {k: v for k, v in request().items() if k != "retry"}
    data = single_object(load("blog_request.v3"), v3 | {"requested_at": at(NOW)})
    assert data[2:10] != fingerprint("BlogRequest")
    assert decode("BlogRequest", data) == decode_request(data) == v3 | {"retry": 0}


def test_current_reads_v1_results_as_of_a_first_run() -> None:
    v1 = {k: v for k, v in SAMPLES["BlogResult"].items() if k != "retry"}
    schema = load("blog_result.v1")
    schema["fields"] = [f | {"type": {"type": "enum", "name": "Outcome", "symbols": ["DONE", "FAILED", "CANCELLED"]}}
                        if f["name"] == "status" else f | {"type": ["null", load("token_usage")]} if f["name"] == "usage"
                        else f for f in schema["fields"]]
    data = single_object(schema, v1 | {"finished_at": at(NOW + 9)})
    assert data[2:10] != fingerprint("BlogResult")
    assert decode("BlogResult", data) == v1 | {"retry": 0}


def test_retry_is_a_run_number() -> None:
    assert validate_request(request(retry=0)) == validate_request(request(retry=7)) == []
    errors = validate_request(request(retry=-1))
    assert [e.field for e in errors] == ["retry"] and "0 or more" in errors[0].message


def test_priority_is_interactive_or_bulk() -> None:
    errors = validate_request(request(priority="urgent"))
    assert [(e.field, e.message) for e in errors] == [("priority", "must be interactive or bulk")]


def test_v1_bytes_written_by_java_decode() -> None:
    # Written by Java avro 1.12.0: new BinaryMessageEncoder<>(GenericData.get(), v1).encode(record),
    # v1 = schemas/blog_request.v1.avsc, record = the values asserted below.
    data = bytes.fromhex(
        "c301f8110a4a88783ec30c6a6176612d3112736974652e6a6176611246726f6d204a61766104026102620004"
        "64650863616c6db00980a0abfef962"
    )
    assert decode_request(data) == {
        "request_id": "java-1",
        "site_id": "site.java",
        "topic": "From Java",
        "keywords": ["a", "b"],
        "language": "de",
        "tone": "calm",
        "target_words": 600,
        "requested_at": 1_700_000_000_000,
        "audience": None,
        "priority": "interactive",
        "retry": 0,
    }


def test_drafts_carrying_a_v1_request_decode() -> None:
    # A BlogDraft written by a stage that still had v1 BlogRequest, during a rolling upgrade.
    draft = load("blog_draft")
    inline = {
        "blogstream.BlogRequest": load("blog_request.v1"),
        "blogstream.Article": load("article"),
        "blogstream.TokenUsage": load("token_usage"),
    }
    for field in draft["fields"]:
        field["type"] = inline.get(field["type"], field["type"]) if isinstance(field["type"], str) else field["type"]
    value = SAMPLES["BlogDraft"] | {"request": V1_REQUEST_AS_WRITTEN, "drafted_at": at(NOW + 1)}
    decoded = decode("BlogDraft", single_object(draft, value))
    assert decoded["request"] == V1_REQUEST | V1_DEFAULTS


def test_plain_avro_producer_with_datetime_is_understood() -> None:
    # The docs' Python snippet: the avro package with a datetime for requested_at.
    value = request() | {"requested_at": at(1_714_564_800_000)}
    data = single_object(load("blog_request"), value)
    assert data[2:10] == fingerprint("BlogRequest")
    assert decode_request(data)["requested_at"] == 1_714_564_800_000


def test_incompatible_schema_change_is_refused_at_load(tmp_path: Path) -> None:
    for path in SCHEMAS.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    current = load("blog_request")
    (tmp_path / "blog_request.v4.avsc").write_text(json.dumps(current))
    current["fields"].append({"name": "urgency", "type": "int"})  # no default: breaks old bytes
    (tmp_path / "blog_request.avsc").write_text(json.dumps(current))
    with pytest.raises(RuntimeError, match="can't be read as the current one"):
        load_contract(tmp_path)


# --------------------------------------------------------------------------- JSON requests


def test_json_request_gets_defaults_and_a_time() -> None:
    before = time.time_ns() // 1_000_000
    value = decode_request(b'{"request_id": "r-1", "site_id": "s", "topic": "Cold brew"}')
    assert before <= value.pop("requested_at") <= time.time_ns() // 1_000_000
    assert value == {
        "request_id": "r-1",
        "site_id": "s",
        "topic": "Cold brew",
        "keywords": [],
        "language": "en",
        "tone": "informative",
        "target_words": 800,
        "audience": None,
        "priority": "interactive",
        "retry": 0,
    }


def test_json_request_with_every_field_equals_avro() -> None:
    data = json.dumps(request()).encode("utf-8-sig")  # a BOM from a Windows console is fine
    assert decode_request(data) == request() == decode_request(encode("BlogRequest", request()))


@pytest.mark.parametrize(
    ("data", "reason", "ids"),
    [
        (b'{"request_id": "r-1", "site_id": "s", "topic": "t", "target_words": "800"}', "target_words", ("r-1", "s")),
        (b'{"request_id": "r-1", "site_id": "s", "topic": "t", "keyword": []}', "keyword: is not a field", ("r-1", "s")),
        (b'{"request_id": "r-1", "site_id": "s"}', "topic: is required", ("r-1", "s")),
        (b'{"request_id": "r-1", "site_id": "s", "topic": "t",', "nor a JSON object", ("r-1", "s")),
        (b'{"request_id": "bad id!", "site_id": "s", "topic": "t"', "nor a JSON object", (None, "s")),
        (b'["r-1"]', "must be an object", (None, None)),
        (b"\xff\xfe{}", "nor a JSON object", (None, None)),
        (b"", "empty message", (None, None)),
    ],
)
def test_bad_json_requests(data: bytes, reason: str, ids: tuple[str | None, str | None]) -> None:
    with pytest.raises(RecordError, match=re.escape(reason)) as caught:
        decode_request(data)
    assert (caught.value.request_id, caught.value.site_id) == ids


def test_tombstone_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="empty message"):
        decode_request(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- semantic checks


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "r-1\n"}, "request_id"),
        ({"site_id": "a/b"}, "site_id"),
        ({"site_id": "é"}, "site_id"),
        ({"topic": "   "}, "topic"),
        ({"topic": "x" * 301}, "topic"),
        ({"topic": "line one\nline two"}, "topic"),
        ({"topic": "bell\x07"}, "topic"),
        ({"keywords": ["k"] * 21}, "keywords"),
        ({"keywords": ["ok", ""]}, "keywords[1]"),
        ({"keywords": ["x" * 61]}, "keywords[0]"),
        ({"language": "english"}, "language"),
        ({"language": "en_US"}, "language"),
        ({"language": "e"}, "language"),
        ({"tone": ""}, "tone"),
        ({"tone": "x" * 41}, "tone"),
        ({"target_words": 99}, "target_words"),
        ({"target_words": 5001}, "target_words"),
        ({"audience": "x" * 201}, "audience"),
        ({"requested_at": 0}, "requested_at"),
        ({"requested_at": -5}, "requested_at"),
        ({"requested_at": 946_684_799_999}, "requested_at"),  # before 2000-01-01
        ({"requested_at": 2**62}, "requested_at"),  # year ~146 million: crashed the sink once
        ({"requested_at": time.time_ns() // 1_000_000 + 2 * 86_400_000}, "requested_at"),
        ({"topic": "bell\x85"}, "topic"),  # C1 controls too
    ],
)
def test_each_check_rejects_with_the_right_field(change: dict[str, Any], field: str) -> None:
    value = request(**change)
    assert [e.field for e in validate_request(value)] == [field]
    # The same check applies to Avro (schema-valid, semantically bad) and JSON input.
    avro_bytes = encode("BlogRequest", value)
    for data in (avro_bytes, json.dumps(value).encode()):
        with pytest.raises(RecordError) as caught:
            decode_request(data)
        assert [e.field for e in caught.value.errors] == [field]
        assert caught.value.request_id == readable_id(value["request_id"])
        assert caught.value.site_id == readable_id(value["site_id"])


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": "x" * 128, "site_id": "a.b_c:d-9"},
        {"topic": "<script>alert('x')</script> & <b>bold</b>"},  # stored, escaped on publish
        {"topic": "  " + "x" * 300 + "  "},
        {"topic": "Kaffee: Ümlaute, emoji ☕ und 中文"},
        {"keywords": ["k"] * 20},
        {"keywords": ["x" * 60, "<img src=x onerror=alert(1)>"]},
        {"language": "de"},
        {"language": "fil"},
        {"language": "es-419"},
        {"tone": "x" * 40},
        {"target_words": 100},
        {"target_words": 5000},
        {"audience": None},
        {"audience": ""},
        {"audience": "x" * 200},
        {"requested_at": 946_684_800_000},  # 2000-01-01T00:00:00Z
        {"requested_at": time.time_ns() // 1_000_000 + 86_400_000 - 60_000},  # a clock a day ahead
        {"topic": "\U0001F600 astral \U00010348 characters are scalar values"},
    ],
)
def test_valid_edge_values_are_accepted(change: dict[str, Any]) -> None:
    value = request(**change)
    assert validate_request(value) == []
    assert decode_request(encode("BlogRequest", value)) == value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"topic": "\ud800"}, "topic"),
        ({"topic": "high \udbff alone"}, "topic"),
        ({"keywords": ["ok", "\udc00"]}, "keywords[1]"),
        ({"audience": "\ud800\ud800"}, "audience"),
        ({"request_id": "\ud800"}, "request_id"),
        ({"topic": "x" * 200_000}, "topic"),
        ({"topic": "nul\x00"}, "topic"),  # Postgres cannot store NUL (text or jsonb)
        ({"keywords": ["ok", "nul\x00"]}, "keywords[1]"),
        ({"tone": "\x00"}, "tone"),
        ({"audience": "a\x00b"}, "audience"),
    ],
)
def test_text_that_cannot_be_encoded_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    # Lone surrogates are valid JSON ("\ud800") but have no UTF-8 form: the intake once
    # answered them 503 (encoding failed on the way to Kafka), so a client retried forever.
    value = request(**change)
    record, errors = check_request(value)
    assert record is None and [e.field for e in errors] == [field]
    with pytest.raises(RecordError) as caught:
        decode_request(json.dumps(value).encode())  # ensure_ascii: the surrogate arrives as an escape
    assert [e.field for e in caught.value.errors] == [field]
    with pytest.raises(RecordError):  # a RecordError, never a UnicodeEncodeError
        encode("BlogRequest", value)


def test_every_string_of_every_record_meets_the_text_rules() -> None:
    for name in RECORD_NAMES:
        for bad in ("\x00", "\ud800", "x" * 100_001):
            value = copy.deepcopy(SAMPLES[name])
            target = value.get("request", value)
            target["site_id"] = bad
            with pytest.raises(RecordError, match="site_id"):
                encode(name, value)
    # NUL is valid Avro: bytes that carry one are refused when read, too.
    draft = copy.deepcopy(SAMPLES["BlogDraft"])
    body = b"Q\x00".join(encode("BlogDraft", draft | {"article": ARTICLE | {"body": "QQ"}}).split(b"QQ", 1))
    with pytest.raises(RecordError, match="article.body: must not contain NUL"):
        decode("BlogDraft", body)


def test_records_are_bounded_below_kafkas_message_limit() -> None:
    big = ARTICLE | {"body": "x" * 100_000, "excerpt": "y" * 100_000, "image_prompt": "z" * 100_000}
    value = copy.deepcopy(SAMPLES["BlogIllustrated"]) | {"article": big | {"title": "t" * 100_000}}
    value["request"]["topic"] = "w" * 100_000
    value["image"]["url"] = "u" * 100_000
    value["article"]["image_alt"] = "a" * 100_000
    value["article"]["slug"] = "s" * 100_000
    value["article"]["tags"] = ["q" * 100_000] * 3
    with pytest.raises(RecordError, match="is at most 1000000") as caught:
        encode("BlogIllustrated", value)
    assert caught.value.request_id == "req-0001"
    with pytest.raises(RecordError, match="is at most 1000000"):
        decode_request(b"{" + b" " * 1_000_000 + b"}")
    with pytest.raises(RecordError, match="is at most 1000000"):
        decode("BlogRequest", encode("BlogRequest", request()) + b"\x00" * 1_000_000)


def test_hostile_field_names_are_shown_quoted_and_cut() -> None:
    errors = validate_request(request() | {"\ud800" * 100: 1, "ok_name": 2})
    assert [e.field for e in errors] == ['"' + "\\ud800" * 40 + '"...', "ok_name"]
    json.dumps([str(e) for e in errors]).encode("utf-8")  # printable and encodable


def test_a_raw_records_key_must_be_its_site_id() -> None:
    from streams.contract import key_problem

    assert key_problem(b"site.example", "site.example") is None
    assert key_problem(None, "site.example") is None  # no key: taken, the value says the site
    assert "the message key other-site is not the request's site_id site.example" in key_problem(b"other-site", "site.example")
    assert key_problem(b"\xff\x00", "s") == "the message key is not the request's site_id s: key every request by its site id"


def test_validate_request_reports_everything_for_the_http_intake() -> None:
    value = {"request_id": "ok", "site_id": 7, "topic": "", "target_words": 50, "keyword": [], "requested_at": NOW}
    assert validate_request(value) == [
        FieldError("keyword", "is not a field of BlogRequest"),
        FieldError("site_id", "must be a string"),
        FieldError("topic", "must be 1-300 characters (not counting surrounding spaces)"),
        FieldError("target_words", "must be between 100 and 5000"),
    ]
    assert validate_request("nope") == [FieldError("", "must be an object")]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- garbage


def garbage(rng: random.Random) -> list[bytes]:
    valid = [encode(name, SAMPLES[name]) for name in RECORD_NAMES]
    valid.append(single_object(load("blog_request.v1"), V1_REQUEST_AS_WRITTEN))
    cases: list[bytes] = []
    for _ in range(1500):
        cases.append(rng.randbytes(rng.randrange(0, 64)))
    for _ in range(500):
        cases.append(b"\xc3\x01" + rng.randbytes(rng.randrange(0, 40)))  # marker + unknown fingerprint
    for message in valid:
        cases.extend(message[:cut] for cut in range(len(message)))  # every truncation
        for _ in range(400):  # known fingerprint, random body
            cases.append(message[:10] + rng.randbytes(rng.randrange(0, 80)))
        for _ in range(150):  # a few flipped bytes
            flipped = bytearray(message)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(10, len(flipped))] = rng.randrange(256)
            cases.append(bytes(flipped))
        huge = bytearray(message[:10]) + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # length ~2^62
        cases.append(bytes(huge))
    cases += [b"{", b"[" * 100_000, b'{"request_id": "r", "site_id": ' + b"[" * 5000, b"\xc3\x01" * 50, b"1e999"]
    return cases


def test_garbage_never_raises_anything_but_record_error() -> None:
    cases = garbage(random.Random(20240501))
    assert len(cases) > 3000
    decoded = sum(decoded_as(data) for data in cases)
    assert decoded > 0  # some flipped messages are still valid records: that is fine


def test_truncated_request_still_names_its_ids() -> None:
    data = encode("BlogRequest", request())
    with pytest.raises(RecordError) as caught:
        decode_request(data[:-3])
    assert (caught.value.request_id, caught.value.site_id) == ("req-0001", "site.example")
    draft = encode("BlogDraft", SAMPLES["BlogDraft"])
    with pytest.raises(RecordError) as caught:
        decode("BlogDraft", draft[:-3])
    assert caught.value.request_id == "req-0001"


# --------------------------------------------------------------------------- docs


def test_docs_list_the_current_fingerprints() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "producing.md").read_text()
    for name in RECORD_NAMES:
        assert f"| `{name}` | `c3 01 {fingerprint(name).hex(' ')}` |" in docs


def test_importing_the_contract_loads_no_schema() -> None:
    code = (
        "import streams.contract, streams.contract.catalog as s, streams.contract.conform as c\n"
        "assert s.load_contract.cache_info().currsize == 0 and not c._COMPILED"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
