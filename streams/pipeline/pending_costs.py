"""Cost rows Postgres could not take when their call ended, kept and written again until it takes them.

A paid call's cost is recorded right after the call (streams/pipeline/spend.py). If
Postgres is away at that moment, the row is not dropped: it waits here, keyed by the
provider's id of the call, and one task per worker writes the waiting rows again,
oldest first, backing off from half a second to ten seconds between tries. The write
is an upsert keyed by that same id (store/costs.py), so a row written by a try whose
answer was lost, or kept twice, still counts once. The first cost that is recorded
directly ends the wait: Postgres is back.

Memory is bounded: at `max_rows` waiting rows the next paid step waits for room
before it goes on (no more money is spent faster than it can be recorded). A row
whose values Postgres refuses can never be written: it is logged, with every figure
of the call, as an error and dropped. A worker killed while rows wait loses them;
`flush` writes them before a clean stop.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import asyncpg

from store.costs import CallCost
from streams import metrics
from streams.log_limit import Backoff, LogLimit

log = logging.getLogger(__name__)

MAX_ROWS = 10_000  # about 3 MB of rows; far more than a worker has calls in flight
# Values Postgres refuses whatever its state: writing the row again cannot help.
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.exceptions.ProgramLimitExceededError)

Write = Callable[[Any, CallCost], Awaitable[None]]  # (deps, cost): records it, raises while it cannot


class PendingCosts:
    """The rows waiting for Postgres, and the task that writes them."""

    def __init__(self, write: Write, *, max_rows: int = MAX_ROWS, first_delay: float = 0.5, max_delay: float = 10.0) -> None:
        self._write = write
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str], tuple[Any, CallCost]] = {}  # (provider, call id) -> (deps, cost)
        self._backoff = Backoff(first=first_delay, cap=max_delay)
        self._failures = LogLimit(log, "cost rows wait for Postgres", interval=60.0)
        self._writer: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self.written = 0  # rows written from here (tests, figures)

    def __len__(self) -> int:
        return len(self._rows)

    async def keep(self, deps: Any, cost: CallCost) -> None:
        """Keep a row Postgres did not take; waits while `max_rows` rows wait already."""
        while len(self._rows) >= self.max_rows and (cost.provider, cost.call_id) not in self._rows:
            self._start()
            await asyncio.sleep(0.2)
        self._rows[(cost.provider, cost.call_id)] = (deps, cost)
        metrics.cost_rows_pending.set(len(self._rows))
        self._start()

    def wake(self) -> None:
        """Postgres took a row just now: try the waiting ones at once."""
        if self._rows and self._wake is not None:
            self._backoff.reset()
            self._wake.set()

    async def flush(self, timeout: float) -> int:
        """Write the waiting rows for up to `timeout` seconds (a clean stop); returns how many still wait."""
        self.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._rows and loop.time() < deadline:
            self._start()
            await asyncio.sleep(0.05)
        for _, cost in self._rows.values():
            log.error("the cost of a paid call was not recorded before the worker stopped: %s", describe(cost))
        return len(self._rows)

    def _forget(self, key: tuple[str, str]) -> None:
        self._rows.pop(key, None)
        metrics.cost_rows_pending.set(len(self._rows))

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write_waiting())

    async def _write_waiting(self) -> None:
        assert self._wake is not None
        while self._rows:
            key = next(iter(self._rows))  # the oldest
            deps, cost = self._rows[key]
            try:
                await self._write(deps, cost)
            except REFUSED as exc:
                self._forget(key)
                log_refused(exc, cost)
                continue
            except Exception as exc:
                self._failures.failed(exc, f"{len(self._rows)} rows, the oldest {describe(cost)}")
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._backoff.next())
                except asyncio.TimeoutError:
                    pass
                continue
            self._forget(key)
            self.written += 1
            self._backoff.reset()
            self._failures.ok()


def log_refused(exc: BaseException, cost: CallCost) -> None:
    log.error("Postgres refuses the cost row of a paid call (%s: %s); it is not recorded, insert it by hand: %s",
              type(exc).__name__, exc, describe(cost))


def describe(cost: CallCost) -> str:
    """Every figure of a call, enough to insert its row by hand."""
    return (f"request {cost.request_id} on site {cost.site_id}, {cost.provider} call {cost.call_id} "
            f"({cost.lane}), model {cost.model}, input_tokens={cost.input_tokens} output_tokens={cost.output_tokens} "
            f"cached_tokens={cost.cached_tokens} images={cost.images} seconds={cost.seconds} cost_usd={cost.cost_usd}")
