"""Which sites give way when a stage runner's read-ahead is full (StageRunner._give_way).

Events are acked in offset order per partition, so an event that waits holds
its partition's commit, and every event finished behind it stays in the runner,
counted against the read-ahead, until it is acked. A site at its cap of requests
in flight with a backlog (its Wix down or slow, its slots all taken) held its
partition that way until its whole backlog was done, hours at worst, while the
other sites' events finished behind it filled the read-ahead: the worker stopped
reading every partition of the stage, every site's work with it.

So while the read-ahead is full, such a site gives way: its waiting events are
produced again at the end of their partition, in order, and the originals acked
once the broker has the copies (a crash in between leaves both: the effect
ledger makes the second harmless). Only waiting events move, never running ones
(a call under way is not made twice), and only of a site that cannot start more
now and has finished events behind its first waiting one; moving any other would
only send the same events round again.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from streams import metrics

log = logging.getLogger(__name__)


def sites_to_move(
    lines: Mapping[str, Sequence[Any]], unfinished: Mapping[Any, Sequence[Any]], at_cap: Callable[[str], bool],
    policy: Callable[[str], Any], ring: Iterable[str],
) -> list[str]:
    """The sites (of `ring`, in its order) whose waiting events (`lines`) are to move to the end of their partitions.

    `unfinished`: each partition's events not acked yet, in offset order (`.done`,
    `.offset`); `at_cap(site)`: it may start no more now (its cap, or its share of the stage's
    slots); `policy(site)`: whether it is `paused`. A waiting event that failed before stays (its
    tries are counted by its offset), and so does the rest of its site's line.
    """
    last_done = {tp: next((e.offset for e in reversed(line) if e.done), -1) for tp, line in unfinished.items()}
    chosen = []
    for site_id in ring:
        line = lines[site_id]
        if policy(site_id).paused or not at_cap(site_id):
            continue  # parked instead, or it starts its events here soon
        if line[0].offset < last_done.get(line[0].tp, -1) and not any(e.failures for e in line):
            chosen.append(site_id)
    return chosen


class GivingWay:
    """StageRunner's part that moves the waiting events of sites at their cap (it uses the runner's lines,
    partitions and site controls)."""

    # Set by streams/pipeline/factory.py: produce events again at the end of their partitions, in order,
    # returning once the broker has all of them. None: a site at its cap keeps its waiting events in the
    # runner, holding its partition's commit and the read-ahead.
    to_tail: Callable[[list[Any]], Awaitable[None]] | None = None
    GIVE_WAY_EVERY = 1.0  # while the read-ahead is full, sites that hold it are looked for this often
    _mover: asyncio.Task | None = None  # the move under way
    _gave_way_at = -math.inf
    name: str
    _lines: dict[str, Any]
    _ring: Any
    _credit: dict[str, float]
    _unfinished: dict[Any, Any]
    policy: Callable[[str], Any]
    at_cap: Callable[[str], bool]
    _show_queued: Callable[[str], None]
    _requeue: Callable[..., None]
    _ack_in_order: Callable[[Any], Awaitable[None]]

    def _give_way(self) -> None:
        """The read-ahead is full: sites at their cap that hold finished events unacked move their waiting
        events to the end of their partitions (`to_tail`); the copies run when they are read again."""
        now = time.monotonic()
        if self.to_tail is None or (self._mover is not None and not self._mover.done()) \
                or now - self._gave_way_at < self.GIVE_WAY_EVERY:
            return
        self._gave_way_at = now
        moving: list[Any] = []
        for site_id in sites_to_move(self._lines, self._unfinished, self.at_cap, self.policy, list(self._ring)):
            moving.extend(self._lines.pop(site_id))
            self._ring.remove(site_id)
            self._credit[site_id] = 0.0
            self._show_queued(site_id)
        if moving:
            self._mover = asyncio.ensure_future(self._move_to_tail(moving))

    async def _move_to_tail(self, entries: list[Any]) -> None:
        assert self.to_tail is not None
        try:
            await self.to_tail([e.event for e in entries])
        except Exception as exc:  # the broker away: they run in their place (a copy it took anyway is a replay)
            log.warning("%s: could not move %d waiting events of sites at their cap to the end of their partitions "
                        "(%s); they wait here", self.name, len(entries), exc)
            self._gave_way_at = time.monotonic() + 10 * self.GIVE_WAY_EVERY
            for entry in reversed(entries):
                self._requeue(entry)
            return
        moved = [e for e in entries if not e.dropped]
        for entry in moved:
            entry.done = True
        metrics.stage_events.labels(self.name, "moved").inc(len(moved))
        log.info("%s: %d waiting events of sites at their cap (%s) moved to the end of their partitions, so the "
                 "events finished behind them are acked", self.name, len(moved), ", ".join(sorted({e.site_id for e in moved})))
        for tp in dict.fromkeys(e.tp for e in moved):
            await self._ack_in_order(tp)
