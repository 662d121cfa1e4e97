"""Shared by the garbage tests: whatever the bytes, the decoders answer or raise RecordError.

And the hostile requests the property tests draw (contract, intake, sink and Postgres).
"""
from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from streams.contract import RecordError, decode, decode_request
from streams.contract.catalog import RECORD_NAMES


def decoded_as(data: bytes) -> int:
    """How many record types `data` decodes as; any failure must be a RecordError with a reason."""
    decoded = 0
    for name in RECORD_NAMES:
        try:
            decode(name, data)
            decoded += 1
        except RecordError as error:
            assert error.reason
    try:
        decode_request(data)
    except RecordError as error:
        assert error.reason
        assert error.request_id is None or re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", error.request_id)
    return decoded


# --------------------------------------------------------------------------- hostile requests
# Any JSON value in any field, for the property tests of the contract, the intake, the
# sink and Postgres: every code point (lone surrogates and NUL included), huge text,
# numbers of every kind, nested junk; mostly valid values, so whole requests pass often.


def line(max_len: int) -> st.SearchStrategy[str]:
    """1-max_len characters (not counting surrounding spaces), no control characters."""
    chars = st.characters(blacklist_categories=("Cs", "Cc"))
    return st.text(chars, min_size=1, max_size=max_len).filter(lambda text: text.strip())


IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
HOSTILE_TEXT = (
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=80)
    | st.sampled_from(["\ud800", "a\udfffb", "\x00", "nul\x00", "\x7f", "\x85", "line\nbreak", "   ", "",
                       "x" * 301, "y" * 100_001, "<script>alert(1)</script>", "\U0001F600" * 10])
)
HOSTILE_NUMBER = (
    st.integers()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 946_684_799_999, 2**62, 253_402_300_800_000])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
JSONISH = st.recursive(
    st.none() | st.booleans() | HOSTILE_NUMBER | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=8,
)
FIELDS = ("request_id", "site_id", "topic", "keywords", "language", "tone", "target_words", "requested_at", "audience", "priority",
          "retry")
REQUIRED = {"request_id", "site_id", "topic", "requested_at"}


def hostile(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, else anything at all."""
    anything = HOSTILE_TEXT | HOSTILE_NUMBER | JSONISH | st.lists(HOSTILE_TEXT, max_size=25)
    return st.integers(0, 11).flatmap(lambda n: valid if n < 11 else anything)


VALID_FIELDS = {
    "request_id": IDS,
    "site_id": IDS,
    "topic": line(300),
    "keywords": st.lists(line(60), max_size=20),
    "language": st.sampled_from(["en", "de", "en-US", "es-419"]),
    "tone": line(40),
    "target_words": st.integers(100, 5000),
    "requested_at": st.integers(946_684_800_000, 1_700_000_000_000),
    "audience": st.none() | line(200),
    "priority": st.sampled_from(["interactive", "bulk"]),
    "retry": st.integers(0, 2**31 - 1),
}
HOSTILE_REQUESTS = st.builds(
    lambda value, dropped, extra: {k: v for k, v in value.items() if k not in dropped} | extra,
    st.fixed_dictionaries({name: hostile(valid) for name, valid in VALID_FIELDS.items()}),
    st.integers(0, 9).flatmap(lambda n: st.just(set()) if n < 9 else st.sets(st.sampled_from(FIELDS), max_size=2)),
    st.integers(0, 9).flatmap(lambda n: st.just({}) if n < 9 else st.dictionaries(HOSTILE_TEXT, JSONISH, max_size=2)),
)
