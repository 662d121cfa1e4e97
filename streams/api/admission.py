"""Backpressure: how many requests are pending, and whether a submission may join them.

pending = requests accepted and not yet DONE/FAILED/CANCELLED, across all
workers. A submission of n requests is admitted only while pending + n <=
QUEUE_SIZE_LIMIT (and, when it has bulk requests, <= QUEUE_SIZE_LIMIT x (1 -
QUEUE_INTERACTIVE_SHARE)) and, per site, site pending + k <= sites.max_queued
for its interactive requests, <= sites.max_queued_bulk for its bulk ones (each
lane counted apart per site: a site's backfill never fills its interactive room).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Mapping, Sequence

from store.costs import release_advice
from streams.api.http import IntakeError, retry_after_header
from streams.contract.requests import BULK, INTERACTIVE, lane_of
from streams.pipeline.deps import deps
from streams.settings import settings

log = logging.getLogger(__name__)

# Entries in the "accepted here, not yet written by the sink" set are forgotten
# after this long, so a lost sink write cannot keep the figure high forever.
UNSEEN_TTL_SECONDS = 600.0


@dataclass(frozen=True)
class PendingSnapshot:
    """What Postgres said at one moment (one statement, one MVCC snapshot)."""

    by_site: dict[str, int]  # interactive PENDING rows per site
    seen: set[str]  # which of the asked-about ids have a row (any status)
    bulk_by_site: dict[str, int] = field(default_factory=dict)  # bulk PENDING rows per site


FetchPending = Callable[[list[str]], Awaitable[PendingSnapshot]]


class QueueUnknown(Exception):
    """The pending figure could not be read recently enough to admit anything."""


@dataclass
class Decision:
    ok: bool
    reason: str = ""  # "queue_full" | "site_queue_full"
    pending: int = 0
    limit: int = 0
    site_id: str | None = None
    room: int = 0  # how many requests (of this site, for site_queue_full) would be admitted now
    lane: str = INTERACTIVE  # the queue that is full: interactive, or bulk (its own limits)


class PendingGauge:
    """Pending requests per lane, global and per site, cheap to read: one query per `refresh_seconds` at most.

    estimate = PENDING rows in Postgres (any worker's requests, once the sink wrote them)
             + ids this worker accepted that the last read did not find in Postgres yet
             + requests this worker is producing right now (reserved at admission)

    Each lane (interactive, bulk) is counted apart too: a bulk request may wait hours by design, and
    a backfill must not fill the room of interactive requests (`admit`).

    Reservation happens in the same synchronous step as the check, so concurrent
    submissions to one worker can never together pass the limit. What other workers
    accepted since the last read (at most `refresh_seconds` + the sink's batch delay)
    is the only part that can be stale.
    """

    def __init__(
        self,
        fetch: FetchPending,
        *,
        refresh_seconds: float = 1.0,
        max_age_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._db_by_site: dict[str, dict[str, int]] = {INTERACTIVE: {}, BULK: {}}
        self._db_total: Counter = Counter()
        self._as_of: float | None = None  # clock when the last good read started
        self._last_try = float("-inf")
        self._refreshing: asyncio.Future | None = None
        self._unseen: dict[str, tuple[str, str, float]] = {}  # request id -> (site, lane, accepted at)
        self._unseen_total: Counter = Counter()  # lane -> ids
        self._unseen_by_site: Counter = Counter()  # (lane, site) -> ids
        self._reserved_total: Counter = Counter()
        self._reserved_by_site: Counter = Counter()

    # --- reading ---------------------------------------------------------------------------
    @property
    def age(self) -> float | None:
        return None if self._as_of is None else self._clock() - self._as_of

    def total(self, lane: str | None = None) -> int:
        """Pending requests of `lane`, or of both (None: what the queue limit counts)."""
        if lane is None:
            return sum(self.total(each) for each in (INTERACTIVE, BULK))
        return self._db_total[lane] + self._unseen_total[lane] + self._reserved_total[lane]

    def site(self, site_id: str, lane: str = INTERACTIVE) -> int:
        key = (lane, site_id)
        return self._db_by_site[lane].get(site_id, 0) + self._unseen_by_site[key] + self._reserved_by_site[key]

    def is_fresh(self) -> bool:
        """True while the figure is less than `refresh_seconds` old (then `fresh()` has nothing to do)."""
        return self._as_of is not None and self._clock() - self._as_of < self.refresh_seconds

    async def fresh(self) -> None:
        """Make sure the figure is at most `refresh_seconds` old (shared single read); QueueUnknown if it cannot be."""
        now = self._clock()
        if self._as_of is not None and now - self._as_of < self.refresh_seconds:
            return
        if self._refreshing is None and now - self._last_try >= min(self.refresh_seconds, 1.0):
            self._refreshing = asyncio.ensure_future(self._refresh())
        if self._refreshing is not None:
            try:
                await asyncio.shield(self._refreshing)
            except Exception:
                pass  # logged by _refresh; judged by age below
        if self._as_of is None or self._clock() - self._as_of > self.max_age_seconds:
            raise QueueUnknown("the pending figure could not be read from Postgres")

    async def _refresh(self) -> None:
        started = self._last_try = self._clock()
        asked = list(self._unseen)
        try:
            snapshot = await self._fetch(asked)
        except Exception:
            log.warning("intake: reading the pending figure failed; keeping the last one", exc_info=True)
            raise
        finally:
            self._refreshing = None
        self._db_by_site = {INTERACTIVE: dict(snapshot.by_site), BULK: dict(snapshot.bulk_by_site)}
        self._db_total = Counter({lane: sum(by_site.values()) for lane, by_site in self._db_by_site.items()})
        for request_id in snapshot.seen:
            self._forget(request_id)
        cutoff = started - UNSEEN_TTL_SECONDS
        stale = [rid for rid, (_, _, at) in self._unseen.items() if at < cutoff]
        if stale:
            log.warning("intake: %d accepted requests never reached Postgres within %.0fs; no longer counted",
                        len(stale), UNSEEN_TTL_SECONDS)
            for request_id in stale:
                self._forget(request_id)
        self._as_of = started

    def _forget(self, request_id: str) -> None:
        entry = self._unseen.pop(request_id, None)
        if entry is not None:
            site_id, lane, _ = entry
            self._unseen_total[lane] -= 1
            _count_down(self._unseen_by_site, (lane, site_id))

    # --- admitting -------------------------------------------------------------------------
    def admit(
        self, requests: Sequence[Mapping[str, Any]], *, limit: int, site_limits: Mapping[str, int],
        bulk_site_limits: Mapping[str, int] | None = None, interactive_reserve: int = 0,
    ) -> Decision:
        """Check and reserve in one synchronous step (no await between them).

        Every request counts against `limit` (the queue, both lanes: all of it fits a stage's
        read-ahead, so an interactive request is never left unread behind bulk ones); bulk requests
        are taken only while they leave `interactive_reserve` of it free. Per site, interactive
        requests are held to `site_limits` and bulk ones to `bulk_site_limits` (None: none), each
        against that site's pending requests of its own lane. Admitted whole or not at all.
        """
        per_site: Counter = Counter((lane_of(r), r["site_id"]) for r in requests)
        total, n, bulk = self.total(), len(requests), sum(n for (lane, _), n in per_site.items() if lane == BULK)
        if total + n > limit:
            return Decision(False, "queue_full", total, limit, None, max(0, limit - total))
        if bulk and total + n > limit - interactive_reserve:
            return Decision(False, "queue_full", total, limit - interactive_reserve, None,
                            max(0, limit - interactive_reserve - total), BULK)
        lanes = {INTERACTIVE: site_limits, BULK: bulk_site_limits}
        for (lane, site_id), k in sorted(per_site.items()):
            if (limits := lanes[lane]) is None:
                continue
            site_pending, site_limit = self.site(site_id, lane), limits[site_id]
            if site_pending + k > site_limit:
                return Decision(False, "site_queue_full", site_pending, site_limit, site_id,
                                max(0, site_limit - site_pending), lane)
        self._reserved_total.update(lane for lane, _ in per_site.elements())
        self._reserved_by_site.update(per_site)
        return Decision(True, pending=total, limit=limit)

    def settle(self, requests: Sequence[Mapping[str, Any]], *, produced: bool) -> None:
        """End a reservation: produced requests count as accepted until Postgres has them."""
        now = self._clock()
        for request in requests:
            site_id, lane = request["site_id"], lane_of(request)
            self._reserved_total[lane] -= 1
            _count_down(self._reserved_by_site, (lane, site_id))
            if produced and request["request_id"] not in self._unseen:
                self._unseen[request["request_id"]] = (site_id, lane, now)
                self._unseen_total[lane] += 1
                self._unseen_by_site[(lane, site_id)] += 1

    def figures(self) -> dict[str, Any]:
        age = self.age
        return {
            "pending": self.total(),
            "pending_in_database": sum(self._db_total.values()),
            "accepted_here_not_yet_in_database": len(self._unseen),
            "being_produced_here": sum(self._reserved_total.values()),
            "age_seconds": None if age is None else round(age, 3),
            "bulk_pending": self.total(BULK),
        }


def _count_down(counter: Counter, key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


async def fetch_pending(ids: list[str]) -> PendingSnapshot:
    await deps.ready()
    assert deps.db is not None
    by_site, bulk_by_site, seen = await deps.db.pending_snapshot(ids)
    return PendingSnapshot(by_site, seen, bulk_by_site)


gauge = PendingGauge(fetch_pending, refresh_seconds=settings.intake_pending_refresh_seconds)


def seconds_to_next_period(cap: str, now: datetime | None = None) -> int:
    """Until the UTC day (or month, for a monthly cap) ends: when the cap lets the site spend again."""
    now = now or datetime.now(timezone.utc)
    day_end = datetime(now.year, now.month, now.day, tzinfo=timezone.utc) + timedelta(days=1)
    end = day_end
    if cap == "month":
        end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc)
    return max(1, math.ceil((end - now).total_seconds()))


def budget_rejection(sites: Mapping[str, Any]) -> IntakeError | None:
    """429 `budget_exhausted` when a spend cap holds a site of the submission (store/costs.py), else None.

    Nothing of the submission is accepted: its site's queued requests already wait for
    the cap to be raised or the period to end, and these would only join them.
    """
    for site_id, site in sorted(sites.items()):
        reason = getattr(site, "budget_exhausted", None)
        if reason is None:
            continue
        period = {"month": "this month's", "day": "today's", "global_day": "all sites' daily"}.get(reason, reason)
        wait = seconds_to_next_period(reason)
        return IntakeError(
            429, f"site {site_id} has spent {period} budget (spend cap reached); nothing was accepted: "
                 f"{release_advice(reason, site_id)}, then send again",
            headers={"Retry-After": str(wait)}, reason="budget_exhausted", code="budget_exhausted", cap=reason,
            site_id=site_id, retry_after=wait,
        )
    return None


def rejection(decision: Decision) -> IntakeError:
    wait = settings.intake_retry_after_seconds
    bulk = decision.lane == BULK
    n, limit = decision.pending, decision.limit
    if decision.reason == "queue_full" and bulk:
        what = (f"the queue is full for bulk requests: {n} requests are pending, and bulk ones are taken only "
                f"up to {limit}, leaving the rest for interactive ones (BLOGSTREAM_QUEUE_INTERACTIVE_SHARE)")
    elif decision.reason == "queue_full":
        what = f"the queue is full: {n} requests are pending and the limit is {limit}"
    else:
        what = (f"site {decision.site_id} has {n} {'bulk ' if bulk else ''}requests pending and its limit "
                f"({'max_queued_bulk' if bulk else 'max_queued'}) is {limit}")
    text = f"{what}; nothing was accepted, retry after {wait} s"
    if 0 < decision.room:
        text += f" or send at most {decision.room} now"
    return IntakeError(
        429, text, headers=retry_after_header(), reason=decision.reason, pending=decision.pending,
        limit=decision.limit, site_id=decision.site_id, room=decision.room, retry_after=wait, lane=decision.lane,
    )
