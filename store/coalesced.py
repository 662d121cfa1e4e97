"""One statement for many concurrent calls (`Coalesced`): the calls made while one statement runs go
together in the next. Used by the effect ledger, the request owners, cost records and the limiter's casts."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

import asyncpg

__all__ = ["Coalesced"]

Item = TypeVar("Item")
Result = TypeVar("Result")

_OUTAGES = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class Coalesced(Generic[Item, Result]):
    """One statement for many concurrent calls: `await batch(item)` gives that item's result.

    Hundreds of stage events claim and complete effects at once; one round trip each
    made Postgres the biggest cost of a blog. Calls that arrive while a batch is in
    flight wait for it and go together in the next one, so a quiet worker still gets
    an answer after one round trip and a busy one sends few, large statements. Each
    item's result is what its own statement would have said: when a batch fails for
    a reason other than an outage (a value Postgres refuses), its items run one by one,
    so a bad item fails alone.
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], *, max_batch: int = 500) -> None:
        self._run = run
        self.max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.batches = 0  # statements sent (tests, figures)

    async def __call__(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # the tasks that are ready this turn add theirs first
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            await self._answer(batch)

    async def _answer(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self.batches += 1
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, _OUTAGES):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for one in batch:  # one item's value was refused: find it, and answer the others
                await self._answer([one])
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
