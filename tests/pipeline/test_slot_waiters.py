"""A site whose in-flight slots are all taken must not hold the worker's generate slots waiting for them.

A site's slot (its cap of requests in flight, counted by the limiter across workers) is held from
generate to publish. The generate runner capped a site's events by what runs in generate only, so
with the site's requests stuck in publish (its Wix down: each retried for minutes) it started up to
its cap of new generate events more, which could only wait for the limiter's slot, each holding one
of the worker's generate slots (BLOGSTREAM_STAGE_CONCURRENCY) doing nothing. A few such sites (or one
with a cap at the stage's concurrency) left no slot for any other site: their articles waited for
the stuck site's Wix. Two runners of fakes, the limiter's slots modelled by `Slots`; no timing luck.
"""
from __future__ import annotations

import asyncio
from collections import Counter

from types import SimpleNamespace

from streams.pipeline import factory
from streams.pipeline.passed_on import PassedOn
from streams.pipeline.runner import SitePolicy, StageRunner
from tests.pipeline.test_runner import Event, FakeStream, Message, TP, Recorder, event, make_runner, run, wait_until

__all__ = ["run"]  # the fixture, used by name

CAPS = {"stuck": 2}


def policy(site: str) -> SitePolicy:
    return SitePolicy(max_in_flight=CAPS.get(site, 20))


class Slots:
    """The limiter's per-site slots: taken at generate (waiting while the site has its cap), given back
    when the request ends (after publish)."""

    def __init__(self) -> None:
        self.held: Counter = Counter()
        self.freed = asyncio.Event()

    async def take(self, site: str) -> None:
        while self.held[site] >= policy(site).max_in_flight:
            self.freed.clear()
            await self.freed.wait()
        self.held[site] += 1

    def give(self, site: str) -> None:
        self.held[site] -= 1
        self.freed.set()


async def test_a_site_whose_requests_are_stuck_in_publish_leaves_the_generate_slots_to_other_sites(run):
    slots, passed_on = Slots(), PassedOn()
    drafts = FakeStream()
    written: list[str] = []
    offsets = Counter()

    async def generate(ev: Event) -> None:  # the article: needs the site's slot first (the limiter's ask)
        site = ev.key.decode()
        await slots.take(site)
        written.append(site)
        passed_on.add(ev.value.decode(), site, ev.message.tp.partition)  # as factory.passed_on, before the draft
        offset = offsets[site]
        offsets[site] += 1
        drafts.feed([Event(ev.key, ev.value, Message(TP("t.blog.drafts", ev.message.tp.partition), offset, ev.key))])

    publish_handler = Recorder(gated=lambda ev: ev.key == b"stuck")  # stuck's Wix is down: its posts do not end
    publish = make_runner(publish_handler, name="publish", policy=policy)

    async def publish_and_end(ev: Event) -> None:
        await publish_handler(ev)
        passed_on.end(ev.value.decode())  # its result produced (factory.send_record) ...
        slots.give(ev.key.decode())  # ... and the sink frees its slot

    publish.handle = publish_and_end
    generate_runner = make_runner(Recorder(), concurrency=2, name="generate", policy=policy)
    generate_runner.handle = generate
    generate_runner.held_later = passed_on.count  # as streams/pipeline/factory.py wires it
    passed_on.on_end = generate_runner.wake
    requests = FakeStream()
    run(publish, drafts)
    run(generate_runner, requests)

    requests.feed([event(0, o, "stuck") for o in range(6)])
    await wait_until(lambda: publish_handler.running["stuck"] == 2, "stuck's two requests in publish, stuck there")
    requests.feed([event(1, o, "other") for o in range(3)])
    await wait_until(lambda: written.count("other") == 3, "the other site's articles written")
    await wait_until(lambda: len(publish_handler.finished) == 3, "and published")
    assert written.count("stuck") == 2 and slots.held["stuck"] == 2
    assert generate_runner.queued_by_site() == {"stuck": 4}, "stuck's next events wait in line, not in a slot"

    publish_handler.open(*[(0, o) for o in range(6)])  # its Wix is back
    await wait_until(lambda: written.count("stuck") == 6 and len(requests.acks) == 9, "stuck's backlog done")
    await wait_until(lambda: publish_handler.finished.count((0, 5)) == 1, "and published")
    assert publish_handler.max_running["stuck"] <= 2 and slots.held["stuck"] == 0


def test_without_later_stages_a_runner_counts_its_own_events_only():
    runner = StageRunner("image", Recorder(), concurrency=5, read_ahead=10)
    assert runner.held_later("any") == 0 and runner.in_flight("any") == 0


def test_passed_on_counts_each_request_once_until_its_end_or_its_partition_leaves():
    ended = []
    passed = PassedOn()
    passed.on_end = lambda: ended.append(1)
    passed.add("r1", "a", 0)
    passed.add("r1", "a", 0)  # the same request again (a replay): counted once
    passed.add("r2", "a", 3)
    passed.add("r3", "b", 3)
    assert (passed.count("a"), passed.count("b"), passed.count("c")) == (2, 1, 0)
    passed.end("r1")
    passed.end("r1")
    passed.end("unknown")
    assert passed.count("a") == 1 and len(ended) == 1
    passed.forget({3})  # partition 3 went to another worker: it ends r2 and r3 there
    assert len(passed) == 0 and passed.count("a") == passed.count("b") == 0


async def test_the_worker_counts_a_request_from_its_draft_to_its_result_bulk_ones_too(monkeypatch):
    # A bulk request holds its run's slot from generate on as any other (generate.py: with its permit, or
    # asked for alone when the Batch API wrote its article): left out, the runner started the site's next
    # bulk events past its cap, to wait in generate for a slot.
    passed = PassedOn()
    monkeypatch.setattr(factory, "PASSED_ON", passed)
    sent = []

    class Topic:
        async def send(self, *, key, value, headers):
            sent.append(key)
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    generate_event = SimpleNamespace(message=SimpleNamespace(partition=4))
    factory.passed_on(generate_event, {"request_id": "r1", "site_id": "shop", "topic": "Tea"})
    factory.passed_on(generate_event, {"request_id": "r2", "site_id": "shop", "topic": "Tea", "priority": "bulk"})
    assert passed.count("shop") == 2
    await factory.send_record(Topic(), "shop", "BlogResult", {
        "request_id": "r1", "site_id": "shop", "status": "DONE", "stage": "publish", "post_id": "p", "post_url": None,
        "title": "t", "error": None, "attempts": 1, "usage": None, "finished_at": 1_750_000_000_000})
    assert passed.count("shop") == 1 and sent == [b"shop"]
