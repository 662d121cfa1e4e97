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

It runs on an event loop of its own, in a thread (own_loop.py): the agent that
reads `blog.limiter` hands it the events (agent.py), and its writes go through
a producer of its own (outbox.py), so a grant never waits for the stage work.

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
socket and counted for longer (streams/limiter/wire.py). The worker side is
streams/limiter/client.py; the arithmetic, streams/limiter/book.py. Design
notes: docs/limiter.md.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from faust.agents.models import ReqRepRequest

from streams import metrics
from streams.app import LIMITER_TOPIC, app, topic_name
from streams.limiter.book import INTERACTIVE, LANE_RANK, Ask, BudgetBook
from streams.limiter.clock_steps import ClockSteps
from streams.limiter.outbox import Outbox
from streams.limiter.own_loop import OwnLoop
from streams.limiter.published import publisher
from streams.limiter.specs import (OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS, rate_specs, span_seconds,
                                   wire_margin)
from streams.metrics import (
    budget_external,
    budget_factor,
    coordinator_active,
    grant_persist_seconds,
    grants_total,
    lease_refusals_total,
    late_unsafe_total,
)
from streams.settings import settings

log = logging.getLogger(__name__)

MARKER_KEY = "coordinator"  # written by every coordinator at takeover: "this table has state"
# The last blog.limiter offset whose effects a pass wrote, with them: the next owner reads on from
# there (agent.py), so a takeover neither replays what was written nor skips what was not.
READ_KEY = "read_to"


def pass_writes(pending: dict[str, Any], dirty: dict[str, Any], read_to: int | None = None) -> dict[str, Any]:
    """A pass's table writes, in the order they go: what a failed pass left unacked (`pending`) with this
    pass's changed keys (`dirty`, newer values win); every site's slots, then the budgets' meta keys with
    their pacing schedules, then their grants' buckets (BudgetBook's keys), so a pass cut short never
    leaves a grant without its slot or schedule, also when a failed pass's keys go again; the offset read
    up to last (once it is written, all before it are)."""
    merged = {**pending, **dirty} if pending else dirty
    writes = dict(sorted(((key, value) for key, value in merged.items() if key != READ_KEY), key=_write_rank))
    read = {"offset": read_to} if read_to is not None else merged.get(READ_KEY)
    if read is not None:
        writes[READ_KEY] = read
    return writes


def _write_rank(item: tuple[str, Any]) -> int:
    key = item[0]
    return 0 if key.startswith("slots:") else 1 if key.endswith("|meta") else 2


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

# The coordinator's own thread and loop (own_loop.py), and what it writes to Kafka (outbox.py).
limiter_loop = OwnLoop("blogstream-limiter")
outbox = Outbox(limiter_loop, budget_table)


@dataclass
class _Answer:
    """A grant made by this coordinator: its reply, where to send it, whether it went."""

    reply: dict[str, Any]
    route: tuple[str, str] | None
    sent: bool = False
    made_at: float = field(default_factory=time.time)  # then when it was answered (`run_once`): kept from then


# Answers are kept to answer a re-ask of an ask already granted with the same grant. A worker re-asks
# after 22-38 s without an answer (client.Budgets.reask_after), so after a minute a copy can only come
# from a producer that sat out a broker outage; granting it again costs that grant's room for a window,
# nothing more. Keeping the last 50,000 instead held 250 s of the tier benchmark's answers, about 70 MB.
ANSWERS_KEEP_SECONDS = 60.0
ANSWERS_MAX = 50_000

# The figures of each site (its Wix budget, its slots) are worked out for at most about this many
# sites a second: with more, every few seconds (10,000 sites: every 10 s). Every second, they held
# the coordinator's loop ~6 ms and the worker's (JSON for Postgres) longer at 10,000 sites, and
# the permits' p99 grew with the sites (docs/bench-growth.md, session 17). The global figures
# stay once a second.
SITE_FIGURES_PER_SECOND = 1_000


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
    handled_to: int | None = None  # the last blog.limiter offset handled (agent.py)
    resume_from: int | None = None  # where the recovered table says to read on from (None: not written)
    read_written: int | None = None  # the READ_KEY offset last made durable
    last_tick: float = field(default_factory=time.time)
    snapshot: dict[str, Any] | None = None  # the last figures published (see `publish_stats`)
    site_figures: dict[str, Any] | None = None  # the per-site part of `stats` (published.SITE_SECTIONS)
    clock: ClockSteps = field(default_factory=lambda: ClockSteps(wire_margin()))  # its wall clock's steps
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
        self.wakeup.set()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # driven by hand (tests)
        limiter_loop.on_main(_start_nudge, self, self.epoch)

    async def _nudge(self, epoch: int) -> None:
        """Load the recovered table now, not at the first ask: the snapshot is published from then on.

        The book is loaded on the first event (`handle`), which Faust delivers only once the
        table is recovered; a `tick` on blog.limiter is such an event. Sent again every 5 s
        until loaded (the broker may be away), for as long as this worker holds the limiter.
        """
        while self.active and self.epoch == epoch and not self.loaded:
            try:
                await limiter_topic.send(value={"op": "tick"})
            except Exception as exc:
                log.info("limiter: could not send the takeover tick (%s); trying again in 5 s", type(exc).__name__)
            await asyncio.sleep(5.0)

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
        changelog_records = await limiter_loop.ask_main(_changelog_end_offset) if offset else 0
        items = await limiter_loop.ask_main(_table_items)
        if epoch != self.epoch:
            return
        now = time.time()
        self.book = self.new_book()
        self.book.restore(items)
        self.answers.clear()
        self.unsent.clear()
        # Writes a failed pass kept from an earlier takeover of ours are older than the table now.
        self.pending_writes = {}
        read = dict(items).get(READ_KEY)
        self.resume_from = int(read["offset"]) + 1 if isinstance(read, dict) and isinstance(read.get("offset"), int) \
            else None
        self.handled_to = self.read_written = None
        for ask_id, answer in self.book.granted_asks().items():
            self.answers[ask_id] = _Answer({"ask_id": ask_id, **answer}, None, sent=True)
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

    def now(self) -> float:
        """The wall clock, watched for steps (clock_steps.py). Forward by X: grants made before it would leave
        their windows X seconds early while the providers still count them, so nothing is granted until none
        of them can be in a provider's window. Back: they count X seconds longer (never an overrun); the
        upkeep goes on from now."""
        now, step = self.clock.look()
        if step:
            metrics.limiter_clock_steps.labels("forward" if step > 0 else "back").inc()
            # A lease's units (and a grant made ahead) go out until its end, each counted a window from then.
            hold = span_seconds() + max([self.book.lease_seconds, self.book.lookahead] + [
                float(spec.get("lease_seconds") or 0) for spec in self.book.rate_specs.values()])
            if step > 0:
                self.hold_until = max(self.hold_until, now + hold)
            self.book.workers.shift(step)  # a step is no silence: nobody is gone (or alive) longer for it
            self.last_tick = min(self.last_tick + step, now)  # nor is it calm that restores a throttled budget
            log.warning("limiter coordinator: the wall clock stepped %s by %.3f s (NTP, a resumed machine)%s",
                        "forward" if step > 0 else "back", abs(step),
                        f"; holding all grants for {hold:.1f} s (a window, the grace and a lease): grants made "
                        "before the step would leave their windows early" if step > 0 else
                        "; grants made before it (and the pacing) count that much longer: budgets grant less, or "
                        "nothing, until the clock is back where it was (never more)")
        return now

    # --- events ---------------------------------------------------------------
    async def handle(self, value: Any, headers: Any = None, offset: int | None = None) -> None:
        await self.load(offset)
        if not self.loaded:
            return  # the limiter moved away while we were loading
        now = self.now()
        self.book.workers.heard(now)
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
        if op == "batch":  # one-way messages a worker sent together (client.CastBatch): each in order
            for one in value.get("ops") or ():
                try:
                    await self.handle(one, None, offset)
                except Exception:  # as for a record of its own: the others still count
                    log.exception("limiter: could not handle %r", one)
            return
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
                lane=value["lane"] if value.get("lane") in LANE_RANK else INTERACTIVE,
                worker=str(value.get("worker") or ""),
            )
            self.book.saw(ask, now, reply[0] if reply else "")
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
                grants_total.labels(metrics.budget_label(ask.primary)).inc(grant.lease_units)
        elif op == "settle":
            sent_at = value.get("sent_at")  # on the worker's clock, as use_by is checked (NTP, docs/limiter.md)
            self.book.settle(value["budget"], value["grant_id"], value["actual"],
                             None if sent_at is None else float(sent_at) + wire_margin())
            if value.get("tokens_remaining") is not None or value.get("remaining") is not None:
                # The answer's x-ratelimit-* figures come with its usage: the provider's
                # count after it settled this call, compared with ours after we did.
                self._feedback(now, value.get("requests_budget") or OPENAI_REQUESTS, value, value["budget"], False)
        elif op == "lease_end":  # units of a lease its worker did not take: never sent
            self.book.end_lease(value["budget"], value["grant_id"], float(value["taken"]))
        elif op == "unused":  # a grant that reached its worker too late: it was never sent
            self.book.unused(value["grant_id"], value.get("needs") or {})
        elif op == "release":
            self.book.release_slot(value["site_id"], value["request_id"])
        elif op == "alive":  # a worker's heartbeat (streams/limiter/alive.py)
            self.book.workers.saw(str(value.get("worker") or ""), now, str(value.get("route") or ""))
        elif op == "feedback":
            self._feedback(now, value["budget"], value, value.get("tokens_budget"), bool(value.get("throttled")))
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
        elif op == "tick":  # see `_nudge`: loading was all it was for
            pass
        elif op == "stats" and reply:
            # Workers read the published snapshot (Budgets.stats); this answers a worker of an
            # older version during a rolling upgrade, from the snapshot: nothing is computed.
            await self._send(reply, self.snapshot or self.stats(now))
            return
        self.wakeup.set()

    def _feedback(self, now: float, budget: str, value: dict[str, Any], tokens_budget: str | None,
                  throttled: bool) -> None:
        """What a provider's answer said (x-ratelimit-*, a 429), into the book."""
        changed = self.book.feedback(
            now, budget, throttled=throttled, limit=value.get("limit"), remaining=value.get("remaining"),
            tokens_budget=tokens_budget, tokens_limit=value.get("tokens_limit"),
            tokens_remaining=value.get("tokens_remaining"), tokens_needed=value.get("tokens_needed"),
            seen_at=value.get("seen_at"),
        )
        if changed and tokens_budget:
            semantics = self.book.rate(tokens_budget).semantics
            log.info("limiter: %s: the provider's count says unused reserved tokens are %s; counting them so "
                     "(last answer: provider %s, our book if given back %s, unused reservations %s, noise %s)",
                     tokens_budget, semantics.describe(), *(f"{x:.0f}" for x in semantics.last_reading or (0,) * 4))

    def _forget_answers(self, before: float) -> None:
        """Drop the answers made before `before` (oldest first), and any beyond ANSWERS_MAX."""
        answers = self.answers
        while answers:
            oldest = next(iter(answers.values()))
            if oldest.made_at >= before and len(answers) <= ANSWERS_MAX:
                break
            answers.popitem(last=False)

    def _publish_shares(self) -> None:
        """Each budget kind's adaptive share and outside use: per-site budgets (Wix) as their kind's
        smallest share and largest outside use, one series each (metrics.budget_label)."""
        factor: dict[str, float] = {}
        external: dict[str, float] = {}
        for name, rate in self.book.rates.items():
            label = metrics.budget_label(name)
            factor[label] = min(factor.get(label, 1.0), rate.factor)
            external[label] = max(external.get(label, 0.0), rate.external)
        for label, value in factor.items():
            budget_factor.labels(label).set(value)
            budget_external.labels(label).set(external[label])

    def stats(self, now: float) -> dict[str, Any]:
        """Every figure the stats pages show; computed once a second by the scheduler (`publish_stats`)."""
        names = [OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS]
        out: dict[str, Any] = {name: self.book.usage(name, now) for name in names}
        out.update(self._site_figures(now))
        # Each site's units of each global budget in the window (Wix budgets are per site already):
        # the split of used_in_window, for the per-site share gauges and `blogstream health`.
        out["shares"] = {name: self.book.used_by_site(name, now) for name in names}
        out["window_seconds"] = settings.budget_window_seconds
        out["grace_seconds"] = settings.permit_grace_seconds
        out["coordinator"] = self.book.instance.rstrip("-")
        out["holding_until"] = self.hold_until if self.hold_until > now else None
        out["book"] = self.book.sizes()  # what the coordinator holds: bounded by what is live
        out["at"] = now
        return out

    def _site_figures(self, now: float) -> dict[str, Any]:
        """Each site's Wix budget and slots held, worked out again when due (SITE_FIGURES_PER_SECOND)."""
        sites = len(self.book.rates) + len(self.book.slots)
        known = self.site_figures
        if known is None or sites <= SITE_FIGURES_PER_SECOND or now - known["sites_at"] >= sites / SITE_FIGURES_PER_SECOND:
            self.site_figures = known = {
                "wix": {name.split(":", 1)[1]: self.book.usage(name, now)
                        for name in list(self.book.rates) if name.startswith("wix_requests:")},
                "slots": {name.split(":", 1)[1]: len(s.holders) for name, s in self.book.slots.items() if s.holders},
                "sites_at": now,
            }
        return known

    def publish_stats(self, now: float) -> None:
        """Compute the figures and publish them for every worker (Postgres, store/limiter_snapshot.py)."""
        self.snapshot = self.stats(now)
        limiter_loop.on_main(publisher.publish, self.book.instance.rstrip("-"), self.snapshot)  # its pool: main loop

    async def _send(self, reply: tuple[str, str], value: dict[str, Any]) -> None:
        await outbox.answer(reply[0], reply[1], value)

    # --- the scheduler ------------------------------------------------------
    async def run_once(self) -> float:
        """Grant what fits, make it durable, then answer. Returns seconds until the next look."""
        epoch = self.epoch
        now = self.now()
        if now - self.last_tick >= 1.0:
            self.book.recover(now - self.last_tick)
            self._log_gone(self.book.expire(now))
            self._export_lease_refusals()
            self.book.prune(now)  # memory bounded by what is live: idle sites' state goes
            self.last_tick = now
            self.publish_stats(now)  # once a second, whatever asks for them
            self._publish_shares()
        if now >= self.hold_until:
            for grant in self.book.grant_ready(now):
                self.answers[grant.ask.ask_id] = _Answer(grant.as_reply(), grant.ask.reply)
                self.unsent.append(grant.ask.ask_id)
                for budget in grant.ask.needs:
                    grants_total.labels(metrics.budget_label(budget)).inc(grant.lease_units or 1)
                label = metrics.budget_label(grant.ask.primary or "slots")  # no budget: an ask for a slot alone
                metrics.permit_queue_seconds.labels(label).observe(now - grant.ask.arrived_at)
        # What this pass answers is what its writes hold: a lease granted while they are written
        # (records are handled meanwhile) waits for the next pass's.
        unsent, self.unsent = self.unsent, []
        read_to = self.handled_to
        # One producer writes one partition in order: see pass_writes for why this order.
        writes = pass_writes(self.pending_writes, self.book.take_dirty(),
                             read_to if read_to is not None and read_to != self.read_written else None)
        self.pending_writes = {}
        if writes:
            started = time.time()
            try:
                await self._persist(writes)
            except Exception:
                # Nothing is answered until it is durable: keep the writes for the next pass. Unless the
                # limiter moved meanwhile (a rebalance, which a broker restart brings): then the writes and
                # answers were the old book's, and the next epoch's book is what the table holds. Carried
                # over, its first pass answered whatever the new book held under those ask ids by then, such
                # as a lease granted to a re-ask while that pass was being written, before any write held it.
                if epoch == self.epoch:
                    self.pending_writes = {**writes, **self.pending_writes}
                    self.unsent[:0] = unsent
                raise
            grant_persist_seconds.observe(time.time() - started)
            self.read_written = read_to
            self.book.persisted()
        if epoch != self.epoch or not self.active:
            return 0.0  # we lost the limiter meanwhile: the new owner answers the re-asks
        answered_at = time.time()
        for i, ask_id in enumerate(unsent):
            answer = self.answers.get(ask_id)
            if answer is None:
                continue
            answer.sent = True
            # Kept a minute from its answer, not its grant: a pass written only after a broker outage
            # answers grants made more than a minute before, and the rebalance after the outage makes
            # every worker send its asks again. Forgotten at once, such a copy was granted anew: a
            # window's room spent on nothing, and its request's slot taken again after it ended.
            answer.made_at = answered_at
            self.answers.move_to_end(ask_id)
            if answer.route:
                answer.reply["sent_at"] = time.time()
                try:
                    await self._send(answer.route, answer.reply)
                except Exception:
                    # Durable already: the next pass answers this one and the rest.
                    self.unsent[:0] = unsent[i:]
                    raise
        self._forget_answers(time.time() - ANSWERS_KEEP_SECONDS)
        if now < self.hold_until:
            return min(1.0, self.hold_until - now)
        wake = self.book.next_wakeup(time.time())
        return 1.0 if wake is None else min(1.0, max(0.001, wake - time.time()))

    def _export_lease_refusals(self) -> None:
        refusals, self.book.lease_refusals = self.book.lease_refusals, {}
        for (budget, reason), count in refusals.items():
            lease_refusals_total.labels(metrics.budget_label(budget), reason).inc(count)

    def _log_gone(self, released: dict[str, list[int]]) -> None:
        for worker, (slots, asks) in released.items():
            log.warning("limiter: worker %s is gone (restarted, or not heard from for %.0f s): the %d site "
                        "slots it held are free again, and its %d asks still waiting are dropped (its "
                        "requests ask again when they are taken up)", worker, self.book.workers.gone_after,
                        slots, asks)

    async def _persist(self, writes: dict[str, Any]) -> None:
        """Write table keys through the changelog and wait for the broker's acks (30 s at most).

        Through the coordinator's own producer (outbox.py), which waits for a
        topic's metadata and fetches it when missing (Faust's `send_changelog`
        read a cache that lacked the changelog after a broker restart, and every
        pass failed until the worker was killed).
        """
        futures = await asyncio.wait_for(outbox.write_table(writes), timeout=30.0)
        # Waited for, never cancelled. Sends still in flight at the timeout land later; the next
        # pass writes the keys again.
        if not futures:
            return
        done, waiting = await asyncio.wait(futures, timeout=30.0)
        if waiting:
            raise asyncio.TimeoutError(f"{len(waiting)} of {len(futures)} changelog writes not acked in 30 s")
        for fut in done:
            fut.result()


coordinator = Coordinator()


async def _table_items() -> list[tuple[str, Any]]:
    """The recovered table's keys (main loop: Faust's table)."""
    return [(k, v) for k, v in budget_table.items() if v is not None]


def _start_nudge(c: Coordinator, epoch: int) -> None:
    asyncio.ensure_future(c._nudge(epoch))  # Faust's producer: main loop


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
