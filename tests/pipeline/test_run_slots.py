"""Each run of a request holds an in-flight slot of its own (stage.slot_key): the first run's is named by the
request id, the run `blogstream retry` starts the n-th time by `id#n`. The generate step takes the run's slot
with its first permit, later stages name it in theirs (the coordinator then keeps it past generate), and the
sink frees it with that run's result (tests/pipeline/test_sink_retry_slots.py)."""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams.contract.errors import ID
from streams.limiter.client import Permit
from streams.pipeline import generate, stage
from streams.pipeline.stage import slot_key, slot_of

from .test_publish import LedgerDb

ARTICLE = {"title": "T", "slug": "t", "excerpt": "E", "body": "B", "tags": [], "image_prompt": "p", "image_alt": "a"}


class Writer:
    """OpenAI as generate sees it, with the permits it is given: it keeps the slot each ask names."""

    def __init__(self) -> None:
        self.asks: list[tuple[str, int | None]] = []

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        return 100

    async def write_article(self, request: dict[str, Any], *, site_id: str, request_id: str = "") -> Any:
        return SimpleNamespace(article=ARTICLE, usage=SimpleNamespace(prompt_tokens=10, completion_tokens=90),
                               billed=None, rate_limit=None, from_store=False)

    async def acquire(self, *, site_id, request_id, needs, slot_limit=None, weight=1.0, lane="interactive"):
        self.asks.append((request_id, slot_limit))
        return Permit("g", time.time() + 60, dict(needs), 0.0)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_a_runs_slot_is_named_by_the_request_id_and_the_run():
    assert slot_key("req-1") == slot_key("req-1", 0) == "req-1"  # as before runs were counted: no slot changes name
    assert slot_key("req-1", 3) == "req-1#3"
    assert not ID.fullmatch(slot_key("req-1", 3))  # no request id is another request's run
    assert slot_of({"request_id": "r", "site_id": "s", "retry": 2}) == "r#2"
    assert slot_of({"request": {"request_id": "r", "site_id": "s"}}) == "r"  # a record of before `retry`


@pytest.mark.asyncio
@pytest.mark.parametrize(("retry", "slot"), [(0, "req-7"), (2, "req-7#2")])
async def test_generate_takes_the_slot_of_its_run(monkeypatch, retry, slot):
    writer = Writer()
    monkeypatch.setattr(stage, "budgets", writer)
    monkeypatch.setattr(generate, "budgets", writer)

    async def site(site_id: str) -> Any:
        return SimpleNamespace(max_in_flight=5, weight=1.0)

    deps = SimpleNamespace(db=LedgerDb({}), worker_id="w-a", writer=writer, site=site)
    request = {"request_id": "req-7", "site_id": "shop-1", "topic": "Tea", "requested_at": 1, "retry": retry}
    drafted = await generate.write_draft(request, deps)
    assert drafted["request"]["retry"] == retry  # carried on to the next stages and the result
    assert writer.asks == [(slot, 5)]
