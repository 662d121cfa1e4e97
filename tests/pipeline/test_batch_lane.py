"""The bulk lane (batch_collect.py, batch_poll.py) against the OpenAI simulator and the real test database.

Each test drives passes of the lane's timer (`run_once`) by hand until a condition
holds (with a deadline), with a stand-in for the send back to blog.requests that
records what would be produced. A test uses a model name of its own, so the lines of
other tests in the shared database are never in its batches.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import pytest
import pytest_asyncio

from connectors.openai_batches import BatchClient, batch_line, encode_line, prompt_tokens
from store.database import Database
from streams.pipeline import batch_collect, batch_poll
from streams.settings import settings
from tests.store.conftest import reachable_database

RUN = f"lane{uuid.uuid4().hex[:8]}"
FAST = {"validation_seconds": 0.0, "seconds_per_request": 1.0, "finalizing_seconds": 0.0,
        "completion_window_seconds": 86_400.0, "line_error_rate": 0.0, "enqueued_token_limit": 2_000_000,
        "api_error_rate": 0.0, "output_file_ttl_seconds": 2_592_000.0}
BASE = {"latency_scale": 0.01, "seed": 5, "openai": {"batch": FAST}}


@pytest.fixture
def sim(sim_server):
    sim_server.configure(BASE)
    sim_server.reset()
    return sim_server


@pytest_asyncio.fixture
async def db():
    async with reachable_database(max_size=5) as database:
        yield database
        for table, column in (("openai_batch_lines", "request_id"), ("stage_outputs", "request_id"),
                              ("openai_batches", "model")):
            await database.pool.execute(f"DELETE FROM {table} WHERE {column} LIKE $1", f"{RUN}-%")


def use_settings(monkeypatch, **changes: Any) -> None:
    """The lane's modules read these settings (the settings object itself is frozen)."""
    changed = batch_collect.settings.model_copy(update=changes)
    for module in (batch_collect, batch_poll):
        monkeypatch.setattr(module, "settings", changed)


@pytest.fixture
def lane(monkeypatch):
    model = f"{RUN}-{uuid.uuid4().hex[:6]}"
    use_settings(monkeypatch, openai_batch_enabled=True, openai_model=model, openai_batch_collect_seconds=0.01,
                 openai_batch_poll_seconds=0.01, openai_batch_failed_lines="retry", openai_batch_max_attempts=3)
    return model


@pytest_asyncio.fixture
async def client(sim):
    async with BatchClient(base_url=sim.openai_base_url, api_key="sk-test", timeout=10.0) as batch_client:
        yield batch_client


class SentBack:
    """What the lane would produce to blog.requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, request: dict[str, Any]) -> None:
        self.requests.append(request)

    def counts(self) -> Counter:
        return Counter(r["request_id"] for r in self.requests)


def requests(n: int, site: str = "shop-bulk") -> list[dict[str, Any]]:
    return [{"request_id": f"{RUN}-{uuid.uuid4().hex[:10]}", "site_id": site, "topic": f"Care guide {i}",
             "keywords": ["care"], "language": "en", "tone": "friendly", "target_words": 300,
             "requested_at": int(time.time() * 1000), "audience": None, "priority": "bulk"} for i in range(n)]


async def hold_all(worker: Any, batch: list[dict[str, Any]]) -> None:
    for request in batch:
        assert await batch_collect.hold(request, worker)


async def passes_until(worker: Any, client: BatchClient, sent: SentBack, done: Callable[[], Awaitable[bool]],
                       timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "the lane did not get there in time"
        await batch_poll.run_once(worker, client, send=sent)
        await asyncio.sleep(0.02)


async def states(db: Database, batch: list[dict[str, Any]]) -> Counter:
    rows = await db.pool.fetch("SELECT state FROM openai_batch_lines WHERE request_id = ANY($1::text[])",
                               [r["request_id"] for r in batch])
    return Counter(r["state"] for r in rows)


def settled(db: Database, batch: list[dict[str, Any]], state: str = "written") -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await states(db, batch))[state] == len(batch)
    return check


def worker(db: Database, name: str = "w-a") -> SimpleNamespace:
    return SimpleNamespace(db=db, worker_id=name)


async def test_bulk_requests_go_through_one_batch_and_come_back_once_with_their_article(sim, db, lane, client):
    batch, sent, w = requests(5), SentBack(), worker(db)
    await hold_all(w, batch)
    await hold_all(w, batch)  # a replayed event holds nothing twice
    await passes_until(w, client, sent, settled(db, batch))
    assert sent.counts() == {r["request_id"]: 1 for r in batch}
    for request in batch:
        effect = await db.get_effect(request["request_id"], "generate")
        assert effect["lane"] == "batch" and effect["article"]["title"] and effect["usage"]["completion_tokens"] > 0
        assert not await batch_collect.hold(request, w)  # sent back: the stage goes on with the stored article
    ledger = sim.ledger()["openai"]
    assert ledger["batch"]["batches_created"] == 1 and ledger["batch"]["lines_completed"] == 5
    assert ledger["usage_by_model"][lane]["realtime"]["requests"] == 0  # not one real-time call
    assert ledger["calls"] == 0  # nor a real-time permit's worth of traffic


async def test_a_restart_after_the_batch_was_created_finds_it_instead_of_sending_it_again(sim, db, lane, client):
    batch, sent = requests(3), SentBack()
    dead, alive = worker(db, "w-dead"), worker(db, "w-alive")
    await hold_all(dead, batch)
    row = await db.assemble_batch(f"{RUN}-k-{uuid.uuid4().hex[:6]}", lane, max_lines=10, max_bytes=10**6,
                                  max_enqueued_tokens=10**6, collect_seconds=0, owner="w-dead", lease_seconds=60)
    # The dead worker marked it, created it at OpenAI, and stopped before recording the batch id.
    assert await db.mark_batch(row.batch_key, "w-dead", "submitting")
    lines = await db.batched_lines(row.batch_key)
    await client.submit(row.batch_key, b"".join(encode_line(batch_collect.line_for(line.request)) for line in lines))
    await db.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' WHERE batch_key = $1",
                          row.batch_key)
    await passes_until(alive, client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1  # found, never sent twice
    assert sent.counts() == {r["request_id"]: 1 for r in batch}


async def test_a_restart_before_the_batch_was_created_sends_it_once(sim, db, lane, client):
    batch, sent = requests(2), SentBack()
    await hold_all(worker(db), batch)
    row = await db.assemble_batch(f"{RUN}-k-{uuid.uuid4().hex[:6]}", lane, max_lines=10, max_bytes=10**6,
                                  max_enqueued_tokens=10**6, collect_seconds=0, owner="w-dead", lease_seconds=60)
    assert await db.mark_batch(row.batch_key, "w-dead", "submitting")  # then it stopped
    await db.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' WHERE batch_key = $1",
                          row.batch_key)
    await passes_until(worker(db, "w-b"), client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1


async def test_an_expired_batchs_unfinished_lines_go_into_the_next_batch(sim, db, lane, client):
    batch, sent, w = requests(3), SentBack(), worker(db)
    sim.configure({"openai": {"batch": {"completion_window_seconds": 0.001, "seconds_per_request": 100.0}}})
    await hold_all(w, batch)

    async def requeued() -> bool:
        rows = await db.pool.fetch("SELECT attempts FROM openai_batch_lines WHERE request_id = ANY($1::text[]) "
                                   "AND state = 'queued'", [r["request_id"] for r in batch])
        return len(rows) == len(batch) and all(r["attempts"] == 1 for r in rows)

    await passes_until(w, client, sent, requeued)
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"expired": 1}
    sim.configure({"openai": {"batch": FAST}})
    await passes_until(w, client, sent, settled(db, batch))
    assert sent.counts() == {r["request_id"]: 1 for r in batch}
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"expired": 1, "completed": 1}


@pytest.mark.parametrize("failed_lines", ["realtime", "retry"])
async def test_failed_lines_are_retried_then_go_to_the_real_time_lane(sim, db, lane, client, monkeypatch, failed_lines):
    use_settings(monkeypatch, openai_batch_failed_lines=failed_lines, openai_batch_max_attempts=2)
    sim.configure({"openai": {"batch": {"line_error_rate": 1.0}}})  # every line answered 500
    batch, sent, w = requests(2), SentBack(), worker(db)
    await hold_all(w, batch)
    await passes_until(w, client, sent, settled(db, batch, "realtime"))
    assert sent.counts() == {r["request_id"]: 1 for r in batch}
    assert sim.ledger()["openai"]["batch"]["batches_created"] == (1 if failed_lines == "realtime" else 2)
    for request in batch:
        assert await db.get_effect(request["request_id"], "generate") is None  # the real-time lane writes it
        assert not await batch_collect.hold(request, w)  # and the generate stage now takes that lane


async def test_a_request_cancelled_while_its_batch_runs_gets_no_article(sim, db, lane, client):
    sim.configure({"openai": {"batch": {"seconds_per_request": 50.0}}})  # 0.5 s a line
    batch, sent, w = requests(2), SentBack(), worker(db)
    await hold_all(w, batch)

    async def submitted() -> bool:
        return (await states(db, batch))["batched"] == 2 and await db.pool.fetchval(
            "SELECT count(*) FROM openai_batches WHERE model = $1 AND state = 'submitted'", lane) == 1

    await passes_until(w, client, sent, submitted)
    cancelled, kept = batch
    await db.pool.execute(
        "INSERT INTO stage_outputs (request_id, stage, site_id, status, payload) "
        "VALUES ($1, 'generate', $2, 'done', '{\"cancelled\": true, \"reason\": \"cancelled by an operator\"}')",
        cancelled["request_id"], cancelled["site_id"])

    async def ended() -> bool:
        return (await states(db, batch)) == Counter({"cancelled": 1, "written": 1})

    await passes_until(w, client, sent, ended)
    assert sent.counts() == {kept["request_id"]: 1}
    assert (await db.get_effect(cancelled["request_id"], "generate"))["cancelled"] is True


async def test_a_batch_whose_requests_were_all_cancelled_is_cancelled_at_openai(sim, db, lane, client):
    sim.configure({"openai": {"batch": {"seconds_per_request": 100.0}}})  # 1 s a line
    batch, sent, w = requests(3), SentBack(), worker(db)
    await hold_all(w, batch)

    async def submitted() -> bool:
        return (await states(db, batch))["batched"] == 3

    await passes_until(w, client, sent, submitted)
    for request in batch:
        await db.pool.execute(
            "INSERT INTO stage_outputs (request_id, stage, site_id, status, payload) "
            "VALUES ($1, 'generate', $2, 'done', '{\"cancelled\": true}')", request["request_id"], request["site_id"])
    await passes_until(w, client, sent, settled(db, batch, "cancelled"))
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"cancelled": 1}
    assert sent.requests == []


async def test_files_keep_within_the_enqueued_token_limit_so_openai_refuses_none(sim, db, lane, client, monkeypatch):
    batch, sent, w = requests(6), SentBack(), worker(db)
    limit = 3 * max(prompt_tokens(r) for r in batch) + 10  # room for three lines' prompts at a time
    use_settings(monkeypatch, openai_batch_enqueued_tokens=limit)
    sim.configure({"openai": {"batch": {"enqueued_token_limit": limit}}})
    await hold_all(w, batch)
    await passes_until(w, client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"completed": 2}  # two files, none refused
    assert sent.counts() == {r["request_id"]: 1 for r in batch}


def test_the_line_is_the_real_time_writers_request(lane):
    (request,) = requests(1)
    line = batch_collect.line_for(request)
    assert line == batch_line(request, model=lane, max_tokens_cap=settings.openai_max_tokens)
    assert batch_collect.takes(request) and not batch_collect.takes(request | {"priority": "interactive"})


async def slow_uploads(client: BatchClient, monkeypatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The client's uploads wait (`uploading` set) until `go_on` is set, then upload."""
    uploading, go_on = asyncio.Event(), asyncio.Event()
    files = client._client.files
    upload = files.create

    async def slow(*args: Any, **kwargs: Any) -> Any:
        uploading.set()
        await go_on.wait()
        return await upload(*args, **kwargs)

    monkeypatch.setattr(files, "create", slow)
    return uploading, go_on


async def test_a_worker_whose_upload_outlasts_its_claim_does_not_create_the_batch_a_second_time(
        sim, db, lane, monkeypatch):
    batch, sent = requests(3), SentBack()
    slow, other = worker(db, "w-slow"), worker(db, "w-other")
    await hold_all(slow, batch)
    await asyncio.sleep(0.05)  # the lines waited the collect time (0.01 s): the next pass sends them
    async with BatchClient(base_url=sim.openai_base_url, api_key="sk-test", timeout=10.0) as slow_client, \
            BatchClient(base_url=sim.openai_base_url, api_key="sk-test", timeout=10.0) as other_client:
        uploading, go_on = await slow_uploads(slow_client, monkeypatch)
        first = asyncio.ensure_future(batch_poll.run_once(slow, slow_client, send=sent))
        await uploading.wait()
        # A 190 MB file takes longer to upload than the batch's claim (CLAIM_SECONDS): it runs out meanwhile,
        # and another worker's pass takes the batch over (not created: it creates it).
        await db.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' "
                              "WHERE model = $1", lane)
        await batch_poll.run_once(other, other_client, send=sent)
        assert sim.ledger()["openai"]["batch"]["batches_created"] == 1
        go_on.set()  # the slow upload ends
        await first
        await passes_until(other, other_client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1  # never paid twice
    assert sent.counts() == {r["request_id"]: 1 for r in batch}


async def test_a_batch_being_uploaded_keeps_its_claim(sim, db, lane, client, monkeypatch):
    monkeypatch.setattr(batch_collect, "CLAIM_SECONDS", 1.0)
    monkeypatch.setattr(batch_poll, "CLAIM_SECONDS", 1.0)
    batch, sent = requests(2), SentBack()
    slow = worker(db, "w-slow")
    await hold_all(slow, batch)
    await asyncio.sleep(0.05)  # the lines waited the collect time (0.01 s): the next pass sends them
    uploading, go_on = await slow_uploads(client, monkeypatch)
    first = asyncio.ensure_future(batch_poll.run_once(slow, client, send=sent))
    await uploading.wait()
    started = await db.pool.fetchval("SELECT claimed_until FROM openai_batches WHERE model = $1", lane)

    async def renewed() -> bool:  # the claim moved on while the upload ran (no other worker may take it)
        return await db.pool.fetchval("SELECT claimed_until > $2::timestamptz + interval '1 second' FROM openai_batches "
                                      "WHERE model = $1 AND claimed_by = 'w-slow'", lane, started)

    deadline = time.monotonic() + 10.0
    try:
        while not await renewed():
            assert time.monotonic() < deadline, "the claim was not renewed while the file was uploaded"
            await asyncio.sleep(0.1)
    finally:
        go_on.set()
        await first
    await passes_until(slow, client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1


ARTICLE = {"title": "Care guide", "slug": "care-guide", "excerpt": "Care.", "body": "Water it weekly.",
           "tags": ["care"], "image_prompt": "a plant", "image_alt": "plant"}


class RealTime:
    """The real-time lane's writer and permits: counts the articles it would pay for."""

    def __init__(self) -> None:
        self.paid: list[str] = []

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        return 100

    async def write_article(self, request: dict[str, Any], *, site_id: str, request_id: str = "") -> Any:
        self.paid.append(request["request_id"])
        return SimpleNamespace(article=ARTICLE, usage=SimpleNamespace(prompt_tokens=10, completion_tokens=90),
                               billed=None, rate_limit=None, from_store=False)

    async def acquire(self, **kwargs: Any) -> Any:
        return SimpleNamespace(usable=lambda: True)

    async def settle(self, *args: Any) -> None:
        pass

    async def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


async def test_a_bulk_request_sent_again_as_interactive_while_its_batch_runs_is_paid_once(
        sim, db, lane, client, monkeypatch):
    from streams.pipeline import generate
    sim.configure({"openai": {"batch": {"seconds_per_request": 50.0}}})  # 0.5 s a line
    (bulk,), sent, w = requests(1), SentBack(), worker(db)
    await hold_all(w, [bulk])

    async def submitted() -> bool:
        return (await states(db, [bulk]))["batched"] == 1 and await db.pool.fetchval(
            "SELECT count(*) FROM openai_batches WHERE model = $1 AND state = 'submitted'", lane) == 1

    await passes_until(w, client, sent, submitted)
    # The same request sent again, without "priority": "bulk" (a backfill file sent again without --priority
    # bulk): an idempotent repeat (docs/intake.md), which must reuse the first submission's article.
    realtime = RealTime()
    deps = _realtime_deps(monkeypatch, db, realtime)
    again = dict(bulk, priority="interactive")
    drafted = await generate.write_draft(again, deps)
    await passes_until(w, client, sent, settled(db, [bulk]))
    if drafted is None:  # held for the batch: it comes back with the batch's article
        assert sent.counts() == {bulk["request_id"]: 1}
    batch_lines_paid = sim.ledger()["openai"]["batch"]["lines_completed"]
    assert len(realtime.paid) + batch_lines_paid == 1, (realtime.paid, batch_lines_paid)


async def test_a_bulk_request_sent_again_as_interactive_before_its_batch_is_paid_once(
        sim, db, lane, client, monkeypatch):
    from streams.pipeline import generate
    (bulk,), sent, w = requests(1), SentBack(), worker(db)
    await hold_all(w, [bulk])
    writing, go_on = asyncio.Event(), asyncio.Event()

    class SlowRealTime(RealTime):  # the article takes tens of seconds: the lane's timer runs meanwhile
        async def write_article(self, request: dict[str, Any], *, site_id: str, request_id: str = "") -> Any:
            writing.set()
            await go_on.wait()
            return await super().write_article(request, site_id=site_id)

    realtime = SlowRealTime()
    deps = _realtime_deps(monkeypatch, db, realtime)
    drafting = asyncio.ensure_future(generate.write_draft(dict(bulk, priority="interactive"), deps))
    await asyncio.wait([drafting, asyncio.ensure_future(writing.wait())], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.05)  # the line waited the collect time
    for _ in range(3):
        await batch_poll.run_once(w, client, send=sent)
    go_on.set()
    await drafting
    batches = await db.pool.fetchval("SELECT count(*) FROM openai_batches WHERE model = $1", lane)
    assert len(realtime.paid) == 1 and batches == 0  # no batch carries the line of an article paid for already


def _realtime_deps(monkeypatch, db: Any, realtime: Any) -> Any:
    """A generate stage's deps whose real-time lane is `realtime` (its permits too), for a registered site."""
    from streams.pipeline import generate, stage

    monkeypatch.setattr(stage, "budgets", realtime)
    monkeypatch.setattr(generate, "budgets", realtime)

    async def site(site_id: str) -> Any:
        return SimpleNamespace(max_in_flight=5, weight=1.0)

    return SimpleNamespace(db=db, worker_id="w-a", writer=realtime, site=site)


# --------------------------------------------------------------------------- when OpenAI cannot give a batch's results


async def line_rows(db: Database, batch: list[dict[str, Any]]) -> list[Any]:
    return await db.pool.fetch("SELECT state, attempts, error FROM openai_batch_lines WHERE request_id = ANY($1::text[])",
                               [r["request_id"] for r in batch])


async def test_a_batch_whose_results_are_gone_is_not_read_again_forever_its_lines_go_on_counted(
        sim, db, lane, client, monkeypatch):
    # OpenAI deletes a batch's output file when it expires (30 days; a lane switched off for a month finds it
    # gone): reading it answers 404 at every poll. Its lines go into the next batch, each such batch a try.
    use_settings(monkeypatch, openai_batch_max_attempts=2)
    sim.configure({"openai": {"batch": {"output_file_ttl_seconds": 0.0}}})  # every batch's files are gone at once
    batch, sent, w = requests(2), SentBack(), worker(db)
    await hold_all(w, batch)
    await passes_until(w, client, sent, settled(db, batch, "realtime"))
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"completed": 2}  # two tries, then the real-time lane
    assert sent.counts() == {r["request_id"]: 1 for r in batch}
    for row in await line_rows(db, batch):
        assert row["attempts"] == 1 and "404" in row["error"] and "No such File object" in row["error"]
    ended = await db.pool.fetch("SELECT error FROM openai_batches WHERE model = $1 AND state = 'ended'", lane)
    assert len(ended) == 2 and all("404" in r["error"] for r in ended)


async def due_now(db: Database, model: str) -> None:
    """Time passed: the batch's next poll is due (its wait moved into the past)."""
    await db.pool.execute("UPDATE openai_batches SET polled_at = now() - interval '1 day', "
                          "next_poll_at = least(next_poll_at, now() - interval '1 second') WHERE model = $1", model)


async def test_a_batch_openai_cannot_read_for_now_waits_longer_each_time_and_loses_nothing(
        sim, db, lane, client, monkeypatch):
    batch, sent, w = requests(2), SentBack(), worker(db)
    await hold_all(w, batch)

    async def at_openai() -> bool:  # sent, and done at OpenAI; the next poll would read its results
        return await db.pool.fetchval("SELECT count(*) FROM openai_batches WHERE model = $1 AND state = 'submitted'",
                                      lane) == 1 and sim.ledger()["openai"]["batch"]["lines_completed"] == 2

    use_settings(monkeypatch, openai_batch_poll_seconds=3600.0)  # the lane looks at it only when due
    await passes_until(w, client, sent, at_openai)
    sim.configure({"openai": {"batch": {"api_error_rate": 1.0}}})  # OpenAI answers 500 for a while
    for failures in (1, 2, 3):
        await due_now(db, lane)
        calls = sim.ledger()["openai"]["batch"]["api_calls"]
        await batch_poll.run_once(w, client, send=sent)
        assert sim.ledger()["openai"]["batch"]["api_calls"] == calls + 1  # looked at once: 500
        await batch_poll.run_once(w, client, send=sent)  # right after: not due, OpenAI is not asked again
        assert sim.ledger()["openai"]["batch"]["api_calls"] == calls + 1
        wait = await db.pool.fetchval(
            "SELECT extract(epoch FROM next_poll_at - polled_at) FROM openai_batches WHERE model = $1", lane)
        assert wait == pytest.approx(3600.0 * 2 ** (failures - 1))  # the poll interval, then longer each time
        assert (await states(db, batch)) == Counter({"batched": 2})  # nothing requeued, nothing paid again
    sim.configure({"openai": {"batch": {"api_error_rate": 0.0}}})
    use_settings(monkeypatch, openai_batch_poll_seconds=0.01)
    await due_now(db, lane)
    await passes_until(w, client, sent, settled(db, batch))
    assert sent.counts() == {r["request_id"]: 1 for r in batch}
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1


async def test_a_batch_whose_results_our_key_may_not_read_waits_for_the_key_to_be_fixed(
        sim, db, lane, client, monkeypatch, caplog):
    # 401/403: every call with the key fails alike until an operator fixes it; the articles are paid for and
    # kept at OpenAI (30 days), so the batch waits (longer each time) instead of paying for them again.
    from connectors.errors import RejectedRequest
    batch, sent, w = requests(1), SentBack(), worker(db)
    await hold_all(w, batch)
    read = client.content

    async def refused(file_id: str) -> bytes:
        raise RejectedRequest("openai", "OpenAI Batch API answered 401: Incorrect API key provided", status=401)

    monkeypatch.setattr(client, "content", refused)

    async def refused_once() -> bool:
        return bool(await db.pool.fetchval("SELECT poll_failures >= 1 FROM openai_batches WHERE model = $1", lane))

    await passes_until(w, client, sent, refused_once)
    assert (await states(db, batch)) == Counter({"batched": 1})
    assert any("OPENAI_API_KEY" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    monkeypatch.setattr(client, "content", read)  # the key is fixed
    await due_now(db, lane)
    await passes_until(w, client, sent, settled(db, batch))
    assert sim.ledger()["openai"]["batch"]["batches_created"] == 1


async def test_a_line_that_makes_every_batch_fail_validation_ends_after_the_tries_with_openais_reason(
        sim, db, lane, client, monkeypatch):
    # The organisation's enqueued-token limit is below one line's prompt (the lane's own setting is the
    # default): every batch with the line fails validation as a whole, naming no line.
    (big,), sent, w = requests(1), SentBack(), worker(db)
    use_settings(monkeypatch, openai_batch_max_attempts=2)
    sim.configure({"openai": {"batch": {"enqueued_token_limit": prompt_tokens(big) // 2}}})
    await hold_all(w, [big])

    async def tried() -> bool:  # ended, or failed more batches than a line may be tried in
        return ((await states(db, [big]))["realtime"] == 1
                or sim.ledger()["openai"]["batch"]["batches_created"] > 2 + 3)

    await passes_until(w, client, sent, tried)
    assert sim.ledger()["openai"]["batch"]["by_status"] == {"failed": 2}
    (row,) = await line_rows(db, [big])
    assert row["state"] == "realtime" and row["attempts"] == 1
    assert "token_limit_exceeded" in row["error"] and "Enqueued token limit reached" in row["error"]
    assert sent.counts() == {big["request_id"]: 1}
