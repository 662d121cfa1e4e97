"""Unit tests: rate-limit header and body parsing."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from connectors.errors import RateLimitInfo
from connectors.ratelimit_headers import (
    parse_duration,
    parse_rate_limit_headers,
    parse_resets_in,
    parse_retry_after,
)


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
