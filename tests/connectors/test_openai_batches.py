"""connectors/openai_batches.py: lines as the real-time writer sends them, results read back, the SDK calls."""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import MalformedOutput, ProviderError, ProviderUnavailable, RejectedRequest
from connectors.openai_batches import (
    KEY_FIELD,
    BatchClient,
    BatchInfo,
    batch_line,
    encode_line,
    prompt_tokens,
    read_results,
)
from connectors.openai_writer import build_messages, max_tokens_for

from .conftest import ANY_JSON, broken_at, outcomes_in_turn, paths_in

REQUEST = {"request_id": "bulk-1", "site_id": "shop-1", "topic": "Cold brew at home", "keywords": ["coffee"],
           "language": "en", "tone": "friendly", "target_words": 300, "requested_at": 1_700_000_000_000,
           "audience": None, "priority": "bulk"}
ARTICLE = {"title": "Cold brew", "slug": "cold-brew", "excerpt": "Steep.", "body": "Steep coffee overnight.",
           "tags": ["coffee"], "image_prompt": "a glass of coffee", "image_alt": "coffee"}


def completion(content: str, finish: str = "stop", refusal: str | None = None) -> dict[str, Any]:
    return {"status_code": 200, "body": {
        "choices": [{"message": {"content": content, "refusal": refusal}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 480}}}


def result_file(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_line_is_the_chat_completion_the_real_time_writer_sends():
    line = batch_line(REQUEST, model="gpt-4o-mini", max_tokens_cap=1200)
    assert line["custom_id"] == "bulk-1" and line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    body = line["body"]
    assert body["model"] == "gpt-4o-mini" and body["user"] == "shop-1"
    assert body["messages"] == build_messages(REQUEST) and body["max_tokens"] == max_tokens_for(REQUEST, 1200)
    assert encode_line(line).endswith(b"\n") and encode_line(line).count(b"\n") == 1
    chars = sum(len(m["content"]) for m in build_messages(REQUEST))
    assert prompt_tokens(REQUEST) >= chars / 4  # never below what the provider counts as enqueued


def test_results_are_read_by_request_id_with_articles_and_errors_that_say_what_to_do():
    data = result_file(
        {"custom_id": "ok", "response": completion(json.dumps(ARTICLE)), "error": None},
        {"custom_id": "cut", "response": completion(json.dumps(ARTICLE), finish="length"), "error": None},
        {"custom_id": "refused", "response": completion("", refusal="no"), "error": None},
        {"custom_id": "bad", "response": {"status_code": 400, "body": {"error": {"message": "bad max_tokens",
                                                                                  "code": "invalid_value"}}}},
        {"custom_id": "server", "response": {"status_code": 500, "body": {"error": {"message": "oops"}}}},
        {"custom_id": "late", "response": None, "error": {"code": "batch_expired", "message": "expired"}},
    ) + b"not json\n"
    results = read_results(data, "gpt-4o-mini")
    assert set(results) == {"ok", "cut", "refused", "bad", "server", "late"}
    assert results["ok"].article["title"] == "Cold brew" and results["ok"].usage == {"prompt_tokens": 120,
                                                                                        "completion_tokens": 480}
    assert results["ok"].billed.prompt_tokens == 120 and results["ok"].billed.model == "gpt-4o-mini"
    assert isinstance(results["cut"].error, MalformedOutput) and "max_tokens" in str(results["cut"].error)
    assert results["cut"].billed.completion_tokens == 480  # billed, though unusable
    assert results["bad"].billed is None
    assert isinstance(results["refused"].error, RejectedRequest)
    assert isinstance(results["bad"].error, RejectedRequest) and "bad max_tokens" in str(results["bad"].error)
    assert not results["bad"].error.retryable
    assert isinstance(results["server"].error, ProviderUnavailable) and results["server"].error.retryable
    assert results["late"].error.retryable and "batch_expired" in str(results["late"].error)


async def wait_ended(client: BatchClient, batch_id: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        info = await client.retrieve(batch_id)
        if info.ended or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_submitted_batch_is_found_by_its_key_and_its_results_read(sim, openai_args):
    sim.configure({"openai": {"batch": {"validation_seconds": 0.0, "seconds_per_request": 1.0,
                                        "finalizing_seconds": 0.0}}})
    requests = [REQUEST | {"request_id": f"bulk-{i}"} for i in range(3)]
    data = b"".join(encode_line(batch_line(r, model="gpt-4o-mini", max_tokens_cap=1200)) for r in requests)
    async with BatchClient(base_url=openai_args["base_url"], api_key=openai_args["api_key"], timeout=10.0) as client:
        info = await client.submit("bs-key-1", data)
        assert info.key == "bs-key-1" and info.status in ("validating", "in_progress")
        assert (await client.find("bs-key-1", created_after=time.time() - 60)).batch_id == info.batch_id
        assert await client.find("bs-other", created_after=time.time() - 60) is None
        ended = await wait_ended(client, info.batch_id)
        assert ended.status == "completed" and ended.output_file_id
        results = read_results(await client.content(ended.output_file_id), "gpt-4o-mini")
    assert sorted(results) == ["bulk-0", "bulk-1", "bulk-2"]
    assert all(r.article and r.article["title"] for r in results.values())
    assert sim.ledger()["openai"]["usage_by_model"]["gpt-4o-mini"]["realtime"]["requests"] == 0


@pytest.mark.asyncio
async def test_errors_of_the_api_are_provider_errors(sim, openai_args):
    async with BatchClient(base_url=openai_args["base_url"], api_key=openai_args["api_key"], timeout=10.0) as client:
        with pytest.raises(RejectedRequest, match="404"):
            await client.retrieve("batch_does_not_exist")
    async with BatchClient(base_url="http://127.0.0.1:9/v1", api_key="k", timeout=2.0) as client:
        with pytest.raises(ProviderUnavailable):
            await client.retrieve("batch_x")
    assert KEY_FIELD == "blogstream_batch"


# --------------------------------------------------------------------------- hostile answers

_BATCH = {"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions", "status": "completed",
          "errors": {"object": "list", "data": [{"code": "invalid_json", "message": "bad line", "line": 3}]},
          "input_file_id": "file-in", "completion_window": "24h", "output_file_id": "file-out",
          "error_file_id": None, "created_at": 1_700_000_000, "metadata": {KEY_FIELD: "bs-key-1"},
          "request_counts": {"total": 1, "completed": 1, "failed": 0},
          "usage": {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 300,
                    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 420}}
_FILE = {"id": "file-in", "object": "file", "bytes": 10, "created_at": 1_700_000_000, "filename": "k.jsonl",
         "purpose": "batch", "status": "processed"}
_LIST = {"object": "list", "data": [_BATCH], "has_more": False, "first_id": "batch_1", "last_id": "batch_1"}
# Each call of the client and the answers it reads, in turn, when all is well.
_BATCH_CALLS = {
    "submit": (lambda c: c.submit("bs-key-1", b"{}\n"), [_FILE, _BATCH]),
    "find": (lambda c: c.find("bs-key-1", created_after=0.0), [_LIST]),
    "retrieve": (lambda c: c.retrieve("batch_1"), [_BATCH]),
    "cancel": (lambda c: c.cancel("batch_1"), [_BATCH]),
}


@st.composite
def _hostile_batch_call(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]]]:
    name = draw(st.sampled_from(sorted(_BATCH_CALLS)))
    answers = []
    for good in _BATCH_CALLS[name][1]:
        status = draw(st.sampled_from([200, 200, 200, 400, 404, 429, 500]))
        if draw(st.integers(0, 3)) == 0:
            answers.append((status, draw(st.binary(max_size=30))))
        else:
            answers.append((status, json.dumps(broken_at(good, draw(st.sampled_from(paths_in(good))),
                                                         draw(ANY_JSON))).encode()))
    return name, answers


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(_hostile_batch_call(), min_size=1, max_size=5))
def test_any_batch_api_answer_is_a_batch_of_plain_values_or_a_provider_error(calls: list) -> None:
    """Whatever the Files and Batch API answer (any status, any body, a good answer with one node broken),
    each call gives a BatchInfo of plain values (or None from find) or raises a ProviderError."""
    outcomes = outcomes_in_turn(lambda url: BatchClient(base_url=url, api_key="k", timeout=5.0),
                                [(_BATCH_CALLS[name][0], answers) for name, answers in calls])
    for outcome in outcomes:
        if outcome is None or isinstance(outcome, ProviderError):
            continue
        assert isinstance(outcome, BatchInfo)
        assert isinstance(outcome.batch_id, str) and outcome.batch_id and isinstance(outcome.status, str)
        assert all(v is None or (isinstance(v, str) and v) for v in (outcome.output_file_id, outcome.error_file_id,
                                                                       outcome.key))
        assert type(outcome.created_at) is float and math.isfinite(outcome.created_at)
        json.dumps(outcome.errors, allow_nan=False)  # plain values, as they are logged and stored
        usage = outcome.usage  # what the batch was billed for: whole token counts, or None (not known)
        assert usage is None or (all(type(n) is int and n >= 0 for n in (usage.input_tokens, usage.output_tokens,
                                                                         usage.cached_tokens))
                                 and usage.cached_tokens <= usage.input_tokens)


_LINE = {"custom_id": "r1", "response": completion(json.dumps(ARTICLE)), "error": None}


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(
    st.binary(max_size=30)
    | st.builds(lambda path, value: json.dumps(broken_at(_LINE, path, value)).encode(),
                st.sampled_from(paths_in(_LINE)), ANY_JSON),
    max_size=6))
def test_any_result_file_reads_as_line_results_by_request_id(lines: list[bytes]) -> None:
    """A result file of any lines: each line attributable to a request is a LineResult with an article, or
    an error that says whether to try again, and whole token counts; the rest are skipped, never an error."""
    results = read_results(b"\n".join(line.replace(b"\n", b" ") for line in lines), "gpt-4o-mini")
    for request_id, result in results.items():
        assert isinstance(request_id, str) and request_id
        assert (result.article is None) != (result.error is None)
        assert result.error is None or isinstance(result.error, ProviderError)
        assert result.article is None or (result.article["title"] and result.article["body"])
        assert all(type(n) is int and n >= 0 for n in (result.usage or {}).values())
