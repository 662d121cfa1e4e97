"""Cover images from a Replicate model (flux-schnell by default).

One prediction per cover, created in synchronous mode (`Prefer: wait`) so the
common case costs a single POST from the create budget (600/min at Replicate);
only a prediction that is still running when the wait ends is polled, with
growing gaps, because every GET and cancel is charged against the separate
"every other endpoint" budget (3000/min).

Each call is one HTTP request, so a caller can meter each: `create_prediction`,
`get_prediction`, `cancel_prediction`, then `cover_of` for the image;
`find_prediction` finds a create whose answer was lost. The SDK's
own retries of GETs (429/503/504, up to ten times) are switched off: a hidden
retry would be a poll nobody took a permit for. `make_cover` strings the calls
together without permits, for tools and tests; the pipeline meters each call
(streams/pipeline/covers.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

from .answer_fields import SDK_UNREADABLE_ERRORS
from .closing import AsyncClosing
from .errors import (
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RejectedRequest,
    redact,
)
from .no_cookies import keep_no_cookies
from .one_attempt import one_attempt_session
from .ratelimit_headers import parse_rate_limit_headers, parse_resets_in, parse_retry_after

__all__ = ["CoverImage", "ImageMaker", "PredictionState"]

log = logging.getLogger(__name__)

PROVIDER = "replicate"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
GONE = "gone"  # not a Replicate status: the API answered 404 for the prediction (deleted or never ours)
MAX_SYNC_WAIT_S = 60  # Replicate holds a `Prefer: wait` request for at most 60 s

# ReplicateError keeps only the problem-details body, but the 429 wait hint is
# in the `retry-after` header, and an error answer whose body the SDK cannot read
# raises no ReplicateError at all. An httpx response hook stores the status and
# headers of the last error response here; a ContextVar keeps concurrent calls
# (each its own asyncio task) from seeing each other's.
_last_error: contextvars.ContextVar[tuple[int, httpx.Headers] | None] = contextvars.ContextVar(
    "replicate_last_error", default=None
)


async def _remember_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        _last_error.set((response.status_code, response.headers))


@dataclass(frozen=True)
class CoverImage:
    url: str
    prediction_id: str
    # When Replicate produced the file (it deletes outputs about an hour later).
    created_at_ms: int


@dataclass(frozen=True)
class PredictionState:
    """What Replicate said about one prediction, in plain values (storable as JSON)."""

    id: str
    status: str  # starting, processing, succeeded, failed, canceled; or GONE
    url: str | None = None  # the first output while Replicate still keeps it (about an hour)
    error: str | None = None
    created_at_ms: int | None = None
    completed_at_ms: int | None = None
    predict_time: float | None = None  # seconds on hardware, once it ended (what per-second models bill)

    @property
    def running(self) -> bool:
        return self.status not in TERMINAL and self.status != GONE

    @property
    def usable(self) -> bool:
        """Succeeded and its image can still be fetched."""
        return self.status == "succeeded" and self.url is not None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "url": self.url, "error": self.error,
                "created_at": self.created_at_ms, "completed_at": self.completed_at_ms, "predict_time": self.predict_time}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PredictionState":
        return cls(str(data["id"]), str(data.get("status") or "starting"), data.get("url"), data.get("error"),
                   data.get("created_at"), data.get("completed_at"), data.get("predict_time"))


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


def _predict_time(metrics: Any) -> float | None:
    """Seconds on hardware: a finite, non-negative number, or None (it is stored as JSON and billed by)."""
    value = metrics.get("predict_time") if isinstance(metrics, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _input(prompt: str) -> dict[str, Any]:
    """What a cover's prediction is asked for: a 16:9 PNG of `prompt`."""
    return {"prompt": prompt, "aspect_ratio": "16:9", "output_format": "png"}


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
        # aiohttp under httpx's API: a third of httpcore's CPU per call (docs/bench-capacity.md).
        # Its session sends each poll once (connectors/one_attempt.py) and keeps no cookies.
        self._transport = AiohttpTransport(client=lambda: one_attempt_session(connections=max_connections))
        self._client = Client(
            api_token=api_token,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=self._transport,
            event_hooks={"response": [_remember_error]},
        )
        # The SDK wraps every transport in its RetryTransport, which repeats GETs
        # (our polls) on 429/503/504 up to ten times behind the caller's back:
        # each repeat would be a Replicate call without a permit. One attempt;
        # the caller's retry loop asks for a permit per try.
        keep_no_cookies(self._client._async_client)  # answers' Set-Cookie not read: the token authenticates
        retrying = getattr(self._client._async_client, "_transport", None)
        if retrying is not None and hasattr(retrying, "max_attempts"):
            retrying.max_attempts = 1

    async def aclose(self) -> None:
        await self._transport.aclose()

    @property
    def first_poll_s(self) -> float:
        return self._first_poll_s

    @property
    def max_poll_s(self) -> float:
        return self._max_poll_s

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    async def create_prediction(self, prompt: str, *, request_id: str) -> PredictionState:
        """One POST (the create budget): start a prediction and wait for it up to the sync wait."""
        if not prompt.strip():
            raise RejectedRequest(PROVIDER, f"empty image prompt for request {request_id}")
        # `models.predictions`, not `predictions.async_create(model=...)`: in SDK 1.0.7
        # the latter drops `wait` when it delegates, silently turning sync mode off.
        prediction = await self._call(
            self._client.models.predictions.async_create(model=self._model, input=_input(prompt),
                                                         wait=self._sync_wait_s)
        )
        return self._state(prediction)

    async def find_prediction(self, prompt: str, *, since_ms: int) -> PredictionState | None:
        """One GET (the other-endpoints budget): the prediction a create with `prompt` made since `since_ms`
        whose answer was lost, among the 100 newest. Replicate has no idempotency key: a create that
        timed out or was cut off may have been made (and billed). None when no listed prediction, or
        more than one, has exactly this model and input: the caller creates one then."""
        page = await self._call(self._client.predictions.async_list())  # type: ignore[arg-type]
        wanted = _input(prompt)
        made = [p for p in page.results if p.input == wanted and getattr(p, "model", None) in (None, self._model)
                and (_parse_timestamp_ms(p.created_at) or 0) >= since_ms]
        return self._state(made[0]) if len(made) == 1 else None

    async def get_prediction(self, prediction_id: str) -> PredictionState:
        """One GET (the other-endpoints budget). A prediction Replicate no longer knows comes back GONE."""
        return await self._on_prediction(prediction_id, self._client.predictions.async_get(prediction_id))

    async def cancel_prediction(self, prediction_id: str) -> PredictionState:
        """One POST to /cancel (the other-endpoints budget): stop a prediction and its billing."""
        return await self._on_prediction(prediction_id, self._client.predictions.async_cancel(prediction_id))

    async def _on_prediction(self, prediction_id: str, request: Awaitable[Prediction]) -> PredictionState:
        try:
            return self._state(await self._call(request))
        except RejectedRequest as exc:
            if exc.status == 404:
                return PredictionState(prediction_id, GONE, error="Replicate does not know this prediction (404)")
            raise

    def cover_of(self, state: PredictionState, *, request_id: str) -> CoverImage:
        """The image of a finished prediction; a ProviderError for any other outcome."""
        if state.status in ("failed", "canceled", GONE) or state.running:
            reason = self._redact(str(state.error or "no error text"))
            raise ProviderUnavailable(
                PROVIDER, f"prediction {state.id} for request {request_id} {state.status}: {reason}"
            )
        if state.url is None:
            raise MalformedOutput(PROVIDER, f"prediction {state.id} succeeded without an image URL (expired?)")
        created_at_ms = state.completed_at_ms or state.created_at_ms or int(time.time() * 1000)
        return CoverImage(url=state.url, prediction_id=state.id, created_at_ms=created_at_ms)

    async def make_cover(self, prompt: str, *, request_id: str) -> CoverImage:
        """Generate one 16:9 PNG for `prompt`; raises a ProviderError subclass on failure.

        Polls and cancels here take no permit: for tools and tests. The
        pipeline calls the steps one by one, each with its permit.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        state = await self.create_prediction(prompt, request_id=request_id)
        delay = self._first_poll_s
        while state.running:
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._cancel_quietly(state.id)
                raise ProviderUnavailable(
                    PROVIDER,
                    f"prediction {state.id} for request {request_id} still {state.status} "
                    f"after {self._timeout_s:g}s; canceled it",
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._max_poll_s)
            state = await self.get_prediction(state.id)
        return self.cover_of(state, request_id=request_id)

    def _state(self, prediction: Prediction) -> PredictionState:
        error = prediction.error
        return PredictionState(
            id=prediction.id,
            status=prediction.status,
            url=_output_url(prediction.output) if prediction.status == "succeeded" else None,
            error=self._redact(str(error)) if error else None,
            created_at_ms=_parse_timestamp_ms(prediction.created_at),
            completed_at_ms=_parse_timestamp_ms(prediction.completed_at),
            predict_time=_predict_time(prediction.metrics),
        )

    async def _call(self, request: Awaitable[Prediction]) -> Prediction:
        """Await one SDK request and translate every failure into a ProviderError."""
        _last_error.set(None)
        try:
            return await request
        except ReplicateError as exc:
            error = _last_error.get()
            raise self._map_error(exc, None if error is None else error[1]) from exc
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(PROVIDER, f"no response within the timeout ({type(exc).__name__})") from exc
        except (httpx.RequestError, aiohttp.ClientError) as exc:
            # httpx's RequestError: transport errors and a body its Content-Encoding cannot decode;
            # aiohttp's own: what httpx_aiohttp does not map (a status line that is not HTTP).
            # The call may have reached Replicate.
            raise ProviderUnavailable(PROVIDER, f"could not reach the Replicate API ({type(exc).__name__})") from exc
        except SDK_UNREADABLE_ERRORS as exc:
            # A body the SDK cannot read: not JSON, JSON its Prediction model rejects, or not even an
            # object (the SDK then fails with TypeError or AttributeError on its way to the model).
            error = _last_error.get()
            if error is not None:  # an error answer: its status says what it means
                status, headers = error
                unread = ReplicateError(status=status, detail=f"HTTP {status} with a body that is not problem details")
                raise self._map_error(unread, headers) from exc
            raise MalformedOutput(PROVIDER, f"unreadable prediction from Replicate ({type(exc).__name__})") from exc

    async def _cancel_quietly(self, prediction_id: str) -> None:
        # Stops GPU billing for a prediction we have given up on; best effort.
        try:
            await self._call(self._client.predictions.async_cancel(prediction_id))
        except ProviderError as exc:
            log.warning("could not cancel Replicate prediction %s: %s", prediction_id, type(exc).__name__)

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_token])

    def _map_error(self, exc: ReplicateError, headers: httpx.Headers | None) -> ProviderError:
        status = exc.status
        text = self._redact(str(exc.detail or exc.title or f"HTTP {status}"))
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
