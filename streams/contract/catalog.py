"""The schemas in `streams/contract/schemas/`: every version of every record, and their fingerprints.

One named type per `.avsc` file, referenced by full name from the others;
`<type>.vN.avsc` files are frozen older versions. fastavro parses them, inlines the
referenced types and computes each version's Parsing Canonical Form and CRC-64-AVRO
fingerprint; this module picks the versions and checks that old ones still read as
the current one. Nothing is loaded until first use (`contract()`).
"""
from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import fingerprint as _fingerprint_hex
from fastavro.schema import UnknownType, fullname, load_schema, to_parsing_canonical_form

from streams.contract.compatibility import incompatibilities

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
NAMESPACE = "blogstream"
RECORD_NAMES: tuple[str, ...] = ("BlogRequest", "BlogDraft", "BlogIllustrated", "BlogResult")

_VERSIONED_FILE = re.compile(r"(?P<stem>[A-Za-z0-9_]+)(?:\.v(?P<version>[0-9]+))?\.avsc")

Schema = Any  # a schema as fastavro parses it: str, list (union) or dict


@dataclass(frozen=True)
class Writer:
    """One schema version a record may have been written with."""

    record_name: str
    schema: Schema  # parsed, timestamps as plain longs (see `_plain`)
    canonical_form: str
    fingerprint: bytes  # the 8 header bytes


@dataclass(frozen=True)
class Contract:
    readers: dict[str, Schema]  # record name -> its current schema
    current: dict[str, bytes]  # record name -> fingerprint of its current schema
    writers: dict[bytes, Writer]  # every known writer schema, by fingerprint

    def reader(self, record_name: str) -> Schema:
        try:
            return self.readers[record_name]
        except KeyError:  # a caller bug, not a bad record: deliberately not RecordError
            raise KeyError(f"unknown record {record_name!r}; expected one of {', '.join(RECORD_NAMES)}") from None


def contract() -> Contract:
    """The contract in SCHEMA_DIR, loaded and checked on first use."""
    return load_contract(SCHEMA_DIR)


def fingerprint(record_name: str) -> bytes:
    """The 8 header bytes (little-endian CRC-64-AVRO) for the current schema of `record_name`."""
    loaded = contract()
    loaded.reader(record_name)
    return loaded.current[record_name]


def canonical_form(record_name: str) -> str:
    """The Parsing Canonical Form `fingerprint(record_name)` is computed on (to check other producers)."""
    return contract().writers[fingerprint(record_name)].canonical_form


@functools.cache
def load_contract(directory: Path) -> Contract:
    """Every version of every record in `directory`; RuntimeError if an old one can't be read any more."""
    versions = schema_files(directory)
    readers: dict[str, Schema] = {}
    current: dict[str, bytes] = {}
    writers: dict[bytes, Writer] = {}
    for record in RECORD_NAMES:
        for chosen in _combinations(versions):  # the first one is all-current
            writer = _writer(record, chosen)
            known = writers.get(writer.fingerprint)
            if known is not None:
                if known.canonical_form != writer.canonical_form:
                    raise RuntimeError(f"schemas/: fingerprint collision {writer.fingerprint.hex()} between two schemas")
                continue
            if record not in readers:
                readers[record], current[record] = writer.schema, writer.fingerprint
            # Enforce the evolution rule here, so a bad schema change fails at startup
            # instead of when the first old message arrives.
            elif problems := incompatibilities(readers[record], writer.schema):
                raise RuntimeError(f"schemas/: an older {record} can't be read as the current one: {problems}")
            writers[writer.fingerprint] = writer
    return Contract(readers, current, writers)


def schema_files(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Full name -> that type's schemas as written in the files, the current one first, then v1, v2, ..."""
    found: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for path in sorted(directory.glob("*.avsc")):
        match = _VERSIONED_FILE.fullmatch(path.name)
        if not match:
            raise RuntimeError(f"{path}: schema files are named <type>.avsc or <type>.vN.avsc")
        schema = json.loads(path.read_text(encoding="utf-8"))
        name = fullname(schema)
        # The current file sorts first: it has no version and must be the newest.
        rank = -1 if match["version"] is None else int(match["version"])
        found.setdefault(name, []).append((rank, schema))
    versions: dict[str, list[dict[str, Any]]] = {}
    for name, entries in found.items():
        entries.sort(key=lambda entry: entry[0])
        ranks = [rank for rank, _ in entries]
        if ranks[0] != -1 or len(set(ranks)) != len(ranks):
            raise RuntimeError(f"schemas/: {name} needs exactly one current file and distinct .vN versions")
        versions[name] = [schema for _, schema in entries]
    return versions


def _combinations(versions: dict[str, list[dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
    """One choice of version per named type, for every combination of the known versions.

    Any combination may have been written by some producer during a rolling upgrade
    (e.g. a BlogDraft carrying a v1 BlogRequest), so each is a writer schema a reader
    has to recognise. The first is the all-current one.
    """
    names = list(versions)
    return [dict(zip(names, combo)) for combo in itertools.product(*(versions[name] for name in names))]


class _Versions(AbstractSchemaRepository):
    """fastavro's source for the named types a schema refers to: the chosen version of each."""

    def __init__(self, chosen: dict[str, dict[str, Any]], plain: bool) -> None:
        self.chosen, self.plain = chosen, plain

    def load(self, name: str) -> dict[str, Any]:
        if name not in self.chosen:
            raise SchemaRepositoryError(name)
        schema = copy.deepcopy(self.chosen[name])
        return _plain(schema) if self.plain else schema


def _writer(record: str, chosen: dict[str, dict[str, Any]]) -> Writer:
    # fastavro inlines each referenced type at its first use: the self-contained
    # schema the canonical form is defined on. Java producers fingerprint the files
    # as they are, logical types included (the canonical form drops them).
    try:
        as_written = load_schema(f"{NAMESPACE}.{record}", repo=_Versions(chosen, plain=False))
    except UnknownType as missing:
        raise RuntimeError(f"schemas/: {missing.name} is referenced but no file defines it") from None
    canonical = to_parsing_canonical_form(as_written)
    fingerprint = bytes.fromhex(_fingerprint_hex(canonical, "CRC-64-AVRO"))  # already little-endian
    schema = load_schema(f"{NAMESPACE}.{record}", repo=_Versions(chosen, plain=True))
    return Writer(record, schema, canonical, fingerprint)


def _plain(schema: Any) -> Any:
    """`schema` without logical types: fastavro would turn timestamp-millis into datetimes.

    Values stay plain (timestamps are int ms since the epoch); the canonical form,
    and so the fingerprint, does not contain logical types anyway.
    """
    if isinstance(schema, list):
        return [_plain(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    plain = {key: value for key, value in schema.items() if key != "logicalType"}
    for key in ("type", "items", "values"):
        if key in plain:
            plain[key] = _plain(plain[key])
    if "fields" in plain:
        plain["fields"] = [field | {"type": _plain(field["type"])} for field in plain["fields"]]
    return plain
