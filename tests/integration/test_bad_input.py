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
    # A 401 is permanent: never retried. Each request's media import is tried once, alone or in one bulk call
    # with the site's other imports ready at the same moment.
    assert 1 <= wix["rejected_4xx"] <= len(unauthorised)
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


# --------------------------------------------------------------------------- one record, one request, one outage


def raw_json(value: dict[str, Any]) -> bytes:
    """JSON the way any client writes it: a lone surrogate travels as the escape "\\ud800"."""
    return json.dumps(value, ensure_ascii=True).encode()


async def dlq_by_value(pipeline: Pipeline, values: list[bytes], timeout: float = 60) -> dict[bytes, dict[str, str]]:
    wanted = set(values)
    records = await read_until(pipeline, "blog.dlq", lambda rs: wanted <= {m.value for m in rs},
                               f"{len(wanted)} records in the DLQ", timeout)
    return {m.value: headers_of(m) for m in records if m.value in wanted}


async def test_values_that_break_a_later_stage_are_refused_at_every_entrance(pipeline, sim, outcomes):
    # One partition: the bad records sit between good ones, in the same sink batches.
    pipeline.settings.update(topic_partitions=1)
    await outcomes.add_sites(["shop-h"])
    worker = pipeline.start_worker()
    await pipeline.wait_ready()
    future = int(time.time() * 1000) + 400 * 365 * 86_400_000  # accepted once, then the sink crashed on it

    # HTTP: a 4xx naming the field, never a 503 (a client would retry that forever).
    async with httpx.AsyncClient(timeout=30) as http:
        for field, value in [("topic", "\ud800"), ("topic", "nul\x00"), ("keywords", ["ok", "\udfff"]),
                             ("audience", "x\x00"), ("requested_at", future), ("requested_at", -1),
                             ("requested_at", 1.5), ("requested_at", True), ("requested_at", 10**30)]:
            body = raw_json(pipeline.request("shop-h", 0, **{field: value}))
            answer = await http.post(worker.url("/api/blogs"), content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 422, (field, value, answer.status_code, answer.text)
            assert [e["field"].split("[")[0] for e in answer.json()["errors"]] == [field], answer.text
        answer = await http.post(worker.url("/api/blogs"), content=b'{"site_id": "shop-h", "topic": ' + b"9" * 5000 + b"}",
                                 headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text

    # Raw Kafka: to the DLQ with the reason, FAILED under the id; good requests around them finish.
    good = [pipeline.request("shop-h", n) for n in range(4)]
    bad = {
        "surrogate json": (raw_json(pipeline.request("shop-h", 10, topic="a \ud800 b")), "topic", "surrogates"),
        "nul json": (raw_json(pipeline.request("shop-h", 11, keywords=["a\x00b"])), "keywords[0]", "NUL"),
        "nul avro": (encode("BlogRequest", pipeline.request("shop-h", 12, tone="TONEMARK")).replace(b"TONEMARK", b"TONE\x00ARK"),
                     "tone", "NUL"),  # NUL is valid Avro; Postgres cannot store it
        "future avro": (encode("BlogRequest", pipeline.request("shop-h", 13, requested_at=future)), "requested_at",
                        "one day from now"),
        "future json": (raw_json(pipeline.request("shop-h", 14, requested_at=future)), "requested_at", "one day from now"),
    }
    ids = {}
    for name, (value, field, words) in bad.items():
        with pytest.raises(RecordError) as caught:
            decode_request(value)
        assert [e.field for e in caught.value.errors] == [field] and words in caught.value.reason, name
        ids[name] = caught.value.request_id
    await pipeline.submit(good[:2], raw=[(b"shop-h", value) for value, _, _ in bad.values()])
    await pipeline.submit(good[2:])

    rows = await outcomes.wait_final([r["request_id"] for r in good] + list(ids.values()), timeout=TIMEOUT,
                                     workers=pipeline.workers)
    assert summarize({r["request_id"]: rows[r["request_id"]] for r in good}) == {"DONE": len(good)}
    for name, (_, field, words) in bad.items():
        row = rows[ids[name]]
        assert row["status"] == "FAILED" and field in row["error"] and words in row["error"], (name, row["error"])
    dlq = await dlq_by_value(pipeline, [value for value, _, _ in bad.values()])
    assert all(headers["blogstream-stage"] == "generate" for headers in dlq.values()), dlq
    assert sim.ledger()["wix"]["posts_total"] == len(good)


async def test_a_row_postgres_refuses_does_not_lose_the_rest_of_its_sink_batch(pipeline, sim, outcomes):
    # Something the contract allows but this database refuses (a CHECK added for the test):
    # Postgres rejects the sink's whole batch, and the sink must find the one bad row.
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        await conn.execute("ALTER TABLE blog_generations ADD CONSTRAINT poison_for_the_test "
                           "CHECK (request IS NULL OR request->>'topic' <> 'poison pill')")
    finally:
        await conn.close()
    pipeline.settings.update(topic_partitions=1, sink_batch_seconds=2)  # one partition, big batches
    await outcomes.add_sites(["shop-p"])
    pipeline.start_worker()
    await pipeline.wait_ready()
    good = [pipeline.request("shop-p", n) for n in range(6)]
    poison = pipeline.request("shop-p", 99, topic="poison pill")
    await pipeline.submit(good[:3] + [poison] + good[3:])

    ids = [r["request_id"] for r in good]
    rows = await outcomes.wait_final(ids + [poison["request_id"]], timeout=TIMEOUT, workers=pipeline.workers)
    assert summarize({i: rows[i] for i in ids}) == {"DONE": len(good)}
    # FAILED (the sink could not store it), or DONE once the stages published it after all (the post is up)
    assert rows[poison["request_id"]]["status"] in ("FAILED", "DONE"), rows[poison["request_id"]]
    dlq = await read_until(pipeline, "blog.dlq", lambda rs: any(headers_of(m)["blogstream-stage"] == "sink" for m in rs),
                           "the sink's dead letter")
    sunk = [m for m in dlq if headers_of(m)["blogstream-stage"] == "sink"]
    names = {"blog.requests": "BlogRequest", "blog.drafts": "BlogDraft", "blog.illustrated": "BlogIllustrated"}
    for message in sunk:  # every event of the poison request carries it; nothing of the others is there
        topic = headers_of(message)["blogstream-source"].split("/")[0].removeprefix(pipeline.prefix)
        record = decode(names[topic], message.value)
        assert record.get("request", record)["request_id"] == poison["request_id"]
        assert "poison_for_the_test" in headers_of(message)["blogstream-error"]
    # The stages may still publish the poison request (its row then ends DONE); the good ones once each.
    wix = sim.ledger()["wix"]
    assert wix["posts_total"] in (len(good), len(good) + 1) and not wix["duplicate_slugs"]


async def test_an_unregistered_sites_raw_request_fails_at_once_and_holds_up_no_one(pipeline, sim, outcomes):
    pipeline.settings.update(topic_partitions=1)  # the ghost's record and shop-u's share the partition
    await outcomes.add_sites(["shop-u"])
    pipeline.start_worker()
    await pipeline.wait_ready()
    before = [pipeline.request("shop-u", n) for n in range(3)]
    after = [pipeline.request("shop-u", n) for n in range(3, 6)]
    ghost = {"request_id": f"{pipeline.name}-ghost", "site_id": "ghost-site", "topic": "Haunted houses"}
    started = time.time()
    await pipeline.submit(before, raw=[(b"ghost-site", raw_json(ghost))])
    await pipeline.submit(after)

    ids = [r["request_id"] for r in before + after]
    rows = await outcomes.wait_final(ids + [ghost["request_id"]], timeout=60, workers=pipeline.workers)
    assert summarize({i: rows[i] for i in ids}) == {"DONE": len(ids)}
    row = rows[ghost["request_id"]]
    assert row["status"] == "FAILED" and time.time() - started < 30, row
    assert "site ghost-site is not registered" in row["error"], row["error"]
    assert "blogstream sites add ghost-site" in row["error"] and f"blogstream retry {ghost['request_id']}" in row["error"]


async def test_a_request_id_belongs_to_the_first_site_that_uses_it(pipeline, sim, outcomes):
    await outcomes.add_sites(["shop-x", "shop-y"])
    worker = pipeline.start_worker()
    await pipeline.wait_ready()
    first = pipeline.request("shop-x", 1, request_id=f"{pipeline.name}-shared-id")
    request_id = first["request_id"]
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(worker.url("/api/blogs"), json=first)).status_code == 202
        rows = await outcomes.wait_final([request_id], timeout=TIMEOUT, workers=pipeline.workers)
        assert rows[request_id]["status"] == "DONE"
        post = (rows[request_id]["post_id"], rows[request_id]["post_url"])

        # HTTP: the same id for another site is refused, without naming the site that has it...
        answer = await http.post(worker.url("/api/blogs"), json={**first, "site_id": "shop-y", "topic": "Mine now"})
        assert answer.status_code == 409, answer.text
        assert answer.json()["errors"] == [{"item": 0, "field": "request_id", "message":
                                            f"request id {request_id} is already used by another site; choose another id"}]
        assert "shop-x" not in answer.text
        # ...and the same id for its own site again is the idempotent repeat it always was.
        assert (await http.post(worker.url("/api/blogs"), json=first)).status_code == 202

    # Raw Kafka: another site's record with that id goes to the DLQ and touches nothing of shop-x.
    stolen = encode("BlogRequest", {**first, "site_id": "shop-y", "topic": "Mine now"})
    await pipeline.submit([], raw=[(b"shop-y", stolen)])
    dlq = await dlq_by_value(pipeline, [stolen])
    assert "already used by another site" in dlq[stolen]["blogstream-error"], dlq
    later = pipeline.request("shop-y", 2)  # shop-y's own work goes on
    await pipeline.submit([later])
    rows = await outcomes.wait_final([later["request_id"]], timeout=TIMEOUT, workers=pipeline.workers)
    assert rows[later["request_id"]]["status"] == "DONE"
    row = (await outcomes.rows([request_id]))[request_id]
    assert (row["site_id"], row["status"], row["post_id"], row["post_url"]) == ("shop-x", "DONE", *post)
    assert json.loads(row["request"])["topic"] == first["topic"]  # a plain connection reads jsonb as text
    ledger = sim.ledger()["wix"]
    assert ledger["posts_per_site"] == {"shop-x": 1, "shop-y": 1} and not ledger["duplicate_slugs"]
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        effects = await conn.fetch("SELECT DISTINCT site_id FROM stage_outputs WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert [r["site_id"] for r in effects] == ["shop-x"]
