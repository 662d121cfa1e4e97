"""What a stage's step uses: pay once (the effect ledger), one retry loop with permits, its errors.

A stage is `async def step(record, deps) -> next_record` (generate.py,
image.py, publish.py); streams/pipeline/factory.py turns it into a Faust
agent. A step that cannot succeed raises `StageFailed`, which becomes a FAILED
outcome users can act on.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable

from connectors.errors import ProviderError, RateLimited
from store.database import OUTAGES
from streams import metrics
from streams.contract import check_article
from streams.ids import random_hex
from streams.pipeline.deps import Deps
from streams.limiter.client import budgets
from streams.log_limit import Backoff, LogLimit
from streams.settings import settings

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


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


def check_written(stage: str, article: Any, request_id: str, site_id: str) -> None:
    """The model's article meets the contract's rules before it is stored or published, or the request fails."""
    if problems := check_article(article):
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
        try:
            payload = await produce()
        except BaseException:
            CLAIMS.drop(owner)
            await asyncio.shield(db.release_effect(request_id, effect, owner=owner))
            raise
        try:  # the claim stays ours until the ledger has the result: a replay must reuse it, never pay again
            await _complete(db, request_id, effect, site_id, payload, owner)
        finally:
            CLAIMS.drop(owner)
        return payload, False


COMPLETE_RETRY_SECONDS = (0.5, 10.0)  # the first pause and the longest between tries of recording a result
_complete_failed = LogLimit(log, "could not record an effect's result; it is kept and tried again", interval=60.0)


async def _complete(db: Any, request_id: str, effect: str, site_id: str, payload: dict, owner: str) -> None:
    """Record what the paid effect gave, tried again while Postgres is away (the effect is not done twice)."""
    backoff = Backoff(first=COMPLETE_RETRY_SECONDS[0], cap=COMPLETE_RETRY_SECONDS[1])
    while True:
        try:
            await db.complete_effect(request_id, effect, site_id, payload, owner=owner)
        except OUTAGES as exc:
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
) -> Any:
    """The one retry loop: a fresh permit for every attempt, SDK retries are off.

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
        permit = await budgets.acquire(
            site_id=site_id, request_id=request_id, needs=needs, slot_limit=slot_limit, weight=weight, lane=lane
        )
        if not permit.usable():
            if attempt < settings.max_attempts:  # a permit that came too late: counted, no patience
                continue
            raise StageFailed(stage, request_id, site_id, "no usable permit", "Check the worker's clock and load.")
        try:
            result = await call()
        except ProviderError as exc:
            metrics.provider_calls.labels(provider, type(exc).__name__).inc()
            info = exc.rate_limit
            if isinstance(exc, RateLimited) or info is not None:
                await budgets.observe(needs, info, throttled=isinstance(exc, RateLimited))
            if first_failure is None:
                first_failure = retry_clock()
            if not exc.retryable or not keeps_trying(attempt, first_failure):
                raise provider_failure(stage, request_id, site_id, exc, attempt, retry_clock() - first_failure) from exc
            delay = exc.retry_after if exc.retry_after is not None \
                else settings.retry_base_seconds * 2 ** min(attempt - 1, 16)
            await _back_off(min(60.0, delay) * random.uniform(1.0, 1.2))
            continue
        metrics.provider_calls.labels(provider, "ok").inc()
        if on_result is not None:
            await on_result(permit, result)
        return result


def retry_clock() -> float:
    """The clock of the retry patience (a name of its own so tests can run it fast)."""
    return time.monotonic()


async def _back_off(seconds: float) -> None:
    await asyncio.sleep(seconds)


def keeps_trying(attempts: int, first_failure: float) -> bool:
    """After `attempts` failed for a passing reason, the first at `first_failure` (`retry_clock()`): try again?

    Both bounds must be reached to give up: `max_attempts` keeps a flaky provider
    from failing a request on a streak of bad luck, `retry_patience_seconds` keeps
    an outage from failing every request in flight.
    """
    return attempts < settings.max_attempts or retry_clock() - first_failure < settings.retry_patience_seconds


def provider_failure(stage: str, request_id: str, site_id: str, exc: ProviderError, attempts: int,
                     seconds: float) -> StageFailed:
    """What a request is told when a provider refused its call for good, or failed it `attempts` times
    over `seconds`."""
    if not exc.retryable:
        failed = StageFailed(stage, request_id, site_id, str(exc), _action_for(exc, request_id))
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
