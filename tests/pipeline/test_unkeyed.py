"""A record sent without a key is its value's site's, for pauses and spend caps too.

docs/producing.md: a record without a key is taken, the value says the site. The runner lined
events up by key alone, so every unkeyed record was site "": a paused site's unkeyed requests
ran (articles paid for, posts published while it was paused), and one whose spend cap held the
site came back from the step (SiteHeld) into line "", which is never held, and ran again at once,
for as long as the cap held: a loop with a Postgres query each turn, never parked.
"""
from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.pipeline.runner import SiteHeld, SitePolicy, StageRunner, site_of

from .test_parking import TOPIC, Event, FakeStream, Message, request_bytes
from .test_runner import run, settle, wait_until

__all__ = ["run"]  # the fixture that starts and stops runners


def unkeyed(offset: int, value: bytes, key: bytes | None = None) -> Event:
    return Event(Message(TOPIC, 0, offset, key, value))  # type: ignore[arg-type]


def json_request(site: str, n: int) -> bytes:
    return json.dumps({"request_id": f"j-{n}", "site_id": site, "topic": "Tea"}).encode()


class Lot:
    def __init__(self) -> None:
        self.parked: list[Event] = []

    async def park(self, stage: str, events: list[Event]) -> list[bool]:
        self.parked += events
        return [True] * len(events)


def runner_for(handler: Any, paused: set[str], lot: Lot) -> StageRunner:
    runner = StageRunner("generate", handler, concurrency=50, read_ahead=10_000,
                         policy=lambda site: SitePolicy(paused=site in paused))
    runner.expected_start = lambda tp: None
    runner.rewind = None
    runner.STALL_CHECK_EVERY = 3600.0
    runner.park = lot.park
    runner.load_policies = None
    return runner


@given(site=st.sampled_from(["shop-1", "a.b:c_d-e"]), n=st.integers(0, 5), shape=st.sampled_from(["avro", "json"]),
       key=st.sampled_from([None, b""]))
def test_an_unkeyed_record_is_its_values_site(site: str, n: int, shape: str, key: bytes | None) -> None:
    value = request_bytes(site, n)[1] if shape == "avro" else json_request(site, n)
    assert site_of(unkeyed(0, value, key)) == site
    assert site_of(unkeyed(0, value, b"other")) == "other"  # a key is the site (a wrong one is dead-lettered)
    assert site_of(unkeyed(0, b"\xc3\x01garbage", key)) == ""  # nothing readable: a line of its own, as before


async def test_a_paused_sites_unkeyed_records_are_parked_not_run(run):
    started: list[int] = []

    async def handler(event: Event) -> None:
        started.append(event.message.offset)

    lot, stream = Lot(), FakeStream()
    run(runner_for(handler, {"held"}, lot), stream)
    values = [request_bytes("held", 0)[1], json_request("held", 1), request_bytes("free", 2)[1]]
    for offset, value in enumerate(values):
        stream.queue.put_nowait(unkeyed(offset, value))
    await wait_until(lambda: stream.acked(0) == [0, 1, 2], "all acked")
    assert [ev.value for ev in lot.parked] == values[:2] and started == [2]


async def test_an_unkeyed_record_of_a_site_a_spend_cap_holds_is_parked_not_run_again_and_again(run):
    paused: set[str] = set()
    calls: list[int] = []

    async def step(event: Event) -> None:  # what generate does when check_budget finds the cap reached
        calls.append(event.message.offset)
        paused.add("capped")  # deps.hold_here
        raise SiteHeld("capped", "budget_exhausted (month cap)")

    lot, stream = Lot(), FakeStream()
    run(runner_for(step, paused, lot), stream)
    stream.queue.put_nowait(unkeyed(0, request_bytes("capped", 0)[1]))
    await wait_until(lambda: stream.acked(0) == [0] or len(calls) > 3, "parked (or run again)")
    await settle()
    assert calls == [0] and len(lot.parked) == 1
