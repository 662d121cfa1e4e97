"""Per-site controls over HTTP, served by every worker; no restart needed.

    GET   /api/sites                      every site with its controls and pending count
    GET   /api/sites/{site_id}/blogs      a site's requests, newest first: ?limit=50&after=<last id>
    GET   /api/sites/{site_id}            one site: controls, pending, in flight, queued here
    PATCH /api/sites/{site_id}            {"weight": 2, "max_in_flight": 10, "max_queued": 500, "max_queued_bulk": 20000,
                                           "paused": false,
                                           "monthly_budget_usd": 50, "daily_budget_usd": null}
    POST  /api/sites/{site_id}/pause      its requests wait, parked in Postgres (nothing lost)
    POST  /api/sites/{site_id}/resume
    POST  /api/sites/{site_id}/cancel     cancel its parked requests and those no stage has started yet

Controls live in Postgres `sites`; workers re-read them every two seconds
(streams.pipeline.deps), so a change reaches every worker within about two seconds.
The same actions exist on the command line: `blogstream sites ...`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict
from typing import Any

from faust.web import Request, Response

from store.parked import cancel_waiting
from streams.api.blogs import public_row
from store.costs import budget_problem
from store.sites import CONTROL_RANGES, control_problem
from streams.api.http import ID_PATTERN, ApiView, IntakeError, retry_after_header
from streams.contract import NotJson, read_json
from streams.app import app
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.limiter.published import StatsUnavailable
from streams.pipeline.runner import StageRunner
from streams.settings import settings

log = logging.getLogger(__name__)

MAX_PAGE = 500
DEFAULT_PAGE = 50

CONTROL_FIELDS = {"weight": float, "max_in_flight": int, "max_queued": int, "max_queued_bulk": int, "paused": bool}
# Spend caps in US dollars per UTC month / day; null removes one (store/costs.py).
BUDGET_FIELDS = {"monthly_budget_usd": "monthly_usd", "daily_budget_usd": "daily_usd"}
BAD_SITE_ID = {"error": "site_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -"}


def public(site: Any) -> dict[str, Any]:
    """A site as users see it: never its Wix API key."""
    out = asdict(site)
    out.pop("wix_api_key", None)
    return out


def parse_controls(body: Any) -> tuple[dict[str, Any], list[str]]:
    """The controls in a PATCH body, and what is wrong with it (field by field)."""
    if not isinstance(body, dict):
        return {}, ["the body must be a JSON object, e.g. {\"weight\": 2}"]
    controls: dict[str, Any] = {}
    known = [*CONTROL_FIELDS, *BUDGET_FIELDS]
    errors = [f"{k}: unknown control (use one of {', '.join(known)})" for k in body if k not in known]
    for name in BUDGET_FIELDS:
        if name in body:
            if wrong := budget_problem(body[name]):
                errors.append(f"{name}: {wrong}")
            else:
                controls[name] = None if body[name] is None else float(body[name])
    for name, kind in CONTROL_FIELDS.items():
        if name not in body:
            continue
        value = body[name]
        if kind is bool:
            if not isinstance(value, bool):
                errors.append(f"{name}: must be true or false")
                continue
        elif name in CONTROL_RANGES and (wrong := control_problem(name, value)):  # the store's own ranges
            errors.append(f"{name}: {wrong}")
            continue
        controls[name] = kind(value)
    return controls, errors


async def site_view(site_id: str) -> dict[str, Any] | None:
    await deps.ready()
    assert deps.db is not None
    site = await deps.db.get_site(site_id)
    if site is None:
        return None
    interactive, bulk, _ = await deps.db.pending_snapshot([])
    pending, pending_bulk = interactive.get(site_id, 0) + bulk.get(site_id, 0), bulk.get(site_id, 0)
    try:  # the limiter's published snapshot: costs the coordinator nothing
        stats = await budgets.stats(timeout=2.0)
        in_flight, age = stats.get("slots", {}).get(site_id, 0), stats["snapshot_age_seconds"]
    except StatsUnavailable:
        in_flight, age = None, None  # no recent figures; the rest is still worth showing
    return {
        **public(site),
        "pending": pending,
        "pending_bulk": pending_bulk,  # of them, bulk (max_queued_bulk); the rest count against max_queued
        "in_flight": in_flight,
        "in_flight_age_seconds": age,
        "queued_on_this_worker": {r.name: r.queued_by_site().get(site_id, 0) for r in StageRunner.instances},
    }


def _not_found(view: ApiView, site_id: str) -> Response:
    return view.answer(
        {"error": f"site {site_id} is not registered", "fix": f"blogstream sites add {site_id} --wix-api-key ..."}, 404,
    )


def parse_json(raw: bytes) -> tuple[Any, str | None]:
    """A JSON body, as every door reads one (streams/contract/json_text.py), or the reason it is not one."""
    try:
        return read_json(raw), None
    except NotJson as exc:
        return None, f"the body is {exc.reason}"


@app.page("/api/sites")
class Sites(ApiView):
    async def get(self, request: Request) -> Response:
        await deps.ready()
        assert deps.db is not None
        pending = await deps.db.pending_by_site()
        return self.answer({"sites": [{**public(s), "pending": pending.get(s.site_id, 0)} for s in await deps.db.list_sites()]})


@app.page("/api/sites/{site_id}")
class SiteControls(ApiView):
    async def get(self, request: Request, site_id: str) -> Response:
        if not ID_PATTERN.fullmatch(site_id):
            return self.answer(BAD_SITE_ID, 400)
        view = await site_view(site_id)
        return self.answer(view) if view is not None else _not_found(self, site_id)

    async def patch(self, request: Request, site_id: str) -> Response:
        if not ID_PATTERN.fullmatch(site_id):
            return self.answer(BAD_SITE_ID, 400)
        body, wrong = parse_json(await request.read())  # aiohttp answers 413 past client_max_size (1 MiB)
        if wrong:
            return self.answer({"error": wrong}, 400)
        controls, errors = parse_controls(body)
        if errors or not controls:
            problems = errors or ["nothing to change: give weight, max_in_flight, max_queued, max_queued_bulk, paused, "
                                  "monthly_budget_usd or daily_budget_usd"]
            return self.answer({"error": "invalid site controls: " + "; ".join(problems), "fields": problems}, 400)
        return await _apply(self, site_id, **controls)


async def _apply(view: ApiView, site_id: str, **controls: Any) -> Response:
    if not ID_PATTERN.fullmatch(site_id):
        return view.answer(BAD_SITE_ID, 400)
    await deps.ready()
    assert deps.db is not None and deps.costs is not None
    caps = {BUDGET_FIELDS[name]: controls.pop(name) for name in list(controls) if name in BUDGET_FIELDS}
    if caps and not await deps.costs.set_budgets(site_id, **caps, global_daily_usd=settings.global_daily_budget_usd or None):
        return _not_found(view, site_id)
    site = await deps.db.update_site_controls(site_id, **controls)  # with no control given: reads the site
    if site is None:
        return _not_found(view, site_id)
    await deps.refresh(site_id)
    return view.answer({**public(site), "applied_within_seconds": 2})


@app.page("/api/sites/{site_id}/pause")
class PauseSite(ApiView):
    async def post(self, request: Request, site_id: str) -> Response:
        return await _apply(self, site_id, paused=True)


@app.page("/api/sites/{site_id}/resume")
class ResumeSite(ApiView):
    async def post(self, request: Request, site_id: str) -> Response:
        return await _apply(self, site_id, paused=False)


@app.page("/api/sites/{site_id}/cancel")
class CancelQueued(ApiView):
    async def post(self, request: Request, site_id: str) -> Response:
        if not ID_PATTERN.fullmatch(site_id):
            return self.answer(BAD_SITE_ID, 400)
        await deps.ready()
        assert deps.db is not None
        if await deps.db.get_site(site_id) is None:
            return _not_found(self, site_id)
        cancelled = await cancel_waiting(deps.db, site_id)  # parked ones too (store/parked.py)
        if deps.parking is not None:
            deps.parking.release_due()  # their CANCELLED results, now
        return self.answer({"site_id": site_id, "cancelled": len(cancelled), "request_ids": cancelled})


@app.page("/api/sites/{site_id}/blogs")
class SiteBlogs(ApiView):
    async def get(self, request: Request, site_id: str) -> Response:
        problems = []
        if not ID_PATTERN.fullmatch(site_id):
            problems.append("site_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        raw_limit = request.query.get("limit", str(DEFAULT_PAGE))
        limit = int(raw_limit) if re.fullmatch(r"[0-9]{1,6}", raw_limit) else 0
        if not 1 <= limit <= MAX_PAGE:
            problems.append(f"limit: must be a whole number from 1 to {MAX_PAGE}")
        after = request.query.get("after") or None
        if after is not None and not ID_PATTERN.fullmatch(after):
            problems.append("after: must be a request id (the last request_id of the previous page)")
        if problems:
            return self.answer({"error": "; ".join(problems)}, 400)
        try:
            await deps.ready()
            assert deps.db is not None
            rows = await deps.db.list_site_generations(site_id, limit=limit, after_id=after)
        except Exception:
            log.warning("intake: listing site %s failed", site_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read; retry in a moment", headers=retry_after_header()))
        items = [public_row(r, full=False) for r in rows]
        next_after = items[-1]["request_id"] if len(items) == limit else None
        return self.answer({"site_id": site_id, "items": items, "next_after": next_after})
