"""Any interleaving of the events of a request's runs (its first, then each `blogstream retry`), as the sink
may read them: in any order across the four topics, in batches of any size, each event read again any
number of times, an earlier run's events arriving after a retry began, and a late DONE of an earlier run.

Through the sink (`store_batch`) into the real test database, with the limiter's slot arithmetic
(`SlotBudget`) as the limiter client. Whatever the interleaving:

- each final result frees its own run's slot, and only that: a running retry keeps its slot until
  its own result comes;
- the row follows the newest run: it ends as that run's outcome (its error, not an older run's),
  and while that run goes on it is PENDING, without an error, at that run's stage;
- DONE wins (the post is on the site, whichever run made it) and is never undone.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.app import drafts_topic, illustrated_topic, requests_topic, results_topic
from streams.contract import encode
from streams.pipeline import sink
from streams.pipeline.stage import slot_key
from tests.store.conftest import RUN, database_on_own_loop, uid

from .test_sink_retry_slots import SITE, Limiter, event, sink_with

NOW = int(time.time() * 1000)
ARTICLE = {"title": "Tea", "slug": "tea", "excerpt": "", "body": "Tea.", "tags": [], "image_prompt": "p", "image_alt": "a"}
USAGE = {"prompt_tokens": 1, "completion_tokens": 1}
RANKS = {"requested": 0, "drafted": 1, "illustrated": 2}
_offsets = itertools.count()


@pytest.fixture(scope="module")
def pg():
    """A Database on a loop of its own: hypothesis runs the examples synchronously."""
    with database_on_own_loop() as (loop, database):
        yield loop, database
        loop.run_until_complete(database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}-%"))


@pytest.fixture
def limiter(pg, monkeypatch):
    return sink_with(pg[1], Limiter(cap=100), monkeypatch)


class Ev(SimpleNamespace):
    """One event of run `run`: `kind` is requested, drafted, illustrated, FAILED or DONE."""

    @property
    def final(self) -> bool:
        return self.kind in ("FAILED", "DONE")


def record(request_id: str, ev: Ev) -> Any:
    request = {"request_id": request_id, "site_id": SITE, "topic": "Tea", "requested_at": NOW, "retry": ev.run}
    if ev.kind == "requested":
        topic, value = requests_topic, encode("BlogRequest", request)
    elif ev.kind == "drafted":
        topic, value = drafts_topic, encode("BlogDraft", {"request": request, "article": ARTICLE, "usage": USAGE,
                                                          "drafted_at": NOW})
    elif ev.kind == "illustrated":
        topic, value = illustrated_topic, encode("BlogIllustrated", {
            "request": request, "article": ARTICLE, "usage": USAGE, "illustrated_at": NOW,
            "image": {"url": "https://i.example/x.png", "prediction_id": "p", "created_at": NOW}})
    else:
        done = ev.kind == "DONE"
        topic, value = results_topic, encode("BlogResult", {
            "request_id": request_id, "site_id": SITE, "status": ev.kind, "stage": "publish" if done else "image",
            "post_id": "post-1" if done else None, "post_url": "https://shop.example/p" if done else None,
            "error": None if done else error_of(ev.run), "finished_at": NOW, "retry": ev.run})
    return event(topic, value, next(_offsets))


def error_of(run: int) -> str:
    return f"image failed in run {run}: the prompt was refused. Fix it, then: blogstream retry"


@st.composite
def interleavings(draw: Any) -> list[Any]:
    """A timeline: ("start", run), ("batch", [Ev, ...]) and ("reopen", run) steps.

    Run r < last ends FAILED, read before its retry reopens the row (a retry needs a FAILED row); its
    other events may come at any later time. The last run ends FAILED, DONE or not yet. Any event read
    may be read again later; a late DONE of an earlier run may come after the last reopen.
    """
    last = draw(st.integers(0, 3))
    last_final = draw(st.sampled_from([None, "FAILED", "DONE"]))
    timeline: list[Any] = []
    deferred: list[Ev] = []
    seen: list[Ev] = []
    for run in range(last + 1):
        timeline.append(("start", run))
        progress = [Ev(run=run, kind=k) for k in ("requested", "drafted", "illustrated")]
        if run < last:
            final = [Ev(run=run, kind="FAILED")]
        else:
            final = [Ev(run=run, kind=last_final)] if last_final else []
            if run > 0 and draw(st.booleans()):  # an earlier run's post landed after all, and its DONE comes late
                final.append(Ev(run=draw(st.integers(0, run - 1)), kind="DONE"))
        now: list[Ev] = list(final)
        deferred_next: list[Ev] = []
        for ev in progress + deferred:
            if run == last or draw(st.booleans()):
                now.append(ev)
            else:
                deferred_next.append(ev)
        deferred = deferred_next
        replays = draw(st.lists(st.sampled_from(seen), max_size=4)) if seen else []
        phase = draw(st.permutations(now + replays))
        seen.extend(now)
        while phase:
            size = draw(st.integers(1, len(phase)))
            timeline.append(("batch", phase[:size]))
            phase = phase[size:]
        if run < last:
            timeline.append(("reopen", run + 1))
    return timeline


@settings(database=None, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(timeline=interleavings())
def test_every_run_frees_its_own_slot_and_the_row_ends_as_the_newest_run(pg: Any, limiter: Limiter,
                                                                         timeline: list[Any]) -> None:
    loop, database = pg
    request_id = uid("runs")
    limiter.slots.holders.clear()
    current, ended, done, stage = 0, False, False, "requested"  # what the row must follow
    for step, value in timeline:
        if step == "start":
            current, ended, stage = value, False, "requested"
            if current == 0:  # the generate stage claims the id first (`request_owner`), with the request
                request = {"request_id": request_id, "site_id": SITE, "topic": "Tea", "requested_at": NOW}
                loop.run_until_complete(database.request_owner(request_id, SITE, request=request))
            assert limiter.take(slot_key(request_id, current))
            continue
        if step == "reopen":
            reopened = loop.run_until_complete(database.reopen_failed(request_id))
            assert reopened is not None and reopened[0]["retry"] == value  # the retry sends the next run
            continue
        before = len(limiter.released)
        loop.run_until_complete(sink.store_batch([record(request_id, ev) for ev in value]))
        # Each final result frees its own run's slot: once per result read, and no other slot.
        assert Counter(limiter.released[before:]) == Counter(slot_key(request_id, ev.run) for ev in value if ev.final)
        for ev in value:
            done |= ev.kind == "DONE"
            if ev.run == current:
                ended |= ev.final
                if not ev.final and RANKS[ev.kind] > RANKS[stage]:
                    stage = ev.kind
        # The running run keeps its slot until its own result comes; the row says how the newest run stands.
        assert (slot_key(request_id, current) in limiter.slots.holders) == (not ended)
        assert_row(loop.run_until_complete(database.get_generation(request_id)), current, done, ended, stage)
    assert set(limiter.slots.holders) == (set() if ended else {slot_key(request_id, current)})


def assert_row(row: dict[str, Any], current: int, done: bool, ended: bool, stage: str) -> None:
    assert row["retry"] == current
    if done:  # DONE wins, whichever run posted, and is never undone
        assert (row["status"], row["stage"], row["error"], row["post_url"]) == (
            "DONE", "published", None, "https://shop.example/p")
    elif ended:  # the newest run's failure, with its own error
        assert (row["status"], row["stage"], row["error"]) == ("FAILED", "failed", error_of(current))
    else:  # the newest run goes on: no older run's failure shows
        assert (row["status"], row["stage"], row["error"], row["finished_at"]) == ("PENDING", stage, None, None)
