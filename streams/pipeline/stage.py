"""What a stage's step uses: pay once (the effect ledger), one retry loop with permits, its errors.

A stage is `async def step(record, deps) -> next_record` (generate.py,
image.py, publish.py); streams/pipeline/factory.py turns it into a Faust
agent. A step that cannot succeed raises `StageFailed`, which becomes a FAILED
outcome users can act on.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from typing import Any, Awaitable, Callable

import asyncpg

from connectors.errors import ProviderError, RateLimited
from connectors.wix_blog import post_problem
from store.database import OUTAGES
from streams import metrics
from streams.contract import FieldError, check_article
from streams.ids import random_hex
from streams.pipeline.deps import Deps
from streams.pipeline.runner import StageRunner, WorkerStopping
from streams.limiter.client import budgets
from streams.log_limit import Backoff, LogLimit
from streams.settings import settings

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def slot_key(request_id: str, retry: int = 0) -> str:
    """The name of one run's in-flight slot in the limiter: the request id for its first run, `id#n` for
    the run `blogstream retry` started the n-th time (BlogRequest.retry; `#` is in no request id).

    Each run holds a slot of its own, taken by its generate step and freed by its own result
    (sink.py): a result of an earlier run, read again while a retry runs, frees that run's slot,
    never the retry's.
    """
    return request_id if not retry else f"{request_id}#{retry}"


def slot_of(record: dict[str, Any]) -> str:
    """`slot_key` of a stage record's run (a BlogRequest, or a record that carries one)."""
    request = record.get("request", record)
    return slot_key(request["request_id"], request.get("retry", 0))


class StageFailed(Exception):
    """A request cannot go on: says which request, which site, and what to do."""

    def __init__(self, stage: str, request_id: str, site_id: str, reason: str, action: str = "") -> None:
        self.stage, self.request_id, self.site_id = stage, request_id, site_id
        self.reason, self.action = reason, action
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.stage} failed for request {self.request_id} on site {self.site_id}: {self.reason}"
        return f"{text}. {self.action}" if self.action else text

    def for_request(self, request_id: str) -> "StageFailed":
        """The same failure told to another request that shared the call (a bulk call of several requests)."""
        if request_id == self.request_id:
            return self
        failed = StageFailed(self.stage, request_id, self.site_id, self.reason.replace(self.request_id, request_id),
                             self.action.replace(self.request_id, request_id))
        failed.__cause__ = self.__cause__
        return failed


EFFECT_LEASE_SECONDS = 30.0  # a dead worker's claim is taken over this soon; live ones are renewed


class RequestOfAnotherSite(Exception):
    """The request id belongs to another site: this record must not touch that site's work."""

    def __init__(self, stage: str, request_id: str, site_id: str) -> None:
        self.stage, self.request_id, self.site_id = stage, request_id, site_id
        super().__init__(
            f"request id {request_id} is already used by another site; this record for site {site_id} "
            "was not processed: send it again under an id of its own"
        )


class StageCancelled(Exception):
    """An operator cancelled the request before it started (see `blogstream sites cancel`)."""

    def __init__(self, stage: str, request_id: str, site_id: str, reason: str) -> None:
        self.stage, self.request_id, self.site_id, self.reason = stage, request_id, site_id, reason
        super().__init__(reason)


def written_problems(article: Any) -> list[FieldError]:
    """What is wrong with a model's article: the contract's rules, then the size of the post it makes."""
    if problems := check_article(article):
        return problems
    tags = [tag for tag in article["tags"] if tag]
    too_big = post_problem(title=article["title"], excerpt=article["excerpt"], body_markdown=article["body"],
                           tags=tags, image_alt=article["image_alt"])
    return [FieldError("article.body", too_big)] if too_big else []


def check_written(stage: str, article: Any, request_id: str, site_id: str) -> None:
    """The model's article meets the contract's rules, and makes a post Wix takes, before it is stored or
    published, or the request fails."""
    if problems := written_problems(article):
        shown = "; ".join(str(problem) for problem in problems[:4])
        raise StageFailed(
            stage, request_id, site_id, f"the model's article breaks the rules for articles ({shown})",
            f"Lower target_words or change the topic and submit it again, or run: blogstream retry {request_id}",
        )


async def effect_once(
    deps: Deps, request_id: str, effect: str, site_id: str, produce: Callable[[], Awaitable[dict]]
) -> tuple[dict, bool]:
    """Run a paid or visible effect at most once per request; returns (payload, reused).

    The ledger row is claimed before the call and completed after it, so a
    replayed event (after a crash or rebalance) reuses the stored result. The
    claim is a short lease renewed while we work, so a killed worker's claim
    passes to the next one within EFFECT_LEASE_SECONDS.
    """
    assert deps.db is not None
    db = deps.db
    owner = f"{deps.worker_id}:{random_hex(32)}"
    while True:
        if CLAIMS.holds(request_id, effect):  # a copy of this event runs here: its claim may have lapsed in an
            await asyncio.sleep(1.0)           # outage, its result not recorded yet; wait for it, never take it over
            continue
        claim = await db.claim_effect(request_id, effect, site_id, owner=owner, lease_seconds=EFFECT_LEASE_SECONDS)
        if claim.state == "foreign":
            raise RequestOfAnotherSite(effect, request_id, site_id)
        if claim.state == "done":
            return claim.payload or {}, True
        if claim.state == "busy":  # another worker is doing it right now (rebalance overlap)
            await asyncio.sleep(1.0)
            continue
        CLAIMS.hold(db, request_id, effect, owner)
        under_way = EffectUnderWay(request_id, effect, taken_over=claim.taken_over)
        token = _current_effect.set(under_way)  # the provider calls of `produce` are this effect's (STOPPING)
        try:
            try:
                payload = await produce()
            finally:
                _current_effect.reset(token)
        except BaseException:
            STOPPING.ended(under_way)
            CLAIMS.drop(owner)
            free = db.lapse_effect if under_way.maybe_done else db.release_effect
            try:
                await asyncio.shield(free(request_id, effect, owner=owner))
            except Exception as exc:  # the claim runs out by its lease instead; what `produce` raised is the outcome
                log.warning("could not free the claim of %s/%s (%s: %s); it is free once its lease ends",
                            request_id, effect, type(exc).__name__, exc)
            raise
        try:  # the claim stays ours until the ledger has the result: a replay must reuse it, never pay again
            await _complete(db, request_id, effect, site_id, payload, owner)
        finally:
            CLAIMS.drop(owner)
            STOPPING.ended(under_way)
        return payload, False


COMPLETE_RETRY_SECONDS = (0.5, 10.0)  # the first pause and the longest between tries of recording a result
# What recording a result meets that passes when the statement is sent again: an outage, or Postgres
# rolling the statement back (a deadlock, a serialization failure). Anything else is the values' fault.
_RECORD_AGAIN = (*OUTAGES, asyncpg.exceptions.TransactionRollbackError)
_complete_failed = LogLimit(log, "could not record an effect's result; it is kept and tried again", interval=60.0)


async def _complete(db: Any, request_id: str, effect: str, site_id: str, payload: dict, owner: str) -> None:
    """Record what the paid effect gave, tried again while Postgres is away or rolls it back (the effect is not
    done twice)."""
    backoff = Backoff(first=COMPLETE_RETRY_SECONDS[0], cap=COMPLETE_RETRY_SECONDS[1])
    while True:
        try:
            await db.complete_effect(request_id, effect, site_id, payload, owner=owner)
        except _RECORD_AGAIN as exc:
            _complete_failed.failed(exc, f"{request_id}/{effect}")
            await asyncio.sleep(backoff.next())
            continue
        _complete_failed.ok()
        return


class ClaimRenewals:
    """Every effect claim this worker holds, renewed together every EFFECT_LEASE_SECONDS / 3.

    One task for all of them, not one per claim: with thousands of effects under
    way (articles take tens of seconds) a task each meant thousands of sleeping
    coroutines and a wake-up per claim every ten seconds (2,000 a second with
    10,000 events in flight). A claim is renewed at the first round after it is
    taken and at every round after, so within EFFECT_LEASE_SECONDS / 3 as before;
    a round that fails (Postgres away) is logged, and the next one tries again.
    """

    BATCH = 5_000  # claims per statement

    def __init__(self) -> None:
        self._held: dict[str, tuple[Any, str, str]] = {}  # owner -> (db, request id, effect)
        self._keys: dict[tuple[str, str], int] = {}  # (request id, effect) -> claims of it held here
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def hold(self, db: Any, request_id: str, effect: str, owner: str) -> None:
        self._held[owner] = (db, request_id, effect)
        self._keys[(request_id, effect)] = self._keys.get((request_id, effect), 0) + 1
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._task = loop, loop.create_task(self._renew_forever())

    def drop(self, owner: str) -> None:
        held = self._held.pop(owner, None)
        if held is not None:
            key = held[1:]
            self._keys[key] -= 1
            if not self._keys[key]:
                del self._keys[key]

    def holds(self, request_id: str, effect: str) -> bool:
        """Whether an effect_once of this process is under way for (request_id, effect)."""
        return (request_id, effect) in self._keys

    def __len__(self) -> int:
        return len(self._held)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(EFFECT_LEASE_SECONDS / 3)
            await self.renew()

    async def renew(self) -> None:
        """One round: every claim held now, a statement per database and BATCH claims."""
        by_db: dict[int, tuple[Any, list[tuple[str, str, str]]]] = {}
        for owner, (db, request_id, effect) in list(self._held.items()):
            by_db.setdefault(id(db), (db, []))[1].append((request_id, effect, owner))
        for db, claims in by_db.values():
            for start in range(0, len(claims), self.BATCH):
                part = claims[start:start + self.BATCH]
                try:
                    await db.extend_effects(part, lease_seconds=EFFECT_LEASE_SECONDS)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a blip: the next round (or the lease's slack) covers it
                    log.warning("could not renew %d effect claims", len(part), exc_info=True)


CLAIMS = ClaimRenewals()


# --- a clean stop: no paid or visible call is left half-done ---------------------------


class EffectUnderWay:
    """One `effect_once` running its `produce` (`over` once its result is recorded or it raised)."""

    __slots__ = ("request_id", "effect", "over", "taken_over", "maybe_done")

    def __init__(self, request_id: str, effect: str, taken_over: bool = False) -> None:
        self.request_id, self.effect = request_id, effect
        self.over = False
        self.taken_over = taken_over  # its claim was a lapsed one's: the effect may be done, its result lost
        # Set by `produce` when its last failure may have left the effect done (a paid answer lost): if it ends
        # on that failure, its claim is left to lapse, not freed, so the next claim is told `taken_over`.
        self.maybe_done = False

    def __repr__(self) -> str:
        return f"{self.request_id}/{self.effect}"


_current_effect: contextvars.ContextVar[EffectUnderWay | None] = contextvars.ContextVar("effect", default=None)


def current_effect() -> EffectUnderWay | None:
    """The effect whose `produce` runs in this task (None: none), as a provider call made for it is told."""
    return _current_effect.get()


def calls_for_others() -> None:
    """This task makes provider calls for other tasks' effects (a bulk sender, which says whose): none is its own."""
    _current_effect.set(None)  # its context is a copy of the task that started it


class Stopping:
    """A clean stop (SIGTERM, Ctrl-C) lets the paid or visible calls in flight finish and be recorded.

    Stopping used to cancel them: an OpenAI article, a Replicate prediction or a
    Wix create under way was abandoned after its request had left (the provider
    bills it, the post may be up), its claim released, and the next owner of the
    partition paid for it again: every article in flight at each restart of a
    rolling deploy, twice. From `drain` on, no provider call starts (`check`
    raises WorkerStopping before one, with nothing paid; the runners start no
    event), and the stop waits, at most `timeout` seconds, until every effect
    whose call had started has its result in the ledger (or its call failed).
    """

    def __init__(self) -> None:
        self.stopping = False
        self._called: set[EffectUnderWay] = set()
        self._changed: asyncio.Event | None = None
        self._pauses: set[asyncio.Future] = set()  # back-offs under way: a stop ends them (`pause`)

    def check(self, stage: str, request_id: str) -> None:
        """Before a provider call: once the worker stops, none starts."""
        if self.stopping:
            raise WorkerStopping(f"{stage}: the worker is stopping; request {request_id} runs where its "
                                 "partition goes next")

    def calling(self, under_way: EffectUnderWay | None) -> None:
        """A provider call for `under_way` starts: a stop waits until its result is recorded."""
        if under_way is not None and not under_way.over:
            self._called.add(under_way)

    def ended(self, under_way: EffectUnderWay) -> None:
        """Its result is in the ledger, or its `produce` raised: nothing of it is left to record."""
        under_way.over = True
        if under_way in self._called:
            self._called.discard(under_way)
            if self._changed is not None:
                self._changed.set()

    def in_flight(self) -> list[EffectUnderWay]:
        return list(self._called)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the worker stops meanwhile (a back-off before a try that will not come)."""
        if self.stopping:
            return
        woken = asyncio.get_running_loop().create_future()
        self._pauses.add(woken)
        try:
            await asyncio.wait({woken}, timeout=seconds)
        finally:
            self._pauses.discard(woken)

    async def drain(self, timeout: float) -> list[EffectUnderWay]:
        """Stop starting events and provider calls; wait for the calls in flight; returns those left after `timeout`."""
        self.stopping = True
        for runner in StageRunner.instances:
            runner.stop_starting()
        for woken in self._pauses:  # an effect backing off after a failed call tries no more: it ends now
            if not woken.done():
                woken.set_result(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._called:
            log.info("stopping: no new event or provider call starts; waiting up to %.0f s for the %d calls in "
                     "flight to finish and be recorded (SIGKILL now may pay for them twice)", timeout, len(self._called))
        while self._called and (left := deadline - loop.time()) > 0:
            self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=left)
            except asyncio.TimeoutError:
                break
        if self._called:
            log.warning("stopping: %d provider calls still in flight after %.0f s (%s); their results are not "
                        "recorded, so the next owner of their partitions may make them again "
                        "(BLOGSTREAM_STOP_DRAIN_SECONDS)", len(self._called), timeout,
                        ", ".join(map(repr, sorted(self._called, key=repr)[:10])))
        else:
            log.info("stopping: every provider call in flight is recorded")
        return self.in_flight()


STOPPING = Stopping()


async def call_with_permits(
    *,
    stage: str,
    request_id: str,
    site_id: str,
    needs: dict[str, float],
    call: Callable[[], Awaitable[Any]],
    slot_limit: int | None = None,
    weight: float = 1.0,
    lane: str = "interactive",
    on_result: Callable[[Any, Any], Awaitable[None]] | None = None,
    slot: str | None = None,
    recover: Callable[[ProviderError], Awaitable[Any]] | None = None,
) -> Any:
    """The one retry loop: a fresh permit for every attempt, SDK retries are off.

    `slot` names the run's in-flight slot in the permit asks (`slot_key`; default the request id).
    `recover`, for a call whose effect may have happened though it failed (an answer
    lost on the way back): asked after a failure that is tried again, before the next
    try; what it returns (not None) is taken as the call's result.

    429s and `retry-after` hints go back to the limiter, which shrinks the
    shared budget; 5xx and timeouts back off exponentially (`keeps_trying`
    says until when); a permanent 4xx
    fails the request at once with the provider's explanation. `lane` is the
    request's priority: bulk asks get only the budget interactive ones leave.
    """
    provider = metrics.provider_of(needs)
    # The patience counts from the first failure: time spent waiting in line for a permit is not trying.
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        STOPPING.check(stage, request_id)
        permit = await budgets.acquire(
            site_id=site_id, request_id=slot or request_id, needs=needs, slot_limit=slot_limit, weight=weight, lane=lane
        )
        if not permit.usable():
            if attempt < settings.max_attempts:  # a permit that came too late: counted, no patience
                continue
            raise StageFailed(stage, request_id, site_id, "no usable permit", "Check the worker's clock and load.")
        STOPPING.check(stage, request_id)  # (no await from here to the call: a stop waits for it, or it never starts)
        STOPPING.calling(current_effect())
        try:
            result = await call()
        except ProviderError as exc:
            metrics.provider_calls.labels(provider, type(exc).__name__).inc()
            info = exc.rate_limit
            if isinstance(exc, RateLimited) or info is not None:
                await budgets.observe(needs, info, throttled=isinstance(exc, RateLimited))
            if first_failure is None:
                first_failure = retry_clock()
            # An answer the provider billed but we could not use is no outage: the patience would only buy
            # more paid answers, so it is bounded by the attempts alone.
            if not exc.retryable or not keeps_trying(attempt, first_failure, patient=exc.billed is None):
                raise provider_failure(stage, request_id, site_id, exc, attempt, retry_clock() - first_failure) from exc
            delay = exc.retry_after if exc.retry_after is not None \
                else settings.retry_base_seconds * 2 ** min(attempt - 1, 16)
            await _back_off(min(60.0, delay) * random.uniform(1.0, 1.2))
            if recover is not None and (found := await recover(exc)) is not None:
                return found
            continue
        metrics.provider_calls.labels(provider, "ok").inc()
        if on_result is not None:
            await on_result(permit, result)
        return result


async def look_until_found(look: Callable[[], Awaitable[Any]], *, seconds: float) -> Any:
    """`look()` until it finds something (not None), for up to `seconds` after the first look; None if it never did.

    For what a provider shows only a while after the call that made it (OpenAI lists a stored completion some
    time after it is written): a first look at once, then at a quarter of `seconds`, doubling, the last at
    `seconds`, so a late result costs a few looks, not one per back-off. A stopping worker looks no more.
    """
    first = retry_clock()
    pause = max(settings.retry_base_seconds, seconds / 4)
    while True:
        found = await look()
        left = seconds - (retry_clock() - first)
        if found is not None or left <= 1e-6 or STOPPING.stopping:  # (not 0: float sums of the pauses)
            return found
        await _back_off(min(pause, left))
        pause *= 2


def retry_clock() -> float:
    """The clock of the retry patience (a name of its own so tests can run it fast)."""
    return time.monotonic()


async def _back_off(seconds: float) -> None:
    await STOPPING.pause(seconds)


def keeps_trying(attempts: int, first_failure: float, *, patient: bool = True) -> bool:
    """After `attempts` failed for a passing reason, the first at `first_failure` (`retry_clock()`): try again?

    Both bounds must be reached to give up: `max_attempts` keeps a flaky provider
    from failing a request on a streak of bad luck, `retry_patience_seconds` keeps
    an outage from failing every request in flight. Not `patient`: the attempts alone.
    """
    return attempts < settings.max_attempts or (
        patient and retry_clock() - first_failure < settings.retry_patience_seconds)


def provider_failure(stage: str, request_id: str, site_id: str, exc: ProviderError, attempts: int,
                     seconds: float) -> StageFailed:
    """What a request is told when a provider refused its call for good, or failed it `attempts` times
    over `seconds`."""
    if not exc.retryable:
        failed = StageFailed(stage, request_id, site_id, str(exc), _action_for(exc, request_id))
    elif exc.billed is not None:  # the provider answered every time, and billed it: nothing to wait for
        failed = StageFailed(
            stage, request_id, site_id, f"{attempts} answers in a row were billed but not usable, the last: {exc}",
            f"Do what the last answer's error says if it names a change, then: blogstream retry {request_id} "
            "(each answer is paid for)",
        )
    else:
        failed = StageFailed(
            stage, request_id, site_id, f"gave up after {attempts} attempts in {seconds:.0f} s, last error: {exc}",
            f"The provider kept failing; retry it later: blogstream retry {request_id}",
        )
    failed.__cause__ = exc
    return failed


def _action_for(exc: ProviderError, request_id: str) -> str:
    retry = f"blogstream retry {request_id}"
    if exc.credentials_refused:
        return ("Check the credentials for this provider (for Wix: the site's API key and site id in the sites "
                f"table), then: {retry}")
    return f"Fix the provider settings and run {retry}, or submit a corrected request under a new id."
