"""The coordinator's agent and its own loop: events handed over in order, the scheduler's passes.

What runs where. Main loop (Faust's): the agent reading `blog.limiter`, which
hands each event over to the coordinator's loop in the order read; the
rebalance hooks (which wait until the coordinator took the change); the table's
data and the consumer (`OwnLoop.ask_main`); the figures' publisher; answers to
this process's own asks. Coordinator's loop (own_loop.py, a thread): every
event's handling, the scheduler's passes, the outbox's producer (changelog
records and answers to other workers). Why: streams/limiter/own_loop.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams.app import app
from streams.limiter.coordinator import COORDINATOR_TP_TOPIC, coordinator, limiter_loop, limiter_topic, outbox
from streams.log_limit import Backoff, LogLimit

log = logging.getLogger(__name__)

INBOX_MAX = 50_000  # events handed over and not yet handled: past this the agent waits (Faust buffers)


@dataclass
class _Inbox:
    """Events for the coordinator's loop, in the order the agent read them (a deque: appended on the
    main loop, taken on the coordinator's; its wake-up is set there)."""

    events: "deque[tuple[Any, Any, int | None]]" = field(default_factory=deque)
    handed: int = 0  # counted on the main loop
    handled: int = 0  # counted on the coordinator's
    wake: asyncio.Event | None = None

    def woken(self) -> asyncio.Event:
        if self.wake is None:
            self.wake = asyncio.Event()
        return self.wake


inbox = _Inbox()
_runner: "concurrent.futures.Future | None" = None


def start_limiter() -> None:
    """Start the coordinator's thread, with its scheduler and inbox there (main loop; once)."""
    global _runner
    if _runner is None or _runner.done():
        limiter_loop.start()
        assert limiter_loop.loop is not None
        _runner = asyncio.run_coroutine_threadsafe(_run_limiter(), limiter_loop.loop)


async def _run_limiter() -> None:
    await asyncio.gather(_budget_passes(), _read_inbox())


async def _handle(value: Any, headers: Any, offset: int | None) -> None:
    if coordinator.active:
        try:
            await coordinator.handle(value, headers, offset)
        except Exception:  # a malformed message must not stop the limiter
            log.exception("limiter: could not handle %r", value)


async def _read_inbox() -> None:
    wake = inbox.woken()
    while True:
        wake.clear()
        while inbox.events:
            await _handle(*inbox.events.popleft())
            inbox.handled += 1
        await wake.wait()


def _wake_inbox() -> None:
    inbox.woken().set()


@app.agent(limiter_topic)
async def budget_coordinator(stream):
    start_limiter()
    async for event in stream.events():
        if not coordinator.active:
            continue
        inbox.events.append((event.value, event.headers, event.message.offset))
        inbox.handed += 1
        limiter_loop.hand_over(_wake_inbox)
        while inbox.handed - inbox.handled > INBOX_MAX:
            await asyncio.sleep(0.01)


async def _activate() -> None:
    coordinator.activate()


async def _deactivate() -> None:
    coordinator.deactivate()


@app.on_partitions_assigned.connect
async def _limiter_assigned(app_, assigned, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in assigned):
        start_limiter()
        await limiter_loop.run(_activate)


@app.on_partitions_revoked.connect
async def _limiter_revoked(app_, revoked, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in revoked):
        await limiter_loop.run(_deactivate)


MIN_PASS_INTERVAL = 0.002  # a burst of events makes one pass, not one pass each


@app.task
async def _budget_scheduler() -> None:
    """Runs the coordinator's loop for as long as the worker runs; stops it with the worker."""
    start_limiter()
    assert _runner is not None
    try:
        await asyncio.wrap_future(_runner)
    finally:
        _runner.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(limiter_loop.run(outbox.close), timeout=5.0)
        limiter_loop.stop()


async def _budget_passes() -> None:
    # A failing pass (the broker away, say) is tried again after a back-off
    # (0.5 s doubling to 10 s; a wake-up does not cut it short) and logged
    # once per kind and minute with a count, not with a traceback every time.
    backoff = Backoff(first=0.5, cap=10.0)
    failures = LogLimit(log, "limiter scheduler pass failed", interval=60.0)
    while True:
        started = time.monotonic()
        # Cleared before the pass, not after: an ask that comes while the pass waits for its
        # writes' acks wakes the next pass (cleared after, it waited for the next timed wake-up).
        coordinator.wakeup.clear()
        try:
            pause = await coordinator.run_once() if coordinator.active and coordinator.loaded else 1.0
        except Exception as exc:  # never let the scheduler die: log and try again
            failures.failed(exc)
            await asyncio.sleep(backoff.next())
            continue
        if backoff.failures:
            backoff.reset()
            failures.ok()
        if pause > 0:
            try:
                await asyncio.wait_for(coordinator.wakeup.wait(), timeout=pause)
            except asyncio.TimeoutError:
                pass
        rest = MIN_PASS_INTERVAL - (time.monotonic() - started)
        await asyncio.sleep(max(0.0, rest))
