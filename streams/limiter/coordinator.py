"""The global limiter: one coordinator decides every permit, for all workers.

Why one writer: Faust table writes land in the partition of the event being
processed and GlobalTable is last-writer-wins, so counters written from many
partitions or workers would each see only part of the traffic. Instead every
permit ask goes to `blog.limiter`, a ONE-partition topic, so exactly one worker
(the one assigned that partition) runs the coordinator. Its state lives in a
changelog-backed table whose changelog is co-partitioned with `blog.limiter`
(both have one partition), so Faust hands the table to the same worker and
recovers it before that worker sees a single ask. When the worker dies, the
next owner recovers the windows instead of starting from zero (which could
double-spend a window).

Durability rule: a grant is answered only after its table record is acked by
the broker, and only if this worker still owns the limiter (the `epoch` did not
change meanwhile). So the next owner never misses a grant a worker could use.

Workers ask with agent.ask()'s request/reply protocol; an ask that does not
fit waits in the coordinator (fair queuing across sites, see streams.limiter.book)
and is answered when room appears. Workers re-send the asks they still wait on
after every rebalance (the limiter only moves in one) and every
`Budgets.reask_seconds`; the coordinator treats a re-send as the same place in
line (or answers with the grant it already made). A request that leaves for
the provider after its permit's use-by time is reported by a hook at the
socket and counted for longer (see `_on_wire`). Design notes: docs/limiter.md.
"""
from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from faust.agents.models import ReqRepRequest, ReqRepResponse
from faust.agents.replies import ReplyConsumer, ReplyPromise
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from prometheus_client import Counter, Gauge, Histogram

from streams import metrics
from streams.app import LIMITER_TOPIC, app, topic_name
from streams.limiter.book import Ask, BudgetBook
from streams.settings import settings

log = logging.getLogger(__name__)

OPENAI_REQUESTS = "openai_requests"
OPENAI_TOKENS = "openai_tokens"
REPLICATE_REQUESTS = "replicate_requests"

MARKER_KEY = "coordinator"  # written by every coordinator at takeover: "this table has state"


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


def span_seconds() -> float:
    return settings.budget_window_seconds + settings.permit_grace_seconds


# --- limiter metrics (same registry as streams.metrics, served at /metrics) ----
_FINE = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
         0.5, 1.0, 2.0, 5.0, 10.0)
permit_overhead_seconds = Histogram(
    "blogstream_permit_overhead_seconds",
    "Permit latency not spent waiting for room: worker-side ask-to-grant time minus the time the ask "
    "waited in the coordinator for the budget (Kafka round trip + coordinator pass + durable write)",
    ["budget"], registry=metrics.registry, buckets=_FINE,
)
grant_persist_seconds = Histogram(
    "blogstream_limiter_persist_seconds", "Coordinator: time to make a pass's grants durable (changelog acks)",
    registry=metrics.registry, buckets=_FINE,
)
grants_total = Counter(
    "blogstream_limiter_grants_total", "Coordinator: permits granted", ["budget"], registry=metrics.registry,
)
reasks_total = Counter(
    "blogstream_permit_reasks_total", "Worker: asks re-sent (after a rebalance or a long silence)",
    registry=metrics.registry,
)
budget_factor = Gauge(
    "blogstream_budget_factor", "Coordinator: adaptive share of a budget's limit (1.0 = all of it)", ["budget"],
    registry=metrics.registry,
)
budget_external = Gauge(
    "blogstream_budget_external", "Coordinator: units per window the provider reports used by someone else",
    ["budget"], registry=metrics.registry,
)
permit_send_delay_seconds = Histogram(
    "blogstream_permit_send_delay_seconds",
    "From a permit's grant (coordinator clock) to its request going on the wire (worker clock); "
    "the safety rule needs this below the grace",
    ["budget"], registry=metrics.registry, buckets=_FINE,
)
late_sends_total = Counter(
    "blogstream_permit_late_sends_total", "Worker: permitted requests that left after the permit's use-by time "
    "(reported to the coordinator, which keeps counting them)", registry=metrics.registry,
)
permits_leased_total = Counter(
    "blogstream_permits_leased_total", "Worker: permits taken from a lease this worker holds (no round trip)",
    ["budget"], registry=metrics.registry,
)
late_unsafe_total = Counter(
    "blogstream_permit_late_unsafe_total", "Coordinator: late reports that came after the permit's room had "
    "been handed out again (the provider may have seen more than the limit)", registry=metrics.registry,
)
coordinator_active = Gauge(
    "blogstream_limiter_coordinator", "1 on the worker that runs the limiter coordinator", registry=metrics.registry,
)


# --- faust fixes for agent.ask() --------------------------------------------------
def _fulfill_once(self: ReplyPromise, correlation_id: str, value: Any) -> None:
    # faust's ReplyConsumer calls set_result() on every reply; a reply for a
    # promise that was cancelled (an ask that timed out) or already answered
    # raises InvalidStateError, which crashes the ReplyConsumer and stops the
    # whole worker. Late and duplicate replies are normal here: ignore them.
    if not self.done():
        self.set_result(value)


ReplyPromise.fulfill = _fulfill_once  # type: ignore[method-assign]


async def _start_fetcher(self: ReplyConsumer, topic_name: str) -> None:
    # faust's version adds the reply topic to the conductor *and* iterates it,
    # and iterating subscribes a clone: every reply then goes to two queues,
    # one of which nobody reads. After ~3,300 replies (4/5 of
    # stream_buffer_maxsize) that queue is "under pressure", Faust stops
    # fetching the reply partition, no permit answer arrives any more, and the
    # worker stalls for good (seen in the 800-request benchmark). Here only
    # the iterating clone is subscribed.
    # It is subscribed at once, not when the drain task first runs (after a
    # 3 s sleep in faust's version): the worker's first subscription must
    # hold it. 2 worker starts in 100 missed it; Faust's conductor then adds
    # a topic only 45 s later, with one more rebalance, and drops the change
    # altogether if it comes during a rebalance. The topic itself is created
    # at start (BlogstreamApp.on_first_start), so there is nothing to wait for.
    if topic_name not in self._fetchers:
        self._fetchers[topic_name] = None  # the key is the lock, as in faust
        topic = self._reply_topic(topic_name)
        await topic.maybe_declare()
        replies = topic.__aiter__()  # the iterating clone, now in app.topics
        self._fetchers[topic_name] = self.add_future(self._drain_replies(replies))


ReplyConsumer._start_fetcher = _start_fetcher  # type: ignore[method-assign]


# --- a faust setting that is not a setting ---------------------------------------
# Faust builds the worker's consumer with fetch_max_wait_ms=1500, hard-coded.
# aiokafka keeps one fetch in flight per broker, and a partition whose records
# are still buffered is left out of it. So an ask that reaches blog.limiter
# while such a fetch is parked on the broker waits for it to time out: a permit
# (or a reply to one) took up to 1.5 s. A short long-poll bounds that wait;
# the price is a few dozen empty fetches per second per worker when idle.
FETCH_MAX_WAIT_MS = int(os.environ.get("BLOGSTREAM_FETCH_MAX_WAIT_MS", "20"))

_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer_fast(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
    return consumer


AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer_fast  # type: ignore[method-assign]


COORDINATOR_TP_TOPIC = topic_name(LIMITER_TOPIC)
limiter_topic = app.topic(COORDINATOR_TP_TOPIC, partitions=1, value_serializer="json", key_serializer="raw")

# Budget state: "r|<budget>|meta", "r|<budget>|<second>" (the grants of one
# second), "slots:<site>", and the takeover marker. Written by the coordinator
# only, from its scheduler task (outside any event), always to partition 0.
budget_table = app.Table(
    "blog-budgets",
    default=None,
    partitions=1,
    use_partitioner=True,
    key_type=str,
    value_type=None,
)


@dataclass
class _Answer:
    """A grant made by this coordinator: its reply, where to send it, whether it went."""

    reply: dict[str, Any]
    route: tuple[str, str] | None
    sent: bool = False


@dataclass
class Coordinator:
    """Runs only on the worker that owns blog.limiter partition 0."""

    book: BudgetBook = field(default_factory=lambda: Coordinator.new_book())
    active: bool = False
    loaded: bool = False
    epoch: int = 0
    hold_until: float = 0.0  # no grants before this (takeover without recovered state)
    answers: "OrderedDict[str, _Answer]" = field(default_factory=OrderedDict)  # ask_id -> grant
    unsent: list[str] = field(default_factory=list)  # ask ids granted, not yet durable/answered
    pending_writes: dict[str, Any] = field(default_factory=dict)
    last_tick: float = field(default_factory=time.time)
    _wakeup: asyncio.Event | None = None

    @staticmethod
    def new_book() -> BudgetBook:
        book = BudgetBook(rate_specs(), grace=settings.permit_grace_seconds, slot_default=settings.site_max_in_flight,
                          lookahead=settings.permit_lookahead_seconds, lease_seconds=settings.permit_lease_seconds,
                          lease_below=settings.permit_lease_below)
        book.instance = uuid.uuid4().hex[:8] + "-"
        return book

    @property
    def wakeup(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    def activate(self) -> None:
        self.active = True
        self.loaded = False
        self.epoch += 1
        coordinator_active.set(1)

    def deactivate(self) -> None:
        # Whoever takes over recovers the table; our waiting asks are re-sent to it.
        self.active = False
        self.loaded = False
        self.epoch += 1
        self.book.drop_asks()
        self.answers.clear()
        self.unsent.clear()
        self.pending_writes.clear()
        coordinator_active.set(0)

    async def load(self, offset: int | None = None) -> None:
        """Rebuild the book from the recovered table (first event after a takeover)."""
        if self.loaded:
            return
        epoch = self.epoch
        changelog_records = await _changelog_end_offset() if offset else 0
        if epoch != self.epoch:
            return
        now = time.time()
        self.book = self.new_book()
        items = [(k, v) for k, v in budget_table.items() if v is not None]
        self.book.restore(items)
        self.answers.clear()
        self.unsent.clear()
        for ask_id, (grant_id, granted_at) in self.book.granted_asks().items():
            reply = {"ask_id": ask_id, "grant_id": grant_id, "granted_at": granted_at,
                     "use_by": granted_at + self.book.grace, "needs": {}, "queued": 0.0}
            self.answers[ask_id] = _Answer(reply, None, sent=True)
        marker = dict(items).get(MARKER_KEY)
        self.hold_until = 0.0
        if marker is None and offset and changelog_records != 0:
            # The changelog has records (or we cannot tell) but the recovered
            # table has no trace of any coordinator: its state was not
            # recovered. Grant nothing until every grant we cannot see has left
            # every window. (The marker goes out with a coordinator's first
            # write, so a changelog with grants in it always holds a marker.)
            self.hold_until = now + span_seconds()
            log.warning(
                "limiter coordinator: no recovered state although the changelog has %s records; "
                "holding all grants for %.1f s (one window + grace) to stay safe", changelog_records, span_seconds(),
            )
        self.pending_writes[MARKER_KEY] = {"instance": self.book.instance, "at": now,
                                           "previous": marker.get("instance") if marker else None}
        self.last_tick = now
        self.loaded = True
        self.wakeup.set()  # persist the marker now, not with the first grant
        log.info(
            "limiter coordinator active (instance %s): %d budgets, %d grants in windows recovered%s",
            self.book.instance, len(self.book.rates) + len(self.book.slots), len(self.answers),
            f" (took over from {marker.get('instance')})" if marker else "",
        )

    # --- events ---------------------------------------------------------------
    async def handle(self, value: Any, headers: Any = None, offset: int | None = None) -> None:
        await self.load(offset)
        if not self.loaded:
            return  # the limiter moved away while we were loading
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
        if op in ("acquire", "lease"):
            answer = self.answers.get(value["ask_id"])
            if answer is not None:  # a re-ask for an ask already granted
                if reply:
                    answer.route = reply
                    if answer.sent:
                        await self._send(reply, answer.reply)
                return
            ask = Ask(
                ask_id=value["ask_id"],
                site_id=value["site_id"],
                request_id=value.get("request_id", ""),
                needs={k: float(v) for k, v in value["needs"].items()},
                slot_limit=value.get("slot_limit"),
                weight=float(value.get("weight") or 1.0),
                arrived_at=now,
                seq=0,
                reply=reply,
                lease=int(value.get("lease") or 0),
            )
            if op == "acquire":
                self.book.add_ask(ask)
            else:  # a worker refilling its leased units: a lease now, or no, never a place in line
                grant = self.book.lease(ask, now) if now >= self.hold_until else None
                if grant is None:
                    if reply:
                        await self._send(reply, {"ask_id": ask.ask_id, "refused": True})
                    return
                self.answers[ask.ask_id] = _Answer(grant.as_reply(), reply)
                self.unsent.append(ask.ask_id)  # answered once durable, by the next pass
                grants_total.labels(ask.primary).inc(grant.lease_units)
        elif op == "settle":
            self.book.settle(value["budget"], value["grant_id"], value["actual"])
        elif op == "lease_end":  # units of a lease its worker did not take: never sent
            self.book.end_lease(value["budget"], value["grant_id"], float(value["taken"]))
        elif op == "unused":  # a grant that reached its worker too late: it was never sent
            self.book.unused(value["grant_id"], value.get("needs") or {})
        elif op == "release":
            self.book.release_slot(value["site_id"], value["request_id"])
        elif op == "feedback":
            self.book.feedback(
                now,
                value["budget"],
                throttled=bool(value.get("throttled")),
                limit=value.get("limit"),
                remaining=value.get("remaining"),
                tokens_budget=value.get("tokens_budget"),
                tokens_limit=value.get("tokens_limit"),
                tokens_remaining=value.get("tokens_remaining"),
            )
        elif op == "late":
            outcome = self.book.late(now, value["grant_id"], {k: float(v) for k, v in value["needs"].items()},
                                     float(value["anchor"]))
            if "revived" in outcome:
                late_unsafe_total.inc()
                log.warning(
                    "limiter: permit %s reached the provider %.2f s after its grant, when its room had already "
                    "been handed out again; the provider may have seen more than the limit in one window. "
                    "Raise BLOGSTREAM_PERMIT_GRACE_SECONDS or find what stalls the workers.",
                    value["grant_id"], float(value["anchor"]) - float(value.get("granted_at") or value["anchor"]),
                )
        elif op == "stats" and reply:
            await self._send(reply, self.stats(now))
            return
        self.wakeup.set()

    def stats(self, now: float) -> dict[str, Any]:
        names = [OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS]
        out: dict[str, Any] = {name: self.book.usage(name, now) for name in names}
        out["wix"] = {
            name.split(":", 1)[1]: self.book.usage(name, now) for name in list(self.book.rates) if name.startswith("wix_requests:")
        }
        out["slots"] = {name.split(":", 1)[1]: len(s.holders) for name, s in self.book.slots.items() if s.holders}
        # Each site's units of each global budget in the window (Wix budgets are per site already):
        # the split of used_in_window, for the per-site share gauges and `blogstream health`.
        out["shares"] = {name: self.book.used_by_site(name, now) for name in names}
        out["window_seconds"] = settings.budget_window_seconds
        out["grace_seconds"] = settings.permit_grace_seconds
        out["coordinator"] = self.book.instance.rstrip("-")
        out["holding_until"] = self.hold_until if self.hold_until > now else None
        out["at"] = now
        return out

    async def _send(self, reply: tuple[str, str], value: dict[str, Any]) -> None:
        reply_to, correlation_id = reply
        await app.send(reply_to, key=None, value=ReqRepResponse(key=None, value=value, correlation_id=correlation_id))

    # --- the scheduler ------------------------------------------------------
    async def run_once(self) -> float:
        """Grant what fits, make it durable, then answer. Returns seconds until the next look."""
        epoch = self.epoch
        now = time.time()
        if now - self.last_tick >= 1.0:
            self.book.recover(now - self.last_tick)
            self.book.expire(now)
            self.last_tick = now
            for name, rate in self.book.rates.items():
                budget_factor.labels(name).set(rate.factor)
                budget_external.labels(name).set(rate.external)
        if now >= self.hold_until:
            for grant in self.book.grant_ready(now):
                self.answers[grant.ask.ask_id] = _Answer(grant.as_reply(), grant.ask.reply)
                self.unsent.append(grant.ask.ask_id)
                for budget in grant.ask.needs:
                    grants_total.labels(budget).inc(grant.lease_units or 1)
                metrics.permit_queue_seconds.labels(grant.ask.primary).observe(now - grant.ask.arrived_at)
        writes = self.book.take_dirty()
        if self.pending_writes:
            writes = {**self.pending_writes, **writes}
            self.pending_writes = {}
        if writes:
            started = time.time()
            try:
                await self._persist(writes)
            except Exception:
                # Nothing is answered until it is durable: keep the writes for the next pass.
                self.pending_writes = {**writes, **self.pending_writes}
                raise
            grant_persist_seconds.observe(time.time() - started)
        if epoch != self.epoch or not self.active:
            return 0.0  # we lost the limiter meanwhile: the new owner answers the re-asks
        unsent, self.unsent = self.unsent, []
        for ask_id in unsent:
            answer = self.answers.get(ask_id)
            if answer is None:
                continue
            answer.sent = True
            if answer.route:
                answer.reply["sent_at"] = time.time()
                await self._send(answer.route, answer.reply)
        while len(self.answers) > 50_000:
            self.answers.popitem(last=False)
        if now < self.hold_until:
            return min(1.0, self.hold_until - now)
        wake = self.book.next_wakeup(time.time())
        return 1.0 if wake is None else min(1.0, max(0.001, wake - time.time()))

    async def _persist(self, writes: dict[str, Any]) -> None:
        """Write table keys through the changelog and wait for the broker's acks."""
        futures = []
        data = budget_table.data
        for key, value in writes.items():
            if value is None:
                if key in data:
                    del data[key]
                futures.append(budget_table.send_changelog(None, key, None, value_serializer="raw"))
            else:
                data[key] = value
                futures.append(budget_table.send_changelog(None, key, value))
        await asyncio.wait_for(asyncio.gather(*futures), timeout=30.0)


coordinator = Coordinator()


async def _changelog_end_offset() -> int | None:
    """Records ever written to the budget changelog (None: could not ask the broker)."""
    from faust.types import TP

    tp = TP(budget_table.changelog_topic.get_topic_name(), 0)
    try:
        ends = await asyncio.wait_for(app.consumer.highwaters(tp), timeout=10.0)
        return int(ends[tp])
    except Exception:
        log.warning("limiter: could not read the end offset of %s", tp.topic, exc_info=True)
        return None


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{1000 * seconds:.0f}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@app.agent(limiter_topic)
async def budget_coordinator(stream):
    async for event in stream.events():
        if coordinator.active:
            try:
                await coordinator.handle(event.value, event.headers, event.message.offset)
            except Exception:  # a malformed message must not stop the limiter
                log.exception("limiter: could not handle %r", event.value)


@app.on_partitions_assigned.connect
async def _limiter_assigned(app_, assigned, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in assigned):
        coordinator.activate()
        coordinator.wakeup.set()
    # Every member takes part in every rebalance, and the limiter only ever
    # moves in one: re-send the asks still waiting, the new owner may not have them.
    budgets.regroup()


@app.on_partitions_revoked.connect
async def _limiter_revoked(app_, revoked, **kwargs) -> None:  # noqa: ARG001
    if any(tp.topic == COORDINATOR_TP_TOPIC for tp in revoked):
        coordinator.deactivate()


MIN_PASS_INTERVAL = 0.002  # a burst of events makes one pass, not one pass each


@app.task
async def _budget_scheduler() -> None:
    while True:
        started = time.monotonic()
        try:
            pause = await coordinator.run_once() if coordinator.active and coordinator.loaded else 1.0
        except Exception:  # never let the scheduler die: log and try again
            log.exception("limiter scheduler pass failed")
            pause = 0.5
        coordinator.wakeup.clear()
        if pause > 0:
            try:
                await asyncio.wait_for(coordinator.wakeup.wait(), timeout=pause)
            except asyncio.TimeoutError:
                pass
        rest = MIN_PASS_INTERVAL - (time.monotonic() - started)
        await asyncio.sleep(max(0.0, rest))


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------


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
_current_permit: contextvars.ContextVar[Permit | None] = contextvars.ContextVar("blogstream_permit", default=None)
# From our hook to the provider counting the request: the write, the network,
# the provider's own queue before admission (on this 2-core test box the
# simulator alone can take tens of ms to get to a request). A permit whose
# request leaves later than use_by - WIRE_MARGIN is reported as late.
WIRE_MARGIN = min(0.1, settings.permit_grace_seconds / 3)


def _on_wire() -> Permit | None:
    """A request is about to be written to a provider's socket: the moment that counts.

    `Permit.usable()` is checked before the provider call, but an SDK can spend
    a while (building the request, a pool slot, a GC pause) before the request
    really leaves, and an answer may reach a busy worker after use_by. Here we
    see when the request really leaves. Returns the permit if that is later
    than use_by - WIRE_MARGIN: the caller must report it before sending, and
    the coordinator then counts it until it has left the provider's window too.
    """
    permit = _current_permit.get()
    if permit is None or permit.sent_at is not None:
        return None  # not a permitted call, or the permit's request already went out
    now = time.time()
    permit.sent_at = now
    if permit.granted_at:
        permit_send_delay_seconds.labels(permit.primary).observe(max(0.0, now - permit.granted_at))
    if now + WIRE_MARGIN > permit.use_by:
        late_sends_total.inc()
        return permit
    return None


def _hook_wire(cls: Any) -> None:
    original = cls.handle_async_request
    if getattr(original, "_blogstream_wire", False):
        return

    async def handle_async_request(self: Any, request: Any) -> Any:
        late = _on_wire()
        if late is not None:
            # On the broker before the request goes: the coordinator learns of
            # it even if this worker dies right after sending. The report names
            # a moment a little ahead; if the broker's ack took longer, again.
            allowance = 0.05
            while True:
                anchor = time.time() + WIRE_MARGIN + allowance
                await budgets.report_late(late, anchor)
                if time.time() + WIRE_MARGIN <= anchor:
                    break
                allowance *= 2
        return await original(self, request)

    handle_async_request._blogstream_wire = True  # type: ignore[attr-defined]
    cls.handle_async_request = handle_async_request


# The connection classes write the request right after handle_async_request
# starts (the pool has already picked and connected the connection). httpcore
# serves httpx (Replicate, Wix); httpcore2 serves httpx2 (the openai SDK).
for _module in ("httpcore._async.http11", "httpcore._async.http2", "httpcore2._async.http11", "httpcore2._async.http2"):
    try:
        _mod = importlib.import_module(_module)
    except ImportError:  # e.g. http2 support (h2) not installed
        continue
    for _name in ("AsyncHTTP11Connection", "AsyncHTTP2Connection"):
        if hasattr(_mod, _name):
            _hook_wire(getattr(_mod, _name))


class Budgets:
    """What stages call: ask for permits, settle tokens, release slots, report pressure.

    An ask waits at the coordinator as long as its budget is full; the worker
    re-sends it (same ask id) after every rebalance, when the coordinator may
    have moved and lost its waiting line, and every `reask_seconds` in case a
    message went missing.
    """

    ask_timeout = 5.0  # stats: how often to re-send within the caller's deadline
    reask_seconds = 30.0
    lease_seconds = settings.permit_lease_seconds
    _slow_logged = 0.0
    _regrouped: asyncio.Event | None = None

    def __init__(self) -> None:
        self._pools: dict[str, _LeasePool] = {}  # budget -> leased units (see `_leasable`)

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
        correlation_id = str(uuid.uuid4())
        request, headers = budget_coordinator._create_req(None, value, reply_to, correlation_id, None)
        promise = ReplyPromise(reply_to, correlation_id)
        await app._reply_consumer.add(correlation_id, promise)  # type: ignore[attr-defined]
        await limiter_topic.send(value=request, headers=headers, force=True)
        return promise

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
        try:
            while True:
                regrouped = self._regroup_event()
                promises.append(await self._ask(value))
                timeout = self.reask_seconds
                if deadline is not None:
                    timeout = min(self.ask_timeout, deadline - time.time())
                    if timeout <= 0:
                        raise asyncio.TimeoutError()
                moved = asyncio.ensure_future(regrouped.wait())
                try:
                    await asyncio.wait([*promises, moved], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    moved.cancel()
                for p in promises:
                    if p.done() and not p.cancelled():
                        return p.result()
                if deadline is not None and time.time() >= deadline:
                    raise asyncio.TimeoutError()
                reasks_total.inc()
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
                permits_leased_total.labels(primary.split(":", 1)[0]).inc()
                return await self._from_lease(primary, pool, lease, site_id, weight, started)
        while True:
            asked = time.time()
            ask = {
                "op": "acquire",
                "ask_id": uuid.uuid4().hex,
                "site_id": site_id,
                "request_id": request_id,
                "needs": needs,
                "slot_limit": slot_limit,
                "weight": weight,
            }
            if pool is not None:
                ask["lease"] = pool.wanted()  # granted as a lease if the budget has plenty of room
            reply = await self._ask_until_answered(ask)
            now = time.time()
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
                await budget_coordinator.cast(value={"op": "unused", "grant_id": reply["grant_id"], "needs": needs})
                # Answers that slow mean this worker is overloaded: asking again
                # at once would only add to the load that made them late.
                expired += 1
                await asyncio.sleep(min(5.0, 0.25 * 2 ** (expired - 1)))
                continue
            start = float(reply.get("granted_at") or 0.0)
            if start > now:  # granted ahead: its room opens at `start`, not before
                await asyncio.sleep(start - now)
                now = time.time()
            permit = Permit(
                reply["grant_id"], reply["use_by"], dict(reply.get("needs") or needs), now - started,
                granted_at=start, last_use=float(reply.get("last_use") or 0.0),
            )
            metrics.permit_wait_seconds.labels(primary).observe(permit.waited)
            if reply.get("ahead") or reply.get("waited"):
                # Room opened at `start` (granted ahead, or granted the moment a
                # pass found room for a waiting ask): only the time past it is the limiter's.
                overhead = max(0.0, now - start)
            else:
                overhead = max(0.0, (now - asked) - float(reply.get("queued", 0.0)))
            permit_overhead_seconds.labels(primary).observe(overhead)
            if overhead > 0.25 and now - self._slow_logged > 10.0:
                self._slow_logged = now
                arrived, granted, sent = reply.get("arrived_at"), reply.get("granted_at"), reply.get("sent_at")
                log.info(
                    "slow permit for %s: %.0f ms beyond waiting for room (ask to coordinator %s ms, "
                    "grant to answer %s ms, answer to worker %s ms)", primary, 1000 * overhead,
                    _ms(arrived - asked if arrived else None), _ms(sent - granted if sent and granted else None),
                    _ms(now - sent if sent else None),
                )
            _current_permit.set(permit)  # the wire hook reports when its request really leaves
            return permit

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
            asyncio.ensure_future(budget_coordinator.cast(
                value={"op": "lease_end", "budget": budget, "grant_id": lease.grant_id, "taken": lease.taken}
            ))

    def end_leases(self, budget: str) -> None:
        """The provider pushed back on `budget`: take nothing more from leases on it."""
        pool = self._pools.get(budget)
        if pool is not None:
            for lease in list(pool.leases):
                self._end_lease(budget, pool, lease)
            pool.quiet_until = time.time() + self.lease_seconds

    async def _from_lease(self, budget: str, pool: _LeasePool, lease: _Lease, site_id: str, weight: float,
                          started: float, overhead: float | None = None) -> Permit:
        now = time.time()
        if lease.start > now:  # a worker clock behind the coordinator's: not before the start
            await asyncio.sleep(lease.start - now)
            now = time.time()
        # granted_at is when the unit was handed out: the send delay is measured from it.
        permit = Permit(lease.grant_id, lease.use_by, {budget: 1.0}, now - started, granted_at=now,
                        last_use=lease.last_use)
        metrics.permit_wait_seconds.labels(budget).observe(permit.waited)
        # Taken here: the time it took (no round trip). Leased by an ask: as for one permit.
        permit_overhead_seconds.labels(budget).observe(max(0.0, permit.waited if overhead is None else overhead))
        self._maybe_refill(budget, pool, site_id, weight, now)
        _current_permit.set(permit)
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
        ask = {"op": "lease", "ask_id": uuid.uuid4().hex, "site_id": site_id, "request_id": "",
               "needs": {budget: 1.0}, "lease": pool.wanted(), "weight": weight}
        try:
            reply = await self._ask_until_answered(ask, deadline=time.time() + 2.0)
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
        fut = await limiter_topic.send(
            value={"op": "late", "grant_id": permit.grant_id, "needs": permit.needs, "anchor": anchor,
                   "granted_at": permit.granted_at},
            force=True,
        )
        await fut

    async def settle(self, permit: Permit, budget: str, actual: float) -> None:
        await budget_coordinator.cast(value={"op": "settle", "budget": budget, "grant_id": permit.grant_id, "actual": actual})

    async def release_slot(self, site_id: str, request_id: str) -> None:
        await budget_coordinator.cast(value={"op": "release", "site_id": site_id, "request_id": request_id})

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
    ) -> None:
        """Tell the coordinator what a provider answer said (a 429, x-ratelimit-remaining-*)."""
        await budget_coordinator.cast(
            value={"op": "feedback", "budget": budget, "throttled": throttled, "limit": limit, "remaining": remaining,
                   "tokens_budget": tokens_budget, "tokens_limit": tokens_limit, "tokens_remaining": tokens_remaining}
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
        )

    async def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The coordinator's figures (raises asyncio.TimeoutError if it does not answer in time)."""
        return await self._ask_until_answered({"op": "stats"}, deadline=time.time() + timeout)


budgets = Budgets()

