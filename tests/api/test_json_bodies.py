"""Every door that reads JSON from people reads it one way: the HTTP intake (`parse_body`), the site
controls (`parse_json` of PATCH /api/sites/{id}) and `blogstream submit --file` (`read_requests`).

Whatever the bytes (deep nesting, huge numbers, NaN / Infinity, lone surrogates, a BOM, a key twice,
a top level that is not an object, bytes that are not UTF-8, nothing at all), each answers with the
same verdict: the same JSON value, or a refusal with the same reason naming the problem (a 400 at
the HTTP doors, a skipped line of the file), never a crash.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.api.http import IntakeError
from streams.api.sites import parse_json
from streams.api.validation import parse_body
from streams.cli.submit import read_requests
from tests.contract.robustness import HOSTILE_REQUESTS, HOSTILE_TEXT, JSONISH

BOM = b"\xef\xbb\xbf"
VALUES = HOSTILE_REQUESTS | JSONISH | st.builds(lambda items: {"requests": items}, st.lists(HOSTILE_REQUESTS, max_size=3))


def dumped(value: Any) -> bytes:
    return json.dumps(value).encode()  # what a client sends: NaN / Infinity as such, surrogates as escapes


def twice(key: str, first: Any, second: Any, inside: bool) -> bytes:
    pair = f"{json.dumps(key)}: {json.dumps(first)}, {json.dumps(key)}: {json.dumps(second)}"
    return ('{"requests": [{' + pair + '}]}' if inside else "{" + pair + "}").encode()


def not_utf8(raw: bytes, at: int, byte: int) -> bytes:
    at %= len(raw) + 1
    return raw[:at] + bytes([byte]) + raw[at:]


BODIES = st.one_of(
    st.builds(dumped, VALUES),
    st.builds(lambda raw: BOM + raw, st.builds(dumped, VALUES)),
    st.builds(lambda raw, cut: raw[: cut % (len(raw) + 1)], st.builds(dumped, VALUES), st.integers(0, 10_000)),
    st.builds(twice, HOSTILE_TEXT, JSONISH, JSONISH, st.booleans()),
    st.builds(not_utf8, st.builds(dumped, VALUES), st.integers(0, 10_000), st.integers(0x80, 0xFF)),
    st.integers(0, 40).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([
        b"", b" ", b"\t \n", BOM, BOM + b" ",
        b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, b"[" * 100_000,
        b'{"target_words": ' + b"9" * 5000 + b"}", b'{"weight": -' + b"9" * 4301 + b"}",
        b'{"weight": 1e400}', b'{"weight": -1e999, "paused": true}', b"1e400",
        b'{"weight": NaN}', b'{"weight": Infinity}', b"-Infinity", b'{"topic": "\\ud800"}', b'{"\\udfff": 1}',
        b"null", b"[]", b'"text"', b"42", b"true",
    ]),
)


def intake_verdict(raw: bytes) -> tuple[str, str]:
    try:
        parse_body(raw, max_batch=10**6)
    except IntakeError as err:
        if err.status == 400:
            return "refused", err.error
        assert err.status == 422, err.error  # JSON, not a submission: the intake's own shape rules
    return "json", ""


def controls_verdict(raw: bytes) -> tuple[str, str, Any]:
    value, wrong = parse_json(raw)
    return ("refused", wrong, None) if wrong else ("json", "", value)


def file_verdict(raw: bytes) -> list[tuple[str, str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requests.jsonl"
        path.write_bytes(raw + b"\n")
        read = list(read_requests(path))
    return [("refused", problem, None) if item is None and problem != "not a JSON object" else ("json", "", item)
            for _, item, problem in read]


@hypothesis_settings(database=None, deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES)
@example(BOM + b'{"weight": 2}')  # a BOM, as Windows editors save a file
@example(b'{"weight": NaN}')
@example(b'{"weight": 2, "weight": 3}')
@example(b"")
def test_every_door_reads_hostile_json_one_way_and_names_what_is_wrong(raw):
    intake, controls = intake_verdict(raw), controls_verdict(raw)
    lines = file_verdict(raw)
    blank = not raw.replace(BOM, b"", 1).strip(b" \t\r\n")
    if blank:  # a blank line of a file is skipped; a blank body is empty
        assert lines == [] and intake[0] == controls[0] == "refused" and "empty" in controls[1]
    else:
        assert len(lines) == 1
        (line,) = lines
        assert intake[0] == controls[0] == line[0], (intake, controls, line)
        if line[0] == "refused":  # one reason, naming the problem, at every door
            assert controls[1] == f"the body is {line[1]}" and intake[1].startswith(controls[1])
        elif isinstance(controls[2], dict):
            assert json.dumps(controls[2]) == json.dumps(line[2])  # the same value
    for text in (intake[1], controls[1], *(line[1] for line in lines)):
        text.encode("utf-8")  # printable and sendable as it is (no lone surrogate)
        json.dumps(text, allow_nan=False)
