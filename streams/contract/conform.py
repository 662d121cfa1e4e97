"""A value checked field by field against a schema, with the errors people get to read.

`conformer(schema)` compiles a schema (as fastavro parses it) once into nested
closures; the result returns the value with missing defaults filled in and appends a
`FieldError` (path + message) for each problem. The HTTP intake answers 422 with these.

Stricter than Avro where Python is loose: bool is not an int, ints are range-checked,
unknown keys are errors (they are typos that would be dropped silently), and every
string meets the text rules (rules.py: no NUL, no lone surrogate, bounded length), so
a record that conforms can always be encoded, produced and stored.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from fastavro import parse_schema

from streams.contract.errors import FieldError
from streams.contract.rules import field_name as shown_name, text_problem

Conform = Callable[[Any, str, list[FieldError]], Any]

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_PRIMITIVE_OK: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and _in_range("int", v),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool) and _in_range("long", v),
}
_IMMUTABLE = (type(None), bool, int, float, str, bytes)
# Problems listed per list (its bad items) and per object (its unknown fields); the rest are counted in one
# more error. A 2 MB body of empty keywords was 660,000 errors: a 71 MB answer and seconds of the worker's CPU.
MAX_LISTED = 10
_COMPILED: dict[int, tuple[Any, Conform]] = {}


def conformer(schema: Any) -> Conform:
    """The compiled check for a parsed schema (cached per schema object, which is kept alive with it)."""
    known = _COMPILED.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    named: dict[str, Any] = {}
    parse_schema(schema, named)  # every named type in it, by full name
    conform = _Compiler(named).compile(schema)
    _COMPILED[id(schema)] = (schema, conform)
    return conform


class _Compiler:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.records: dict[str, Conform] = {}  # by full name: named types may nest

    def _named(self, schema: Any) -> Any:
        return self.named[schema] if isinstance(schema, str) and schema in self.named else schema

    def compile(self, schema: Any) -> Conform:
        schema = self._named(schema)
        if isinstance(schema, list):
            return self._union(schema)
        if isinstance(schema, dict) and not isinstance(schema["type"], str):
            return self.compile(schema["type"])
        type_ = schema if isinstance(schema, str) else schema["type"]
        if type_ in ("record", "error"):
            return self.records.get(schema["name"]) or self._record(schema)
        if type_ == "array":
            item = self.compile(schema["items"])

            def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
                if not isinstance(value, (list, tuple)):
                    errors.append(FieldError(path, "must be a list"))
                    return value
                out, bad = [], 0
                for i, element in enumerate(value):
                    found = len(errors)
                    out.append(item(element, f"{path}[{i}]", errors))
                    if len(errors) > found:
                        bad += 1
                        if bad == MAX_LISTED and i + 1 < len(value):  # the rest are not looked at one by one
                            errors.append(FieldError(path, f"{len(value) - i - 1} more items are not valid (only "
                                                           f"the first {MAX_LISTED} are listed)"))
                            return value
                return out

            return conform
        if type_ == "enum":
            symbols, message = tuple(schema["symbols"]), "must be " + _describe(schema)

            def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
                if value not in symbols:
                    errors.append(FieldError(path, message))
                return value

            return conform
        if type_ == "string":
            return _string
        ok, message = _PRIMITIVE_OK.get(type_), "must be " + _describe(schema)
        if ok is None:
            raise TypeError(f"the contract does not use Avro {type_} yet")  # extend _Compiler first

        def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
            if not ok(value):
                errors.append(FieldError(path, message))
            return value

        return conform

    def _union(self, branches: list[Any]) -> Conform:
        nullable = "null" in branches
        others = [branch for branch in branches if branch != "null"]
        if len(others) == 1:  # ["null", X]: report X's own, more precise errors
            inner = self.compile(others[0])

            def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
                if value is None and nullable:
                    return None
                return inner(value, path, errors)

            return conform
        inners = [self.compile(branch) for branch in others]
        message = "must be " + " or ".join(_describe(self._named(branch)) for branch in branches)

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

        return conform

    def _record(self, schema: dict[str, Any]) -> Conform:
        name = schema["name"].rpartition(".")[2]
        fields: list[tuple[str, Conform, bool, Any]] = []
        known = frozenset(field["name"] for field in schema["fields"])

        def conform(value: Any, path: str, errors: list[FieldError]) -> Any:
            if not isinstance(value, dict):
                errors.append(FieldError(path, "must be an object"))
                return value
            prefix = f"{path}." if path else ""
            unknown = [key for key in value if key not in known]
            for key in unknown[:MAX_LISTED]:
                errors.append(FieldError(f"{prefix}{shown_name(key)}", f"is not a field of {name}"))
            if len(unknown) > MAX_LISTED:
                errors.append(FieldError(path, f"has {len(unknown) - MAX_LISTED} more fields that are not fields "
                                               f"of {name} (only the first {MAX_LISTED} are listed)"))
            record: dict[str, Any] = {}
            for field_name, check, has_default, default in fields:
                if field_name in value:
                    record[field_name] = check(value[field_name], prefix + field_name, errors)
                elif has_default:
                    record[field_name] = default if isinstance(default, _IMMUTABLE) else copy.deepcopy(default)
                else:
                    errors.append(FieldError(prefix + field_name, "is required"))
            return record

        self.records[schema["name"]] = conform  # before the fields: named types may nest
        for field in schema["fields"]:
            fields.append((field["name"], self.compile(field["type"]), "default" in field, field.get("default")))
        return conform


def _string(value: Any, path: str, errors: list[FieldError]) -> Any:
    if not isinstance(value, str):
        errors.append(FieldError(path, "must be a string"))
    elif (problem := text_problem(value)) is not None:
        errors.append(FieldError(path, problem))
    return value


def _describe(schema: Any) -> str:
    type_ = schema if isinstance(schema, str) else schema["type"]
    if type_ in ("record", "error"):
        return "an object"
    if type_ == "array":
        return "a list"
    if type_ == "enum":
        return "one of " + ", ".join(schema["symbols"])
    return {
        "null": "null",
        "boolean": "true or false",
        "int": "an integer between -2^31 and 2^31-1",
        "long": "a 64-bit integer",
        "string": "a string",
    }.get(type_, f"an Avro {type_}")


def _in_range(type_: str, value: int) -> bool:
    low, high = _INT_RANGE[type_]
    return low <= value <= high
