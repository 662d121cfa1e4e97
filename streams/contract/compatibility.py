"""Can bytes written with an older schema be read with the current one? (Avro schema resolution.)

fastavro resolves schemas only while it reads, so a bad schema change would show up
with the first old message. This checks it up front, at startup, on parsed schemas:
the rules of the Avro spec's "Schema Resolution" section, for the types Avro has.
"""
from __future__ import annotations

from typing import Any

from fastavro import parse_schema

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_NAMED = {"record", "error", "enum", "fixed"}


def incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Why data written with `writer` can't be read as `reader` (both parsed by fastavro); [] if it can."""
    named: dict[str, Any] = {}
    parse_schema(writer, named)  # fills `named` with every named type, by full name
    writer_types = dict(named)
    named.clear()
    parse_schema(reader, named)
    return _Check(named, writer_types).problems(reader, writer, "", set())


class _Check:
    def __init__(self, reader_types: dict[str, Any], writer_types: dict[str, Any]) -> None:
        self.reader_types, self.writer_types = reader_types, writer_types

    def problems(self, reader: Any, writer: Any, path: str, seen: set[tuple[str, str]]) -> list[str]:
        reader, writer = _deref(reader, self.reader_types), _deref(writer, self.writer_types)
        where = path or "the record"
        if isinstance(writer, list):  # every branch the writer may have used must be readable
            return [problem for branch in writer for problem in self.problems(reader, branch, path, seen)]
        if isinstance(reader, list):
            if any(not self.problems(branch, writer, path, seen) for branch in reader):
                return []
            return [f"{where}: {_type(writer)} is in none of the union's branches"]
        reader_type, writer_type = _type(reader), _type(writer)
        if reader_type not in _PROMOTIONS.get(writer_type, {writer_type}):
            return [f"{where}: {writer_type} can't be read as {reader_type}"]
        if reader_type in _NAMED and not _same_name(reader, writer):
            return [f"{where}: {writer['name']} can't be read as {reader['name']}"]
        if reader_type in ("record", "error"):
            if (reader["name"], writer["name"]) in seen:  # a recursive type: already being checked
                return []
            return self._record(reader, writer, path, seen | {(reader["name"], writer["name"])})
        if reader_type == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            return [f"{where}: symbols {missing} are unknown to the reader"] if missing and "default" not in reader else []
        if reader_type == "fixed" and reader["size"] != writer["size"]:
            return [f"{where}: size {writer['size']} can't be read as size {reader['size']}"]
        if reader_type == "array":
            return self.problems(reader["items"], writer["items"], f"{path}[]", seen)
        if reader_type == "map":
            return self.problems(reader["values"], writer["values"], f"{path}{{}}", seen)
        return []

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str, seen: set[tuple[str, str]]) -> list[str]:
        written = {field["name"]: field for field in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            source = next((written[name] for name in (field["name"], *field.get("aliases", ())) if name in written), None)
            if source is not None:
                problems += self.problems(field["type"], source["type"], field_path, seen)
            elif "default" not in field:
                problems.append(f"{field_path}: not in the older version, and has no default")
        return problems


def _deref(schema: Any, named: dict[str, Any]) -> Any:
    """A reference to a named type (or a {"type": ...} wrapper) as the schema it stands for."""
    while True:
        if isinstance(schema, str) and schema in named:
            schema = named[schema]
        elif isinstance(schema, dict) and not isinstance(schema["type"], str):
            schema = schema["type"]
        elif isinstance(schema, dict) and schema["type"] in named:
            schema = named[schema["type"]]
        else:
            return schema


def _type(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema["type"]


def _same_name(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    short = writer["name"].rpartition(".")[2]
    aliases = reader.get("aliases", ())
    return short == reader["name"].rpartition(".")[2] or writer["name"] in aliases or short in aliases
