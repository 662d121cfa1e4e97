"""The OpenAI Files and Batch API simulator, driven by the official SDK."""
from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.asyncio

TERMINAL = {"completed", "failed", "expired", "cancelled"}
STATUSES = TERMINAL | {"validating", "in_progress", "finalizing", "cancelling"}
TOPICS = ["sourdough baking", "kayak touring", "urban beekeeping", "night photography", "tiny houses",
          "trail running", "home composting", "bird watching", "chess openings", "fermented drinks"]


def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)


def messages(topic: str) -> list[dict]:
    return [{"role": "system", "content": "You are a blog writer."},
            {"role": "user", "content": f"Write an article about {topic}."}]


def line(custom_id: str, topic: str = "sourdough baking", model: str = "gpt-4o-mini", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages(topic), "max_tokens": 300, **body}}


def jsonl(*rows) -> bytes:
    """Rows as JSON lines (a str row is written as it is: a broken line on purpose)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


async def submit(c: openai.AsyncOpenAI, data: bytes, **kw) -> openai.types.Batch:
    f = await c.files.create(file=("requests.jsonl", data), purpose="batch")
    return await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  **kw)


async def finish(c: openai.AsyncOpenAI, batch_id: str, timeout: float = 10.0, seen: set | None = None):
    deadline = time.monotonic() + timeout
    while True:
        b = await c.batches.retrieve(batch_id)
        if seen is not None:
            seen.add(b.status)
        if b.status in TERMINAL:
            return b
        assert time.monotonic() < deadline, f"batch still {b.status}"
        await asyncio.sleep(0.01)


async def rows(c: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in (await c.files.content(file_id)).text.splitlines()]


async def test_batch_round_trip_matches_realtime_and_is_billed_apart(sim):
    sim.configure({"openai": {"rpm": 2}})
    c = client(sim)
    data = jsonl(*(line(f"req-{i}", t) for i, t in enumerate(TOPICS[:5])))
    f = await c.files.create(file=("requests.jsonl", data), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data) and f.filename == "requests.jsonl"
    assert f.status == "processed" and f.expires_at == f.created_at + 30 * 86400
    assert (await c.files.retrieve(f.id)).id == f.id and (await c.files.content(f.id)).content == data
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "nightly"})
    assert b.status == "validating" and b.metadata == {"run": "nightly"} and b.input_file_id == f.id
    assert b.expires_at == b.created_at + 86400 and b.completion_window == "24h"
    seen: set[str] = set()
    done = await finish(c, b.id, seen=seen)
    assert seen <= STATUSES and done.status == "completed" and done.model == "gpt-4o-mini"
    assert done.request_counts.total == 5 and done.request_counts.completed == 5 and done.request_counts.failed == 0
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.error_file_id is None and done.errors is None
    out = await rows(c, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == [f"req-{i}" for i in range(5)]
    # the same answer as the real-time endpoint for the same body, and the window never saw the batch
    for r in out:
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200 and r["response"]["request_id"]
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
    first = next(r for r in out if r["custom_id"] == "req-0")["response"]["body"]
    rt = await c.chat.completions.create(model="gpt-4o-mini", messages=messages(TOPICS[0]), max_tokens=300)
    assert rt.choices[0].message.content == first["choices"][0]["message"]["content"]
    assert rt.usage.total_tokens == first["usage"]["total_tokens"]
    led = sim.ledger()["openai"]
    assert led["admitted"] == 1 and led["current_requests_in_window"] == 1   # only the real-time call
    usage = led["usage_by_model"]["gpt-4o-mini"]
    assert usage["realtime"] == {"requests": 1, "prompt_tokens": rt.usage.prompt_tokens,
                                 "completion_tokens": rt.usage.completion_tokens}
    assert usage["batch"]["requests"] == 5
    assert usage["batch"]["prompt_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in out)
    assert usage["batch"]["completion_tokens"] == done.usage.output_tokens
    assert led["batch"]["lines_completed"] == 5 and led["batch"]["by_status"] == {"completed": 1}
    assert led["batch"]["enqueued_tokens"] == {"gpt-4o-mini": 0}


async def test_bad_bodies_fail_their_line_and_line_errors_are_partial(sim):
    sim.configure({"openai": {"batch": {"line_error_rate": 0.4}}})
    c = client(sim)
    bad_role = line("bad-role")
    bad_role["body"]["messages"] = [{"role": "wizard", "content": "hi"}]
    data = jsonl(bad_role, line("bad-max", max_tokens=0), *(line(f"ok-{i}", t) for i, t in enumerate(TOPICS)))
    done = await finish(c, (await submit(c, data)).id)
    assert done.status == "completed" and done.request_counts.total == 12
    out, err = await rows(c, done.output_file_id), await rows(c, done.error_file_id)
    assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)
    assert {r["custom_id"] for r in out} | {r["custom_id"] for r in err} == \
        {"bad-role", "bad-max"} | {f"ok-{i}" for i in range(10)}
    by_id = {r["custom_id"]: r for r in err}
    assert by_id["bad-role"]["response"]["status_code"] == 400 and by_id["bad-role"]["error"] is None
    assert by_id["bad-role"]["response"]["body"]["error"]["param"] == "messages[0].role"
    assert by_id["bad-max"]["response"]["body"]["error"]["code"] == "integer_below_min_value"
    server = [r for r in err if r["response"]["status_code"] == 500]
    assert server and out   # some lines failed at random, the others ran
    assert all(r["response"]["body"]["error"]["type"] == "server_error" for r in server)
    assert sim.ledger()["openai"]["usage_by_model"]["gpt-4o-mini"]["batch"]["requests"] == len(out)


@pytest.mark.parametrize("payload,code,line_no", [
    (jsonl(line("a"), "{not json"), "invalid_json_line", 2),
    (jsonl({"method": "POST", "url": "/v1/chat/completions", "body": {}}), "missing_required_parameter", 1),
    (jsonl(line("a"), line("b"), line("a")), "duplicate_custom_id", 3),
    (jsonl(line("a"), {**line("b"), "url": "/v1/embeddings"}), "url_mismatch", 2),
    (jsonl(line("a"), line("b", model="gpt-4o")), "model_mismatch", 2),
    (jsonl({**line("a"), "method": "GET"}), "invalid_request", 1),
    (b"\n\n", "empty_file", None),
])
async def test_a_malformed_file_fails_the_batch_at_validation(sim, payload, code, line_no):
    c = client(sim)
    done = await finish(c, (await submit(c, payload)).id)
    assert done.status == "failed" and done.failed_at and done.in_progress_at is None
    assert done.output_file_id is None and done.error_file_id is None and done.request_counts.total == 0
    errs = [(e.code, e.line) for e in done.errors.data]
    assert (code, line_no) in errs
    assert sim.ledger()["openai"]["batch"]["lines_completed"] == 0


async def test_batch_limits_requests_and_bytes(sim):
    sim.configure({"openai": {"batch": {"max_requests": 3, "max_input_file_bytes": 600}}})
    c = client(sim)
    many = await finish(c, (await submit(c, jsonl(*(line(f"r{i}") for i in range(4))))).id)
    assert many.status == "failed" and many.errors.data[0].code == "too_many_tasks"
    big = await finish(c, (await submit(c, jsonl(*(line(f"r{i}", "x" * 150) for i in range(3))))).id)
    assert big.status == "failed" and big.errors.data[0].code == "file_too_large"
    assert "larger than the 600 maximum for the gpt-4o-mini model" in big.errors.data[0].message


async def test_upload_rejections_and_file_endpoints(sim):
    sim.configure({"openai": {"batch": {"max_upload_bytes": 1000}}})
    c = client(sim)
    with pytest.raises(openai.BadRequestError) as ei:
        await c.files.create(file=("requests.json", jsonl(line("a"))), purpose="batch")
    assert ei.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"
    with pytest.raises(openai.BadRequestError) as ei:
        await c.files.create(file=("requests.jsonl", "é".encode("latin-1")), purpose="batch")
    assert "utf-8" in ei.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        await c.files.create(file=("requests.jsonl", b"x" * 1001), purpose="batch")
    with pytest.raises(openai.BadRequestError) as ei:
        await c.files.create(file=("requests.jsonl", b"{}"), purpose="homework")  # type: ignore[arg-type]
    assert ei.value.body["param"] == "purpose"
    f = await c.files.create(file=("notes.txt", b"anything"), purpose="user_data")
    assert f.expires_at is None
    assert [x.id async for x in c.files.list(purpose="user_data")] == [f.id]
    deleted = await c.files.delete(f.id)
    assert deleted.deleted is True and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        await c.files.content("file-missing")
    # a batch on a file that is not there, or not for batches, fails at validation
    b = await c.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                               completion_window="24h")
    done = await finish(c, b.id)
    assert done.status == "failed" and done.errors.data[0].param == "input_file_id"


async def test_batch_create_rejects_bad_parameters(sim):
    c = client(sim)
    f = await c.files.create(file=("requests.jsonl", jsonl(line("a"))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as ei:
        await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                               completion_window="1h")  # type: ignore[arg-type]
    assert ei.value.body["param"] == "completion_window"
    with pytest.raises(openai.BadRequestError) as ei:
        await c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert ei.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):
        await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.NotFoundError):
        await c.batches.retrieve("batch_missing")
    async with httpx.AsyncClient() as h:
        r = await h.get(sim.openai_base_url + "/batches")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


async def test_enqueued_token_limit_is_a_pool_per_model_apart_from_tpm(sim):
    per_batch = sum(math.ceil(sum(len(m["content"]) for m in messages(t)) / 4) for t in TOPICS[:3])
    cap = 2 * per_batch + 5   # the pool holds two of these batches, not three
    sim.configure({"openai": {"tpm": 1, "batch": {"enqueued_token_limit": cap, "seconds_per_request": 50}}})
    c = client(sim)
    data = jsonl(*(line(f"r{i}", t) for i, t in enumerate(TOPICS[:3])))
    first = await submit(c, data)
    await asyncio.sleep(0.05)
    second = await submit(c, data)
    await asyncio.sleep(0.05)
    third = await submit(c, data)
    other_model = await submit(c, jsonl(*(line(f"r{i}", t, model="gpt-4o") for i, t in enumerate(TOPICS[:3]))))
    refused = await finish(c, third.id)
    assert refused.status == "failed"
    err = refused.errors.data[0]
    assert err.code == "token_limit_exceeded" and err.line is None
    assert err.message.startswith("Enqueued token limit reached for gpt-4o-mini in organization")
    assert f"Limit: {cap} enqueued tokens" in err.message
    while (await c.batches.retrieve(other_model.id)).status == "validating":
        await asyncio.sleep(0.01)
    led = sim.ledger()["openai"]["batch"]
    assert led["enqueued_tokens"] == {"gpt-4o": per_batch, "gpt-4o-mini": 2 * per_batch}
    assert led["enqueued_token_limit"] == cap
    for b in (first, second, other_model):   # tpm = 1 never stopped a batch line
        assert (await finish(c, b.id)).status == "completed"
    sim.configure({"openai": {"batch": {"seconds_per_request": 1}}})
    again = await finish(c, (await submit(c, data)).id)   # the pool is free again once they ended
    assert again.status == "completed"
    assert sim.ledger()["openai"]["batch"]["enqueued_tokens"] == {"gpt-4o": 0, "gpt-4o-mini": 0}


async def test_unfinished_lines_expire_into_the_error_file(sim):
    # validation 0.02 s, then one line every 0.1 s; the window closes at 0.3 s
    sim.configure({"openai": {"batch": {"seconds_per_request": 10, "completion_window_seconds": 0.3}}})
    c = client(sim)
    b = await submit(c, jsonl(*(line(f"r{i}", t) for i, t in enumerate(TOPICS[:6]))))
    done = await finish(c, b.id)
    assert done.status == "expired" and done.expired_at is not None and done.completed_at is None
    out, err = await rows(c, done.output_file_id), await rows(c, done.error_file_id)
    assert len(out) == done.request_counts.completed == 2
    assert len(err) == done.request_counts.failed == 4
    assert all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in err)


async def test_cancel_keeps_what_ran_and_refuses_finished_batches(sim):
    sim.configure({"openai": {"batch": {"seconds_per_request": 10}}})
    c = client(sim)
    b = await submit(c, jsonl(*(line(f"r{i}", t) for i, t in enumerate(TOPICS))))
    while (await c.batches.retrieve(b.id)).request_counts.completed < 2:
        await asyncio.sleep(0.02)
    cancelling = await c.batches.cancel(b.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = await finish(c, b.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert 2 <= done.request_counts.completed < 10 and done.request_counts.failed == 0
    assert len(await rows(c, done.output_file_id)) == done.request_counts.completed
    assert (await c.batches.cancel(b.id)).status == "cancelled"   # again: no-op
    finished = await finish(c, (await submit(c, jsonl(line("a")))).id)
    with pytest.raises(openai.ConflictError):
        await c.batches.cancel(finished.id)
    sim.configure({"openai": {"batch": {"validation_seconds": 100}}})   # 1 s at this latency_scale
    early = await submit(c, jsonl(line("a")))   # cancelled while validating: nothing runs
    await c.batches.cancel(early.id)
    gone = await finish(c, early.id)
    assert gone.status == "cancelled" and gone.in_progress_at is None and gone.output_file_id is None


async def test_list_batches_newest_first_with_cursor(sim):
    c = client(sim)
    ids = [(await submit(c, jsonl(line("a")))).id for _ in range(3)]
    page = await c.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:0:-1] and page.has_more is True
    rest = await c.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data] == [ids[0]] and rest.has_more is False
    assert [b.id async for b in c.batches.list(limit=1)] == ids[::-1]
    with pytest.raises(openai.BadRequestError):
        await c.batches.list(limit=101)


async def test_a_batchs_files_are_gone_once_they_expire_as_at_openai(sim):
    # The real API deletes a batch's output and error files when they expire (30 days): then 404.
    sim.configure({"openai": {"batch": {"output_file_ttl_seconds": 0.0, "line_error_rate": 0.5}}})
    c = client(sim)
    done = await finish(c, (await submit(c, jsonl(*(line(f"r{i}", t) for i, t in enumerate(TOPICS))))).id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    for file_id in (done.output_file_id, done.error_file_id):
        with pytest.raises(openai.NotFoundError, match="No such File object"):
            await c.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            await c.files.retrieve(file_id)
    assert {f.id async for f in c.files.list()} == {done.input_file_id}  # the input file keeps its 30 days


async def test_files_and_batch_calls_can_be_answered_500(sim):
    c = client(sim)
    done = await finish(c, (await submit(c, jsonl(line("a")))).id)
    sim.configure({"openai": {"batch": {"api_error_rate": 1.0}}})
    for call in (c.batches.retrieve(done.id), c.files.content(done.output_file_id), c.batches.list()):
        with pytest.raises(openai.InternalServerError):
            await call
    sim.configure({"openai": {"batch": {"api_error_rate": 0.0}}})
    assert len(await rows(c, done.output_file_id)) == 1  # nothing was lost: the next call reads it
