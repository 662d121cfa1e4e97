"""One request's status and history, and running a FAILED request again.

    GET  /api/blogs/{request_id}        status and history of one request
    POST /api/blogs/{request_id}/retry  run a FAILED request again (after fixing what its error says)
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Mapping

from faust.web import Request, Response

from store.outcomes import retryable
from streams.api.http import ID_PATTERN, ApiView, IntakeError, retry_after_header
from streams.api.producer import produce
from streams.app import app
from streams.contract import check_request
from streams.pipeline.deps import deps
from streams.settings import settings

log = logging.getLogger(__name__)

BAD_REQUEST_ID = {"error": "request_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def public_row(row: Mapping[str, Any], *, full: bool = True) -> dict[str, Any]:
    """A blog_generations row as the API shows it (no internals, no secrets)."""
    out: dict[str, Any] = {
        "request_id": row["id"],
        "site_id": row["site_id"],
        "status": row["status"],
        "stage": row["stage"],
        "title": row.get("title"),
        "post_id": row.get("post_id"),
        "post_url": row.get("post_url"),
        "error": row.get("error"),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
    }
    if not full:
        return out
    history = [{"stage": "requested", "at": _iso(row.get("created_at"))}]
    for stage, column in (("drafted", "drafted_at"), ("illustrated", "illustrated_at")):
        if row.get(column) is not None:
            history.append({"stage": stage, "at": _iso(row[column])})
    if row["status"] != "PENDING" and row.get("finished_at") is not None:
        history.append({"stage": row["stage"], "at": _iso(row["finished_at"])})
    out.update(
        image_url=row.get("image_url"),
        attempts=row.get("attempts"),
        prompt_tokens=row.get("prompt_tokens"),
        completion_tokens=row.get("completion_tokens"),
        updated_at=_iso(row.get("updated_at")),
        request=row.get("request"),
        history=history,
    )
    return out


@app.page("/api/blogs/{request_id}")
class Blog(ApiView):
    async def get(self, request: Request, request_id: str) -> Response:
        if not ID_PATTERN.fullmatch(request_id):
            return self.answer(BAD_REQUEST_ID, 400)
        try:
            await deps.ready()
            assert deps.db is not None
            row = await deps.db.get_generation(request_id)
        except Exception:
            log.warning("intake: reading request %s failed", request_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read; retry in a moment", headers=retry_after_header()))
        if row is None:
            return self.answer(
                {"error": f"no request {request_id} is known (yet): an accepted request shows up here "
                          "within about a second"},
                404,
            )
        return self.answer({**public_row(row), **await spend_and_wait(row)})


async def spend_and_wait(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the request's paid calls cost so far, and why a PENDING one waits (its site paused, or out of budget)."""
    assert deps.costs is not None
    calls = await deps.costs.of_request(row["id"])
    waiting = None
    if row["status"] == "PENDING":
        # Read now, not from the 2-second site cache: another worker may have just held or released the site.
        await deps.ready()
        assert deps.db is not None
        site = await deps.db.get_site(row["site_id"])
        if site is not None and site.paused:
            waiting = "paused"
        elif site is not None and site.budget_exhausted:
            waiting = "budget_exhausted"
    return {"cost_usd": sum(c["cost_usd"] or 0.0 for c in calls), "paid_calls": len(calls), "waiting": waiting}


async def retry_failed(request_id: str) -> tuple[int, dict[str, Any]]:
    """Send a FAILED request through the pipeline again; (HTTP status, answer).

    Effects that already happened (an article written, an image made) are
    reused from the effect ledger, so a retry pays only for what failed.
    """
    await deps.ready()
    assert deps.db is not None
    row = await deps.db.get_generation(request_id)
    if row is None:
        return 404, {"error": f"no request {request_id} is known"}
    if not retryable(row["status"], row["stage"]):  # FAILED, or reset by the seed's retry statement
        return _not_failed(request_id, row["status"], row.get("error"))
    reopened = await deps.db.reopen_failed(request_id)
    if reopened is None:
        row = await deps.db.get_generation(request_id)  # not FAILED any more (another retry reopened it), or empty
        if row is not None and not retryable(row["status"], row["stage"]):
            return _not_failed(request_id, row["status"])
        return 409, {"error": f"request {request_id} has no stored request to send again (it was never a valid "
                              "request); submit it again with all its fields"}
    stored, error = reopened
    request, problems = check_request(stored)
    if request is None:
        await deps.db.restore_failed(request_id, error)
        wrong = "; ".join(str(p) for p in problems)
        return 409, {"error": f"request {request_id}'s stored request is no longer valid ({wrong}); submit it again"}
    try:
        await produce([request], settings.intake_produce_timeout)
    except Exception as exc:
        await deps.db.restore_failed(request_id, error)
        return 503, {"error": f"Kafka did not take the retry of {request_id} ({type(exc).__name__}); try again"}
    return 202, {"request_id": request_id, "status": "PENDING", "previous_error": error}


def _not_failed(request_id: str, status: str, error: str | None = None) -> tuple[int, dict[str, Any]]:
    text = f"request {request_id} is {status}, only FAILED requests can be retried"
    if status == "CANCELLED":  # cancelled before it started: its generate step is ledgered as cancelled, so
        # the same id sent again ends CANCELLED again
        text += (f" ({error or 'cancelled'}); to run it after all, submit it again with a new request_id (under "
                 "its own id, a request cancelled before it started stays cancelled)")
    return 409, {"error": text, "status": status}


@app.page("/api/blogs/{request_id}/retry")
class RetryRequest(ApiView):
    async def post(self, request: Request, request_id: str) -> Response:
        if not ID_PATTERN.fullmatch(request_id):
            return self.answer(BAD_REQUEST_ID, 400)
        try:
            status, body = await retry_failed(request_id)
        except Exception:
            log.warning("retry: request %s could not be reopened", request_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read or written; retry in a moment",
                                            headers=retry_after_header()))
        return self.answer(body, status, retry_after_header() if status == 503 else None)
