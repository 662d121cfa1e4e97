"""Parsing of the rate-limit hints providers put in response headers and bodies."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

from .errors import RateLimitInfo

__all__ = [
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_resets_in",
    "parse_retry_after",
]

# Go-style durations as OpenAI sends them in x-ratelimit-reset-*: "1s", "6m0s",
# "120ms", "1m30.5s", "2h0m0s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|h|m|s)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration ("6m0s" -> 360.0); None if unparseable.

    A bare number is taken as seconds, since some providers send that instead.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:  # garbage between parts: reject the whole value
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or not math.isfinite(total):
        return None
    return total


# No provider counts anywhere near this many requests or tokens in a window, nor waits
# this long to reset one: a figure beyond is junk (a proxy's, a bug's), not a count to follow.
MOST_CREDIBLE_COUNT = 10**12
MOST_CREDIBLE_SECONDS = 86_400.0


def _header_count(headers: Mapping[str, str], name: str) -> int | None:
    """A whole, non-negative, credible count ("449", "449.0"); None for anything else."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        number = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            return None
        if not math.isfinite(value) or value != int(value):
            return None
        number = int(value)
    return number if 0 <= number <= MOST_CREDIBLE_COUNT else None


def _credible_seconds(seconds: float | None) -> float | None:
    """`seconds` if it is a wait a provider could mean (finite, from 0 to a day), else None."""
    return seconds if seconds is not None and math.isfinite(seconds) and 0 <= seconds <= MOST_CREDIBLE_SECONDS \
        else None


def _limit_and_left(headers: Mapping[str, str], budget: str) -> tuple[int | None, int | None]:
    """x-ratelimit-limit-`budget` and -remaining-`budget`; neither when more is left than the limit."""
    limit = _header_count(headers, f"x-ratelimit-limit-{budget}")
    left = _header_count(headers, f"x-ratelimit-remaining-{budget}")
    return (None, None) if limit is not None and left is not None and left > limit else (limit, left)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """RateLimitInfo from x-ratelimit-* headers, or None when there are none.

    Only credible figures are kept (whole, non-negative counts, no more left
    than the limit, resets within a day): the limiter follows these figures,
    and one absurd value ("-1e30" tokens left) would otherwise stop a budget
    for a window. `headers` must look names up case-insensitively
    (httpx.Headers, aiohttp's CIMultiDictProxy).
    """
    limit_requests, remaining_requests = _limit_and_left(headers, "requests")
    limit_tokens, remaining_tokens = _limit_and_left(headers, "tokens")
    info = RateLimitInfo(
        limit_requests=limit_requests,
        limit_tokens=limit_tokens,
        remaining_requests=remaining_requests,
        remaining_tokens=remaining_tokens,
        reset_requests_s=_credible_seconds(parse_duration(headers.get("x-ratelimit-reset-requests"))),
        reset_tokens_s=_credible_seconds(parse_duration(headers.get("x-ratelimit-reset-tokens"))),
    )
    if info == RateLimitInfo():
        return None
    return info


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (preferred, finer) or `retry-after`.

    `retry-after` may be delta-seconds or an HTTP date (RFC 9110 section 10.2.3).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if (wait := _credible_seconds(ms / 1000.0)) is not None:
                return wait
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return _credible_seconds(seconds)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return _credible_seconds(max(0.0, when.timestamp() - current))


# Replicate explains throttling in the body: "... Your rate limit resets in ~30s." One way through the
# blanks before the number (`\s+` then `~\s*`): `\s+~?\s*` could split a run of n blanks n ways, so a body
# of "resets in" and a megabyte of spaces took hours of the event loop (quadratic backtracking).
_RESETS_IN = re.compile(r"resets?\s+in\s+(?:~\s*)?(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|minutes?)?\b", re.I)


def parse_resets_in(text: str | None) -> float | None:
    """Seconds from a "resets in ~30s" phrase in an error body, else None."""
    if not text:
        return None
    match = _RESETS_IN.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    unit = (match.group(2) or "s").lower()
    return _credible_seconds(value / 1000.0 if unit == "ms" else value * 60.0 if unit.startswith("m") else value)
