"""Unit tests: rate-limit header and body parsing."""

from __future__ import annotations

import email.utils
import math
import re

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from connectors.errors import RateLimitInfo
from connectors.ratelimit_headers import (
    _RESETS_IN,
    MOST_CREDIBLE_COUNT,
    MOST_CREDIBLE_SECONDS,
    parse_duration,
    parse_rate_limit_headers,
    parse_resets_in,
    parse_retry_after,
)

from .conftest import ODD_FIGURES, RATE_LIMIT_HEADERS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1m30.5s", 90.5),
        ("0s", 0.0),
        ("2h0m0s", 7200.0),
        ("1h2m3s", 3723.0),
        ("17.123s", 17.123),
        ("500us", 0.0005),
        ("250µs", 0.00025),
        ("20", 20.0),  # bare number: seconds
        ("0.5", 0.5),
        (" 3s ", 3.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "1s garbage", "-5", "1m-3s", "nan"])
def test_parse_duration_rejects_garbage(text: str | None) -> None:
    assert parse_duration(text) is None


def test_rate_limit_headers_openai_shape() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "450",
            "x-ratelimit-limit-tokens": "450000",
            "x-ratelimit-remaining-requests": "449",
            "x-ratelimit-remaining-tokens": "448790",
            "x-ratelimit-reset-requests": "133ms",
            "x-ratelimit-reset-tokens": "1m30.5s",
        }
    )
    assert parse_rate_limit_headers(headers) == RateLimitInfo(
        limit_requests=450,
        limit_tokens=450000,
        remaining_requests=449,
        remaining_tokens=448790,
        reset_requests_s=0.133,
        reset_tokens_s=90.5,
    )


def test_rate_limit_headers_absent_or_partial() -> None:
    assert parse_rate_limit_headers(httpx.Headers({"content-type": "application/json"})) is None
    partial = parse_rate_limit_headers(httpx.Headers({"x-ratelimit-remaining-requests": "3"}))
    assert partial == RateLimitInfo(remaining_requests=3)


def test_retry_after_prefers_milliseconds() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "2"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert parse_retry_after(httpx.Headers({"retry-after": "0.25"})) == 0.25
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "whenever"})) is None


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": past}), now=now) == 0.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Request was throttled. Your rate limit resets in ~30s.", 30.0),
        ("Your rate limit resets in ~1s.", 1.0),
        ("limit resets in 2 minutes", 120.0),
        ("resets in ~500ms", 0.5),
        ("resets in 12 seconds", 12.0),
        ("Request was throttled.", None),
        (None, None),
    ],
)
def test_parse_resets_in(text: str | None, seconds: float | None) -> None:
    assert parse_resets_in(text) == (pytest.approx(seconds) if seconds is not None else None)


_BEFORE = re.compile(r"resets?\s+in\s+~?\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|minutes?)?\b", re.I)


@given(st.lists(st.sampled_from(["resets", "reset", " in", "in", " ", "\t", "~", "3", "0.5", ".", "ms", "s",
                                 "min", "x", "seconds", "\n"]), max_size=14).map("".join))
def test_parse_resets_in_reads_what_the_backtracking_pattern_read(text: str) -> None:
    """The pattern lost its ambiguous blanks, not a phrase it took (the pattern before, for comparison)."""
    before, now = _BEFORE.search(text), _RESETS_IN.search(text)
    assert (before and (before.span(), before.groups())) == (now and (now.span(), now.groups()))


def test_a_body_of_blanks_after_resets_in_is_read_in_linear_time() -> None:
    """A 429 body of "resets in" and a megabyte of spaces took hours (quadratic); now one pass."""
    assert parse_resets_in("Your rate limit resets in" + " " * 1_000_000 + "x") is None
    assert parse_resets_in("resets in" + " " * 1_000_000 + "~ 30s") == 30.0


# --------------------------------------------------------------------------- hostile figures


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(RATE_LIMIT_HEADERS), st.sampled_from(ODD_FIGURES) | st.text(max_size=30),
                       max_size=8))
def test_any_rate_limit_headers_give_credible_figures_or_none(values: dict[str, str]) -> None:
    """Whatever the headers say, what is read from them is a whole count from 0 to MOST_CREDIBLE_COUNT with
    no more left than the limit the same answer gives, or seconds from 0 to a day, or None: never an error."""
    headers = CIMultiDict(values)  # aiohttp's: any text, as a server may send it
    info = parse_rate_limit_headers(headers)
    wait = parse_retry_after(headers, now=1_700_000_000.0)
    assert wait is None or 0 <= wait <= MOST_CREDIBLE_SECONDS
    if info is None:
        return
    for count in (info.limit_requests, info.limit_tokens, info.remaining_requests, info.remaining_tokens):
        assert count is None or (type(count) is int and 0 <= count <= MOST_CREDIBLE_COUNT)
    for limit, left in ((info.limit_requests, info.remaining_requests), (info.limit_tokens, info.remaining_tokens)):
        assert limit is None or left is None or left <= limit
    for seconds in (info.reset_requests_s, info.reset_tokens_s):
        assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MOST_CREDIBLE_SECONDS)


@given(st.text(max_size=80) | st.sampled_from(["resets in ~" + "9" * 400 + " minutes", "resets in 1e9s"]))
def test_any_error_text_gives_credible_seconds_or_none(text: str) -> None:
    seconds = parse_resets_in("Your rate limit resets in ~" + text)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MOST_CREDIBLE_SECONDS)
    seconds = parse_resets_in(text)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MOST_CREDIBLE_SECONDS)
