"""The evolution check: can bytes written with the older schema be read with the newer one?"""
from __future__ import annotations

from typing import Any

import pytest
from fastavro import parse_schema

from streams.contract.compatibility import incompatibilities


def record(*fields: dict[str, Any], name: str = "R") -> Any:
    return parse_schema({"type": "record", "name": name, "namespace": "t", "fields": list(fields)})


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


COLOUR = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        (record(field("a", "string")), record(field("a", "string"), field("b", "int", default=0))),  # added, default
        (record(field("a", "string"), field("gone", "int")), record(field("a", "string"))),  # removed: skipped
        (record(field("n", "int")), record(field("n", "long"))),  # promotion
        (record(field("n", "string")), record(field("n", ["null", "string"], default=None))),  # into a union
        (record(field("c", COLOUR)), record(field("c", COLOUR | {"symbols": ["RED", "GREEN", "BLUE"]}))),
        (record(field("old", "string")), record(field("new", "string", aliases=["old"]))),  # renamed by alias
        (record(field("xs", {"type": "array", "items": "int"})), record(field("xs", {"type": "array", "items": "long"}))),
        (record(field("self", ["null", "t.R"])), record(field("self", ["null", "t.R"]))),  # recursive
    ],
)
def test_compatible_changes(writer: Any, reader: Any) -> None:
    assert incompatibilities(reader, writer) == []


@pytest.mark.parametrize(
    ("writer", "reader", "problem"),
    [
        (record(field("a", "string")), record(field("a", "string"), field("b", "int")), "b: not in the older version"),
        (record(field("n", "string")), record(field("n", "int")), "n: string can't be read as int"),
        (record(field("n", "long")), record(field("n", "int")), "n: long can't be read as int"),
        (record(field("n", ["null", "string"])), record(field("n", "string")), "n: null can't be read as string"),
        (record(field("n", "boolean")), record(field("n", ["null", "string"])), "n: boolean is in none of"),
        (record(field("c", COLOUR | {"symbols": ["RED", "GREEN", "BLUE"]})), record(field("c", COLOUR)), "['BLUE']"),
        (record(field("a", "string")), record(field("a", "string"), name="S"), "t.R can't be read as t.S"),
        (
            record(field("inner", {"type": "record", "name": "In", "fields": [field("x", "int")]})),
            record(field("inner", {"type": "record", "name": "In", "fields": [field("x", "int"), field("y", "int")]})),
            "inner.y: not in the older version",
        ),
    ],
)
def test_incompatible_changes_say_where(writer: Any, reader: Any, problem: str) -> None:
    problems = incompatibilities(reader, writer)
    assert len(problems) == 1 and problem in problems[0], problems


def test_an_enum_with_a_default_reads_unknown_symbols() -> None:
    newer = record(field("c", COLOUR | {"symbols": ["RED", "GREEN", "BLUE"]}))
    assert incompatibilities(record(field("c", COLOUR | {"default": "RED"})), newer) == []
