"""OpenAI Files + Batch API: one JSONL file of article requests per batch, its results read back.

The lines are the same chat completion the real-time writer sends (openai_writer.py:
messages, max_tokens, response format); a line's `custom_id` is its request id.
Results come in no order, matched by `custom_id`; `article_from_response` reads one
the way the real-time writer reads a completion. Calls go through the official SDK
with its retries off (the caller's poll loop is the one retry).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import openai

from connectors.answer_fields import SDK_UNREADABLE_ERRORS, json_object, json_text, read_json
from connectors.closing import AsyncClosing
from connectors.errors import MalformedOutput, ProviderError, ProviderUnavailable, RejectedRequest
from connectors.openai_writer import RESPONSE_FORMAT, BilledCall, build_messages, max_tokens_for, read_completion

PROVIDER = "openai"
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
KEY_FIELD = "blogstream_batch"  # metadata key naming our batch, to find one whose id was never recorded
PROMPT_MARGIN_TOKENS = 16  # our prompt estimate is never below the provider's (characters / 4)


def batch_line(request: Mapping[str, Any], *, model: str, max_tokens_cap: int) -> dict[str, Any]:
    """One JSONL line: the chat completion the real-time writer would send for `request`."""
    return {
        "custom_id": request["request_id"],
        "method": "POST",
        "url": ENDPOINT,
        "body": {
            "model": model,
            "messages": build_messages(request),
            "max_tokens": max_tokens_for(request, max_tokens_cap),
            "response_format": RESPONSE_FORMAT,
            "user": request["site_id"],
        },
    }


def encode_line(line: Mapping[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def prompt_tokens(request: Mapping[str, Any]) -> int:
    """The prompt tokens a line enqueues (the Batch API's limit counts these, per model)."""
    return math.ceil(sum(len(m["content"]) for m in build_messages(request)) / 4) + PROMPT_MARGIN_TOKENS


@dataclass(frozen=True)
class LineResult:
    """One request's line from an output or error file."""

    request_id: str
    article: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    error: ProviderError | None = None  # retryable: a server error, an expired batch; else the request's fault
    billed: BilledCall | None = None  # an answered line is billed, whether its article is usable or not


def article_from_response(request_id: str, response: Any, error: Any, model: str) -> LineResult:
    """A result line's `response` / `error` (JSON of any shape) read as the real-time writer reads a
    completion (`read_completion`); `model` is the one the line asked for (the price table's name)."""
    response = json_object(response)
    status = response.get("status_code")
    status = status if type(status) is int else 0
    body = json_object(response.get("body"))
    if status != 200:
        detail = json_object(body.get("error")) or json_object(error)
        message = json_text(detail.get("message")) or (json_text(error) if not detail else None)
        code = json_text(detail.get("code"))
        text = f"batch line failed ({code or status or 'no answer'}): {message or 'no message'}"
        permanent = 400 <= status < 500 and status != 429
        cls = RejectedRequest if permanent else ProviderUnavailable
        return LineResult(request_id, error=cls(PROVIDER, text, status=status or None))
    article, tokens, billed = read_completion(body, model=model, fallback_id=f"batch-line-{request_id}")
    used = {"prompt_tokens": tokens.prompt_tokens, "completion_tokens": tokens.completion_tokens}
    if isinstance(article, ProviderError):
        return LineResult(request_id, usage=used, error=article, billed=billed)
    return LineResult(request_id, article=article, usage=used, billed=billed)


def read_results(data: bytes, model: str) -> dict[str, LineResult]:
    """Every line of an output or error file, by request id (custom_id); `model`: the batch's."""
    results: dict[str, LineResult] = {}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            row = json_object(read_json(raw))
        except ValueError:
            row = {}
        request_id = json_text(row.get("custom_id"))
        if request_id is None:
            continue  # a line we cannot attribute: its request is found missing and handled as failed
        results[request_id] = article_from_response(request_id, row.get("response"), row.get("error"), model)
    return results


@dataclass(frozen=True)
class BatchUsage:
    """The tokens a batch was billed for, all its lines together (the batch object's `usage`)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # why a batch failed validation (line numbers)
    created_at: float = 0.0
    key: str | None = None  # our batch key, from its metadata
    usage: BatchUsage | None = None  # None: OpenAI did not say (or not in a shape we can read)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def _info(batch: Any) -> BatchInfo:
    """A batch as plain values. The SDK builds its models without validation, so a field may hold any
    JSON: each is read for the type it must have, and a batch without an id or a status is unreadable."""
    batch_id, status = json_text(getattr(batch, "id", None)), json_text(getattr(batch, "status", None))
    if batch_id is None or status is None:
        raise MalformedOutput(PROVIDER, "the Batch API answered a batch without an id or a status")
    listed = getattr(getattr(batch, "errors", None), "data", None)
    errors = [{"code": json_text(getattr(e, "code", None)), "message": json_text(getattr(e, "message", None)),
               "line": line if type(line := getattr(e, "line", None)) is int else None}
              for e in (listed if isinstance(listed, list) else [])]
    created = getattr(batch, "created_at", None)
    created_at = float(created) if type(created) in (int, float) and math.isfinite(created) else 0.0
    metadata = json_object(getattr(batch, "metadata", None))
    return BatchInfo(batch_id, status, json_text(getattr(batch, "output_file_id", None)),
                     json_text(getattr(batch, "error_file_id", None)), errors, created_at,
                     json_text(metadata.get(KEY_FIELD)), _usage(getattr(batch, "usage", None)))


def _usage(usage: Any) -> BatchUsage | None:
    """A batch's `usage` (an SDK model, a dict, or anything): None unless both token counts are whole numbers >= 0."""
    def field_of(value: Any, name: str) -> Any:
        return value.get(name) if isinstance(value, dict) else getattr(value, name, None)

    def count(value: Any) -> int | None:
        return value if type(value) is int and value >= 0 else None

    input_tokens, output_tokens = count(field_of(usage, "input_tokens")), count(field_of(usage, "output_tokens"))
    if usage is None or input_tokens is None or output_tokens is None:
        return None
    cached = count(field_of(field_of(usage, "input_tokens_details"), "cached_tokens")) or 0
    return BatchUsage(input_tokens, output_tokens, min(cached, input_tokens))


class BatchClient(AsyncClosing):
    """Files and batches of one OpenAI organisation. One per worker (pooled HTTP)."""

    def __init__(self, *, base_url: str, api_key: str, timeout: float) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.close()

    async def submit(self, key: str, data: bytes,
                     still_ours: Callable[[], Awaitable[bool]] | None = None) -> BatchInfo | None:
        """Upload `data` (JSONL) and start a 24 h batch on it, named `key` in its metadata.

        `still_ours` is asked between the upload and the create: False (the caller's claim on
        the batch passed to another worker while the file went up) creates nothing; None is returned.
        """
        async with _mapped():
            uploaded = await self._client.files.create(file=(f"{key}.jsonl", data), purpose="batch")
            file_id = json_text(getattr(uploaded, "id", None))
            if file_id is None:
                raise MalformedOutput(PROVIDER, "the Files API answered an upload without a file id")
            if still_ours is not None and not await still_ours():
                return None
            batch = await self._client.batches.create(
                input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", metadata={KEY_FIELD: key},
            )
            return _info(batch)

    async def find(self, key: str, *, created_after: float) -> BatchInfo | None:
        """Our batch named `key`, if it was created (newest first, back to `created_after`)."""
        async with _mapped():
            async for batch in self._client.batches.list(limit=100):
                try:
                    info = _info(batch)
                except MalformedOutput:  # not ours to read: one unreadable batch must not hide ours
                    continue
                if info.key == key:
                    return info
                if info.created_at and info.created_at < created_after:
                    return None
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        async with _mapped():
            return _info(await self._client.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> BatchInfo:
        async with _mapped():
            return _info(await self._client.batches.cancel(batch_id))

    async def content(self, file_id: str) -> bytes:
        async with _mapped():
            return (await self._client.files.content(file_id)).content


class _mapped:
    """SDK errors as ProviderErrors: 429 and 5xx and no answer are retryable, other 4xx are not."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = f"OpenAI Batch API answered {status}: {exc.message}"
            if status == 429 or status >= 500:
                raise ProviderUnavailable(PROVIDER, text, status=status) from exc
            raise RejectedRequest(PROVIDER, text, status=status) from exc
        if isinstance(exc, openai.APIError):  # connection errors, timeouts
            raise ProviderUnavailable(PROVIDER, f"OpenAI Batch API not reachable: {exc}") from exc
        if isinstance(exc, SDK_UNREADABLE_ERRORS) and not isinstance(exc, ProviderError):
            # The SDK failing on a 2xx body it cannot read (not JSON, null, a list where a page should be).
            raise MalformedOutput(PROVIDER, f"unreadable answer from the Batch API ({type(exc).__name__})") from exc
