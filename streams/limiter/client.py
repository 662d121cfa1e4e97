"""The worker side of the limiter: what stages call to get permits.

`budgets.acquire(...)` sends an ask to the coordinator (streams/limiter/
coordinator.py) over `blog.limiter` and waits for its grant; a budget with
plenty of room lends this worker several permits at once (a lease), taken here
without a round trip. Settling tokens, releasing a site's slot and reporting
what a provider said (429s, remaining figures) are casts to the coordinator.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from faust.agents.replies import ReplyPromise

from streams import metrics
from streams.app import app
from streams.ids import random_hex
from store.coalesced import Coalesced
from streams.limiter.agent import budget_coordinator, start_limiter
from streams.limiter.coordinator import limiter_topic, outbox
from streams.limiter.published import STATS_MAX_AGE_SECONDS, STATS_STALE_SECONDS, StatsUnavailable, snapshots
from streams.limiter.skew import ClockSkew
from streams.limiter.specs import OPENAI_TOKENS, wire_margin
from streams.metrics import permit_overhead_seconds, permits_leased_total, reasks_total
from streams.settings import settings

log = logging.getLogger(__name__)

REASK_JITTER = 0.25  # re-sends after silence spread over reask_seconds x (1 +- this)


@dataclass
class Permit:
    grant_id: str
    use_by: float  # sent by then, the permit counts exactly as granted
    needs: dict[str, float]
    waited: float
    granted_at: float = 0.0
    last_use: float = 0.0  # sent after use_by but by then: the wire hook reports it late first
    sent_at: float | None = None  # when the permitted request went on the wire

    @property
    def primary(self) -> str:
        return next(iter(self.needs), "")

    def usable(self) -> bool:
        """Still safe to send (after use_by only because the wire hook reports the late send)."""
        return time.time() <= max(self.use_by, self.last_use)


@dataclass
class _Lease:
    """Units of one budget granted to this worker at once, to take until `until`."""

    grant_id: str
    start: float
    until: float
    use_by: float  # a unit taken by `until` is sent by then, or reported late
    last_use: float
    left: int
    taken: int = 0
    closed: bool = False


@dataclass
class _LeasePool:
    """This worker's leases on one budget, and how fast it takes permits of that budget."""

    leases: list[_Lease] = field(default_factory=list)
    recent: "deque[float]" = field(default_factory=deque)  # when permits were asked for, the last lease period
    refilling: bool = False
    quiet_until: float = 0.0  # the coordinator said no (the budget is busy): do not ask to refill before
    asker: tuple[str, float] = ("", 1.0)  # the site and weight of the last permit taken (a renewal asks as it)

    def note(self, now: float, period: float) -> None:
        self.recent.append(now)
        while self.recent and self.recent[0] < now - period:
            self.recent.popleft()

    def wanted(self) -> int:
        """Units for the next lease: what one lease period took lately, with some to spare."""
        return min(64, max(2, (3 * len(self.recent) + 1) // 2 + 1))

    def take(self, now: float) -> _Lease | None:
        for lease in self.leases:
            if not lease.closed and lease.left > 0 and now < lease.until:
                lease.left -= 1
                lease.taken += 1
                return lease
        return None

    def left(self, now: float, margin: float) -> int:
        """Units still to take, in leases that do not end within `margin`."""
        return sum(lease.left for lease in self.leases if not lease.closed and now + margin < lease.until)


# The permit the current task holds (set by Budgets.acquire, read by the wire hook).
current_permit: contextvars.ContextVar[Permit | None] = contextvars.ContextVar("blogstream_permit", default=None)
# From our hook to the provider counting the request: the write, the network,


class CastBatch(Coalesced[dict, None]):
    """One-way messages to the coordinator made in the same moment travel as one record.

    A blog sends the coordinator several (a settle, a release, lease ends, late
    reports), and each Kafka record costs a produce request here and a turn of
    the coordinator's agent there. Messages that come while the previous record
    is being sent wait and go together in the next (`{"op": "batch", "ops":
    [...]}`, handled in order by Coordinator.handle); one alone goes as itself.
    `send(value)` returns once the record is as far as the caller needs it:
    handed to the producer (casts), or acked by the broker (late reports).
    """

    MAX_OPS = 500  # about 100 kB: far below Kafka's record limit

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        async def one_record(values: list[dict[str, Any]]) -> list[None]:
            await send(values[0] if len(values) == 1 else {"op": "batch", "ops": values})
            return [None] * len(values)

        super().__init__(one_record, max_batch=self.MAX_OPS)

    async def send(self, value: dict[str, Any]) -> None:
        await self(value)


def _to_limiter(value: Any, headers: Any = None) -> asyncio.Future:
    """Send to the coordinator through the limiter's own producer, in order (limiter/outbox.py)."""
    start_limiter()
    return outbox.to_limiter(limiter_topic, value, headers)


async def _cast(value: dict[str, Any]) -> None:
    _to_limiter(value).add_done_callback(_retrieved)  # one-way: not waited for, as Faust's cast


async def _send_durable(value: dict[str, Any]) -> None:
    await _to_limiter(value)


def _seen(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:  # the worker stopping, say: the lease runs out anyway
        log.debug("limiter: a message to the coordinator was not sent: %s", task.exception())


def _retrieved(delivery: asyncio.Future) -> None:
    """Marks a failed delivery's error as seen (an ask's copy lost in an outage is sent again, not logged)."""
    if not delivery.cancelled():
        delivery.exception()


class Budgets:
    """What stages call: ask for permits, settle tokens, release slots, report pressure.

    An ask waits at the coordinator as long as its budget is full; the worker
    re-sends it (same ask id) after every rebalance, when the coordinator may
    have moved and lost its waiting line, and every `reask_seconds` in case a
    message went missing.
    """

    ask_timeout = 5.0  # asks with a deadline (lease refills): how often to re-send within it
    reask_seconds = 30.0
    lease_seconds = settings.permit_lease_seconds
    _slow_logged = 0.0
    _regrouped: asyncio.Event | None = None

    def __init__(self) -> None:
        # This process, for the coordinator: the slots of requests it asked for are its own (workers.py).
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._pools: dict[str, _LeasePool] = {}  # budget -> leased units (see `_leasable`)
        self.casts = CastBatch(_cast)  # one-way messages, batched
        self.late_reports = CastBatch(_send_durable)  # batched too, each back once the broker has it
        self.reasks = CastBatch(_send_durable)  # copies of waiting asks (`_ask_again`)
        # This worker's clock against the coordinator's, from the asks' round trips (skew.py).
        self.clock_skew = ClockSkew(wire_margin() / 2, metrics.limiter_clock_offset.set)

    def reask_after(self) -> float:
        """Seconds of silence before an ask is sent again: `reask_seconds`, give or take a quarter.

        Asks made in one burst (a stage filling up: 10,000 at once) would
        otherwise come back in one burst every `reask_seconds`; 10,000 records
        handed to the producer at once held a worker's event loop for 0.75 s
        (the growth benchmark's slowest permits at 10,000 sites).
        """
        return self.reask_seconds * random.uniform(1.0 - REASK_JITTER, 1.0 + REASK_JITTER)

    def regroup(self) -> None:
        """A rebalance happened: wake every waiting ask to re-send itself."""
        if self._regrouped is not None:
            self._regrouped.set()
        self._regrouped = asyncio.Event()

    def _regroup_event(self) -> asyncio.Event:
        if self._regrouped is None:
            self._regrouped = asyncio.Event()
        return self._regrouped

    async def _ask(self, value: dict[str, Any]) -> ReplyPromise:
        """agent.ask() without waiting: the promise stays registered until we forget it."""
        reply_to = app.conf.reply_to
        correlation_id = random_hex()
        request, headers = budget_coordinator._create_req(None, value, reply_to, correlation_id, None)
        promise = ReplyPromise(reply_to, correlation_id)
        await app._reply_consumer.add(correlation_id, promise)  # type: ignore[attr-defined]
        delivery = _to_limiter(request, headers)
        delivery.add_done_callback(_retrieved)
        return promise, delivery

    async def _ask_again(self, value: dict[str, Any], promise: ReplyPromise) -> asyncio.Future:
        """Send a waiting ask again, to be answered through its first promise; returns its delivery.

        Copies sent in the same moment travel as one record (`reasks`, acked by
        the broker): after a rebalance every waiting ask is sent again at once,
        and 10,000 asks waiting re-sent every 30 s were 330 records a second.
        """
        copy = {"reply_to": promise.reply_to, "correlation_id": promise.correlation_id, "value": value}
        delivery = asyncio.ensure_future(self.reasks.send(copy))
        delivery.add_done_callback(_retrieved)
        return delivery

    @staticmethod
    def _forget(promises: list[ReplyPromise]) -> None:
        waiting = app._reply_consumer._waiting  # type: ignore[attr-defined]
        for p in promises:
            waiting.pop(p.correlation_id, None)

    async def _ask_until_answered(self, value: dict[str, Any], deadline: float | None = None) -> Any:
        """Send an ask; re-send it (same ask id) after a rebalance or a long silence.

        An answer to any of the copies counts: a grant may cross a re-send.
        """
        promises: list[ReplyPromise] = []
        lost = 0  # copies in a row the broker never took
        try:
            while True:
                regrouped = self._regroup_event()
                if not promises:
                    promise, delivery = await self._ask(value)
                    promises.append(promise)
                elif delivery.done():  # answered through the first copy's promise
                    delivery = await self._ask_again(value, promises[0])
                    reasks_total.inc()
                # else the last copy has not left yet (the broker is away): it reaches whoever holds the
                # limiter when it does, and another would only queue behind it. One copy per ask at most
                # waits in the outbox, however long the outage.
                timeout = self.reask_after()
                if deadline is not None:
                    timeout = min(self.ask_timeout, deadline - time.time())
                    if timeout <= 0:
                        raise asyncio.TimeoutError()
                moved = asyncio.ensure_future(regrouped.wait())
                until = time.monotonic() + timeout
                waiting = {*promises, moved, delivery}
                try:
                    while True:
                        done, _ = await asyncio.wait(
                            waiting, timeout=max(0.0, until - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
                        if done != {delivery}:
                            break  # answered, regrouped, or time to re-send
                        waiting.discard(delivery)
                        if delivery.cancelled() or delivery.exception() is not None:
                            # The broker never took this copy (it was away longer than the producer's
                            # request timeout): send another soon, so the ask is there when it is back,
                            # rather than one `reask_seconds` later.
                            lost += 1
                            until = min(until, time.monotonic() + min(5.0, 0.5 * 2 ** (lost - 1)))
                        else:
                            lost = 0
                finally:
                    moved.cancel()
                for p in promises:
                    if p.done() and not p.cancelled():
                        return p.result()
                if deadline is not None and time.time() >= deadline:
                    raise asyncio.TimeoutError()
        finally:
            self._forget(promises)

    async def acquire(
        self,
        *,
        site_id: str,
        request_id: str,
        needs: dict[str, float],
        slot_limit: int | None = None,
        weight: float = 1.0,
        lane: str = "interactive",
    ) -> Permit:
        """Wait for a permit covering `needs`; the caller must send its request before `use_by`."""
        started = time.time()
        primary = next(iter(needs), "")
        expired = 0
        pool = self._pool(needs, slot_limit)
        if pool is not None:
            pool.note(started, self.lease_seconds)
            lease = pool.take(started)
            if lease is not None:
                permits_leased_total.labels(metrics.budget_label(primary)).inc()
                return await self._from_lease(primary, pool, lease, site_id, weight, started)
        while True:
            asked = time.time()
            ask = {
                "op": "acquire",
                "worker": self.instance,
                "ask_id": random_hex(),
                "site_id": site_id,
                "request_id": request_id,
                "needs": needs,
                "slot_limit": slot_limit,
                "weight": weight,
            }
            if lane != "interactive":  # bulk: served with what interactive asks leave (book.py)
                ask["lane"] = lane
            if pool is not None:
                ask["lease"] = pool.wanted()  # granted as a lease if the budget has plenty of room
            reply = await self._ask_until_answered(ask)
            now = time.time()
            self.clock_skew.answered(asked, reply, now)
            if reply.get("lease_units") and pool is not None:
                lease = self._add_lease(primary, pool, reply, taken=1)
                if lease is not None:
                    # As for one permit: the round trip, less any wait for room (a lease never starts ahead).
                    overhead = now - (lease.start if reply.get("waited") else asked + float(reply.get("queued", 0.0)))
                    return await self._from_lease(primary, pool, lease, site_id, weight, started, overhead=overhead)
                continue  # it ended before it got here: ask again
            if now > max(reply["use_by"], reply.get("last_use") or 0.0):
                # Too late to use even with a late report (we were paused for
                # seconds). We never send it, so its room goes back at once,
                # and we ask again for a fresh one.
                metrics.permits_expired.inc()
                await self.casts.send({"op": "unused", "grant_id": reply["grant_id"], "needs": needs})
                # Answers that slow mean this worker is overloaded: asking again
                # at once would only add to the load that made them late.
                expired += 1
                await asyncio.sleep(min(5.0, 0.25 * 2 ** (expired - 1)))
                continue
            start, answered = float(reply.get("granted_at") or 0.0), now
            if start > now:  # granted ahead: its room opens at `start`, not before
                await asyncio.sleep(start - now)
                now = time.time()
            permit = Permit(
                reply["grant_id"], reply["use_by"], dict(reply.get("needs") or needs), now - started,
                granted_at=start, last_use=float(reply.get("last_use") or 0.0),
            )
            metrics.permit_wait_seconds.labels(metrics.budget_label(primary)).observe(permit.waited)
            if reply.get("ahead") or reply.get("waited"):
                # Room opened at `start` (granted ahead, or granted the moment a
                # pass found room for a waiting ask): only the time past it is the limiter's.
                overhead = max(0.0, now - start)
            else:
                overhead = max(0.0, (now - asked) - float(reply.get("queued", 0.0)))
            permit_overhead_seconds.labels(metrics.budget_label(primary)).observe(overhead)
            if overhead > 0.25 and now - self._slow_logged > 10.0:
                self._slow_logged = now
                arrived, granted, sent = reply.get("arrived_at"), reply.get("granted_at"), reply.get("sent_at")
                log.info(
                    "slow permit for %s: %.0f ms beyond waiting for room (ask to coordinator %s ms, grant to "
                    "answer %s ms, answer to worker %s ms, then woke %s ms after its start)", primary, 1000 * overhead,
                    _ms(arrived - asked if arrived else None), _ms(sent - granted if sent and granted else None),
                    _ms(answered - sent if sent else None), _ms(now - start if start > answered else None),
                )
            current_permit.set(permit)  # the wire hook reports when its request really leaves
            return permit

    async def take_slot(self, *, site_id: str, request_id: str, slot_limit: int, weight: float = 1.0,
                        lane: str = "interactive") -> None:
        """Wait for one of the site's in-flight slots (`slot_limit` of them) for `request_id`, with no budget.

        For a request whose paid call is done already (generate.py: its article in the ledger); a slot its
        request holds already is granted at once. Freed as any slot is (`release_slot`).
        """
        ask = {"op": "acquire", "worker": self.instance, "ask_id": random_hex(), "site_id": site_id,
               "request_id": request_id, "needs": {}, "slot_limit": slot_limit, "weight": weight}
        if lane != "interactive":
            ask["lane"] = lane
        await self._ask_until_answered(ask)  # no use-by to keep: the slot is the request's from the grant on

    # --- leases: several permits of a budget with plenty of room, taken here --------
    def _pool(self, needs: dict[str, float], slot_limit: int | None) -> _LeasePool | None:
        """The lease pool for an ask of one request of one budget (Replicate, Wix); None otherwise.

        Generate asks (OpenAI requests + tokens + a site slot) always go
        through the coordinator's line.
        """
        if self.lease_seconds <= 0 or slot_limit is not None or len(needs) != 1:
            return None
        budget, amount = next(iter(needs.items()))
        if amount != 1 or budget == OPENAI_TOKENS:
            return None
        pool = self._pools.get(budget)
        if pool is None:
            pool = self._pools[budget] = _LeasePool()
        return pool

    def _add_lease(self, budget: str, pool: _LeasePool, reply: dict[str, Any], taken: int) -> _Lease | None:
        now = time.time()
        units = int(reply["lease_units"])
        lease = _Lease(reply["grant_id"], float(reply["granted_at"]), float(reply["lease_until"]),
                       float(reply["use_by"]), float(reply.get("last_use") or reply["use_by"]),
                       left=units - taken, taken=taken)
        if now >= lease.until:  # arrived after its end: nothing taken, all of it goes back
            lease.left, lease.taken = units, 0
            self._end_lease(budget, pool, lease)
            return None
        pool.leases.append(lease)
        asyncio.get_running_loop().call_later(lease.until - now, self._end_lease, budget, pool, lease)
        return lease

    def _end_lease(self, budget: str, pool: _LeasePool, lease: _Lease) -> None:
        """No more units from `lease`; tell the coordinator how many were taken (the rest were never sent)."""
        if lease.closed:
            return
        lease.closed = True
        if lease in pool.leases:
            pool.leases.remove(lease)
        if lease.left > 0:
            asyncio.ensure_future(self.casts.send(
                {"op": "lease_end", "budget": budget, "grant_id": lease.grant_id, "taken": lease.taken}
            )).add_done_callback(_seen)
        if lease.taken and not pool.leases and lease.until - lease.start > 2 * self.lease_seconds:
            # A site's long lease in use: renewed now, not at the site's next permit after a round trip.
            self._maybe_refill(budget, pool, *pool.asker, time.time())

    def end_leases(self, budget: str) -> None:
        """The provider pushed back on `budget`: take nothing more from leases on it."""
        pool = self._pools.get(budget)
        if pool is not None:
            pool.quiet_until = time.time() + self.lease_seconds  # first: ending them renews none
            for lease in list(pool.leases):
                self._end_lease(budget, pool, lease)

    async def _from_lease(self, budget: str, pool: _LeasePool, lease: _Lease, site_id: str, weight: float,
                          started: float, overhead: float | None = None) -> Permit:
        now = time.time()
        if lease.start > now:  # a worker clock behind the coordinator's: not before the start
            await asyncio.sleep(lease.start - now)
            now = time.time()
        # granted_at is when the unit was handed out: the send delay is measured from it.
        permit = Permit(lease.grant_id, lease.use_by, {budget: 1.0}, now - started, granted_at=now,
                        last_use=lease.last_use)
        metrics.permit_wait_seconds.labels(metrics.budget_label(budget)).observe(permit.waited)
        # Taken here: the time it took (no round trip). Leased by an ask: as for one permit.
        permit_overhead_seconds.labels(metrics.budget_label(budget)).observe(max(0.0, permit.waited if overhead is None else overhead))
        pool.asker = (site_id, weight)
        self._maybe_refill(budget, pool, site_id, weight, now)
        current_permit.set(permit)
        return permit

    def _maybe_refill(self, budget: str, pool: _LeasePool, site_id: str, weight: float, now: float) -> None:
        """Ask for the next lease before this one runs out, so no permit waits for a round trip."""
        if pool.refilling or now < pool.quiet_until:
            return
        if pool.left(now, self.lease_seconds / 4) > pool.wanted() // 3:
            return
        pool.refilling = True
        asyncio.ensure_future(self._refill(budget, pool, site_id, weight))

    async def _refill(self, budget: str, pool: _LeasePool, site_id: str, weight: float) -> None:
        ask = {"op": "lease", "worker": self.instance, "ask_id": random_hex(), "site_id": site_id,
               "request_id": "", "needs": {budget: 1.0}, "lease": pool.wanted(), "weight": weight}
        try:
            asked = time.time()
            reply = await self._ask_until_answered(ask, deadline=asked + 2.0)
            self.clock_skew.answered(asked, reply, time.time())
            if reply.get("lease_units"):
                self._add_lease(budget, pool, reply, taken=0)
            else:  # no lease while the budget is busy: ask one by one, try again later
                pool.quiet_until = time.time() + self.lease_seconds / 2
        except asyncio.TimeoutError:
            pool.quiet_until = time.time() + self.lease_seconds
        except Exception:
            log.warning("limiter: could not refill the lease on %s", budget, exc_info=True)
            pool.quiet_until = time.time() + self.lease_seconds
        finally:
            pool.refilling = False

    async def report_late(self, permit: Permit, anchor: float) -> None:
        """Tell the coordinator a permit's request leaves late; return once the broker has it."""
        await self.late_reports.send({"op": "late", "grant_id": permit.grant_id, "needs": permit.needs,
                                      "anchor": anchor, "granted_at": permit.granted_at})

    async def settle(self, permit: Permit, budget: str, actual: float, rate_limit: Any = None) -> None:
        """A call's real usage, with the provider's x-ratelimit-* figures of the same answer (one message)."""
        value = {"op": "settle", "budget": budget, "grant_id": permit.grant_id, "actual": actual}
        if permit.sent_at is not None:  # when it left (the wire hook): counted from then, not from the grant's grace
            value["sent_at"] = permit.sent_at
        if rate_limit is not None:  # the coordinator learns from them how the provider counts tokens
            value.update(requests_budget=permit.primary, limit=rate_limit.limit_requests,
                         remaining=rate_limit.remaining_requests, tokens_limit=rate_limit.limit_tokens,
                         tokens_remaining=rate_limit.remaining_tokens, seen_at=time.time())
        await self.casts.send(value)

    async def release_slot(self, site_id: str, request_id: str) -> None:
        await self.casts.send({"op": "release", "site_id": site_id, "request_id": request_id})

    async def feedback(
        self,
        budget: str,
        *,
        throttled: bool,
        limit: int | None = None,
        remaining: int | None = None,
        tokens_budget: str | None = None,
        tokens_limit: int | None = None,
        tokens_remaining: int | None = None,
        tokens_needed: float | None = None,
    ) -> None:
        """Tell the coordinator what a provider answer said (a 429, x-ratelimit-remaining-*).

        `tokens_needed`: the call's token reservation, so that a 429 can be told
        apart as one for tokens (fewer left than it needed) or for requests.
        """
        await self.casts.send(
            {"op": "feedback", "budget": budget, "throttled": throttled, "limit": limit, "remaining": remaining,
                   "tokens_budget": tokens_budget, "tokens_limit": tokens_limit, "tokens_remaining": tokens_remaining,
                   "tokens_needed": tokens_needed, "seen_at": time.time()}
        )

    async def observe(self, needs: dict[str, float], info: Any, *, throttled: bool) -> None:
        """feedback() from a connector's RateLimitInfo: requests figures for the first
        budget in `needs`, token figures for the token budget (OpenAI), if any."""
        primary = next(iter(needs))
        if throttled:
            self.end_leases(primary)
        tokens_budget = next((b for b in needs if b == OPENAI_TOKENS), None)
        await self.feedback(
            primary,
            throttled=throttled,
            limit=getattr(info, "limit_requests", None),
            remaining=getattr(info, "remaining_requests", None),
            tokens_budget=tokens_budget if info is not None else None,
            tokens_limit=getattr(info, "limit_tokens", None),
            tokens_remaining=getattr(info, "remaining_tokens", None),
            tokens_needed=needs.get(tokens_budget) if tokens_budget else None,
        )

    async def stats(self, timeout: float = 5.0, max_age: float | None = None) -> dict[str, Any]:
        """The coordinator's figures, from the snapshot it publishes every second (never an ask to it).

        The answer has `snapshot_age_seconds` and `stale` (older than STATS_STALE_SECONDS).
        Raises StatsUnavailable when there is none, when it is older than `max_age`
        (STATS_MAX_AGE_SECONDS by default), or when Postgres does not answer within `timeout`.
        """
        snapshot = await snapshots.read(timeout)
        age = round(snapshot.age_seconds, 3)
        limit = STATS_MAX_AGE_SECONDS if max_age is None else max_age
        if age > limit:
            raise StatsUnavailable(
                f"the limiter's figures are {age:.0f} s old (the coordinator publishes them every second): no "
                "coordinator is running, or it cannot write to Postgres; a rebalance takes a few seconds, "
                "so try again shortly and check the workers' logs if it lasts"
            )
        return {**snapshot.figures, "snapshot_age_seconds": age, "stale": age > STATS_STALE_SECONDS}




budgets = Budgets()


@app.on_partitions_assigned.connect
async def _regroup_after_rebalance(app_: Any, assigned: Any, **kwargs: Any) -> None:  # noqa: ARG001
    # Every member takes part in every rebalance, and the limiter only ever
    # moves in one: re-send the asks still waiting, the new owner may not have them.
    budgets.regroup()


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{1000 * seconds:.0f}"
