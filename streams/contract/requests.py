"""The rules a BlogRequest must meet, and reading one from Avro or from JSON.

The schema says the shape (types, required fields, defaults); the rules here add the
limits (docs/producing.md, "The fields"), on top of the text and size rules every
record meets (rules.py). The HTTP intake, the CLI, the generate stage and the sink
all check requests through these functions, so every door has the same rules.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping

from streams.contract.conform import conformer
from streams.contract.errors import ID, FieldError, RecordError, invalid, readable_id
from streams.contract.catalog import contract
from streams.contract.json_text import NotJson, read_json
from streams.contract.rules import MAX_RECORD_BYTES, ONE_LINE_CONTROL, time_problem
from streams.contract.wire import MARKER, decode, leading_ids

_JSON_ID = {key: re.compile(rf'"{key}"\s*:\s*"([A-Za-z0-9._:-]{{1,128}})"') for key in ("request_id", "site_id")}


def decode_request(data: bytes) -> dict[str, Any]:
    """A checked BlogRequest from single-object Avro or from a UTF-8 JSON object.

    JSON is for console producers: plain values (not Avro's JSON encoding), fields
    as in the schema, defaults filled in, `requested_at` optional (now).
    """
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[: len(MARKER)]) == MARKER:
        value = decode("BlogRequest", bytes(data))
    else:
        value = _request_from_json(data)
    errors = _request_semantics(value)
    if errors:
        raise invalid("BlogRequest", errors, value)
    return value


def _request_from_json(data: Any) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise RecordError("empty message: expected single-object Avro or a JSON object")
    raw = bytes(data)
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"the message is {len(raw)} bytes; a record is at most {MAX_RECORD_BYTES}", **_salvage(raw))
    try:  # the reader of every other door, so a record and an HTTP body of the same bytes agree
        value = read_json(raw)
    except NotJson as exc:
        reason = f"neither single-object Avro (C3 01 ...) nor a JSON object: the message is {exc.reason}"
        raise RecordError(reason, **_salvage(raw)) from None
    if not isinstance(value, dict):
        raise RecordError("the JSON value must be an object with the BlogRequest fields")
    if value.get("requested_at") is None:
        value["requested_at"] = time.time_ns() // 1_000_000
    errors: list[FieldError] = []
    request = _conform_request(value, errors)
    if errors:
        raise invalid("BlogRequest", errors, value)
    assert isinstance(request, dict)
    return request


def _salvage(raw: bytes) -> dict[str, str | None]:
    """request_id / site_id from JSON that does not parse, so the failure can still be recorded."""
    text = raw.decode("utf-8", "replace")
    return {key: m.group(1) if (m := pattern.search(text)) else None for key, pattern in _JSON_ID.items()}


def site_in(data: Any) -> str | None:
    """The well-formed site_id a record's value names (Avro of any of our records, or a JSON request), or None.

    For records sent without a key (docs/producing.md: the value says the site): the site a stage's
    runner holds, parks and counts them under must be theirs, as decoding reads it.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0 or len(data) > MAX_RECORD_BYTES:
        return None
    raw = bytes(data)
    if raw[: len(MARKER)] == MARKER:
        return leading_ids(raw)["site_id"]
    try:
        value = read_json(raw)  # as decode_request reads it
    except NotJson:
        return None
    return readable_id(value.get("site_id")) if isinstance(value, dict) else None


def key_problem(key: Any, site_id: str) -> str | None:
    """A raw record's Kafka key must be its site id (docs/producing.md); a record without a key is taken."""
    if key is None or key == b"" or key == site_id.encode():
        return None
    shown = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
    named = f"the message key {shown}" if ID.fullmatch(shown) else "the message key"
    return f"{named} is not the request's site_id {site_id}: key every request by its site id"


def validate_request(value: dict[str, Any]) -> list[FieldError]:
    """Everything wrong with a BlogRequest dict: shape (types, required, unknown fields), then limits."""
    return check_request(value)[1]


def check_request(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """(the complete BlogRequest with defaults filled, or None; everything wrong with it).

    The record is returned only when there is no error; it can then go to
    `encode_checked("BlogRequest", record)` without being checked again.
    """
    errors: list[FieldError] = []
    request = _conform_request(value, errors)
    if not isinstance(request, dict):
        return None, errors
    if not errors:
        errors = _request_semantics(request)
        return (None if errors else request), errors
    broken = {re.split(r"[.\[]", error.field, maxsplit=1)[0] for error in errors}
    return None, errors + _request_semantics({k: v for k, v in request.items() if k not in broken})


def _conform_request(value: Any, errors: list[FieldError]) -> Any:
    return conformer(contract().reader("BlogRequest"))(value, "", errors)


_CONTROL = ONE_LINE_CONTROL
# Interactive requests are served first; bulk ones get what interactive ones leave (docs/producing.md).
PRIORITIES = ("interactive", "bulk")
# Kafka header of every stage record of a bulk request, so a stage's runner sees the lane without decoding.
PRIORITY_HEADER = "blogstream-priority"


INTERACTIVE, BULK = PRIORITIES


def lane_of(request: Mapping[str, Any]) -> str:
    """The lane a request runs and is counted in: its priority (a request without one is interactive)."""
    return BULK if request.get("priority") == BULK else INTERACTIVE


def priority_headers(request: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The headers a record of `request` carries: the lane, when it is bulk (interactive has none)."""
    return [(PRIORITY_HEADER, b"bulk")] if lane_of(request) == BULK else []
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-(?:[A-Za-z]{2}|[0-9]{3}))?")


def _text(value: str, max_len: int) -> str | None:
    # Length counts without surrounding spaces; HTML is fine (it is escaped on publish).
    if not 1 <= len(value.strip()) <= max_len:
        return f"must be 1-{max_len} characters (not counting surrounding spaces)"
    if _CONTROL.search(value):
        return "must not contain control characters (newlines, tabs, ...)"
    return None


MAX_KEYWORDS = 20
_REQUEST_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "request_id": lambda v: None if ID.fullmatch(v) else "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    "site_id": lambda v: None if ID.fullmatch(v) else "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    "topic": lambda v: _text(v, 300),
    "keywords": lambda v: f"must have at most {MAX_KEYWORDS} keywords (it has {len(v)})" if len(v) > MAX_KEYWORDS else None,
    "language": lambda v: None if _LANGUAGE.fullmatch(v) else "must be a language tag like en or en-US",
    "tone": lambda v: _text(v, 40),
    "target_words": lambda v: None if 100 <= v <= 5000 else "must be between 100 and 5000",
    "audience": lambda v: None if v is None or (len(v) <= 200 and not _CONTROL.search(v))
    else "must be at most 200 characters, without control characters",
    "requested_at": time_problem,
    "priority": lambda v: None if v in PRIORITIES else "must be interactive or bulk",
    "retry": lambda v: None if v >= 0 else "must be 0 or more (the run of the request: 0 the first; leave it out)",
}


def _request_semantics(request: dict[str, Any]) -> list[FieldError]:
    """Limits on a well-shaped request; fields that are absent are skipped."""
    errors = []
    for name, check in _REQUEST_CHECKS.items():
        if name not in request:
            continue
        message = check(request[name])
        if message:
            errors.append(FieldError(name, message))
        if name == "keywords":  # those a request may have: the count says what to do with the rest
            for i, keyword in enumerate(request[name][:MAX_KEYWORDS]):
                if problem := _text(keyword, 60):
                    errors.append(FieldError(f"keywords[{i}]", problem))
    return errors
