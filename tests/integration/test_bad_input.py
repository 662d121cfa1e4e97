"""Bad input and failing providers, end to end: what a bad record or a bad key leads to.

* Bytes that are not a valid request go to `<prefix>blog.dlq` unchanged, with
  the reason in the `blogstream-error` header; when a request id can still be
  read, the request is FAILED in `blog_generations` with that reason. Good
  requests around them are not held up.
* A request id is an idempotency key: submitting it again never pays or posts twice.
* Transient provider errors (5xx) are retried; a permanent one (Wix 401) fails
  the request at once with what the operator has to fix.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import asyncpg
import httpx
import pytest

from stack.harness import Pipeline, summarize
from streams.contract import RecordError, decode, decode_request, encode

TIMEOUT = 120


def headers_of(message: Any) -> dict[str, str]:
    return {key: value.decode("utf-8", "replace") for key, value in (message.headers or ())}


async def read_until(pipeline: Pipeline, topic: str, done, what: str, timeout: float = 60) -> list[Any]:
    """Every record of `topic`, once `done(records)` holds."""
    deadline = time.time() + timeout
    while True:
        records = await pipeline.read_topic(topic, timeout=2)
        if done(records):
            return records
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {len(records)} records in {topic}")
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- garbage on blog.requests


async def test_garbage_goes_to_the_dead_letter_topic_and_good_requests_still_finish(pipeline, sim, outcomes):
    sites = ["shop-a", "shop-b"]
    await outcomes.add_sites(sites)
    good_before = [pipeline.request(site, n) for n in range(3) for site in sites]
    good_after = [pipeline.request(site, n) for n in range(3, 6) for site in sites]

    # Bad records, keyed like real ones so they sit in the same partitions as good work.
    random_bytes = random.Random(5).randbytes(64)
    truncated_request = pipeline.request("shop-a", 100)
    whole = encode("BlogRequest", truncated_request)
    truncated = whole[: len(whole) - 12]
    missing_field = {"request_id": f"{pipeline.name}-missing-topic", "site_id": "shop-b", "keywords": ["tea"]}
    invalid_json_request = {**pipeline.request("shop-a", 101), "target_words": 5}
    invalid_avro_request = pipeline.request("shop-b", 102, language="not a language!")
    bad = {
        "random bytes": (b"shop-a", random_bytes, None, "neither single-object Avro"),
        "truncated avro": (b"shop-a", truncated, truncated_request["request_id"], "not valid Avro"),
        "json missing a field": (b"shop-b", json.dumps(missing_field).encode(), missing_field["request_id"], "topic: is required"),
        "json invalid field": (b"shop-a", json.dumps(invalid_json_request).encode(), invalid_json_request["request_id"],
                               "target_words: must be between 100 and 5000"),
        "avro invalid field": (b"shop-b", encode("BlogRequest", invalid_avro_request), invalid_avro_request["request_id"],
                               "language: must be a language tag"),
    }
    # The premise, checked here so a change in the decoder is not mistaken for a pipeline bug.
    for name, (_, value, request_id, reason) in bad.items():
        with pytest.raises(RecordError) as caught:
            decode_request(value)
        assert caught.value.request_id == request_id and reason in caught.value.reason, name

    pipeline.start_worker()
    await pipeline.submit(good_before)
    await pipeline.submit([], raw=[(key, value) for key, value, _, _ in bad.values()])
    await pipeline.submit(good_after)

    good_ids = [r["request_id"] for r in good_before + good_after]
    failed_ids = {request_id: reason for _, _, request_id, reason in bad.values() if request_id}
    rows = await outcomes.wait_final(good_ids + list(failed_ids), timeout=TIMEOUT, workers=pipeline.workers)

    assert summarize({i: rows[i] for i in good_ids}) == {"DONE": len(good_ids)}
    for request_id, reason in failed_ids.items():
        row = rows[request_id]
        assert row["status"] == "FAILED" and row["stage"] == "failed", row
        assert row["error"].startswith("invalid generate input:") and reason in row["error"], row["error"]
    # Nothing else was written: the random bytes have no id to record.
    assert set(await outcomes.rows()) == set(good_ids) | set(failed_ids)

    dlq = await read_until(pipeline, "blog.dlq", lambda records: len(records) >= len(bad), "every bad record in the DLQ")
    assert len(dlq) == len(bad)
    by_value = {message.value: message for message in dlq}
    for name, (key, value, _, reason) in bad.items():
        message = by_value.get(value)
        assert message is not None, f"{name} is not in the DLQ unchanged"
        assert message.key == key
        headers = headers_of(message)
        assert reason in headers["blogstream-error"], (name, headers)
        assert headers["blogstream-stage"] == "generate"
        assert headers["blogstream-source"].startswith(f"{pipeline.prefix}blog.requests/")
    # The good requests were each published once.
    assert sim.ledger()["wix"]["posts_total"] == len(good_ids)


# --------------------------------------------------------------------------- duplicates


async def test_the_same_request_id_twice_gives_one_row_and_one_post(pipeline, sim, outcomes):
    await outcomes.add_sites(["shop-d"])
    request = pipeline.request("shop-d", 1)
    other = pipeline.request("shop-d", 2)
    request_id = request["request_id"]
    pipeline.start_worker()

    # Twice at once (both events in flight together), then once more after it is DONE.
    await pipeline.submit([request, other, request])
    rows = await outcomes.wait_final([request_id, other["request_id"]], timeout=TIMEOUT, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": 2}
    await pipeline.submit([request])

    def three_results(records: list[Any]) -> bool:
        return sum(1 for m in records if decode("BlogResult", m.value)["request_id"] == request_id) >= 3

    results = await read_until(pipeline, "blog.results", three_results, "a result for each of the three submissions")
    mine = [decode("BlogResult", m.value) for m in results if decode("BlogResult", m.value)["request_id"] == request_id]
    assert len(mine) == 3
    assert {(r["status"], r["post_id"], r["post_url"]) for r in mine} == {("DONE", rows[request_id]["post_id"], rows[request_id]["post_url"])}

    assert len(await outcomes.rows()) == 2
    ledger = sim.ledger()
    assert ledger["wix"]["posts_per_site"] == {"shop-d": 2}
    assert not ledger["wix"]["duplicate_slugs"]
    assert ledger["openai"]["per_site"]["shop-d"]["admitted"] == 2  # one article per request id
    assert ledger["replicate"]["predictions_created"] == 2  # one cover per request id


# --------------------------------------------------------------------------- provider errors


async def test_openai_5xx_errors_are_retried_until_every_request_is_done(pipeline, sim, outcomes):
    sim.configure({"openai": {"error_rate": 0.3}})
    # Many attempts, short backoff: 0.3^12 makes giving up practically impossible,
    # so the assertion is about the retry loop, not about luck.
    pipeline.settings.update(max_attempts=12, retry_base_seconds=0.1)
    await outcomes.add_sites(["shop-e", "shop-f"])
    requests = [pipeline.request(site, n) for n in range(10) for site in ("shop-e", "shop-f")]
    pipeline.start_worker()
    await pipeline.submit(requests)

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=TIMEOUT, workers=pipeline.workers)

    assert summarize(rows) == {"DONE": len(requests)}, [r["error"] for r in rows.values() if r["error"]]
    openai = sim.ledger()["openai"]
    assert openai["errors_5xx"] > 0, "the simulator injected errors"
    # Each failed call was retried, each successful one was made once.
    assert openai["admitted"] == len(requests) + openai["errors_5xx"]
    assert openai["completions"] == len(requests)


async def test_a_wix_site_without_credentials_fails_with_what_to_fix_and_a_retry_finishes_it(pipeline, sim, outcomes):
    await outcomes.add_sites(["shop-ok", "shop-nokey"])
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        await conn.execute("UPDATE sites SET wix_api_key = '' WHERE site_id = 'shop-nokey'")
    finally:
        await conn.close()
    good = [pipeline.request("shop-ok", n) for n in range(2)]
    unauthorised = [pipeline.request("shop-nokey", n) for n in range(2)]
    pipeline.start_worker()
    await pipeline.submit(good + unauthorised)

    rows = await outcomes.wait_final([r["request_id"] for r in good + unauthorised], timeout=TIMEOUT, workers=pipeline.workers)

    assert all(rows[r["request_id"]]["status"] == "DONE" for r in good)
    for request in unauthorised:
        row = rows[request["request_id"]]
        assert row["status"] == "FAILED" and row["stage"] == "failed"
        error = row["error"]
        assert "publish failed" in error and "shop-nokey" in error and "401" in error, error
        assert "wix_api_key" in error and "sites table" in error, error  # tells the operator what to fix
    wix = sim.ledger()["wix"]
    assert wix["posts_per_site"] == {"shop-ok": 2}
    # A 401 is permanent: tried once per request (the media import), never retried.
    assert wix["rejected_4xx"] == len(unauthorised)
    assert "shop-nokey" not in wix["per_site"]  # turned away before anything counted for the site
    assert "blogstream retry " + unauthorised[0]["request_id"] in rows[unauthorised[0]["request_id"]]["error"]

    # The operator fixes the key and retries: the row goes back to PENDING and
    # ends DONE with one post, and the article already paid for is reused.
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        await conn.execute("UPDATE sites SET wix_api_key = 'wix-key-shop-nokey' WHERE site_id = 'shop-nokey'")
    finally:
        await conn.close()
    await asyncio.sleep(2.5)  # the workers' site cache holds a site for 2 s
    completions_before = sim.ledger()["openai"]["completions"]
    async with httpx.AsyncClient(timeout=30) as http:
        worker = pipeline.workers[0]
        for request in unauthorised:
            answer = await http.post(worker.url(f"/api/blogs/{request['request_id']}/retry"))
            assert answer.status_code == 202, answer.text
            assert "401" in answer.json()["previous_error"]
        again = await http.post(worker.url(f"/api/blogs/{good[0]['request_id']}/retry"))
        assert again.status_code == 409 and "DONE" in again.json()["error"]  # only FAILED requests run again
        unknown = await http.post(worker.url("/api/blogs/no-such-request/retry"))
        assert unknown.status_code == 404
    rows = await outcomes.wait_final([r["request_id"] for r in unauthorised], timeout=TIMEOUT, workers=pipeline.workers)
    assert all(rows[r["request_id"]]["status"] == "DONE" and rows[r["request_id"]]["error"] is None for r in unauthorised)
    wix = sim.ledger()["wix"]
    assert wix["posts_per_site"] == {"shop-ok": 2, "shop-nokey": 2}
    assert sim.ledger()["openai"]["completions"] == completions_before  # articles reused, not written again
