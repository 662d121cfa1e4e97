"""streams/contract/json_text.py: the one reader of JSON people send (tests/api/test_json_bodies.py: every door uses it)."""
from __future__ import annotations

import math

import pytest

from streams.contract import NotJson, RecordError, decode_request, read_json


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty"), (b" \r\n\t", "empty"), (b"\xef\xbb\xbf ", "empty"),
    (b'{"topic": "Caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 14)"),
    (b'{"topic": "\xed\xa0\x80"}', "not UTF-8 text (byte 0xed at offset 11)"),  # a surrogate's UTF-8 form
    (b'{"site_id": ', "not valid JSON: Expecting value at column 13"),
    (b'{"site_id": "a",\n "topic": }', "not valid JSON: Expecting value at line 2 column 11"),
    (b"\x0c{}", "not valid JSON: Expecting value at column 1"),  # a form feed is not JSON whitespace
    (b'{"weight": NaN}', "not valid JSON: NaN is not a JSON number"),
    (b"[-Infinity]", "not valid JSON: -Infinity is not a JSON number"),
    (b'{"a": 1, "b": {"c": 2, "c": 3}}', 'not valid JSON for us: the key "c" appears twice in one object'),
    (b'{"\\ud800": 1, "\\ud800": 2}', 'not valid JSON for us: the key "\\ud800" appears twice in one object'),
    (b'{"' + b"k" * 100 + b'": 1, "' + b"k" * 100 + b'": 2}',
     'not valid JSON for us: the key "' + "k" * 40 + '..." appears twice in one object'),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON for us: nested too deeply"),
    (b"9" * 4301, "not valid JSON for us: a number has too many digits"),
])
def test_what_is_not_json_is_refused_naming_the_problem(raw, reason):
    with pytest.raises(NotJson) as refused:
        read_json(raw)
    assert refused.value.reason == reason


def test_json_is_read_as_json():
    assert read_json(b'\xef\xbb\xbf{"weight": 2}') == {"weight": 2}  # a leading BOM is skipped
    assert read_json(b'{"topic": "\\ud800"}') == {"topic": "\ud800"}  # JSON: the field checks refuse it
    assert read_json(b"1e400") == math.inf and read_json(b"-1e999") == -math.inf  # likewise, naming the field
    assert read_json(b"9" * 4300) == int("9" * 4300)
    assert read_json(b'[{"a": 1}, {"a": 1}]') == [{"a": 1}, {"a": 1}]  # the same key in two objects is fine


@pytest.mark.parametrize("raw", [
    b'{"site_id": "shop", "site_id": "other"}', b'{"target_words": NaN}', b"\xef\xbb\xbf ", b" ",
    b'{"topic": "Caf\xe9"}', b"[" * 100_000 + b"]" * 100_000,
])
def test_a_kafka_record_of_json_is_read_by_the_same_reader(raw):
    """A console producer's record is refused for the same reason an HTTP body of the same bytes is."""
    with pytest.raises(NotJson) as by_reader:
        read_json(raw)
    with pytest.raises(RecordError) as by_record:
        decode_request(raw)
    assert str(by_record.value).endswith(f"nor a JSON object: the message is {by_reader.value.reason}")


def test_a_kafka_record_of_json_with_a_bom_is_read():
    record = decode_request(b'\xef\xbb\xbf{"request_id": "r-1", "site_id": "shop", "topic": "Tea"}')
    assert (record["request_id"], record["site_id"], record["topic"]) == ("r-1", "shop", "Tea")
