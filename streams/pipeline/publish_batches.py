"""One site's Wix calls that are ready at the same moment go out as one bulk call.

Wix meters every site (200 calls a minute) and a post costs three calls: its
cover's import, a look at the imported file (Wix downloads it after answering:
publish.py) and its create. When a site has many posts ready, the calls waiting
for that site's permit are sent together, as one Bulk Import File, one Get File
Descriptors or one Bulk Create Draft Posts call of up to
`settings.wix_bulk_max_items`: one permit for many posts. Nothing is held back to fill a batch: a site's first
call goes out as soon as its permit is granted, and whatever arrived in the
meantime rides with it (group commit). A lone call uses the single endpoint.

Hand-written because the batch is keyed by (site, kind of call) and is formed
only once the site's permit is granted, inside the stage's one retry loop
(`call_with_permits`); no batching library works across asyncio tasks that way.

Each request still publishes once: a create that an earlier attempt may have
made (a lost answer, a restart) is looked up first, all of a batch's in one
Query Posts call, and each one the query missed by its slug (an index may lag
a create), and only the posts not found are created. An item Wix
refuses fails its own request only; an item that failed for a passing reason
goes into the next batch.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from connectors.errors import ProviderError, RateLimited
from connectors.wix_blog import PublishedPost, WixBlog, WixSite
from streams import metrics
from streams.limiter.client import budgets
from streams.limiter.specs import wix_requests
from streams.pipeline import stage as _stage  # its clock, as tests set it
from streams.pipeline.runner import WorkerStopping
from streams.pipeline.stage import StageFailed, call_with_permits, provider_failure
from streams.settings import settings

STAGE = "publish"
IMPORT, CREATE, LOOK = "import", "create", "look"


@dataclass(eq=False)
class _Call:
    """One request's import or create, waiting for its site's next call."""

    request_id: str
    lane: str
    args: Any  # (url, display name) of an import, the draft post of a create
    maybe_done: bool = False  # a create an earlier attempt may have made: look it up before creating
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    failures: int = 0
    first_failure: float = 0.0  # stage.retry_clock() at its first failed item: "gave up ... in S s" says how long
    alone: bool = False  # a bulk call with it was refused as a whole: it goes on its own, to get its own answer
    # The effect the call is made for (its request's import or post): a clean stop waits for it once it is sent.
    effect: Any = field(default_factory=_stage.current_effect)
    slot: str = ""  # the run's in-flight slot (stage.slot_key), named in the permit ask; "": the request id's

    @property
    def slot_name(self) -> str:
        return self.slot or self.request_id

    def resolve(self, value: Any) -> None:
        if not self.result.done():
            self.result.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)
            self.result.exception()  # read here: a caller that left must not leave it "never retrieved"


class SiteBatches:
    """Per (site, kind): a queue of waiting calls and at most one task sending them."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], deque[_Call]] = {}
        self._senders: dict[tuple[str, str], asyncio.Task] = {}

    async def import_image(self, wix: WixBlog, site: WixSite, *, request_id: str, lane: str, url: str,
                           display_name: str, slot: str = "") -> dict[str, Any]:
        """The site's Wix `file` for the image at `url` (StageFailed caused by ImageExpired when it is gone)."""
        return await self._submit(wix, site, IMPORT, _Call(request_id, lane, (url, display_name), slot=slot))

    async def look_at_file(self, wix: WixBlog, site: WixSite, *, request_id: str, lane: str,
                           file_id: str, slot: str = "") -> dict[str, Any]:
        """The site's Wix `file` as it is now (an import PENDING, READY or FAILED)."""
        return await self._submit(wix, site, LOOK, _Call(request_id, lane, file_id, slot=slot))

    async def create_post(self, wix: WixBlog, site: WixSite, *, request_id: str, lane: str, draft: dict[str, Any],
                          maybe_posted: bool, slot: str = "") -> PublishedPost:
        """The published post of this draft; `maybe_posted`: an earlier attempt may have created it."""
        return await self._submit(wix, site, CREATE, _Call(request_id, lane, draft, maybe_done=maybe_posted, slot=slot))

    async def _submit(self, wix: WixBlog, site: WixSite, kind: str, call: _Call) -> Any:
        key = (site.site_id, kind)
        self._waiting.setdefault(key, deque()).append(call)
        if key not in self._senders:
            self._senders[key] = asyncio.ensure_future(self._send_all(key, wix, site, kind))
        return await call.result  # a caller cancelled meanwhile cancels only its own future

    async def _send_all(self, key: tuple[str, str], wix: WixBlog, site: WixSite, kind: str) -> None:
        queue = self._waiting[key]
        _stage.calls_for_others()
        try:
            while queue:
                await self._send_one(queue, wix, site, kind)
        except BaseException as exc:  # the worker stops: nobody waits for an answer that won't come
            for call in queue:
                call.fail(exc)
            if not isinstance(exc, WorkerStopping):  # (that one every caller has been told; a cancel goes on)
                raise
        finally:
            del self._senders[key]
            if not queue:
                del self._waiting[key]

    async def _send_one(self, queue: deque[_Call], wix: WixBlog, site: WixSite, kind: str) -> None:
        batch: list[_Call] = []
        most = settings.wix_bulk_max_items
        lane = "interactive" if any(call.lane == "interactive" for call in queue) else "bulk"
        first = queue[0]

        async def attempt() -> None:
            while queue and len(batch) < most:  # whatever came in while we waited for the permit
                if batch and (batch[0].alone or queue[0].alone):
                    break
                call = queue.popleft()
                if not call.result.done():
                    batch.append(call)
            if batch:
                for call in batch:  # sent now (the sender's task is none of these effects)
                    _stage.STOPPING.calling(call.effect)
                metrics.wix_call_items.labels(kind).observe(len(batch))
                send = {IMPORT: _send_imports, CREATE: _send_creates, LOOK: _send_looks}[kind]
                await send(wix, site, batch, queue, lane)

        try:
            await call_with_permits(stage=STAGE, request_id=first.request_id, site_id=site.site_id,
                                    needs={wix_requests(site.site_id): 1}, call=attempt, lane=lane,
                                    slot=first.slot_name)
        except StageFailed as failed:
            cause = failed.__cause__
            if len(batch) > 1 and isinstance(cause, ProviderError) and not cause.retryable \
                    and not cause.credentials_refused:
                # Wix refused the whole bulk call (its size, one bad item...): each item asks on its own.
                # Not for the site's credentials: those refuse every item alike.
                for call in batch:
                    call.alone = True
                queue.extendleft(reversed(batch))
                return
            for call in batch:
                call.fail(failed.for_request(call.request_id))
        except BaseException as exc:
            for call in batch:
                call.fail(exc)
            raise


site_batches = SiteBatches()


async def _send_imports(wix: WixBlog, site: WixSite, batch: list[_Call], queue: deque[_Call], lane: str) -> None:
    if len(batch) == 1:
        url, name = batch[0].args
        file = await wix.import_image(site, url, display_name=name)
        batch.pop().resolve(file)
        return
    answers = await wix.import_images(site, [call.args for call in batch])
    _settle(site, batch, answers, queue)


async def _send_looks(wix: WixBlog, site: WixSite, batch: list[_Call], queue: deque[_Call], lane: str) -> None:
    _settle(site, batch, await wix.get_files(site, [call.args for call in batch]), queue)


async def _send_creates(wix: WixBlog, site: WixSite, batch: list[_Call], queue: deque[_Call], lane: str) -> None:
    if any(call.maybe_done for call in batch):
        await _find_made_posts(wix, site, batch, lane)
        if not batch:
            return
        # The look-ups used this attempt's permit; the create needs its own.
        await budgets.acquire(site_id=site.site_id, request_id=batch[0].slot_name,
                              needs={wix_requests(site.site_id): 1}, lane=lane)
    for call in batch:
        call.maybe_done = True  # from here a retry might repeat a create that landed
    if len(batch) == 1:
        post = await wix.publish_draft(site, batch[0].args)
        batch.pop().resolve(post)
        return
    answers = await wix.create_posts(site, [call.args for call in batch])
    for call, answer in zip(batch, answers):
        if isinstance(answer, ProviderError) and answer.done_nothing:  # refused alone: nothing was made for it
            call.maybe_done = False  # (every create of the batch was looked up first: none had been made)
    _settle(site, batch, answers, queue)


async def _find_made_posts(wix: WixBlog, site: WixSite, batch: list[_Call], lane: str) -> None:
    """Resolve, and take out of `batch`, each create an earlier try made; clear `maybe_done` of those never made.

    Several are first looked for in one Query Posts call (the attempt's permit). Query Posts reads an index that
    need not show a post created moments ago, so each slug it missed is read by its key (Get Post By Slug, a
    permit each), all at once, or a create would post it twice. Each read's answer is kept on its call: when one
    read fails, the attempt's next try reads only the slugs that got no answer (read one after the other and
    all again on each fault, a batch of 18 rarely got through).
    """
    maybe = [call for call in batch if call.maybe_done]
    permit_used = False
    if len(maybe) > 1:
        found = await wix.find_posts_by_slugs(site, [call.args["seoSlug"] for call in maybe])
        permit_used = True
        for call in maybe:
            if (post := found.get(call.args["seoSlug"])) is not None:
                call.resolve(post)
                batch.remove(call)
        maybe = [call for call in maybe if call in batch]

    async def read(call: _Call, own_permit: bool) -> None:
        if own_permit:
            await budgets.acquire(site_id=site.site_id, request_id=call.slot_name,
                                  needs={wix_requests(site.site_id): 1}, lane=lane)
        post = await wix.find_post_by_slug(site, call.args["seoSlug"])
        if post is None:
            call.maybe_done = False  # Wix says it is not there: creating it is safe
        else:
            call.resolve(post)
            batch.remove(call)

    answers = await asyncio.gather(*(read(call, permit_used or n > 0) for n, call in enumerate(maybe)),
                                   return_exceptions=True)
    failed = [answer for answer in answers if isinstance(answer, BaseException)]
    if failed:  # a permanent refusal first (the attempt must not be retried for it), then a 429 (the limiter
        # hears it and its retry-after), then any
        raise next((f for f in failed if not (isinstance(f, ProviderError) and f.retryable)),
                   next((f for f in failed if isinstance(f, RateLimited)), failed[0]))


def _settle(site: WixSite, batch: list[_Call], answers: list[Any], queue: deque[_Call]) -> None:
    """Each item's answer to its own request; an item that failed for a passing reason waits for the next call."""
    retry: list[_Call] = []
    for call, answer in zip(batch, answers):
        if not isinstance(answer, ProviderError):
            call.resolve(answer)
            continue
        call.failures += 1
        if call.failures == 1:
            call.first_failure = _stage.retry_clock()
        # An item refused inside an answered bulk call goes again with the next call, at once: bounded by
        # attempts only (no patience), or a bad item would spend its site's Wix budget for minutes.
        if answer.retryable and call.failures < settings.max_attempts:
            retry.append(call)
        else:
            call.fail(provider_failure(STAGE, call.request_id, site.site_id, answer, call.failures,
                                       _stage.retry_clock() - call.first_failure))
    queue.extendleft(reversed(retry))
    batch.clear()

