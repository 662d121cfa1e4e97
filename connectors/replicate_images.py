"""Cover images from a Replicate model (flux-schnell by default).

One prediction per cover, created in synchronous mode (`Prefer: wait`) so the
common case costs a single POST from the create budget; only a prediction that
is still running when the wait ends is polled, with growing gaps, because every
GET is charged against the separate 3000/min read budget.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

from .closing import AsyncClosing
from .errors import (
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RejectedRequest,
    redact,
)
from .ratelimit_headers import parse_rate_limit_headers, parse_resets_in, parse_retry_after

__all__ = ["CoverImage", "ImageMaker"]

log = logging.getLogger(__name__)

PROVIDER = "replicate"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
MAX_SYNC_WAIT_S = 60  # Replicate holds a `Prefer: wait` request for at most 60 s

# ReplicateError keeps only the problem-details body, but the 429 wait hint is
# in the `retry-after` header. An httpx response hook stores the headers of the
# last error response here; a ContextVar keeps concurrent calls (each its own
# asyncio task) from seeing each other's headers.
_last_error_headers: contextvars.ContextVar[httpx.Headers | None] = contextvars.ContextVar(
    "replicate_last_error_headers", default=None
)


async def _remember_error_headers(response: httpx.Response) -> None:
    if response.status_code >= 400:
        _last_error_headers.set(response.headers)


@dataclass(frozen=True)
class CoverImage:
    url: str
    prediction_id: str
    # When Replicate produced the file (it deletes outputs about an hour later).
    created_at_ms: int


def _parse_timestamp_ms(value: str | None) -> int | None:
    """Epoch ms from Replicate's ISO 8601 timestamps ("...T12:00:00.123456789Z")."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Python < 3.12 accepts at most 6 fractional digits; Replicate may send 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _output_url(output: Any) -> str | None:
    # flux-schnell returns a list of URLs (num_outputs); other models a single URL.
    if isinstance(output, list):
        output = output[0] if output else None
    if isinstance(output, str) and output.startswith(("http://", "https://")):
        return output
    return None


class ImageMaker(AsyncClosing):
    """Makes cover images. Create one per worker and reuse it (pooled HTTP)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_token: str,
        model: str,
        timeout: float,
        max_connections: int,
        sync_wait_s: int = MAX_SYNC_WAIT_S,
        first_poll_s: float = 1.0,
        max_poll_s: float = 5.0,
    ) -> None:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
            # Fail at startup, not on every request: the models endpoint takes owner/name only.
            raise ValueError(f"BLOGSTREAM_REPLICATE_MODEL={model!r} must be 'owner/name' (no version)")
        self._api_token = api_token
        self._model = model
        self._timeout_s = timeout
        # The sync wait never exceeds our own deadline or Replicate's 60 s cap.
        self._sync_wait_s = max(1, min(MAX_SYNC_WAIT_S, sync_wait_s, int(timeout)))
        self._first_poll_s = first_poll_s
        self._max_poll_s = max_poll_s
        # Our own transport so aclose() can release the pool (the SDK has no close);
        # the SDK wraps it in its RetryTransport, which never retries the POST that
        # creates (and pays for) a prediction - only GETs, i.e. our polls.
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        )
        self._client = Client(
            api_token=api_token,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=self._transport,
            event_hooks={"response": [_remember_error_headers]},
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def make_cover(self, prompt: str, *, request_id: str) -> CoverImage:
        """Generate one 16:9 PNG for `prompt`; raises a ProviderError subclass on failure."""
        if not prompt.strip():
            raise RejectedRequest(PROVIDER, f"empty image prompt for request {request_id}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        # `models.predictions`, not `predictions.async_create(model=...)`: in SDK 1.0.7
        # the latter drops `wait` when it delegates, silently turning sync mode off.
        prediction = await self._call(
            self._client.models.predictions.async_create(
                model=self._model,
                input={"prompt": prompt, "aspect_ratio": "16:9", "output_format": "png"},
                wait=self._sync_wait_s,
            )
        )

        delay = self._first_poll_s
        while prediction.status not in TERMINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._cancel_quietly(prediction.id)
                raise ProviderUnavailable(
                    PROVIDER,
                    f"prediction {prediction.id} for request {request_id} still {prediction.status} "
                    f"after {self._timeout_s:g}s; canceled it",
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._max_poll_s)
            prediction = await self._call(self._client.predictions.async_get(prediction.id))

        if prediction.status != "succeeded":
            reason = self._redact(str(prediction.error or "no error text"))
            raise ProviderUnavailable(
                PROVIDER, f"prediction {prediction.id} for request {request_id} {prediction.status}: {reason}"
            )
        url = _output_url(prediction.output)
        if url is None:
            raise MalformedOutput(PROVIDER, f"prediction {prediction.id} succeeded without an image URL")
        created_at_ms = (
            _parse_timestamp_ms(prediction.completed_at)
            or _parse_timestamp_ms(prediction.created_at)
            or int(time.time() * 1000)
        )
        return CoverImage(url=url, prediction_id=prediction.id, created_at_ms=created_at_ms)

    async def _call(self, request: Awaitable[Prediction]) -> Prediction:
        """Await one SDK request and translate every failure into a ProviderError."""
        _last_error_headers.set(None)
        try:
            return await request
        except ReplicateError as exc:
            raise self._map_error(exc, _last_error_headers.get()) from exc
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(PROVIDER, f"no response within the timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(PROVIDER, f"could not reach the Replicate API ({type(exc).__name__})") from exc
        except ValueError as exc:
            # Non-JSON body, or JSON the SDK's Prediction model rejects.
            raise MalformedOutput(PROVIDER, f"unreadable prediction from Replicate ({type(exc).__name__})") from exc

    async def _cancel_quietly(self, prediction_id: str) -> None:
        # Stops GPU billing for a prediction we have given up on; best effort.
        try:
            await self._client.predictions.async_cancel(prediction_id)
        except (ReplicateError, httpx.HTTPError, ValueError) as exc:
            log.warning("could not cancel Replicate prediction %s: %s", prediction_id, type(exc).__name__)

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_token])

    def _map_error(self, exc: ReplicateError, headers: httpx.Headers | None) -> ProviderError:
        status = exc.status
        text = self._redact(exc.detail or exc.title or f"HTTP {status}")
        rate_limit = parse_rate_limit_headers(headers) if headers is not None else None
        retry_after = parse_retry_after(headers) if headers is not None else None
        if retry_after is None:
            retry_after = parse_resets_in(exc.detail)
        common: dict[str, Any] = {"status": status, "rate_limit": rate_limit, "retry_after": retry_after}
        if status == 429:
            return RateLimited(PROVIDER, text, **common)
        if status is None or status >= 500 or status in (408, 409):
            return ProviderUnavailable(PROVIDER, text, **common)
        if status in (401, 403):
            return RejectedRequest(PROVIDER, f"{text} - check REPLICATE_API_TOKEN", **common)
        if status == 404:
            return RejectedRequest(
                PROVIDER, f"{text} - check BLOGSTREAM_REPLICATE_MODEL ({self._model})", **common
            )
        if status == 402:
            return RejectedRequest(PROVIDER, f"{text} - the Replicate account needs billing set up", **common)
        return RejectedRequest(PROVIDER, text, **common)
