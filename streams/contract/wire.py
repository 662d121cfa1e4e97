"""Records on the wire: Avro single-object encoding, written and read by fastavro.

Every Kafka value is the marker C3 01, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body
(Avro spec, "Single object encoding"). The fingerprint tells a reader which schema
version wrote the bytes, so no schema registry is needed and any producer (Java's
BinaryMessageEncoder, or a few lines in any language) can write records.

Values are plain dicts; timestamps are int milliseconds since the epoch (UTC).
"""
from __future__ import annotations

import io
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streams.contract.conform import conformer
from streams.contract.errors import FieldError, RecordError, ids, invalid, readable_id
from streams.contract.catalog import Schema, contract
from streams.contract.rules import MAX_RECORD_BYTES

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8


def encode(record_name: str, value: dict[str, Any]) -> bytes:
    """`value` as single-object Avro with the current schema; missing fields with defaults are filled.

    Checks the shape only; a BlogRequest also needs `validate_request` (the intake does both,
    in one pass: `check_request`, then `encode_checked`).
    """
    schema = contract().reader(record_name)
    errors: list[FieldError] = []
    record = conformer(schema)(value, "", errors)
    if errors:
        raise invalid(record_name, errors, value)
    return encode_checked(record_name, record)


def encode_checked(record_name: str, record: dict[str, Any]) -> bytes:
    """Like `encode`, for a record that `check_request` (or a conformer) just returned without errors.

    Nothing is checked again (the intake validated it a moment before); a record
    built any other way must go through `encode`.
    """
    loaded = contract()
    schema = loaded.reader(record_name)
    out = io.BytesIO()
    out.write(MARKER + loaded.current[record_name])
    try:
        schemaless_writer(out, schema, record)
    except Exception as exc:  # a record built without its checks: still only a RecordError
        raise RecordError(f"{record_name} cannot be encoded ({type(exc).__name__})", **ids(record)) from exc
    if out.tell() > MAX_RECORD_BYTES:  # Kafka would refuse it: say so here, naming the record
        raise RecordError(
            f"{record_name} would be {out.tell()} bytes; a record is at most {MAX_RECORD_BYTES}", **ids(record)
        )
    return out.getvalue()


def decode(record_name: str, data: bytes) -> dict[str, Any]:
    """A record written with any known version of `record_name`, resolved to the current schema."""
    loaded = contract()
    reader = loaded.reader(record_name)
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise RecordError("empty message: expected single-object Avro")
    data = bytes(data)
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"the message is {len(data)} bytes; a record is at most {MAX_RECORD_BYTES}")
    if len(data) < HEADER_SIZE or data[: len(MARKER)] != MARKER:
        raise RecordError("not single-object Avro: it must start with C3 01 and an 8-byte schema fingerprint")
    fingerprint = data[len(MARKER) : HEADER_SIZE]
    writer = loaded.writers.get(fingerprint)
    if writer is None:
        # Usually a producer that computed the fingerprint wrong, or a newer schema: the
        # body still starts like ours, so try for the ids to make the failure visible.
        raise RecordError(
            f"unknown schema fingerprint {fingerprint.hex()}: written with a schema that is not in schemas/ "
            f"(expected {loaded.current[record_name].hex()} for {record_name})",
            **_leading_ids(reader, data[HEADER_SIZE:]),
        )
    if writer.record_name != record_name:
        raise RecordError(f"this is a {writer.record_name}, not a {record_name}: wrong topic?")
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        value = schemaless_reader(body, writer.schema, None if writer.schema is reader else reader)
    except Exception as exc:  # fastavro raises many types on garbage; all mean "not decodable"
        raise RecordError(
            f"{record_name} body is not valid Avro for its schema ({type(exc).__name__})",
            **_leading_ids(writer.schema, data[HEADER_SIZE:]),
        ) from exc
    if body.tell() != len(data):
        raise RecordError(f"{record_name} has {len(data) - body.tell()} unexpected bytes after the body", **ids(value))
    errors: list[FieldError] = []
    record = conformer(reader)(value, "", errors)  # Avro does not range-check ints when reading
    if errors:
        raise invalid(record_name, errors, value)
    return record


def leading_ids(data: bytes) -> dict[str, str | None]:
    """request_id / site_id (well-formed ones, else None) of single-object Avro of any record of ours,
    read from the start of its body without decoding the rest."""
    writer = contract().writers.get(bytes(data[len(MARKER) : HEADER_SIZE]))
    if data[: len(MARKER)] != MARKER or writer is None:
        return {"request_id": None, "site_id": None}
    return _leading_ids(writer.schema, bytes(data[HEADER_SIZE:]))


_IDS = {
    "type": "record",
    "name": "LeadingIds",
    "fields": [{"name": "request_id", "type": "string"}, {"name": "site_id", "type": "string"}],
}


def _leading_ids(schema: Schema, body: bytes) -> dict[str, str | None]:
    """request_id / site_id from a body that does not decode as a whole.

    Every record starts with them (directly, or inside its leading `request`), and
    a record's encoding starts with its first field's, so they can be read alone.
    """
    none: dict[str, str | None] = {"request_id": None, "site_id": None}
    named: dict[str, Any] = {}
    parse_schema(schema, named)
    while schema["fields"]:
        first = schema["fields"][0]["type"]
        first = named.get(first, first) if isinstance(first, str) else first
        if not (isinstance(first, dict) and first["type"] == "record"):
            break
        schema = first
    if [(field["name"], field["type"]) for field in schema["fields"][:2]] != [("request_id", "string"), ("site_id", "string")]:
        return none
    try:
        leading = schemaless_reader(io.BytesIO(body), _IDS)
    except Exception:
        return none
    return {key: readable_id(leading[key]) for key in none}
