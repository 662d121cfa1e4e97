"""A request whose article is already in the effect ledger takes its run's in-flight slot at generate too.

The slot used to be taken only by the OpenAI permit: a `blogstream retry` of a request that failed after
generate, a bulk request back from the Batch API (batch_poll.py) or a replay asked for no permit, so it
went on to Replicate and Wix outside its site's cap. Here the limiter is the coordinator's book itself
(streams/limiter/book.py), so an ask waits exactly as long as the coordinator would keep it.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.client import Permit
from streams.pipeline import generate, spend, stage
from streams.pipeline.runner import SiteHeld
from streams.pipeline.stage import slot_of

from .test_publish import LedgerDb
from .test_run_slots import ARTICLE, Writer

pytestmark = pytest.mark.asyncio


class BookLimiter:
    """`budgets` over one BudgetBook in this process: every ask and release is followed by a pass."""

    def __init__(self) -> None:
        self.book = BudgetBook({"openai_requests": {"limit": 10**6, "window": 60.0},
                                "openai_tokens": {"limit": 10**9, "window": 60.0}}, grace=0.3)
        self.answers: dict[str, asyncio.Future] = {}
        self.asked: list[tuple[str, dict[str, float], int | None]] = []  # (slot, needs, slot limit)
        self.waits = asyncio.Event()  # set when an ask is left waiting by a pass
        self._ids = itertools.count()

    async def _ask(self, site_id: str, request_id: str, needs: dict[str, float], slot_limit: int | None,
                   lane: str) -> Any:
        self.asked.append((request_id, dict(needs), slot_limit))
        ask = Ask(f"a{next(self._ids)}", site_id, request_id, dict(needs), slot_limit, 1.0, time.time(), 0,
                  lane=lane, worker="w-a")
        answer = self.answers[ask.ask_id] = asyncio.get_running_loop().create_future()
        self.book.saw(ask, time.time())
        self.book.add_ask(ask)
        self._pass()
        if not answer.done():
            self.waits.set()
        return await answer

    async def acquire(self, *, site_id, request_id, needs, slot_limit=None, weight=1.0, lane="interactive"):
        grant = await self._ask(site_id, request_id, needs, slot_limit, lane)
        return Permit(grant.grant_id, grant.use_by, dict(needs), 0.0)

    async def take_slot(self, *, site_id, request_id, slot_limit, weight=1.0, lane="interactive"):
        await self._ask(site_id, request_id, {}, slot_limit, lane)

    async def release_slot(self, site_id: str, request_id: str) -> None:
        self.book.release_slot(site_id, request_id)
        self._pass()

    def _pass(self) -> None:
        for grant in self.book.grant_ready(time.time()):
            self.answers.pop(grant.ask.ask_id).set_result(grant)

    def holders(self, site_id: str) -> set[str]:
        return set(self.book.slot(site_id).holders)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


def retried(request_id: str, retry: int = 1, **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "site_id": "shop-1", "topic": "Tea", "requested_at": 1, "retry": retry, **extra}


def deps_with(ledger: dict, writer: Any, max_in_flight: int = 1, daily_usd: float | None = None, **more: Any) -> Any:
    async def site(site_id: str) -> Any:
        return SimpleNamespace(max_in_flight=max_in_flight, weight=1.0, monthly_budget_usd=None,
                               daily_budget_usd=daily_usd, budget_exhausted=None)

    return SimpleNamespace(db=LedgerDb(ledger), worker_id="w-a", writer=writer, site=site, **more)


@pytest.fixture
def limiter(monkeypatch) -> BookLimiter:
    limiter = BookLimiter()
    for module in (stage, generate, spend):
        monkeypatch.setattr(module, "budgets", limiter)
    return limiter


class CountingWriter(Writer):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    async def write_article(self, request: dict[str, Any], *, site_id: str, request_id: str = "") -> Any:
        self.written += 1
        return await super().write_article(request, site_id=site_id)


@pytest.mark.parametrize("extra", [{}, {"priority": "bulk"}])  # a retry; a bulk request the real-time lane wrote
async def test_requests_whose_articles_are_in_the_ledger_keep_to_the_sites_cap(limiter, extra):
    stored = {"article": ARTICLE, "usage": {"prompt_tokens": 10, "completion_tokens": 90}}
    writer = CountingWriter()
    deps = deps_with({("r1", "generate"): stored, ("r2", "generate"): stored}, writer, max_in_flight=1)
    first, second = retried("r1", **extra), retried("r2", **extra)
    tasks = {asyncio.create_task(generate.write_draft(r, deps)): r for r in (first, second)}
    done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert done, "neither request got its slot"
    passed = tasks[next(iter(done))]
    other = next(t for t, r in tasks.items() if r is not passed)
    waiting = asyncio.create_task(limiter.waits.wait())
    await asyncio.wait({other, waiting}, return_when=asyncio.FIRST_COMPLETED)  # it waits, or it went on
    assert not other.done(), "both requests left generate at once: the site's cap of 1 did not hold"
    assert limiter.holders("shop-1") == {slot_of(passed)}
    await limiter.release_slot("shop-1", slot_of(passed))  # the first one's result (the sink)
    drafted = await asyncio.wait_for(other, timeout=10)
    assert drafted["article"] == ARTICLE and writer.written == 0  # nothing paid again
    assert limiter.holders("shop-1") == {slot_of(tasks[other])}
    assert [(slot, needs) for slot, needs, _ in limiter.asked] == [("r1#1", {}), ("r2#1", {})]
    waiting.cancel()


async def test_an_article_written_now_takes_the_slot_with_its_permit_and_asks_for_no_other(limiter):
    writer = CountingWriter()
    drafted = await generate.write_draft(retried("r1", retry=0), deps_with({}, writer, max_in_flight=3))
    assert drafted["article"] == ARTICLE and writer.written == 1
    assert [(slot, limit) for slot, _, limit in limiter.asked] == [("r1", 3)]
    assert limiter.holders("shop-1") == {"r1"}


async def test_a_cancelled_request_from_the_ledger_takes_no_slot(limiter):
    deps = deps_with({("r1", "generate"): {"cancelled": True, "reason": "cancelled by an operator"}}, Writer())
    with pytest.raises(stage.StageCancelled):
        await generate.write_draft(retried("r1"), deps)
    assert limiter.asked == []


async def test_a_held_site_parks_its_ledger_request_rather_than_wait_for_a_slot(limiter):
    class Costs:
        async def exhausted(self, site_id: str) -> str:
            return "day"

    held: list[str] = []
    stored = {"article": ARTICLE, "usage": {"prompt_tokens": 10, "completion_tokens": 90}}
    deps = deps_with({("r2", "generate"): stored}, Writer(), daily_usd=5.0, costs=Costs(), hold_here=held.append)
    limiter.book.slot("shop-1", 1).add(time.time(), "r1")  # the site's one slot: a request parked in publish
    with pytest.raises(SiteHeld):
        await asyncio.wait_for(generate.write_draft(retried("r2"), deps), timeout=10)
    assert held == ["shop-1"] and limiter.asked == [] and limiter.holders("shop-1") == {"r1"}
