"""streams/pipeline/stage.py call_with_permits: when a provider failing for a passing reason ends a request.

On a fake clock: a back-off advances it and nothing waits, so every mix of
failures, attempts and patience runs in microseconds.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from connectors.errors import ProviderUnavailable, RejectedRequest
from streams.limiter.client import Permit
from streams.pipeline import stage

from .conftest import RetryClock


class AlwaysGranted:
    async def acquire(self, **_):
        return Permit("g", time.time() + 60, {}, 0.0)

    async def observe(self, *_, **__):
        pass


@hsettings(max_examples=150, deadline=None)
@given(fail_first=st.integers(0, 40), max_attempts=st.integers(1, 8),
       patience=st.sampled_from([0.0, 10.0, 30.0, 300.0]), base=st.sampled_from([0.1, 1.0, 5.0]),
       retry_after=st.sampled_from([None, 0.0, 2.0, 120.0]))
def test_a_passing_failure_fails_a_request_only_after_both_the_attempts_and_the_patience_are_spent(
    fail_first, max_attempts, patience, base, retry_after
):
    clock = RetryClock()
    calls: list[float] = []

    async def call():
        calls.append(clock.now)
        if len(calls) <= fail_first:
            raise ProviderUnavailable("wix", "503 busy", status=503, retry_after=retry_after)
        return "posted"

    quick = stage.settings.model_copy(update={"max_attempts": max_attempts, "retry_patience_seconds": patience,
                                               "retry_base_seconds": base})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "settings", quick)
        mp.setattr(stage, "retry_clock", clock)
        mp.setattr(stage, "_back_off", clock.sleep)
        mp.setattr(stage, "budgets", AlwaysGranted())

        async def run():
            try:
                return await stage.call_with_permits(stage="publish", request_id="req-1", site_id="site-a",
                                                     needs={"wix:site-a": 1}, call=call)
            except stage.StageFailed as failed:
                return failed

        answer = asyncio.run(run())

    for n in range(1, len(calls)):  # every try but the last was made while a bound was still unspent
        assert n < max_attempts or calls[n] - calls[0] - _last_wait(calls, n) < patience
    if answer == "posted":
        assert len(calls) == fail_first + 1
    else:
        assert len(calls) >= max_attempts and clock.now - calls[0] >= patience, (len(calls), clock.now - calls[0])
        assert "req-1" in answer.message and "site-a" in answer.message
        assert f"gave up after {len(calls)} attempts" in answer.reason and "blogstream retry req-1" in answer.action
    # The back-off never waits more than a minute, whatever the provider asks.
    assert all(b - a <= 60 * 1.2 + 1e-9 for a, b in zip(calls, calls[1:]))


def _last_wait(calls: list[float], n: int) -> float:
    """The back-off before try n + 1: the decision to try again was made before it."""
    return calls[n] - calls[n - 1]


def failing_for_good(monkeypatch, make_error) -> tuple[stage.StageFailed, list[float]]:
    """call_with_permits on the fake clock with a call that always raises `make_error(n)` (n: its try):
    the StageFailed it ends with, and when each try was made."""
    clock = RetryClock()
    monkeypatch.setattr(stage, "retry_clock", clock)
    monkeypatch.setattr(stage, "_back_off", clock.sleep)
    monkeypatch.setattr(stage, "budgets", AlwaysGranted())
    calls: list[float] = []

    async def call():
        calls.append(clock.now)
        raise make_error(len(calls))

    async def run():
        with pytest.raises(stage.StageFailed) as failed:
            await stage.call_with_permits(stage="generate", request_id="req-2", site_id="site-b",
                                          needs={"wix:site-b": 1}, call=call)
        return failed.value

    return asyncio.run(run()), calls


def test_a_permanent_refusal_fails_at_once_whatever_the_patience(monkeypatch):
    failed, calls = failing_for_good(monkeypatch, lambda n: RejectedRequest("wix", "400 title too long", status=400))
    assert len(calls) == 1 and "retry it later" not in failed.message and "title too long" in failed.message


def test_an_answer_billed_but_unusable_is_paid_for_at_most_max_attempts_times(monkeypatch):
    # OpenAI answered and billed the call, but the article was cut off at max_tokens: not an outage, so the
    # patience that keeps a request alive through one (300 s) must not buy more paid answers.
    from connectors.errors import MalformedOutput
    from connectors.openai_writer import BilledCall

    def cut_off(n: int) -> MalformedOutput:
        exc = MalformedOutput("openai", "the article was cut off at max_tokens=1200; lower target_words or raise "
                              "BLOGSTREAM_OPENAI_MAX_TOKENS")
        exc.billed = BilledCall(call_id=f"chatcmpl-{n}", model="gpt-4o-mini", prompt_tokens=300,
                                completion_tokens=1200)
        return exc

    monkeypatch.setattr(stage, "settings", stage.settings.model_copy(update={
        "max_attempts": 6, "retry_patience_seconds": 300.0, "retry_base_seconds": 1.0}))
    failed, calls = failing_for_good(monkeypatch, cut_off)
    assert len(calls) == 6, f"{len(calls)} paid answers over {calls[-1] - calls[0]:.0f} s"
    assert "retry it later" not in failed.message  # the provider did not fail: its answers were unusable
    assert "lower target_words" in failed.message and "blogstream retry req-2" in failed.action


@hsettings(max_examples=200, deadline=None)
@given(seconds=st.sampled_from([0.0, 0.5, 3.0, 3.99, 4.0, 30.0, 60.0, 600.0]),
       shows_at=st.one_of(st.none(), st.floats(0.0, 700.0)), base=st.sampled_from([0.1, 1.0]))
def test_looking_until_found_finds_what_shows_within_the_wait_in_at_most_four_looks(seconds, shows_at, base):
    clock = RetryClock()
    looks: list[float] = []

    async def look():
        looks.append(clock.now - 1_000.0)
        return "found" if shows_at is not None and clock.now - 1_000.0 >= shows_at else None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "settings", stage.settings.model_copy(update={"retry_base_seconds": base}))
        mp.setattr(stage, "retry_clock", clock)
        mp.setattr(stage, "_back_off", clock.sleep)
        found = asyncio.run(stage.look_until_found(look, seconds=seconds))

    assert (found == "found") == (shows_at is not None and shows_at <= seconds)
    assert 1 <= len(looks) <= 4 and looks[0] == 0.0 and looks[-1] <= seconds + 1e-9
    if found is None:
        assert looks[-1] == pytest.approx(seconds)   # the last look is at the end of the wait, not before
