"""What a site's calls cost, over HTTP (the same token as the other site controls).

    GET /api/sites/{site_id}/costs?since=30d&by=day     by day (default), model or request; since: Nd or Nh

The figures are the rows store/costs.py recorded, one per paid provider call:
`total_usd` and `calls` count all of them, `rows` at most 1,000 groups (`rows_cut` says
when there were more: by=request over a backfill, say). The answer also says the site's caps, what it spent this UTC month and day, and
whether a cap holds it (`budget_exhausted`). `blogstream costs` shows the same.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone

from faust.web import Request, Response

from streams.api.http import ID_PATTERN, ApiView, IntakeError, retry_after_header
from streams.app import app
from streams.pipeline.deps import deps

log = logging.getLogger(__name__)

GROUPINGS = ("day", "model", "request")
SINCE = re.compile(r"^([0-9]{1,4})([dh])$")
DEFAULT_SINCE = "30d"
ROWS = 1000  # rows shown at most (the dearest first, by request); total_usd and calls count every call


@app.page("/api/sites/{site_id}/costs")
class SiteCosts(ApiView):
    async def get(self, request: Request, site_id: str) -> Response:
        problems = []
        if not ID_PATTERN.fullmatch(site_id):
            problems.append("site_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        by = request.query.get("by", "day")
        if by not in GROUPINGS:
            problems.append(f"by: must be one of {', '.join(GROUPINGS)}")
        since_text = request.query.get("since", DEFAULT_SINCE)
        match = SINCE.fullmatch(since_text)
        if match is None:
            problems.append("since: must be a number of days or hours, e.g. 30d or 12h")
        if problems:
            return self.answer({"error": "; ".join(problems)}, 400)
        assert match is not None
        amount, unit = int(match.group(1)), match.group(2)
        since = datetime.now(timezone.utc) - (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
        try:
            await deps.ready()
            assert deps.costs is not None
            budget = await deps.costs.budget(site_id)
            if budget is None:
                return self.answer({"error": f"site {site_id} is not registered",
                                    "fix": f"blogstream sites add {site_id}"}, 404)
            rows = await deps.costs.summary(by=by, site_id=site_id, since=since, limit=ROWS + 1)  # type: ignore[arg-type]
            totals = await deps.costs.totals(site_id=site_id, since=since)
        except Exception:
            log.warning("costs of site %s could not be read", site_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read; retry in a moment",
                                            headers=retry_after_header()))
        return self.answer({
            "site_id": site_id, "since": since.isoformat(), "by": by,
            "total_usd": totals["usd"], "calls": totals["calls"],
            "rows": rows[:ROWS], "rows_cut": len(rows) > ROWS, **budget,
        })
