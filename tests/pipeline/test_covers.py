"""make_cover (streams/pipeline/covers.py) against the Replicate simulator: every call metered, one prediction paid.

The simulator runs in this process (a thread); the connector is the real one
over HTTP. The limiter and the effect ledger are in-memory stand-ins that
record what the stage asked for, so each test compares the simulator's ledger
(calls per endpoint, predictions billed) with the permits taken.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from connectors.replicate_images import ImageMaker
from store.effects import EffectClaim
from streams.limiter.specs import REPLICATE_OTHER_REQUESTS, REPLICATE_REQUESTS
from streams.pipeline import covers, stage
from streams.pipeline.stage import StageFailed

from .conftest import GrantedPermits, grant_all

pytestmark = pytest.mark.asyncio

BASE = {"window_seconds": 60, "latency_scale": 1.0, "seed": 11,
        "replicate": {"latency": [0.05, 0.05], "create_rpm": 600, "other_rpm": 3000}}
REQUEST = {"request_id": "req-covers-1", "site_id": "shop-1"}
ARTICLE = {"image_prompt": "A watercolor of a greenhouse at dawn, no text"}


@pytest.fixture
def sim(sim_server):
    sim_server.configure(BASE)
    sim_server.configure({"replicate": {"other_error_rate": 0.0, "error_rate": 0.0, "fail_rate": 0.0, "cut_rate": 0.0,
                                        "output_ttl_seconds": 3600.0}})
    sim_server.reset()
    return sim_server


class LedgerDb:
    """The effect ledger in memory (claims always succeed: one worker)."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, str], dict] = {}

    async def claim_effect(self, request_id, effect, site_id, *, owner, lease_seconds):
        if (request_id, effect) in self.done:
            return EffectClaim("done", self.done[(request_id, effect)])
        return EffectClaim("acquired")

    async def complete_effect(self, request_id, effect, site_id, payload, *, owner):
        self.done.setdefault((request_id, effect), payload)

    async def release_effect(self, request_id, effect, *, owner):
        pass

    async def extend_effect(self, request_id, effect, *, owner, lease_seconds):
        return True

    async def get_effect(self, request_id, effect):
        return self.done.get((request_id, effect))


@pytest.fixture
def budgets(monkeypatch):
    counting = grant_all(monkeypatch, stage)
    quick = SimpleNamespace(max_attempts=6, retry_base_seconds=0.01, retry_patience_seconds=0.0)
    monkeypatch.setattr(stage, "settings", quick)
    monkeypatch.setattr(covers, "settings", quick)
    return counting


def images(sim, **overrides) -> ImageMaker:
    args = {"base_url": sim.replicate_base_url, "api_token": "r8_test", "model": "black-forest-labs/flux-schnell",
            "timeout": 10.0, "max_connections": 10, "first_poll_s": 0.05, "max_poll_s": 0.1, **overrides}
    return ImageMaker(**args)


def deps_for(maker: ImageMaker, db: LedgerDb | None = None) -> SimpleNamespace:
    return SimpleNamespace(images=maker, db=db or LedgerDb(), worker_id="test-worker")


def permitted(budgets: GrantedPermits) -> dict[str, int]:
    """The permits the stage took, by budget."""
    return {budget: budgets.by_budget()[budget] for budget in (REPLICATE_REQUESTS, REPLICATE_OTHER_REQUESTS)}


def metered(sim) -> dict[str, int]:
    """What the simulator saw: every call that reached it, by budget."""
    endpoints = sim.ledger()["replicate"]["endpoints"]
    return {REPLICATE_REQUESTS: endpoints["create"]["calls"],
            REPLICATE_OTHER_REQUESTS: sum(endpoints[e]["calls"] for e in ("get", "list", "cancel"))}


async def test_a_synchronous_create_costs_one_create_permit_and_no_poll(sim, budgets):
    async with images(sim) as maker:
        image = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker))
    assert image["url"].endswith(".png") and image["prediction_id"]
    assert metered(sim) == {REPLICATE_REQUESTS: 1, REPLICATE_OTHER_REQUESTS: 0} == permitted(budgets)


async def test_a_bulk_requests_cover_asks_its_permits_in_the_bulk_lane(sim, budgets):
    async with images(sim) as maker:
        await covers.make_cover(REQUEST | {"priority": "bulk", "request_id": "cover-bulk-1"}, ARTICLE, deps_for(maker))
    assert budgets.by_lane() == {"bulk": 1}


async def test_a_retrys_cover_asks_its_permits_for_the_retrys_slot(sim, budgets):
    # Named in every ask, the run's own slot is the one the coordinator keeps for it past generate (`later`).
    async with images(sim) as maker:
        await covers.make_cover(REQUEST | {"retry": 2, "request_id": "cover-retry-1"}, ARTICLE, deps_for(maker))
    assert budgets.slots and set(budgets.slots) == {"cover-retry-1#2"}


async def test_failed_polls_are_polled_again_with_a_permit_each_and_one_prediction_is_billed(sim, budgets):
    # The sync wait (1 s) ends before the image (2.5 s): polls follow, half of them answered 503.
    sim.configure({"replicate": {"latency": [2.5, 2.5], "other_error_rate": 0.5}})
    async with images(sim, sync_wait_s=1, first_poll_s=0.1, max_poll_s=0.2) as maker:
        db = LedgerDb()
        image = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))
    led = sim.ledger()["replicate"]
    assert led["endpoints"]["get"]["errors_5xx"] >= 1, "the test needs a failed poll"
    assert led["predictions_created"] == 1 and led["billing"]["predictions"] == 1
    assert metered(sim) == permitted(budgets)  # every call had its own permit
    assert db.done[(REQUEST["request_id"], "image-prediction")]["id"] == image["prediction_id"]


async def test_a_retry_after_the_polls_gave_up_follows_the_same_prediction(sim, budgets):
    sim.configure({"replicate": {"latency": [1.5, 1.5], "other_error_rate": 1.0}})
    db = LedgerDb()
    async with images(sim, sync_wait_s=1) as maker:
        with pytest.raises(StageFailed):
            await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))  # every poll fails: the stage gives up
        assert (REQUEST["request_id"], "image") not in db.done
        sim.configure({"replicate": {"other_error_rate": 0.0}})
        image = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))  # the replay, or `blogstream retry`
    led = sim.ledger()["replicate"]
    assert led["predictions_created"] == 1 and led["billing"]["predictions"] == 1
    assert image["prediction_id"] == db.done[(REQUEST["request_id"], "image-prediction")]["id"]
    assert metered(sim) == permitted(budgets)


async def test_a_failed_prediction_is_replaced_and_a_replay_reuses_the_chain(sim, budgets):
    sim.configure({"replicate": {"fail_rate": 1.0}})
    db = LedgerDb()
    async with images(sim) as maker:
        failing = covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))
        # Let the first prediction fail, then make the model work again.
        original_create = maker.create_prediction

        async def create_then_heal(prompt, *, request_id):
            state = await original_create(prompt, request_id=request_id)
            sim.configure({"replicate": {"fail_rate": 0.0}})
            return state

        maker.create_prediction = create_then_heal  # type: ignore[method-assign]
        image = await failing
        first = db.done[(REQUEST["request_id"], "image-prediction")]
        second = db.done[(REQUEST["request_id"], "image-prediction-2")]
        assert first["status"] == "failed" and second["id"] == image["prediction_id"]

        # A replay with the image effect lost (say, it crashed before recording it) walks the
        # chain: the failed one needs no call, the good one one poll, and nothing is created.
        del db.done[(REQUEST["request_id"], "image")]
        before = metered(sim)
        again = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))
    assert again["url"] == image["url"]
    assert metered(sim) == {REPLICATE_REQUESTS: before[REPLICATE_REQUESTS],
                            REPLICATE_OTHER_REQUESTS: before[REPLICATE_OTHER_REQUESTS] + 1}
    assert sim.ledger()["replicate"]["predictions_created"] == 2
    assert metered(sim) == permitted(budgets)


async def test_a_prediction_past_the_timeout_is_canceled_with_a_permit_before_a_new_one(sim, budgets):
    sim.configure({"replicate": {"latency": [30, 30]}})
    stage.settings.max_attempts = 3  # the fixture's stand-in: three new predictions at most
    async with images(sim, timeout=1.5, sync_wait_s=1, first_poll_s=0.1, max_poll_s=0.2) as maker:
        with pytest.raises(StageFailed) as failed:
            await covers.make_cover(REQUEST, ARTICLE, deps_for(maker))
    assert "3 new Replicate predictions" in failed.value.message  # max_attempts = 3 here
    led = sim.ledger()["replicate"]
    assert led["predictions_created"] == 3 and led["predictions_canceled"] == 3
    assert led["predictions_in_progress"] == 0  # none left running (and billing)
    assert led["endpoints"]["cancel"]["calls"] == 3
    assert metered(sim) == permitted(budgets)


async def test_an_expired_image_is_replaced(sim, budgets):
    db = LedgerDb()
    async with images(sim) as maker:
        sim.configure({"replicate": {"output_ttl_seconds": 1.0}})
        first = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))
        await asyncio.sleep(1.2)  # Replicate deleted the output meanwhile
        del db.done[(REQUEST["request_id"], "image")]
        second = await covers.make_cover(REQUEST, ARTICLE, deps_for(maker, db))
    assert second["prediction_id"] != first["prediction_id"]
    assert sim.ledger()["replicate"]["predictions_created"] == 2
    assert metered(sim) == permitted(budgets)


async def test_predictions_that_all_fail_end_the_request_with_what_replicate_said(sim, budgets):
    # Every prediction fails (here as flux-schnell's safety checker answers): the request ends once
    # max_attempts were made, and its error must say why, or "check the image prompt" leaves the
    # operator guessing what is wrong with it.
    sim.configure({"replicate": {"fail_rate": 1.0}})
    async with images(sim) as maker:
        with pytest.raises(StageFailed) as failed:
            await covers.make_cover(REQUEST | {"request_id": "req-nsfw-1"}, ARTICLE, deps_for(maker))
    assert sim.ledger()["replicate"]["predictions_created"] == 6
    message = failed.value.message
    assert "req-nsfw-1" in message and "shop-1" in message and "blogstream retry req-nsfw-1" in message
    assert "NSFW content detected" in message, message


async def test_a_create_whose_answer_was_cut_off_is_found_again_not_paid_twice(sim, budgets):
    # Replicate made (and bills) the prediction, then the connection reset half-way through its answer: the
    # stage cannot tell whether it was made. Its retry must find that prediction, not create and pay a second.
    db = LedgerDb()
    async with images(sim) as maker:
        create = maker.create_prediction
        cut = []

        async def first_answer_cut(prompt, *, request_id):
            if cut:
                return await create(prompt, request_id=request_id)
            cut.append(True)
            sim.configure({"replicate": {"cut_rate": 1.0}})
            try:
                return await create(prompt, request_id=request_id)
            finally:
                sim.configure({"replicate": {"cut_rate": 0.0}})

        maker.create_prediction = first_answer_cut  # type: ignore[method-assign]
        image = await covers.make_cover(REQUEST | {"request_id": "req-cut-1"}, ARTICLE, deps_for(maker, db))
    led = sim.ledger()["replicate"]
    assert led["answers_cut"] == 1
    assert led["predictions_created"] == 1 and led["billing"]["predictions"] == 1, led["predictions_created"]
    assert db.done[("req-cut-1", "image-prediction")]["id"] == image["prediction_id"]
    assert metered(sim) == permitted(budgets)  # the look-up too had its permit
