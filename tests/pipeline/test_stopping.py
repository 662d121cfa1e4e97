"""A clean stop (SIGTERM, Ctrl-C) lets the provider calls in flight finish and be recorded, and starts none.

Stopping used to cancel every stage task a second after Faust stopped: an OpenAI
article, a Replicate prediction or a Wix create whose request had left was
abandoned (the provider bills it, the post may be up), its claim released, and
the next owner of the partition made it again. These tests drive the worker's
own stop (`BlogstreamApp.on_stop`, with Faust's part replaced by a marker) and
the pieces it relies on: the one retry loop refusing new calls, the runner
starting no event, the bulk sender saying whose calls it sends. Every wait is
for a condition or an answer the test gives, never a fixed time.
"""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import faust
import pytest

from connectors.errors import ProviderUnavailable
from connectors.wix_blog import PublishedPost, SiteCredentials
from store.effects import EffectClaim
from streams.app import app
from streams.contract import decode_request, encode
from streams.limiter.client import Permit
from streams.pipeline import factory, publish_batches, stage
from streams.pipeline.runner import SitePolicy, StageRunner, WorkerStopping

from .conftest import grant_all
from .test_runner import FakeStream, event, settle, wait_until

pytestmark = pytest.mark.asyncio

SITE = SiteCredentials("shop-1", "key-1")


class Ledger:
    """The effect ledger's methods; what is recorded and released goes into `order` too."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.completed: dict[str, dict] = {}
        self.released: list[str] = []

    async def claim_effect(self, request_id, stage_, site_id, *, owner, lease_seconds):
        if request_id in self.completed:
            return EffectClaim("done", self.completed[request_id])
        return EffectClaim("acquired")

    async def complete_effect(self, request_id, stage_, site_id, payload, *, owner):
        self.completed[request_id] = payload
        self.order.append(f"recorded {request_id}")

    async def release_effect(self, request_id, stage_, *, owner):
        self.released.append(request_id)


class GatedPermits:
    """Grants at once, except to the request ids in `held` until `open` is set."""

    def __init__(self, *held: str) -> None:
        self.held, self.open, self.waiting = set(held), asyncio.Event(), set()

    async def acquire(self, *, site_id, request_id, needs, slot_limit=None, weight=1.0, lane="interactive"):
        if request_id in self.held:
            self.waiting.add(request_id)
            await self.open.wait()
            self.waiting.discard(request_id)
        return Permit("g", time.time() + 60, dict(needs), 0.0)

    async def observe(self, needs, info, *, throttled):
        pass


@pytest.fixture
def stopping(monkeypatch):
    """A fresh stop for each test: the worker's runners and the process's stop flag are left alone."""
    fresh = stage.Stopping()
    monkeypatch.setattr(stage, "STOPPING", fresh)
    monkeypatch.setattr(factory, "STOPPING", fresh)
    monkeypatch.setattr(StageRunner, "instances", [])
    return fresh


@pytest.fixture
def faust_stops(monkeypatch):
    """Faust's own stop (consumer, limiter, producer, then every task cancelled) is a marker in `order`."""
    order: list[str] = []

    async def on_stop(self):
        order.append("faust stops")

    monkeypatch.setattr(faust.App, "on_stop", on_stop)
    return order


async def test_a_stop_waits_for_the_article_in_flight_to_be_recorded_and_starts_no_other(
        monkeypatch, stopping, faust_stops):
    order = faust_stops
    ledger = Ledger(order)
    deps = SimpleNamespace(db=ledger, worker_id="w1")
    permits = GatedPermits("r2")
    monkeypatch.setattr(stage, "budgets", permits)
    calls: list[str] = []
    answer = asyncio.Event()

    async def write(request_id: str) -> dict:
        calls.append(request_id)
        await answer.wait()
        return {"article": request_id}

    def produce(request_id: str):
        return lambda: stage.call_with_permits(stage="generate", request_id=request_id, site_id="shop-1",
                                               needs={"openai-requests": 1}, call=lambda: write(request_id))

    first = asyncio.ensure_future(stage.effect_once(deps, "r1", "generate", "shop-1", produce("r1")))
    second = asyncio.ensure_future(stage.effect_once(deps, "r2", "generate", "shop-1", produce("r2")))
    await wait_until(lambda: calls == ["r1"] and permits.waiting == {"r2"}, "r1 at OpenAI, r2 waiting for its permit")

    stop = asyncio.ensure_future(app.on_stop())
    await settle(100)  # the stop goes as far as it goes without OpenAI's answer
    permits.open.set()  # r2's permit comes while the worker stops
    await settle(100)
    answer.set()
    await stop

    assert order == ["recorded r1", "faust stops"], "Faust stopped (and cancelled the call) before it was recorded"
    assert calls == ["r1"], "a call started while the worker was stopping"
    assert await first == ({"article": "r1"}, False)
    with pytest.raises(WorkerStopping):
        await second
    assert ledger.released == ["r2"]  # its claim is free at once for the next owner: nothing was paid


async def test_a_stop_waits_at_most_its_drain_time(monkeypatch, stopping):
    order: list[str] = []
    deps = SimpleNamespace(db=Ledger(order), worker_id="w1")
    grant_all(monkeypatch, stage)
    never = asyncio.Event()

    async def hangs():
        await never.wait()

    task = asyncio.ensure_future(stage.effect_once(deps, "r1", "generate", "shop-1", lambda: stage.call_with_permits(
        stage="generate", request_id="r1", site_id="shop-1", needs={"openai-requests": 1}, call=hangs)))
    await wait_until(lambda: stopping.in_flight(), "the call under way")
    left = await stopping.drain(0.01)
    assert [repr(e) for e in left] == ["r1/generate"]  # named in the log line, may be made again by the next owner
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stop_ends_the_back_off_of_a_call_that_failed_and_tries_no_more(monkeypatch, stopping):
    # A provider failing for a while puts effects in back-offs of up to a minute: the stop does not wait them out.
    deps = SimpleNamespace(db=Ledger([]), worker_id="w1")
    grant_all(monkeypatch, stage)
    calls = []

    async def fails():
        calls.append(1)
        raise ProviderUnavailable("openai", "503", status=503, retry_after=3600.0)

    task = asyncio.ensure_future(stage.effect_once(deps, "r1", "generate", "shop-1", lambda: stage.call_with_permits(
        stage="generate", request_id="r1", site_id="shop-1", needs={"openai-requests": 1}, call=fails)))
    await wait_until(lambda: calls and stopping._pauses, "the first call failed, its back-off under way")
    assert await stopping.drain(3600.0) == []
    with pytest.raises(WorkerStopping):
        await task
    assert calls == [1]


async def test_a_stopping_runner_starts_no_event_and_leaves_a_stopped_one_unacked(stopping):
    started: list[tuple[int, int]] = []
    release = asyncio.Event()

    async def handle(ev):
        started.append(ev.id)
        if ev.id == (0, 0):
            await release.wait()
            raise WorkerStopping("the worker is stopping")

    runner = StageRunner("test", handle, concurrency=1, read_ahead=100, policy=lambda site: SitePolicy())
    runner.expected_start = lambda tp: None
    runner.rewind = runner.park = runner.load_policies = None
    stream = FakeStream()
    consume = asyncio.ensure_future(runner.consume(stream))
    stream.feed([event(0, offset, "site-a") for offset in range(3)])
    await wait_until(lambda: started == [(0, 0)], "the first event under way")
    await stopping.drain(0.0)  # (no effect of these is under way: it only stops the runner)
    release.set()
    await wait_until(lambda: not runner.running_tasks(), "the first event given up")
    await settle()
    assert started == [(0, 0)] and stream.acks == []  # not acked: the next owner runs it; nothing else started
    assert runner.queued_by_site() == {"site-a": 3}
    consume.cancel()
    runner._dispatcher.cancel()
    runner._watchdog.cancel()
    await asyncio.gather(consume, runner._dispatcher, runner._watchdog, return_exceptions=True)


async def test_a_step_given_up_for_a_stop_is_never_a_failed_try(monkeypatch):
    failed = []

    async def send_failed(*args, **kwargs):
        failed.append(args)

    monkeypatch.setattr(factory, "send_failed", send_failed)
    data = encode("BlogRequest", {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea",
                                  "requested_at": 1_750_000_000_000})
    message = SimpleNamespace(topic="t.blog.requests", partition=0, offset=7, key=b"shop-1", value=data)
    ev = SimpleNamespace(message=message, value=data, key=b"shop-1")

    async def stopped(record):
        raise WorkerStopping("the worker is stopping")

    for _ in range(factory.MAX_STEP_ATTEMPTS + 1):
        with pytest.raises(WorkerStopping):
            await factory.run_counted("generate", ev, decode_request, stopped)
    assert failed == [] and ("t.blog.requests", 0, 7) not in factory._step_failures


class BlockingWix:
    """Creates answer when `answer` is set; `created` counts the posts made."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.creates: list[list[str]] = []

    async def publish_draft(self, site, draft):
        self.creates.append([draft["seoSlug"]])
        await self.answer.wait()
        return PublishedPost(f"post-{draft['seoSlug']}", "https://site.example/p", draft["seoSlug"])

    async def create_posts(self, site, drafts):
        self.creates.append([d["seoSlug"] for d in drafts])
        await self.answer.wait()
        return [PublishedPost(f"post-{d['seoSlug']}", "https://site.example/p", d["seoSlug"]) for d in drafts]


async def test_a_stop_waits_for_the_posts_a_bulk_sender_has_sent_and_sends_no_more(monkeypatch, stopping):
    order: list[str] = []
    ledger = Ledger(order)
    deps = SimpleNamespace(db=ledger, worker_id="w1")
    grant_all(monkeypatch, stage, publish_batches)
    batches, wix = publish_batches.SiteBatches(), BlockingWix()

    def post(slug: str):
        async def create():
            posted = await batches.create_post(wix, SITE, request_id=slug, lane="interactive",
                                               draft={"seoSlug": slug, "title": slug}, maybe_posted=False)
            return {"post_id": posted.post_id}
        return stage.effect_once(deps, slug, "publish", "shop-1", create)

    first = asyncio.ensure_future(post("a"))
    await wait_until(lambda: wix.creates == [["a"]], "a's create sent")
    later = [asyncio.ensure_future(post(slug)) for slug in ("b", "c")]  # queued behind a's call
    await settle()
    drained = asyncio.ensure_future(stopping.drain(60.0))
    await settle(100)
    assert not drained.done()  # a's post may be up: the stop waits for its answer and its record
    wix.answer.set()
    assert await drained == []
    assert order[0] == "recorded a" and await first == ({"post_id": "post-a"}, False)
    for task in later:
        with pytest.raises(WorkerStopping):
            await task
    assert wix.creates == [["a"]] and sorted(ledger.released) == ["b", "c"]
