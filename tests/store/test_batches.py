"""store/batches.py: the bulk lane's lines and batches in Postgres (the real blogstream_test database)."""
from __future__ import annotations

import pytest_asyncio

from tests.store.conftest import RUN, aio, uid

pytestmark = aio


@pytest_asyncio.fixture(loop_scope="module")
async def lane(db):
    yield db
    await db.pool.execute("DELETE FROM openai_batch_lines WHERE request_id LIKE $1", f"{RUN}-%")
    await db.pool.execute("DELETE FROM openai_batches WHERE batch_key LIKE $1", f"{RUN}-%")


@pytest_asyncio.fixture(loop_scope="module")
async def site(db):
    async def make(paused: bool = False) -> str:
        site_id = uid("site")
        await db.pool.execute("INSERT INTO sites (site_id, name, wix_api_key, paused) VALUES ($1, $1, 'k', $2)",
                              site_id, paused)
        return site_id
    return make


def request(site_id: str) -> dict:
    return {"request_id": uid("bulk"), "site_id": site_id, "topic": "Cold brew", "priority": "bulk"}


async def hold(db, model: str, site_id: str, n: int, *, tokens: int = 100, size: int = 1000) -> list[str]:
    ids = []
    for _ in range(n):
        r = request(site_id)
        assert await db.hold_batch_line(r, model=model, prompt_tokens=tokens, size=size) == "queued"
        ids.append(r["request_id"])
    return ids


async def assemble(db, model: str, *, lines: int = 100, size: int = 10**6, tokens: int = 10**6, wait: float = 0.0):
    return await db.assemble_batch(uid("batch"), model, max_lines=lines, max_bytes=size, max_enqueued_tokens=tokens,
                                   collect_seconds=wait, owner="w1", lease_seconds=60)


async def test_a_held_request_is_held_once(lane):
    r = request(uid("site"))
    assert await lane.hold_batch_line(r, model="m", prompt_tokens=10, size=100) == "queued"
    assert await lane.hold_batch_line(r | {"topic": "changed"}, model="m", prompt_tokens=99, size=999) == "queued"
    assert await lane.pool.fetchval("SELECT request->>'topic' FROM openai_batch_lines WHERE request_id = $1",
                                    r["request_id"]) == "Cold brew"
    assert await lane.batch_line_state(r["request_id"]) == "queued"
    assert await lane.batch_line_state(uid("none")) is None


async def test_a_request_whose_article_is_in_the_ledger_is_not_held(lane):
    r = request(uid("site"))
    await lane.pool.execute("INSERT INTO stage_outputs (request_id, stage, site_id, status, payload) "
                            "VALUES ($1, 'generate', $2, 'done', '{}')", r["request_id"], r["site_id"])
    assert await lane.hold_batch_line(r, model="m", prompt_tokens=10, size=100) == "effect"
    assert await lane.batch_line_state(r["request_id"]) is None


async def test_a_file_waits_for_company_unless_it_is_full(lane):
    model = uid("model")
    await hold(lane, model, uid("site"), 3)
    assert await assemble(lane, model, wait=3600) is None  # the oldest waited less than an hour, 3 < 100
    full = await assemble(lane, model, lines=3, wait=3600)
    assert full is not None and full.lines == 3 and full.state == "assembled"


async def test_a_file_keeps_to_the_lines_bytes_and_enqueued_token_limits(lane):
    model = uid("model")
    ids = await hold(lane, model, uid("site"), 10, tokens=100, size=1000)
    first = await assemble(lane, model, lines=4)
    assert first.lines == 4 and first.prompt_tokens == 400
    assert [line.request_id for line in await lane.batched_lines(first.batch_key)] == sorted(ids[:4])
    second = await assemble(lane, model, size=2500)
    assert second.lines == 2
    third = await assemble(lane, model, tokens=700)  # 600 enqueued by the two batches still running
    assert third.lines == 1
    assert await assemble(lane, model, tokens=700) is None  # full: nothing until a batch ends
    await lane.pool.execute("UPDATE openai_batches SET state = 'ended' WHERE batch_key = $1", first.batch_key)
    assert (await assemble(lane, model, tokens=700)).lines == 3


async def test_lines_of_paused_or_capped_sites_wait_and_cancelled_lines_are_dropped(lane, site):
    model = uid("model")
    paused, capped, other = await site(paused=True), await site(), await site()
    await lane.pool.execute("UPDATE sites SET budget_exhausted = 'month' WHERE site_id = $1", capped)
    await hold(lane, model, paused, 2)
    await hold(lane, model, capped, 2)
    kept = await hold(lane, model, other, 2)
    cancelled = kept.pop()
    await lane.pool.execute(
        "INSERT INTO stage_outputs (request_id, stage, site_id, status, payload) "
        "VALUES ($1, 'generate', $2, 'done', '{\"cancelled\": true}')", cancelled, other)
    assert await lane.end_cancelled_lines() >= 1
    assert await lane.batch_line_state(cancelled) == "cancelled"
    batch = await assemble(lane, model)
    assert [line.request_id for line in await lane.batched_lines(batch.batch_key)] == kept


async def test_a_claimed_batch_is_no_one_elses_until_its_claim_runs_out(lane):
    model = uid("model")
    await hold(lane, model, uid("site"), 1)
    batch = await assemble(lane, model)
    assert batch.batch_key not in [b.batch_key for b in await lane.claim_batches("w2", lease_seconds=60, poll_seconds=0)]
    assert not await lane.mark_batch(batch.batch_key, "w2", "submitting")
    assert await lane.mark_batch(batch.batch_key, "w1", "submitting")
    assert await lane.extend_batch_claim(batch.batch_key, "w1", lease_seconds=60)
    assert not await lane.extend_batch_claim(batch.batch_key, "w2", lease_seconds=60)
    await lane.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' "
                            "WHERE batch_key = $1", batch.batch_key)
    taken = [b for b in await lane.claim_batches("w2", lease_seconds=60, poll_seconds=0) if b.batch_key == batch.batch_key]
    assert [b.state for b in taken] == ["submitting"]
    assert await lane.mark_batch(batch.batch_key, "w2", "submitted", batch_id=uid("batch_id"), provider_status="x",
                                 release=True)
    # submitted and just polled: not due again until poll_seconds have passed
    assert batch.batch_key not in [b.batch_key for b in await lane.claim_batches("w3", lease_seconds=60, poll_seconds=60)]


async def test_a_batch_claim_that_lapsed_in_a_restart_is_its_owners_for_a_lease(lane):
    """Postgres away longer than the claim: the owner may be uploading; another worker waits a lease after the restart."""
    model = uid("model")
    await hold(lane, model, uid("site"), 1)
    batch = await assemble(lane, model)
    up_for = await lane.pool.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
    await lane.pool.execute(  # last renewed before the server started, and run out
        "UPDATE openai_batches SET claimed_at = pg_postmaster_start_time() - interval '1 second', "
        "claimed_until = now() - interval '1 second' WHERE batch_key = $1", batch.batch_key)

    def keys(batches):
        return [b.batch_key for b in batches]

    assert batch.batch_key not in keys(await lane.claim_batches("w2", lease_seconds=float(up_for) + 3600, poll_seconds=0))
    assert await lane.extend_batch_claim(batch.batch_key, "w1", lease_seconds=60)  # the owner comes back first
    await lane.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' "
                            "WHERE batch_key = $1", batch.batch_key)  # renewed since the start: runs out as usual
    assert batch.batch_key in keys(await lane.claim_batches("w3", lease_seconds=float(up_for) + 3600, poll_seconds=0))

    await lane.pool.execute(
        "UPDATE openai_batches SET claimed_at = pg_postmaster_start_time() - interval '1 second', "
        "claimed_until = now() - interval '1 second' WHERE batch_key = $1", batch.batch_key)
    assert batch.batch_key in keys(await lane.claim_batches("w4", lease_seconds=float(up_for) / 2, poll_seconds=0))


async def test_a_settled_line_is_owed_a_send_back_until_it_is_sent(lane):
    model = uid("model")
    written, realtime, requeued = await hold(lane, model, uid("site"), 3)
    batch = await assemble(lane, model)
    assert await lane.settle_line(written, batch.batch_key, "written")
    assert not await lane.settle_line(written, batch.batch_key, "realtime")  # a replay changes nothing
    assert await lane.settle_line(realtime, batch.batch_key, "realtime", "refused")
    await lane.requeue_line(requeued, batch.batch_key, error="expired", counted=True)
    row = await lane.pool.fetchrow("SELECT state, attempts, batch_key FROM openai_batch_lines WHERE request_id = $1",
                                   requeued)
    assert tuple(row) == ("queued", 1, None)
    owed = {line.request_id for line in await lane.lines_to_send_back(older_than=0)}
    assert {written, realtime} <= owed
    await lane.sent_back(written)
    owed = {line.request_id for line in await lane.lines_to_send_back(older_than=0)}
    assert written not in owed and realtime in owed
    assert await lane.batched_lines(batch.batch_key) == []


async def test_the_lane_figures_count_the_requests_it_holds_and_date_its_oldest_open_batch(tx):
    """What the PENDING alerts set aside (bulk requests waiting for a batch, as designed) and what the
    lane's own alert watches (a batch open past its completion window), in one snapshot rolled back."""
    import time

    view, conn = tx
    held_before, oldest_before = await view.batch_lane_figures()
    model, other = uid("model"), uid("model")
    ids = await hold(view, model, uid("site"), 3)
    held, oldest = await view.batch_lane_figures()
    assert held == {"queued": held_before["queued"] + 3, "batched": held_before["batched"]}
    assert model not in oldest
    old, young, ended = uid("batch"), uid("batch"), uid("batch")
    for key, m, state, age in ((old, model, "submitted", "2 hours"), (young, model, "submitting", "1 minute"),
                               (ended, other, "ended", "3 days")):
        await conn.execute("INSERT INTO openai_batches (batch_key, model, state, lines, prompt_tokens, created_at) "
                           "VALUES ($1, $2, $3, 1, 100, now() - $4::text::interval)", key, m, state, age)
    await conn.execute("UPDATE openai_batch_lines SET state = 'batched', batch_key = $2 WHERE request_id = $1",
                       ids[0], old)
    await conn.execute("UPDATE openai_batch_lines SET state = 'written', batch_key = $2 WHERE request_id = $1",
                       ids[1], old)
    held, oldest = await view.batch_lane_figures()
    assert held == {"queued": held_before["queued"] + 1, "batched": held_before["batched"] + 1}
    assert abs(oldest[model] - (time.time() - 7200)) < 120  # the older open batch (the database's clock)
    assert other not in oldest  # ended
    assert {m: t for m, t in oldest.items() if m not in (model, other)} == oldest_before
