"""The Avro contract between the stages: schemas, encoding, and the rules a request must meet.

Stages and the intake import what they need from here; the modules say how:

- `catalog`: the .avsc files in `schemas/` (every version), fingerprints, canonical forms
- `compatibility`: older versions must stay readable as the current one (checked at load)
- `wire`: single-object Avro, `encode` / `decode` (fastavro)
- `conform`: the per-field check behind them, with the messages people read
- `rules`: the bounds every value meets at every entrance (text, sizes, times, the model's article)
- `requests`: the rules a BlogRequest must meet, and reading one from Avro or JSON
- `errors`: `RecordError` and `FieldError`
- `json_text`: JSON that people send, read one way at every door (`read_json`, `NotJson`)

Importing this package loads no schema; the first encode or decode does.
"""
from streams.contract.errors import FieldError, RecordError
from streams.contract.json_text import NotJson, read_json
from streams.contract.requests import check_request, decode_request, key_problem, validate_request
from streams.contract.rules import check_article, clean_text, time_problem
from streams.contract.wire import decode, encode, encode_checked

__all__ = [
    "FieldError",
    "NotJson",
    "RecordError",
    "check_article",
    "check_request",
    "clean_text",
    "decode",
    "decode_request",
    "encode",
    "encode_checked",
    "key_problem",
    "read_json",
    "time_problem",
    "validate_request",
]
