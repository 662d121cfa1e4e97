"""The global limiter: one coordinator decides every permit, for all workers.

Why one writer: Faust table writes land in the partition of the event being
processed and GlobalTable is last-writer-wins, so counters written from many
partitions or workers would each see only part of the traffic. Instead every
permit ask goes to `blog.limiter`, a ONE-partition topic, so exactly one worker
(the one assigned that partition) runs the coordinator. Its state lives in a
changelog-backed table: when that worker dies, the next owner recovers the
windows instead of starting from zero (which could double-spend a window).

Workers ask with `agent.ask()`; an ask that does not fit waits in the
coordinator (fair queuing across sites, see streams.budgets) and is answered
when room appears. A worker that hears nothing re-sends the same ask id, which
the coordinator treats as the same place in line; that also rebuilds the
waiting line after a failover.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from faust.agents.models import ReqRepRequest, ReqRepResponse

from streams import metrics
from streams.app import LIMITER_TOPIC, app, topic_name
from streams.budgets import Ask, BudgetBook
from streams.settings import settings

log = logging.getLogger(__name__)

OPENAI_REQUESTS = "openai_requests"
OPENAI_TOKENS = "openai_tokens"
REPLICATE_REQUESTS = "replicate_requests"


def wix_requests(site_id: str) -> str:
    return f"wix_requests:{site_id}"


def rate_specs() -> dict[str, dict[str, Any]]:
    window = settings.budget_window_seconds
    paced = settings.budget_pacing
    return {
        OPENAI_REQUESTS: {"limit": settings.openai_rpm, "window": window, "paced": paced},
        OPENAI_TOKENS: {"limit": settings.openai_tpm, "window": window},
        REPLICATE_REQUESTS: {"limit": settings.replicate_rpm, "window": window, "paced": paced},
        "wix_requests:": {"limit": settings.wix_site_rpm, "window": window, "paced": paced},
    }


COORDINATOR_TP_TOPIC = topic_name(LIMITER_TOPIC)
limiter_topic = app.topic(COORDINATOR_TP_TOPIC, partitions=1, value_serializer="json", key_serializer="raw")

# Budget state, key = budget name. use_partitioner: the scheduler writes from a
# timer, outside any event; with one partition every write lands in partition 0.
budget_table = app.Table(
    "blog-budgets",
    default=None,
    partitions=1,
    use_partitioner=True,
    key_type=str,
    value_type=None,
)


class Coordinator:
    """Runs only on the worker that owns blog.limiter partition 0."""

    def __init__(self) -> None:
        self.book = BudgetBook(rate_specs(), grace=settings.permit_grace_seconds, slot_default=settings.site_max_in_flight)
        self.active = False
        self.loaded = False
        self.wakeup = asyncio.Event()
        self.recent: dict[str, dict[str, Any]] = {}  # ask_id -> grant reply, for re-asks
        self.last_recover = time.time()

    def activate(self) -> None:
        self.active = True
        self.loaded = False
        self.book.instance = uuid.uuid4().hex[:8] + "-"

    def deactivate(self) -> None:
        # Whoever takes over recovers the table; our waiting asks are re-sent to it.
        self.active = False
        self.loaded = False
        self.book.drop_asks()
        self.recent.clear()

    def load(self) -> None:
        if not self.loaded:
            self.book = BudgetBook(rate_specs(), grace=settings.permit_grace_seconds, slot_default=settings.site_max_in_flight)
            self.book.instance = uuid.uuid4().hex[:8] + "-"
            self.book.restore((k, v) for k, v in budget_table.items() if v)
            self.loaded = True
            log.info("limiter coordinator active: %d budgets recovered", len(self.book.rates) + len(self.book.slots))

    async def handle(self, value: Any, headers: Any = None) -> None:
        self.load()
        now = time.time()
        reply = None
        reply_to = (headers or {}).get("Faust-Ag-ReplyTo")
        if reply_to:  # agent.ask() puts the reply route in headers (faust 0.15)
            reply = (_text(reply_to), _text(headers.get("Faust-Ag-CorrelationId", b"")))
        elif isinstance(value, ReqRepRequest):
            reply = (value.reply_to, value.correlation_id)
            value = value.value
        elif isinstance(value, dict) and "correlation_id" in value and "reply_to" in value:
            # agent.ask() wraps our dict in a ReqRepRequest; a schemaless topic
            # hands it over as the plain JSON object.
            reply = (value["reply_to"], value["correlation_id"])
            value = value["value"]
        op = value.get("op")
        if op == "acquire":
            known = self.recent.get(value["ask_id"])
            if known is not None and reply:
                await self._send(reply, known)
                return
            self.book.add_ask(
                Ask(
                    ask_id=value["ask_id"],
                    site_id=value["site_id"],
                    request_id=value.get("request_id", ""),
                    needs={k: float(v) for k, v in value["needs"].items()},
                    slot_limit=value.get("slot_limit"),
                    weight=float(value.get("weight") or 1.0),
                    arrived_at=now,
                    seq=0,
                    reply=reply,
                )
            )
        elif op == "settle":
            self.book.settle(value["budget"], value["grant_id"], value["actual"])
        elif op == "release":
            self.book.release_slot(value["site_id"], value["request_id"])
        elif op == "feedback":
            self.book.feedback(
                now,
                value["budget"],
                throttled=bool(value.get("throttled")),
                limit=value.get("limit"),
                remaining=value.get("remaining"),
            )
        elif op == "stats" and reply:
            await self._send(reply, self.stats(now))
        self.wakeup.set()

    def stats(self, now: float) -> dict[str, Any]:
        names = [OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS]
        out = {name: self.book.usage(name, now) for name in names}
        out["wix"] = {
            name.split(":", 1)[1]: self.book.usage(name, now) for name in list(self.book.rates) if name.startswith("wix_requests:")
        }
        out["slots"] = {name.split(":", 1)[1]: len(s.holders) for name, s in self.book.slots.items() if s.holders}
        out["window_seconds"] = settings.budget_window_seconds
        out["at"] = now
        return out

    async def _send(self, reply: tuple[str, str], value: dict[str, Any]) -> None:
        reply_to, correlation_id = reply
        await app.send(reply_to, key=None, value=ReqRepResponse(key=None, value=value, correlation_id=correlation_id))

    async def run_once(self) -> float:
        """Grant what fits, persist, then answer. Returns seconds until the next look."""
        now = time.time()
        if now - self.last_recover >= 1.0:
            self.book.recover(now - self.last_recover)
            self.last_recover = now
        grants = self.book.grant_ready(now)
        if self.book.dirty:
            for name in self.book.dirty:
                budget_table[name] = self.book.snapshot(name)
            self.book.dirty.clear()
            # The grant must not go out before its record is durable: a new
            # coordinator recovering without it could hand the same room out twice.
            await app.producer.flush()
        for grant in grants:
            reply = grant.as_reply()
            self.recent[grant.ask.ask_id] = reply
            metrics.permit_queue_seconds.labels(next(iter(grant.ask.needs), "")).observe(now - grant.ask.arrived_at)
            if grant.ask.reply:
                await self._send(grant.ask.reply, reply)
        if len(self.recent) > 20_000:
            for key in list(self.recent)[:10_000]:
                del self.recent[key]
        wake = self.book.next_wakeup(time.time())
        return 1.0 if wake is None else min(1.0, max(0.0, wake - time.time()))


coordinator = Coordinator()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@app.agent(limiter_topic)
async def budget_coordinator(stream):
    async for event in stream.events():
        if coordinator.active:
            await coordinator.handle(event.value, event.headers)


@app.on_partitions_assigned.connect
async def _limiter_assigned(app_, assigned, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in assigned):
        coordinator.activate()
        coordinator.wakeup.set()


@app.on_partitions_revoked.connect
async def _limiter_revoked(app_, revoked, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in revoked):
        coordinator.deactivate()


@app.task
async def _budget_scheduler() -> None:
    while True:
        try:
            pause = await coordinator.run_once() if coordinator.active and coordinator.loaded else 1.0
        except Exception:  # never let the scheduler die: log and try again
            log.exception("limiter scheduler pass failed")
            pause = 0.5
        coordinator.wakeup.clear()
        try:
            await asyncio.wait_for(coordinator.wakeup.wait(), timeout=pause)
        except asyncio.TimeoutError:
            pass


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------


@dataclass
class Permit:
    grant_id: str
    use_by: float
    needs: dict[str, float]
    waited: float

    def usable(self) -> bool:
        return time.time() <= self.use_by


class Budgets:
    """What stages call: ask for permits, settle tokens, release slots, report pressure."""

    ask_timeout = 5.0

    async def acquire(
        self,
        *,
        site_id: str,
        request_id: str,
        needs: dict[str, float],
        slot_limit: int | None = None,
        weight: float = 1.0,
    ) -> Permit:
        started = time.time()
        ask = {
            "op": "acquire",
            "ask_id": uuid.uuid4().hex,
            "site_id": site_id,
            "request_id": request_id,
            "needs": needs,
            "slot_limit": slot_limit,
            "weight": weight,
        }
        while True:
            try:
                reply = await asyncio.wait_for(budget_coordinator.ask(value=ask), timeout=self.ask_timeout)
            except asyncio.TimeoutError:
                continue  # coordinator busy, moving, or our ask is still in line: re-send, same id
            now = time.time()
            if now > reply["use_by"]:
                # Too late to use safely (we were paused?): the permit stays
                # counted, we ask again for a fresh one.
                metrics.permits_expired.inc()
                ask = {**ask, "ask_id": uuid.uuid4().hex}
                continue
            permit = Permit(reply["grant_id"], reply["use_by"], reply["needs"], now - started)
            primary = next(iter(needs), "")
            metrics.permit_wait_seconds.labels(primary).observe(permit.waited)
            return permit

    async def settle(self, permit: Permit, budget: str, actual: float) -> None:
        await budget_coordinator.cast(value={"op": "settle", "budget": budget, "grant_id": permit.grant_id, "actual": actual})

    async def release_slot(self, site_id: str, request_id: str) -> None:
        await budget_coordinator.cast(value={"op": "release", "site_id": site_id, "request_id": request_id})

    async def feedback(self, budget: str, *, throttled: bool, limit: int | None = None, remaining: int | None = None) -> None:
        await budget_coordinator.cast(
            value={"op": "feedback", "budget": budget, "throttled": throttled, "limit": limit, "remaining": remaining}
        )

    async def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(budget_coordinator.ask(value={"op": "stats"}), timeout=timeout)


budgets = Budgets()
