"""How `blog.limiter` reaches the coordinator, and its scheduler's passes, on the coordinator's own loop.

What runs where. Main loop (Faust's): the agent holding `blog.limiter` (and so
the table), which commits it and tells the coordinator where to start reading
at each takeover; the rebalance hooks (which wait until the coordinator took
the change); the table's data and the consumer (`OwnLoop.ask_main`); the
figures' publisher; answers to this process's own asks. Coordinator's loop
(own_loop.py, a thread): reading `blog.limiter` with a consumer of its own,
every record's handling, the scheduler's passes, the outbox's producer
(changelog records, answers to other workers, and this worker's own asks and
casts). Why: streams/limiter/own_loop.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from streams.app import app
from streams.limiter.coordinator import COORDINATOR_TP_TOPIC, coordinator, limiter_loop, limiter_topic, outbox
from streams.limiter.reader import own_consumer, read_partition
from streams.limiter.replies import read_replies
from streams.log_limit import Backoff, LogLimit
from streams.metrics import limiter_ask_age_seconds

log = logging.getLogger(__name__)


@dataclass
class _Reading:
    """Which takeover the coordinator reads `blog.limiter` for (an epoch of the coordinator's)."""

    epoch: int = -1  # set on the main loop when the agent hands the first offset over
    task: asyncio.Task | None = None  # on the coordinator's loop


reading = _Reading()
_runner: "concurrent.futures.Future | None" = None
_limiter_task: asyncio.Task | None = None  # _run_limiter, on the limiter's loop
_stopped = False  # the worker is stopping: the limiter's loop is not started again


def start_limiter() -> None:
    """Start the coordinator's thread, with its scheduler there (main loop; once)."""
    global _runner
    if _stopped:
        return  # what is sent from now on goes out on the caller's loop (own_loop.OwnLoop: in place)
    if _runner is None or _runner.done():
        limiter_loop.start()
        assert limiter_loop.loop is not None
        _runner = asyncio.run_coroutine_threadsafe(_run_limiter(), limiter_loop.loop)


async def _run_limiter() -> None:
    global _limiter_task
    _limiter_task = asyncio.current_task()
    await asyncio.gather(_budget_passes(), read_replies(limiter_loop))


STOP_SECONDS = 5.0  # how long a stopping worker gives the limiter to send what it holds


async def stop_limiter() -> None:
    """The worker stops: the limiter's readers and passes end, its outbox sends what it holds (up to
    STOP_SECONDS) and closes, and its thread ends. Once; nothing starts it again."""
    global _stopped
    if _stopped:
        return
    _stopped = True
    try:
        await asyncio.wait_for(limiter_loop.run(_wind_down), timeout=STOP_SECONDS)
    except Exception as exc:  # the broker away, say: what could not go was failed to its callers
        log.info("limiter: stopped without sending everything it held: %r", exc)
    finally:
        limiter_loop.stop()


async def _wind_down() -> None:
    """On the limiter's loop: the readers and passes end (their consumers closed), then the outbox."""
    running = [t for t in (_limiter_task, reading.task) if t is not None and not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)  # their own outcomes are not ours to raise
    await outbox.close()


async def _handle(value: Any, headers: Any, offset: int | None, stamped: float | None = None) -> None:
    if stamped:
        limiter_ask_age_seconds.labels("handled").observe(max(0.0, time.time() - stamped))
    if coordinator.active:
        epoch = coordinator.epoch
        try:
            await coordinator.handle(value, headers, offset)
        except Exception:  # a malformed message must not stop the limiter
            log.exception("limiter: could not handle %r", value)
        # Written with the next pass's writes (coordinator.READ_KEY). Only for the takeover that read it:
        # a record an ended takeover's reader was still in (an answer waiting for the producer) must not
        # move the next one's reading, which began at the table's read_to, past records it has not handled.
        if offset is not None and coordinator.epoch == epoch:
            coordinator.handled_to = offset


@app.agent(limiter_topic)
async def budget_coordinator(stream):
    """Faust's reader of blog.limiter: it holds the partition (and the table with it) and commits it.

    The coordinator reads the records itself, on its own loop (`_read_own`),
    from just after the last offset whose effects the previous owner wrote
    (`coordinator.READ_KEY`, in the table it recovers), or, when the table has
    none, from the first offset this agent reads after the takeover (its tick
    makes sure there is one). So a takeover neither replays what was written
    nor skips what was not, however far this agent's commits are from the
    coordinator's reading. Asks that came through Faust's consumer waited for
    the main loop's turns and its full stage queues: 1.4 s at the median, 9 s
    at p99 in the tier bench.
    """
    start_limiter()
    async for event in stream.events():
        stamped = event.message.timestamp
        if stamped:
            limiter_ask_age_seconds.labels("read").observe(max(0.0, time.time() - stamped))
        epoch = coordinator.epoch
        if not coordinator.active or reading.epoch == epoch:
            continue
        reading.epoch = epoch
        limiter_loop.hand_over(_start_reading, event.message.offset, epoch)


def _start_reading(offset: int, epoch: int) -> None:
    """On the coordinator's loop: read blog.limiter from `offset` for this takeover."""
    if reading.task is not None and not reading.task.done():
        reading.task.cancel()
    reading.task = asyncio.ensure_future(_read_own(offset, epoch))


def _current(epoch: int) -> bool:
    return coordinator.active and coordinator.epoch == epoch


async def _read_own(offset: int, epoch: int) -> None:
    """Every record of blog.limiter from where the last owner's writes end, in order, until the takeover ends."""
    from aiokafka import TopicPartition

    async def resume_point() -> int:
        await coordinator.load(offset)  # the recovered table: where the last owner's writes end
        start = coordinator.resume_from if coordinator.resume_from is not None else offset
        if _current(epoch):
            log.info("limiter: reading %s from offset %d", COORDINATOR_TP_TOPIC, start)
        return start

    async def handle(record: Any) -> None:
        try:
            value = json.loads(record.value) if record.value else None
        except ValueError:
            log.warning("limiter: record %d of %s is not JSON; passed over", record.offset, record.topic)
            return
        await _handle(value, dict(record.headers or ()), record.offset,
                      record.timestamp / 1000.0 if record.timestamp else None)

    await read_partition(TopicPartition(COORDINATOR_TP_TOPIC, 0), handle, first_offset=resume_point,
                         new_consumer=lambda: own_consumer("asks"), keep_going=lambda: _current(epoch),
                         what=COORDINATOR_TP_TOPIC)


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
    if _runner is None:
        return  # the worker is stopping already
    try:
        await asyncio.wrap_future(_runner)
    finally:
        await stop_limiter()


@app.on_before_shutdown.connect
async def _limiter_stops_with_the_worker(app_, **kwargs) -> None:  # noqa: ARG001
    # Faust's own stop: after its consumer stopped, before its producer's last flush. Waiting for
    # Faust to cancel the task above came too late: the loop closed first, the producer unclosed.
    await stop_limiter()


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
