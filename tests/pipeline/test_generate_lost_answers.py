"""A lost OpenAI answer is not paid twice: the next attempt finds the article OpenAI stored for the request.

The writer sends each call with `store: true` and the request id in its metadata (connectors/openai_writer.py);
after an attempt whose answer may be lost (no answer in time, a connection reset, a gateway's 502/504), and
when a run takes over the claim of one that ended that way or died, generate first lists the stored
completions of the request. A fake OpenAI here makes every kind of failure (an answer lost after the article
was written and billed, a failure before it, a 503 OpenAI did not finish, a look-up that fails), and
hypothesis draws the sequences: the article is paid at most once, every call (create or look-up) has its own
request permit, and a look-up asks for no tokens.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from connectors.errors import ProviderUnavailable, RateLimited
from connectors.openai_writer import ArticleResult, BilledCall, TokenUsage
from store.effects import EffectClaim
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS
from streams.pipeline import generate, stage
from streams.pipeline.generate import answer_may_be_lost
from streams.pipeline.stage import StageFailed
from streams.settings import settings

from .conftest import grant_all
from .test_publish import LedgerDb

ARTICLE = {"title": "T", "slug": "t", "excerpt": "E", "body": "B", "tags": [], "image_prompt": "p", "image_alt": "a"}
LOST, BEFORE, FINISHED_NOT, THROTTLED, OK = "lost", "before", "503", "429", "ok"


class StoringOpenAI:
    """OpenAI with stored completions. `outcomes`: what each create does in turn (then OK); `list_fails`: how many
    look-ups fail before one answers; a stored completion is listed `lag` seconds after it is written (on the
    stage's retry clock, `clock`)."""

    stores_completions = True

    def __init__(self, outcomes: list[str], list_fails: int = 0, lag: float = 0.0) -> None:
        self.outcomes, self.list_fails, self.lag = list(outcomes), list_fails, lag
        self.paid: list[str] = []      # completions written and billed
        self.stored: list[tuple[str, float]] = []   # (completion id, when it is listed)
        self.calls: list[str] = []     # "create" / "list", in order

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        return 100

    def _result(self, call_id: str, from_store: bool) -> ArticleResult:
        usage = TokenUsage(10, 90)
        return ArticleResult(article=dict(ARTICLE), usage=usage, rate_limit=None, estimated_tokens=100,
                             billed=BilledCall(call_id, "gpt-4o-mini", 10, 90), from_store=from_store)

    async def write_article(self, request: dict[str, Any], *, site_id: str, request_id: str = "") -> ArticleResult:
        self.calls.append("create")
        outcome = self.outcomes.pop(0) if self.outcomes else OK
        if outcome == BEFORE:
            raise ProviderUnavailable("openai", "no response within 8s", retry_after=0.0)
        if outcome == FINISHED_NOT:
            raise ProviderUnavailable("openai", "The server is overloaded", status=503, retry_after=0.0)
        if outcome == THROTTLED:
            raise RateLimited("openai", "Rate limit reached", status=429, retry_after=0.0)
        call_id = f"chatcmpl-{len(self.paid)}"
        self.paid.append(call_id)
        self.stored.append((call_id, stage.retry_clock() + self.lag))
        if outcome == LOST:  # written and billed, the connection reset on the way back
            raise ProviderUnavailable("openai", "OpenAI's answer could not be read (ClientPayloadError)",
                                      retry_after=0.0)
        return self._result(call_id, False)

    async def find_stored_article(self, request: dict[str, Any], *, request_id: str) -> ArticleResult | None:
        self.calls.append("list")
        if self.list_fails:
            self.list_fails -= 1
            raise ProviderUnavailable("openai", "Bad gateway.", status=502, retry_after=0.0)
        listed = [call_id for call_id, at in self.stored if at <= stage.retry_clock()]
        return self._result(listed[-1], True) if listed else None


@pytest.fixture(autouse=True)
def clock(retry_clock):
    """Back-offs and looks again on a fake clock: nothing waits (the stored completions' lag is on it too)."""
    return retry_clock


def _deps(writer: StoringOpenAI) -> Any:
    async def site(site_id: str) -> Any:
        return SimpleNamespace(max_in_flight=5, weight=1.0)

    return SimpleNamespace(db=LedgerDb({}), worker_id="w-a", writer=writer, site=site)


async def _draft(monkeypatch, writer: StoringOpenAI):
    permits = grant_all(monkeypatch, stage, generate)
    request = {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea", "requested_at": 1}
    drafted = await generate.write_draft(request, _deps(writer))
    return drafted, permits


@pytest.mark.asyncio
async def test_an_article_whose_answer_was_lost_is_found_not_paid_again(monkeypatch):
    writer = StoringOpenAI([LOST])
    drafted, permits = await _draft(monkeypatch, writer)
    assert drafted["article"]["title"] == "T"
    assert writer.paid == ["chatcmpl-0"] and writer.calls == ["create", "list"]
    assert permits.needs == [{OPENAI_REQUESTS: 1, OPENAI_TOKENS: 100}, {OPENAI_REQUESTS: 1}]   # no tokens to list


@pytest.mark.asyncio
async def test_after_a_failure_openai_did_not_finish_there_is_no_look_up(monkeypatch):
    writer = StoringOpenAI([FINISHED_NOT, THROTTLED])
    await _draft(monkeypatch, writer)
    assert writer.calls == ["create", "create", "create"] and len(writer.paid) == 1


@pytest.mark.asyncio
async def test_a_look_up_that_finds_nothing_is_followed_by_the_call_on_a_permit_of_its_own(monkeypatch, clock):
    writer = StoringOpenAI([BEFORE])   # a timeout on the way there: nothing was written
    started = clock.now
    drafted, permits = await _draft(monkeypatch, writer)
    # Looked for over the whole wait (at once, a quarter in, then doubling), then written again.
    assert writer.calls == ["create", "list", "list", "list", "list", "create"] and len(writer.paid) == 1
    assert clock.now - started == pytest.approx(settings.openai_lost_answer_wait_seconds)
    assert permits.by_budget()[OPENAI_REQUESTS] == 6


@pytest.mark.asyncio
@pytest.mark.parametrize("wait", [0.0, 5.0, 60.0, 600.0])
async def test_a_completion_listed_later_than_the_wait_is_paid_again_after_a_few_looks(monkeypatch, wait):
    """The limit of the look-up, stated: OpenAI listing a completion later than the wait costs a second article."""
    monkeypatch.setattr(generate, "settings", settings.model_copy(update={"openai_lost_answer_wait_seconds": wait}))
    writer = StoringOpenAI([LOST], lag=wait + 1)
    await _draft(monkeypatch, writer)
    assert len(writer.paid) == 2
    assert 1 <= writer.calls.count("list") <= 4   # however long the wait, a few looks


WAIT = settings.openai_lost_answer_wait_seconds
OUTCOMES = st.lists(st.sampled_from([LOST, BEFORE, FINISHED_NOT, THROTTLED]), max_size=4)


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(outcomes=OUTCOMES, list_fails=st.integers(0, 1),
       lag=st.sampled_from([0.0, 1.0, WAIT / 4 - 1, WAIT / 4 + 1, 3 * WAIT / 4 - 1, WAIT - 1, WAIT]))
def test_an_article_is_paid_once_whatever_fails(monkeypatch, outcomes, list_fails, lag):
    """However long (within the wait) OpenAI takes to list a stored completion."""
    import asyncio

    writer = StoringOpenAI(outcomes, list_fails, lag)
    drafted, permits = asyncio.run(_draft(monkeypatch, writer))
    assert drafted["article"]["title"] == "T"
    assert len(writer.paid) == 1, (outcomes, writer.calls)   # a lost answer is found, never written again
    assert permits.by_budget()[OPENAI_REQUESTS] == len(writer.calls)   # every call had its own request permit
    assert permits.by_budget()[OPENAI_TOKENS] == writer.calls.count("create")   # tokens for the creates only


@pytest.mark.asyncio
@pytest.mark.parametrize(("last", "freed"), [(LOST, "lapsed"), (FINISHED_NOT, "released")])
async def test_a_run_that_gives_up_on_a_lost_answer_leaves_its_claim_to_lapse(monkeypatch, last, freed):
    """The next run (`blogstream retry`, or the partition's next owner after a stop) must be told the article may
    have been paid: the claim is left to lapse, and the run that takes it over looks first."""
    monkeypatch.setattr(stage, "settings", settings.model_copy(update={"retry_patience_seconds": 0}))
    writer = StoringOpenAI([BEFORE] * (settings.max_attempts - 1) + [last])
    writer.find_stored_article = _nothing_listed(writer)   # (not listed yet)
    permits = grant_all(monkeypatch, stage, generate)
    deps = _deps(writer)
    request = {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea", "requested_at": 1}
    with pytest.raises(StageFailed):
        await generate.write_draft(request, deps)
    assert deps.db.freed == [(freed, "req-1", "generate")]
    assert permits.by_budget()[OPENAI_REQUESTS] == len(writer.calls)


def _nothing_listed(writer: StoringOpenAI):
    async def find_stored_article(request, *, request_id):
        writer.calls.append("list")
        return None
    return find_stored_article


@pytest.mark.asyncio
async def test_nothing_is_looked_up_when_completions_are_not_stored(monkeypatch):
    writer = StoringOpenAI([LOST])
    writer.stores_completions = False
    await _draft(monkeypatch, writer)
    assert writer.calls == ["create", "create"] and len(writer.paid) == 2   # what storing is there to prevent


def test_which_failures_may_have_lost_a_paid_answer():
    assert answer_may_be_lost(ProviderUnavailable("openai", "no response within 8s"))
    assert answer_may_be_lost(ProviderUnavailable("openai", "Gateway timeout.", status=504))
    assert answer_may_be_lost(ProviderUnavailable("openai", "A timeout occurred", status=524))   # Cloudflare
    assert not answer_may_be_lost(ProviderUnavailable("openai", "overloaded", status=503))
    assert not answer_may_be_lost(RateLimited("openai", "Rate limit reached", status=429))
    billed = ProviderUnavailable("openai", "the article was cut off at max_tokens")
    billed.billed = BilledCall("chatcmpl-1", "gpt-4o-mini", 10, 1200)
    assert not answer_may_be_lost(billed)   # read, billed, recorded: its article is what is unusable


class TakenOverLedger(LedgerDb):
    """The request's generate claim was a dead worker's: its lease ran out mid-call."""

    async def claim_effect(self, request_id, effect, site_id, *, owner, lease_seconds):
        claim = await super().claim_effect(request_id, effect, site_id, owner=owner, lease_seconds=lease_seconds)
        return EffectClaim(claim.state, claim.payload, claim.claimed_until, taken_over=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("listed_in", [None, 0.0, WAIT / 2, WAIT])
async def test_a_claim_taken_over_from_a_dead_worker_looks_for_its_article_first(monkeypatch, clock, listed_in):
    """The dead worker's call may have been answered and paid (its answer died with it, listed `listed_in` s after
    the takeover), or never sent (None). When it was sent is not known: the whole wait."""
    writer = StoringOpenAI([])
    if listed_in is not None:
        writer.paid.append("chatcmpl-dead")
        writer.stored.append(("chatcmpl-dead", clock.now + listed_in))
    permits = grant_all(monkeypatch, stage, generate)
    deps = _deps(writer)
    deps.db = TakenOverLedger({})
    request = {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea", "requested_at": 1}
    started = clock.now
    drafted = await generate.write_draft(request, deps)
    assert drafted["article"]["title"] == "T" and len(writer.paid) == 1
    if listed_in is None:
        assert writer.calls == ["list"] * 4 + ["create"] and clock.now - started == pytest.approx(WAIT)
    else:
        assert writer.calls == ["list"] * writer.calls.count("list") and clock.now - started >= listed_in
    assert permits.by_budget()[OPENAI_REQUESTS] == len(writer.calls)


@pytest.mark.asyncio
@pytest.mark.parametrize("ends", ["stop", "look fails"])
async def test_a_takeover_ended_during_its_look_leaves_the_claim_to_lapse(monkeypatch, ends):
    """A stop while it looks, or a look that fails for good: the next run must be told to look too, so the
    claim lapses (it is not freed, which would give the next run a fresh claim that does not look)."""
    writer = StoringOpenAI([])

    async def find_stored_article(request, *, request_id):
        writer.calls.append("list")
        if ends == "stop":
            stage.STOPPING.stopping = True
            return None
        raise ProviderUnavailable("openai", "Bad gateway.", status=502, retry_after=0.0)

    writer.find_stored_article = find_stored_article
    monkeypatch.setattr(stage, "settings", settings.model_copy(update={"retry_patience_seconds": 0}))
    monkeypatch.setattr(stage.STOPPING, "stopping", False)
    grant_all(monkeypatch, stage, generate)
    deps = _deps(writer)
    deps.db = TakenOverLedger({})
    request = {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea", "requested_at": 1}
    with pytest.raises(Exception):
        await generate.write_draft(request, deps)
    assert deps.db.freed == [("lapsed", "req-1", "generate")]
    assert "create" not in writer.calls
