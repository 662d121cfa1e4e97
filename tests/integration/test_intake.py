"""The HTTP intake and `blogstream submit` on two real workers (docs/intake.md).

One pair of workers serves the whole module (a worker start costs seconds), with
a small queue limit so backpressure is cheap to reach, and an intake token.
Every test waits until its requests are final and both workers' pending figures
are back to 0, so the next test starts from an empty queue.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest

from stack.harness import ROOT, Outcomes, Pipeline, Simulators, summarize
from streams.contract import decode
from tests.integration.conftest import FAST

TOKEN = f"intake-test-token-{uuid.uuid4().hex}"
QUEUE_LIMIT = 6
MAX_BATCH = 50
MAX_BODY = 20_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack_env():
    """A private simulator and database for the module's workers."""
    simulators = Simulators.start(FAST)
    database = asyncio.run(Outcomes.private())
    yield simulators, database
    simulators.stop()
    asyncio.run(database.drop())


@pytest.fixture(scope="module")
def workers(stack_env):
    simulators, database = stack_env
    pipeline = Pipeline(
        database=database.database,
        sim_url=simulators.url,
        settings={
            "intake_token": TOKEN,
            "queue_size_limit": QUEUE_LIMIT,
            "intake_max_batch": MAX_BATCH,
            "intake_max_body_bytes": MAX_BODY,
            "intake_retry_after_seconds": 1,
        },
    )
    pipeline.start_worker()
    pipeline.start_worker()
    try:
        asyncio.run(pipeline.wait_ready())
    except BaseException:
        pipeline.stop()
        raise
    yield pipeline
    pipeline.stop()
    for worker in pipeline.workers:  # no secret in any log line
        assert TOKEN not in worker.log_text()


@pytest.fixture
def sim(stack_env):
    simulators, _ = stack_env
    simulators.reset()
    simulators.configure(FAST | {"openai": {**FAST["openai"], "latency": [1.0, 2.0]}})
    return simulators


@pytest.fixture
async def outcomes(stack_env):
    _, database = stack_env
    await database.clear()  # the previous test left nothing in flight (see `api`)
    return database


@pytest.fixture
async def api(workers, sim, outcomes):
    clients = [httpx.AsyncClient(base_url=w.url(), headers=AUTH, timeout=30) for w in workers.workers]
    for client in clients:  # the intake answers (the limiter being ready does not imply it)
        assert (await client.get("/api/intake")).status_code == 200
    yield clients
    try:
        # Leave an empty queue behind: every worker's figure back to 0.
        deadline = time.time() + 60
        for client in clients:
            while (figure := (await client.get("/api/intake")).json())["pending"] != 0:
                assert time.time() < deadline, f"pending stayed at {figure}"
                await asyncio.sleep(0.5)
    finally:
        for client in clients:
            await client.aclose()


def site_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:6]}"


async def post(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post("/api/blogs", json=body)


async def post_until_accepted(client: httpx.AsyncClient, body: Any, timeout: float = 30) -> list[int]:
    """Statuses seen until a 202, obeying Retry-After (the queue drains meanwhile)."""
    seen, deadline = [], time.time() + timeout
    while True:
        response = await post(client, body)
        seen.append(response.status_code)
        if response.status_code == 202:
            return seen
        assert response.status_code == 429, response.text
        assert time.time() < deadline, f"still refused after {timeout}s: {response.text}"
        await asyncio.sleep(float(response.headers["Retry-After"]))


async def results_for(pipeline: Pipeline, request_id: str, at_least: int, timeout: float = 60) -> list[dict]:
    """BlogResults in blog.results for one request, once there are `at_least` of them."""
    deadline = time.time() + timeout
    while True:
        results = [decode("BlogResult", m.value) for m in await pipeline.read_topic("blog.results", timeout=2)]
        mine = [r for r in results if r["request_id"] == request_id]
        if len(mine) >= at_least or time.time() > deadline:
            return mine
        await asyncio.sleep(1)


# --------------------------------------------------------------------------- backpressure


async def test_over_the_limits_429_then_accepted_again(workers, api, sim, outcomes):
    first, second = api
    small, big = site_name("small"), site_name("big")
    await outcomes.add_sites([small], max_queued=3)
    await outcomes.add_sites([big], max_queued=100)
    sim.configure({"openai": {"latency": [400, 400]}})  # x latency_scale 0.05: each article takes 20 s

    a = [workers.request(small, n) for n in range(3)]
    assert (await post(first, {"requests": a})).status_code == 202

    # the site's own limit: 3 pending of max_queued 3
    over_site = await post(first, workers.request(small, 9))
    assert over_site.status_code == 429 and int(over_site.headers["Retry-After"]) >= 1
    body = over_site.json()
    assert body["reason"] == "site_queue_full" and body["site_id"] == small
    assert (body["pending"], body["limit"], body["room"]) == (3, 3, 0)
    assert f"site {small} has 3 requests pending" in body["error"]
    # its bulk requests are counted apart: a site at its max_queued still sends a backfill
    backfill = [workers.request(small, 30) | {"priority": "bulk"}]
    assert (await post(first, {"requests": backfill})).status_code == 202
    assert (await first.get("/api/intake")).json()["bulk_pending"] == 1
    deadline = time.time() + 10  # the site's view counts its rows, once the sink wrote them
    while (view := (await first.get(f"/api/sites/{small}")).json())["pending_bulk"] < 1:
        assert time.time() < deadline, view
        await asyncio.sleep(0.2)
    assert (view["pending"], view["pending_bulk"]) == (4, 1)

    b = [workers.request(big, n) for n in range(2)]
    assert (await post(first, {"requests": b})).status_code == 202

    # the global limit: 6 pending of QUEUE_SIZE_LIMIT 6, on this worker at once ...
    over_all = await post(first, workers.request(big, 9))
    assert over_all.status_code == 429 and over_all.headers["Retry-After"] == "1"
    assert over_all.json()["reason"] == "queue_full"
    assert "6 requests are pending and the limit is 6" in over_all.json()["error"]
    # a full queue is answered before the body is looked at (refusing a flood must be cheap)
    junk = await first.post("/api/blogs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert junk.status_code == 429 and junk.json()["reason"] == "queue_full"
    # ... and on the other worker as soon as it has read the figure (within about a second)
    deadline = time.time() + 10
    while (await second.get("/api/intake")).json()["pending"] < QUEUE_LIMIT:
        assert time.time() < deadline
        await asyncio.sleep(0.2)
    refused = await post(second, {"requests": [workers.request(big, 10)]})
    assert refused.status_code == 429 and refused.json()["reason"] == "queue_full"

    ids = [r["request_id"] for r in a + b + backfill]
    rows = await outcomes.wait_final(ids, timeout=90, workers=workers.workers)
    assert summarize(rows) == {"DONE": 6}

    # below the limits again: both sites are accepted (once the figure caught up)
    sim.configure({"openai": {"latency": [1.0, 2.0]}})
    later = [workers.request(small, 20), workers.request(big, 20)]
    statuses = await post_until_accepted(second, {"requests": later})
    assert set(statuses) <= {429, 202}
    rows = await outcomes.wait_final([r["request_id"] for r in later], timeout=60, workers=workers.workers)
    assert summarize(rows) == {"DONE": 2}
    # every refused request stayed out of the pipeline
    assert set(await outcomes.rows()) == set(ids) | {r["request_id"] for r in later}


async def test_submit_command_waits_for_room_and_loses_nothing(workers, api, sim, outcomes, tmp_path):
    site = site_name("cli")
    await outcomes.add_sites([site])
    # Articles take 2-3 s (x latency_scale 0.05), so the queue is still full when the command
    # comes back after a refusal: with faster ones it sometimes always found room and never waited.
    sim.configure({"openai": {"latency": [40, 60]}})
    lines = [workers.request(site, n) for n in range(4 * QUEUE_LIMIT)]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "requested_at"}) for r in lines)
                    + "\nnot json\n")

    env = dict(os.environ, BLOGSTREAM_INTAKE_TOKEN=TOKEN)
    done = subprocess.run(
        [str(ROOT / ".venv/bin/blogstream"), "submit", "--file", str(path), "--worker", workers.workers[0].url(),
         "--batch-size", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"submitted {len(lines)} request(s)" in done.stdout
    assert "1 invalid line(s) skipped" in done.stdout and "waited" in done.stdout  # it hit the queue limit
    assert "skipped line 25: not valid JSON" in done.stderr
    assert TOKEN not in output

    rows = await outcomes.wait_final([r["request_id"] for r in lines], timeout=120, workers=workers.workers)
    assert summarize(rows) == {"DONE": len(lines)}
    assert sim.ledger()["wix"]["posts_total"] == len(lines)


async def test_submit_command_reports_unregistered_sites_and_sends_the_rest(workers, api, sim, outcomes, tmp_path):
    site, ghost = site_name("real"), site_name("ghost")
    await outcomes.add_sites([site])
    lines = [workers.request(site, 1), workers.request(ghost, 2), workers.request(site, 3)]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    done = subprocess.run(
        [str(ROOT / ".venv/bin/blogstream"), "submit", "--file", str(path), "--worker", workers.workers[1].url(), "--quiet"],
        cwd=ROOT, env=dict(os.environ, BLOGSTREAM_INTAKE_TOKEN=TOKEN), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2 request(s)" in done.stdout and "1 rejected by the worker" in done.stdout
    assert f"rejected request {lines[1]['request_id']}: requests[1].site_id: site {ghost} is not registered" in done.stderr
    rows = await outcomes.wait_final([lines[0]["request_id"], lines[2]["request_id"]], timeout=60, workers=workers.workers)
    assert summarize(rows) == {"DONE": 2}
    assert lines[1]["request_id"] not in await outcomes.rows()


# --------------------------------------------------------------------------- idempotency


async def test_same_request_id_twice_makes_one_row_and_one_post(workers, api, sim, outcomes, tmp_path):
    first, second = api
    site = site_name("dup")
    await outcomes.add_sites([site])
    done_first = workers.request(site, 1)
    in_flight = workers.request(site, 2)

    # twice while in flight, on both workers
    assert (await post(first, in_flight)).status_code == 202
    assert (await post(second, in_flight)).status_code == 202
    # once, then again after it is DONE: over HTTP, through the submit command, and by a plain producer
    assert (await post(first, done_first)).status_code == 202
    rows = await outcomes.wait_final([done_first["request_id"], in_flight["request_id"]], timeout=60,
                                     workers=workers.workers)
    assert summarize(rows) == {"DONE": 2}
    before = rows[done_first["request_id"]]

    assert (await post(second, done_first)).status_code == 202
    path = tmp_path / "again.jsonl"
    path.write_text(json.dumps(done_first))
    cli = subprocess.run(
        [str(ROOT / ".venv/bin/blogstream"), "submit", "--file", str(path), "--worker", workers.workers[0].url(), "--quiet"],
        cwd=ROOT, env=dict(os.environ, BLOGSTREAM_INTAKE_TOKEN=TOKEN), capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0 and "submitted 1 request(s)" in cli.stdout, cli.stdout + cli.stderr
    await workers.submit([done_first])

    # every copy went all the way through (reusing the first one's effects) ...
    assert len(await results_for(workers, in_flight["request_id"], 2)) == 2
    results = await results_for(workers, done_first["request_id"], 4)
    assert len(results) == 4 and {r["status"] for r in results} == {"DONE"}
    assert {r["post_id"] for r in results} == {before["post_id"]}
    # ... and left one row, unchanged, and one post per request id
    after = (await outcomes.rows([done_first["request_id"]]))[done_first["request_id"]]
    assert (after["status"], after["post_id"], after["finished_at"]) == ("DONE", before["post_id"], before["finished_at"])
    assert len(await outcomes.rows()) == 2
    ledger = sim.ledger()["wix"]
    assert ledger["posts_total"] == 2 and ledger["posts_per_site"] == {site: 2}
    assert sim.ledger()["openai"]["admitted"] == 2
    # no in-flight slot is held by the duplicates
    deadline = time.time() + 20
    while (slots := (await first.get("/api/limiter")).json().get("slots", {})).get(site, 0):
        assert time.time() < deadline, slots
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- bad input


async def test_bad_input_gets_its_documented_answer_and_never_reaches_the_stages(workers, api, sim, outcomes):
    first, _ = api
    site = site_name("bad")
    await outcomes.add_sites([site])

    async def raw(content: bytes, **headers: str) -> httpx.Response:
        return await first.post("/api/blogs", content=content, headers={"Content-Type": "application/json", **headers})

    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("malformed JSON", await raw(b'{"site_id": "x", "topic": '), 400, "the body is not valid JSON"),
        ("not UTF-8", await raw(b"\xff\xfe\x00"), 400, "not UTF-8"),
        ("empty body", await raw(b""), 400, "the body is empty"),
        ("a JSON list", await raw(b"[]"), 422, "must be a JSON object"),
        ("empty batch", await post(first, {"requests": []}), 422, "requests: must not be empty"),
        ("huge batch", await post(first, {"requests": [workers.request(site, n) for n in range(MAX_BATCH + 1)]}),
         422, f"at most {MAX_BATCH} per batch"),
        ("oversized body", await raw(b'{"topic": "' + b"a" * MAX_BODY + b'"}'), 413, f"larger than {MAX_BODY} bytes"),
        ("oversized, chunked", await first.post("/api/blogs", content=_chunks(b"x" * (MAX_BODY + 10))), 413, "larger than"),
        ("missing site", await post(first, {"topic": "No site here"}), 422, "site_id: is required"),
        ("unknown site", await post(first, {"site_id": "nobody-registered-this", "topic": "x"}), 422, "is not registered"),
        ("wrong types", await post(first, workers.request(site, 1, target_words="many", keywords="a,b")), 422,
         "target_words: must be an integer"),
        ("unknown field", await post(first, workers.request(site, 1, colour="red")), 422, "colour: is not a field"),
        ("duplicate id in batch", await post(first, {"requests": [workers.request(site, 1, request_id="same-id")] * 2}),
         422, "requests[1].request_id: repeats requests[0].request_id"),
    ]
    for name, response, status, words in cases:
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["error"], (name, response.json())
        assert response.headers["content-type"].startswith("application/json"), name

    # a batch names every bad item and field, and accepts nothing
    mixed = await post(first, {"requests": [
        workers.request(site, 1), workers.request(site, 2, topic=""), workers.request("ghost-site", 3),
        workers.request(site, 4, keywords=["fine", 7]),
    ]})
    assert mixed.status_code == 422
    assert [(e["item"], e["field"]) for e in mixed.json()["errors"]] == [
        (1, "requests[1].topic"), (2, "requests[2].site_id"), (3, "requests[3].keywords[1]")]

    # HTML and script are plain text: accepted, stored as given, shown as JSON text, published
    evil = '<script>alert("x")</script> <img src=x onerror=alert(1)> & <b>care</b> tips'
    html = workers.request(site, 5, topic=evil, keywords=["<i>care</i>"])
    good = workers.request(site, 6)
    accepted = await post(first, {"requests": [html, good]})
    assert accepted.status_code == 202 and accepted.json()["request_ids"] == [html["request_id"], good["request_id"]]
    rows = await outcomes.wait_final([html["request_id"], good["request_id"]], timeout=60, workers=workers.workers)
    assert summarize(rows) == {"DONE": 2}
    assert json.loads(rows[html["request_id"]]["request"])["topic"] == evil  # stored as given
    shown = await first.get(f"/api/blogs/{html['request_id']}")
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert shown.json()["request"]["topic"] == evil and shown.json()["request"]["keywords"] == ["<i>care</i>"]

    # only the two accepted requests of this test ever reached blog.requests; the stages carried on
    produced = [decode("BlogRequest", m.value) for m in await workers.read_topic("blog.requests")]
    assert sorted(r["request_id"] for r in produced if r["site_id"] == site) == sorted([html["request_id"], good["request_id"]])
    assert not {r["site_id"] for r in produced} & {"nobody-registered-this", "ghost-site"}
    assert not await workers.read_topic("blog.dlq", timeout=1)
    assert all(w.alive for w in workers.workers)


def _chunks(data: bytes):
    async def gen():
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]
    return gen()


# --------------------------------------------------------------------------- reading


async def test_status_history_and_paged_listing(workers, api, sim, outcomes):
    first, second = api
    site = site_name("list")
    await outcomes.add_sites([site])
    base = int(time.time() * 1000)
    requests = [workers.request(site, n, requested_at=base + n) for n in range(5)]
    assert (await post(first, {"requests": requests})).status_code == 202
    single = await post(first, workers.request(site, 9, request_id=f"{site}-single", requested_at=base + 9))
    assert single.headers["location"] == f"/api/blogs/{site}-single"
    assert single.json() == {"accepted": 1, "request_ids": [f"{site}-single"], "request_id": f"{site}-single"}
    ids = [r["request_id"] for r in requests] + [f"{site}-single"]
    await outcomes.wait_final(ids, timeout=60, workers=workers.workers)

    one = (await second.get(f"/api/blogs/{ids[0]}")).json()
    assert one["status"] == "DONE" and one["site_id"] == site and one["post_url"].startswith("https://")
    assert [h["stage"] for h in one["history"]] == ["requested", "drafted", "illustrated", "published"]
    assert one["request"]["topic"] == requests[0]["topic"]

    pages, after = [], None
    while True:
        params = {"limit": 4} | ({"after": after} if after else {})
        page = (await second.get(f"/api/sites/{site}/blogs", params=params)).json()
        pages.append([item["request_id"] for item in page["items"]])
        after = page["next_after"]
        if after is None:
            break
    assert [len(p) for p in pages] == [4, 2]
    listed = [i for p in pages for i in p]
    assert listed == ids[::-1]  # newest first, each once

    missing = await first.get("/api/blogs/never-submitted")
    assert missing.status_code == 404 and "never-submitted" in missing.json()["error"]
    assert (await first.get("/api/blogs/bad%20id")).status_code == 400
    for bad in ("0", "501", "ten"):
        response = await first.get(f"/api/sites/{site}/blogs", params={"limit": bad})
        assert response.status_code == 400 and "limit" in response.json()["error"]


# --------------------------------------------------------------------------- auth


async def test_the_token_is_required_and_never_echoed(workers, api, sim, outcomes):
    site = site_name("auth")
    await outcomes.add_sites([site])
    url = workers.workers[0].url()
    request = workers.request(site, 1)
    async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path, body in (("POST", "/api/blogs", request), ("GET", "/api/blogs/x", None),
                                       ("GET", f"/api/sites/{site}/blogs", None), ("GET", "/api/intake", None)):
                response = await anonymous.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert TOKEN not in response.text
    assert request["request_id"] not in await outcomes.rows()
    produced = await workers.read_topic("blog.requests", timeout=1)
    assert all(m.key.decode() != site and TOKEN.encode() not in m.value for m in produced)
