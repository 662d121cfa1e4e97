"""The Avro contract between the blogstream stages, and its wire format.

`schemas/*.avsc` is the single source of truth: one named type per file, referenced
by full name from the others; `<name>.vN.avsc` files are frozen older versions.

Every Kafka value is Avro *single-object encoding* (Avro spec): the marker C3 01,
the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the Avro binary body. The fingerprint tells a reader which
schema version wrote the bytes, so no schema registry is needed and any producer
(Java's BinaryMessageEncoder, or a few lines in any language) can write records.

Values are plain dicts; timestamps are int milliseconds since the epoch (UTC).
"""
from __future__ import annotations

import copy
import functools
import io
import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import avro.io
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
NAMESPACE = "blogstream"
RECORD_NAMES: tuple[str, ...] = ("BlogRequest", "BlogDraft", "BlogIllustrated", "BlogResult")
TOPIC_RECORDS: dict[str, str] = {
    "blog.requests": "BlogRequest",
    "blog.drafts": "BlogDraft",
    "blog.illustrated": "BlogIllustrated",
    "blog.results": "BlogResult",
}
MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_VERSIONED_FILE = re.compile(r"(?P<stem>[A-Za-z0-9_]+)(?:\.v(?P<version>[0-9]+))?\.avsc")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; `field` is a path like `topic`, `keywords[2]`, `usage.prompt_tokens`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class RecordError(ValueError):
    """Bytes or a dict that is not a valid record.

    `reason` is a short sentence for humans (DLQ headers, the results table);
    `request_id` / `site_id` are set when they could be read and are well-formed,
    so the caller can still record the request as FAILED.
    """

    def __init__(
        self,
        reason: str,
        *,
        request_id: str | None = None,
        site_id: str | None = None,
        errors: Sequence[FieldError] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.site_id = site_id
        self.errors: tuple[FieldError, ...] = tuple(errors)


# --------------------------------------------------------------------------- CRC-64-AVRO and canonical form

_EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The spec's 64-bit Rabin fingerprint (`fingerprint64`) as an unsigned int."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str:
    return fullname.rpartition(".")[0]


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # [STRINGS]: no \u escapes


def parsing_canonical_form(schema: Any, namespace: str = "") -> str:
    """Parsing Canonical Form of a self-contained schema (parsed JSON), per the Avro spec.

    Written out rather than taken from the avro package: avro 1.12 renders a primitive
    with a logical type as {"type":"long"}, while the spec (and Java) say "long", so
    its fingerprints would not match what Java producers send.
    """
    if isinstance(schema, str):
        return _json_str(schema if schema in _PRIMITIVES else _fullname(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(parsing_canonical_form(branch, namespace) for branch in schema) + "]"
    type_ = schema["type"]
    if type_ in _NAMED:
        full = _fullname(schema["name"], schema.get("namespace", namespace))
        head = f'"name":{_json_str(full)},"type":{_json_str(type_)}'
        if type_ in ("record", "error"):
            inner = _namespace_of(full)
            fields = ",".join(
                f'{{"name":{_json_str(f["name"])},"type":{parsing_canonical_form(f["type"], inner)}}}'
                for f in schema["fields"]
            )
            return f'{{{head},"fields":[{fields}]}}'
        if type_ == "enum":
            return f'{{{head},"symbols":[{",".join(_json_str(s) for s in schema["symbols"])}]}}'
        return f'{{{head},"size":{int(schema["size"])}}}'
    if type_ == "array":
        return f'{{"type":"array","items":{parsing_canonical_form(schema["items"], namespace)}}}'
    if type_ == "map":
        return f'{{"type":"map","values":{parsing_canonical_form(schema["values"], namespace)}}}'
    if type_ in _PRIMITIVES:
        return _json_str(type_)  # [PRIMITIVES] + [STRIP]: logicalType etc. are dropped
    return parsing_canonical_form(type_, namespace)  # {"type": <reference or nested schema>}


# --------------------------------------------------------------------------- loading schemas/


class _SchemaFiles:
    """Every named type in schemas/, current version first, then the frozen older ones."""

    def __init__(self, directory: Path) -> None:
        found: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _VERSIONED_FILE.fullmatch(path.name)
            if not match:
                raise RuntimeError(f"{path}: schema files are named <type>.avsc or <type>.vN.avsc")
            schema = json.loads(path.read_text(encoding="utf-8"))
            name = _fullname(schema["name"], schema.get("namespace", ""))
            # The current file sorts first: it has no version and must be the newest.
            rank = -1 if match["version"] is None else int(match["version"])
            found.setdefault(name, []).append((rank, schema))
        self.versions: dict[str, list[dict[str, Any]]] = {}
        for name, entries in found.items():
            entries.sort(key=lambda entry: entry[0])
            ranks = [rank for rank, _ in entries]
            if ranks[0] != -1 or len(set(ranks)) != len(ranks):
                raise RuntimeError(f"schemas/: {name} needs exactly one current file and distinct .vN versions")
            self.versions[name] = [schema for _, schema in entries]

    def variants(self, record: str) -> list[Any]:
        """`record` fully resolved once per combination of known versions of its named types.

        Any combination may have been written by some producer during a rolling
        upgrade (e.g. a BlogDraft carrying a v1 BlogRequest), so each one is a writer
        schema a reader has to recognise. The first variant is the current schema.
        """
        versioned = [name for name, versions in self.versions.items() if len(versions) > 1]
        variants = []
        for combo in itertools.product(*(self.versions[name] for name in versioned)):
            chosen = dict(zip(versioned, combo))
            variants.append(self._resolve(record, "", lambda n: chosen.get(n) or self.versions[n][0], set()))
        return variants

    def _resolve(self, schema: Any, namespace: str, pick: Callable[[str], dict[str, Any]], defined: set[str]) -> Any:
        # Inline each named type at its first use and refer to it by full name after
        # that: the self-contained form both the avro package and the canonical form need.
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            full = _fullname(schema, namespace)
            if full in defined:
                return full
            if full not in self.versions:
                raise RuntimeError(f"schemas/: {full} is referenced but no file defines it")
            return self._resolve(pick(full), "", pick, defined)
        if isinstance(schema, list):
            return [self._resolve(branch, namespace, pick, defined) for branch in schema]
        type_ = schema["type"]
        if type_ in _NAMED:
            full = _fullname(schema["name"], schema.get("namespace", namespace))
            if full in defined:
                raise RuntimeError(f"schemas/: {full} is defined twice; refer to it by name")
            defined.add(full)
            resolved = {k: v for k, v in schema.items() if k != "namespace"} | {"name": full}
            if type_ in ("record", "error"):
                inner = _namespace_of(full)
                resolved["fields"] = [
                    field | {"type": self._resolve(field["type"], inner, pick, defined)} for field in schema["fields"]
                ]
            return resolved
        if type_ == "array":
            return schema | {"items": self._resolve(schema["items"], namespace, pick, defined)}
        if type_ == "map":
            return schema | {"values": self._resolve(schema["values"], namespace, pick, defined)}
        if type_ in _PRIMITIVES:
            # Timestamps stay int millis in Python: without the logical type the avro
            # package neither converts them to datetime nor warns. Logical types are
            # not part of the canonical form, so fingerprints are unaffected.
            return type_
        return self._resolve(type_, namespace, pick, defined)


@dataclass(frozen=True)
class _Writer:
    record_name: str
    schema: avro.schema.RecordSchema
    canonical_form: str


@dataclass(frozen=True)
class _Contract:
    readers: dict[str, avro.schema.RecordSchema]
    current: dict[str, bytes]  # record name -> fingerprint of its current schema
    writers: dict[bytes, _Writer]  # every known writer schema, by fingerprint

    def reader(self, record_name: str) -> avro.schema.RecordSchema:
        try:
            return self.readers[record_name]
        except KeyError:  # a caller bug, not a bad record: deliberately not RecordError
            raise KeyError(f"unknown record {record_name!r}; expected one of {', '.join(RECORD_NAMES)}") from None


@functools.cache
def _contract() -> _Contract:
    files = _SchemaFiles(SCHEMA_DIR)
    checker = ReaderWriterCompatibilityChecker()
    readers: dict[str, avro.schema.RecordSchema] = {}
    current: dict[str, bytes] = {}
    writers: dict[bytes, _Writer] = {}
    for record in RECORD_NAMES:
        for variant in files.variants(f"{NAMESPACE}.{record}"):
            canonical = parsing_canonical_form(variant)
            fp = crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")
            known = writers.get(fp)
            if known is not None:
                if known.canonical_form != canonical:
                    raise RuntimeError(f"schemas/: fingerprint collision {fp.hex()} between two schemas")
                continue
            schema = avro.schema.parse(json.dumps(variant))
            assert isinstance(schema, avro.schema.RecordSchema)
            if record not in readers:  # the first variant is the current schema
                readers[record], current[record] = schema, fp
            else:
                # Enforce the evolution rule here, so a bad schema change fails at startup
                # instead of when the first old message arrives.
                result = checker.get_compatibility(readers[record], schema)
                if result.compatibility is not SchemaCompatibilityType.compatible:
                    raise RuntimeError(
                        f"schemas/: an older {record} can't be read as the current one: {result.messages}"
                    )
            writers[fp] = _Writer(record, schema, canonical)
    return _Contract(readers, current, writers)


def fingerprint(record_name: str) -> bytes:
    """The 8 header bytes (little-endian CRC-64-AVRO) for the current schema of `record_name`."""
    contract = _contract()
    contract.reader(record_name)
    return contract.current[record_name]


def canonical_form(record_name: str) -> str:
    """The Parsing Canonical Form `fingerprint(record_name)` is computed on (to check other producers)."""
    return _contract().writers[fingerprint(record_name)].canonical_form


# --------------------------------------------------------------------------- shape checks


def _describe(schema: avro.schema.Schema) -> str:
    if isinstance(schema, avro.schema.RecordSchema):
        return "an object"
    if isinstance(schema, avro.schema.ArraySchema):
        return "a list"
    if isinstance(schema, avro.schema.EnumSchema):
        return "one of " + ", ".join(schema.symbols)
    return {
        "null": "null",
        "boolean": "true or false",
        "int": "an integer between -2^31 and 2^31-1",
        "long": "a 64-bit integer",
        "string": "a string",
    }.get(schema.type, f"an Avro {schema.type}")


def _conform(schema: avro.schema.Schema, value: Any, path: str, errors: list[FieldError]) -> Any:
    """`value` checked against `schema`, with missing defaults filled in; problems go to `errors`.

    Stricter than avro's own validation where Python is loose: bool is not an int,
    and unknown keys are errors (they are typos that would be dropped silently).
    The check is compiled once per schema into nested closures (`_conformer`):
    walking the avro schema objects for every value was most of its cost.
    """
    return _conformer(schema)(value, path, errors)


_Conform = Callable[[Any, str, list[FieldError]], Any]
_CONFORMERS: dict[int, tuple[avro.schema.Schema, _Conform]] = {}
_PRIMITIVE_OK: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and _in_range("int", v),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool) and _in_range("long", v),
}
_IMMUTABLE = (type(None), bool, int, float, str, bytes)


def _conformer(schema: avro.schema.Schema) -> _Conform:
    """The compiled `_conform` for one schema object (cached; the schema is kept alive with it)."""
    known = _CONFORMERS.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    if isinstance(schema, avro.schema.RecordSchema):
        return _record_conformer(schema)  # registers itself first: named types may nest
    if isinstance(schema, avro.schema.UnionSchema):
        nullable = any(branch.type == "null" for branch in schema.schemas)
        others = [branch for branch in schema.schemas if branch.type != "null"]
        if len(others) == 1:  # ["null", X]: report X's own, more precise errors
            inner = _conformer(others[0])

            def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
                if value is None and nullable:
                    return None
                return inner(value, path, errors)
        else:
            inners = [_conformer(branch) for branch in others]
            message = "must be " + " or ".join(_describe(b) for b in schema.schemas)

            def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
                if value is None and nullable:
                    return None
                for branch in inners:
                    attempt: list[FieldError] = []
                    conformed = branch(value, path, attempt)
                    if not attempt:
                        return conformed
                errors.append(FieldError(path, message))
                return value
    elif isinstance(schema, avro.schema.ArraySchema):
        item = _conformer(schema.items)

        def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
            if not isinstance(value, (list, tuple)):
                errors.append(FieldError(path, "must be a list"))
                return value
            return [item(element, f"{path}[{i}]", errors) for i, element in enumerate(value)]
    elif isinstance(schema, avro.schema.EnumSchema):
        symbols, message = tuple(schema.symbols), "must be " + _describe(schema)

        def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
            if value not in symbols:
                errors.append(FieldError(path, message))
            return value
    else:
        ok, type_ = _PRIMITIVE_OK.get(schema.type), schema.type
        message = "must be " + _describe(schema)

        def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
            if ok is None:
                raise TypeError(f"the contract does not use Avro {type_} yet")  # extend _conformer first
            if not ok(value):
                errors.append(FieldError(path, message))
            return value
    _CONFORMERS[id(schema)] = (schema, conform)
    return conform


def _record_conformer(schema: avro.schema.RecordSchema) -> _Conform:
    name = schema.name
    fields: list[tuple[str, _Conform, bool, Any]] = []
    known = frozenset(field.name for field in schema.fields)

    def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
        if not isinstance(value, dict):
            errors.append(FieldError(path, "must be an object"))
            return value
        prefix = f"{path}." if path else ""
        for key in value:
            if key not in known:
                errors.append(FieldError(f"{prefix}{key}", f"is not a field of {name}"))
        record: dict[str, Any] = {}
        for field_name, check, has_default, default in fields:
            if field_name in value:
                record[field_name] = check(value[field_name], prefix + field_name, errors)
            elif has_default:
                record[field_name] = default if isinstance(default, _IMMUTABLE) else copy.deepcopy(default)
            else:
                errors.append(FieldError(prefix + field_name, "is required"))
        return record

    _CONFORMERS[id(schema)] = (schema, conform)
    for field in schema.fields:
        fields.append((field.name, _conformer(field.type), field.has_default,
                       field.default if field.has_default else None))
    return conform


# --------------------------------------------------------------------------- writing Avro binary

_Write = Callable[[Any, bytearray], None]
_WRITERS: dict[int, tuple[avro.schema.Schema, _Write]] = {}


def _write_long(n: int, out: bytearray) -> None:
    """Avro int/long: zig-zag, then 7 bits per byte, low bits first."""
    n = (n << 1) ^ (n >> 63)
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_string(value: str, out: bytearray) -> None:
    data = value.encode("utf-8")
    _write_long(len(data), out)
    out += data


def _writer(schema: avro.schema.Schema) -> _Write:
    """Avro binary for a value already conformed to `schema`: the same bytes as avro's DatumWriter.

    Compiled once per schema; it does not check anything (that is `_conform`'s job),
    so it must only see conformed values.
    """
    known = _WRITERS.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    if isinstance(schema, avro.schema.RecordSchema):
        fields: list[tuple[str, _Write]] = []

        def write(value: Any, out: bytearray) -> None:
            for field_name, write_field in fields:
                write_field(value.get(field_name), out)

        _WRITERS[id(schema)] = (schema, write)  # before the fields: named types may nest
        fields.extend((field.name, _writer(field.type)) for field in schema.fields)
        return write
    if isinstance(schema, avro.schema.UnionSchema):
        branches = schema.schemas
        if len(branches) == 2 and branches[0].type == "null":
            other = _writer(branches[1])

            def write(value: Any, out: bytearray) -> None:
                if value is None:
                    out.append(0)  # branch 0
                else:
                    out.append(2)  # branch 1, zig-zag
                    other(value, out)
        else:
            writers = [_writer(branch) for branch in branches]

            def write(value: Any, out: bytearray) -> None:
                # like avro: the last branch the value validates against
                index = max(i for i, branch in enumerate(branches) if avro.io.validate(branch, value))
                _write_long(index, out)
                writers[index](value, out)
    elif isinstance(schema, avro.schema.ArraySchema):
        item = _writer(schema.items)

        def write(value: Any, out: bytearray) -> None:
            if value:
                _write_long(len(value), out)
                for element in value:
                    item(element, out)
            out.append(0)  # end of blocks
    elif isinstance(schema, avro.schema.EnumSchema):
        index_of = {symbol: i for i, symbol in enumerate(schema.symbols)}

        def write(value: Any, out: bytearray) -> None:
            _write_long(index_of[value], out)
    elif schema.type == "string":
        write = _write_string
    elif schema.type in ("int", "long"):
        write = _write_long
    elif schema.type == "boolean":
        def write(value: Any, out: bytearray) -> None:
            out.append(1 if value else 0)
    elif schema.type == "null":
        def write(value: Any, out: bytearray) -> None:
            pass
    else:
        raise TypeError(f"the contract does not use Avro {schema.type} yet")  # extend _writer first
    _WRITERS[id(schema)] = (schema, write)
    return write


def _in_range(type_: str, value: int) -> bool:
    low, high = _INT_RANGE[type_]
    return low <= value <= high


def _summary(what: str, errors: Sequence[FieldError]) -> str:
    shown = "; ".join(str(error) for error in errors[:4])
    more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
    return f"{what}: {shown}{more}"


# --------------------------------------------------------------------------- encode / decode

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _readable_id(value: Any) -> str | None:
    """An id worth reporting: only well-formed ones can key a results row or a DLQ header."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _ids(value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict):
        return {"request_id": None, "site_id": None}
    source = value.get("request") if isinstance(value.get("request"), dict) else value
    return {"request_id": _readable_id(source.get("request_id")), "site_id": _readable_id(source.get("site_id"))}


def encode(record_name: str, value: dict[str, Any]) -> bytes:
    """`value` as single-object Avro with the current schema; missing fields with defaults are filled.

    Checks the shape only; a BlogRequest also needs `validate_request` (the intake does both,
    in one pass: `check_request`, then `encode_checked`).
    """
    contract = _contract()
    schema = contract.reader(record_name)
    errors: list[FieldError] = []
    record = _conform(schema, value, "", errors)
    if errors:
        raise RecordError(_summary(f"invalid {record_name}", errors), errors=errors, **_ids(value))
    return _encode_conformed(contract, record_name, schema, record)


def encode_checked(record_name: str, record: dict[str, Any]) -> bytes:
    """Like `encode`, for a record that `check_request` (or `_conform`) just returned without errors.

    Nothing is checked again (the intake validated it a moment before); a record
    built any other way must go through `encode`.
    """
    contract = _contract()
    return _encode_conformed(contract, record_name, contract.reader(record_name), record)


def _encode_conformed(contract: _Contract, record_name: str, schema: avro.schema.RecordSchema, record: Any) -> bytes:
    out = bytearray(MARKER)
    out += contract.current[record_name]
    _writer(schema)(record, out)
    return bytes(out)


def decode(record_name: str, data: bytes) -> dict[str, Any]:
    """A record written with any known version of `record_name`, resolved to the current schema."""
    contract = _contract()
    reader = contract.reader(record_name)
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise RecordError("empty message: expected single-object Avro")
    data = bytes(data)
    if len(data) < HEADER_SIZE or data[: len(MARKER)] != MARKER:
        raise RecordError("not single-object Avro: it must start with C3 01 and an 8-byte schema fingerprint")
    fp = data[len(MARKER) : HEADER_SIZE]
    writer = contract.writers.get(fp)
    if writer is None:
        # Usually a producer that computed the fingerprint wrong, or a newer schema: the
        # body still starts like ours, so try for the ids to make the failure visible.
        raise RecordError(
            f"unknown schema fingerprint {fp.hex()}: written with a schema that is not in schemas/ "
            f"(expected {contract.current[record_name].hex()} for {record_name})",
            **_leading_ids(reader, data[HEADER_SIZE:]),
        )
    if writer.record_name != record_name:
        raise RecordError(f"this is a {writer.record_name}, not a {record_name}: wrong topic?")
    body = io.BytesIO(data[HEADER_SIZE:])
    try:
        value = avro.io.DatumReader(writer.schema, reader).read(avro.io.BinaryDecoder(body))
    except Exception as exc:  # the avro package raises many types on garbage; all mean "not decodable"
        raise RecordError(
            f"{record_name} body is not valid Avro for its schema ({type(exc).__name__})",
            **_leading_ids(writer.schema, data[HEADER_SIZE:]),
        ) from exc
    if body.tell() != len(data) - HEADER_SIZE:
        extra = len(data) - HEADER_SIZE - body.tell()
        raise RecordError(f"{record_name} has {extra} unexpected bytes after the body", **_ids(value))
    errors: list[FieldError] = []
    _conform(reader, value, "", errors)  # avro does not range-check ints when reading
    if errors:
        raise RecordError(_summary(f"invalid {record_name}", errors), errors=errors, **_ids(value))
    assert isinstance(value, dict)
    return value


def _leading_ids(schema: avro.schema.RecordSchema, body: bytes) -> dict[str, str | None]:
    """request_id / site_id from a body that does not decode as a whole.

    Every record starts with them (directly, or inside its leading `request`), and
    a record's encoding starts with its first field's, so they can be read alone.
    """
    none: dict[str, str | None] = {"request_id": None, "site_id": None}
    while schema.fields and isinstance(schema.fields[0].type, avro.schema.RecordSchema):
        schema = schema.fields[0].type
    if [field.name for field in schema.fields[:2]] != ["request_id", "site_id"]:
        return none
    decoder = avro.io.BinaryDecoder(io.BytesIO(body))
    try:
        request_id = decoder.read_utf8()
        site_id = decoder.read_utf8()
    except Exception:
        return none
    return {"request_id": _readable_id(request_id), "site_id": _readable_id(site_id)}


# --------------------------------------------------------------------------- requests

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
        raise RecordError(_summary("invalid BlogRequest", errors), errors=errors, **_ids(value))
    return value


def _request_from_json(data: Any) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise RecordError("empty message: expected single-object Avro or a JSON object")
    raw = bytes(data)
    try:
        value = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        text = raw.decode("utf-8", "replace")
        salvaged = {key: m.group(1) if (m := pattern.search(text)) else None for key, pattern in _JSON_ID.items()}
        reason = f"neither single-object Avro (C3 01 ...) nor a JSON object ({type(exc).__name__})"
        raise RecordError(reason, **salvaged) from exc
    if not isinstance(value, dict):
        raise RecordError("the JSON value must be an object with the BlogRequest fields")
    if value.get("requested_at") is None:
        value["requested_at"] = time.time_ns() // 1_000_000
    errors: list[FieldError] = []
    request = _conform(_contract().reader("BlogRequest"), value, "", errors)
    if errors:
        raise RecordError(_summary("invalid BlogRequest", errors), errors=errors, **_ids(value))
    assert isinstance(request, dict)
    return request


def validate_request(value: dict[str, Any]) -> list[FieldError]:
    """Everything wrong with a BlogRequest dict: shape (types, required, unknown fields), then limits."""
    return check_request(value)[1]


def check_request(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """(the complete BlogRequest with defaults filled, or None; everything wrong with it).

    The record is returned only when there is no error; it can then go to
    `encode_checked("BlogRequest", record)` without being checked again.
    """
    errors: list[FieldError] = []
    request = _conform(_contract().reader("BlogRequest"), value, "", errors)
    if not isinstance(request, dict):
        return None, errors
    if not errors:
        errors = _request_semantics(request)
        return (None if errors else request), errors
    broken = {re.split(r"[.\[]", error.field, maxsplit=1)[0] for error in errors}
    return None, errors + _request_semantics({k: v for k, v in request.items() if k not in broken})


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-(?:[A-Za-z]{2}|[0-9]{3}))?")


def _text(value: str, max_len: int) -> str | None:
    # Length counts without surrounding spaces; HTML is fine (it is escaped on publish).
    if not 1 <= len(value.strip()) <= max_len:
        return f"must be 1-{max_len} characters (not counting surrounding spaces)"
    if _CONTROL.search(value):
        return "must not contain control characters (newlines, tabs, ...)"
    return None


_REQUEST_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "request_id": lambda v: None if _ID.fullmatch(v) else "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    "site_id": lambda v: None if _ID.fullmatch(v) else "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    "topic": lambda v: _text(v, 300),
    "keywords": lambda v: "must have at most 20 keywords" if len(v) > 20 else None,
    "language": lambda v: None if _LANGUAGE.fullmatch(v) else "must be a language tag like en or en-US",
    "tone": lambda v: _text(v, 40),
    "target_words": lambda v: None if 100 <= v <= 5000 else "must be between 100 and 5000",
    "audience": lambda v: None if v is None or (len(v) <= 200 and not _CONTROL.search(v))
    else "must be at most 200 characters, without control characters",
    "requested_at": lambda v: None if v > 0 else "must be a positive time in ms since the epoch",
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
        if name == "keywords":
            for i, keyword in enumerate(request[name]):
                if problem := _text(keyword, 60):
                    errors.append(FieldError(f"keywords[{i}]", problem))
    return errors
