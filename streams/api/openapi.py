"""This HTTP API in OpenAPI 3.1, written as data: served at GET /api/openapi.json, kept in docs/openapi.json.

`document()` is a constant: it depends on no setting, so every worker serves the same
document and docs/openapi.json is exactly it (`python -m streams.api.openapi >
docs/openapi.json` writes it; tests/api/test_openapi.py checks both, and that every
route a worker registers is described with the token streams/api/access.py asks for).
Limits that are settings (batch size, body size, queue limit) are named in words.

The request schema is the contract's (streams/contract/requests.py, docs/producing.md);
the site controls' ranges are the store's (store/sites.py).
"""
from __future__ import annotations

import json
import sys
from typing import Any

from store.costs import BUDGET_RANGE
from store.sites import MAX_IN_FLIGHT_RANGE, MAX_QUEUED_BULK_RANGE, MAX_QUEUED_RANGE, WEIGHT_RANGE
from streams.api.access import ACCESS, ADMIN, INTAKE, MUTATING

API_VERSION = "1.0.0"
ID = r"^[A-Za-z0-9._:-]{1,128}$"
ONE_LINE = r"^[^\u0000-\u001f\u007f-\u009f]*$"  # no control characters


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None, *, closed: bool = False,
        **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return {**out, **extra}


def nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def with_error(**more: Any) -> dict[str, Any]:
    return {"allOf": [ref("Error"), obj({}, more)]}


INT = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
TEXT = {"type": "string"}
TIME = nullable("string", format="date-time")
SITE_ID = {"type": "string", "pattern": ID, "examples": ["shop-1"]}
REQUEST_ID = {"type": "string", "pattern": ID, "examples": ["shop-1-2024-05-01-sandals"]}


def one_line(low: int, high: int, description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": low, "maxLength": high, "pattern": ONE_LINE,
            "description": f"{description} {low}-{high} characters not counting surrounding spaces, no control characters."}


BUDGET = obj({name: NUMBER for name in ("limit", "effective_limit", "used_in_window", "used_in_span", "waiting",
                                         "granted_total", "factor", "external")})

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": {"type": "string", "description": "What is wrong and what to do, in one sentence."}},
                 description="Every error: the sentence, sometimes with details beside it."),
    "ItemError": obj({"item": COUNT, "field": TEXT, "message": TEXT}),
    "Invalid": with_error(errors={"type": "array", "items": ref("ItemError")}),
    "Refused": with_error(
        reason={"enum": ["queue_full", "site_queue_full", "budget_exhausted"]}, pending=COUNT, limit=COUNT,
        site_id=nullable("string"), room=COUNT, retry_after=COUNT,
        lane={"enum": ["interactive", "bulk"], "description": "With queue_full / site_queue_full: which requests the "
              "full limit holds (bulk: the part of the queue bulk requests may take, or the site's max_queued_bulk)."},
        code={"const": "budget_exhausted", "description": "With reason budget_exhausted: a spend cap holds the site."},
        cap={"enum": ["month", "day", "global_day"], "description": "Which spend cap is reached."},
    ),
    "TooLarge": with_error(max_body_bytes=COUNT, max_batch=COUNT),
    "NotConfirmed": with_error(request_ids={
        "type": "array", "items": REQUEST_ID,
        "description": "When Kafka did not confirm in time: the ids to send the requests again with (they may "
                       "still run), those made up for requests sent without one included."}),
    "BlogRequest": obj(
        {
            "site_id": {**SITE_ID, "description": "A registered site; also the Kafka key."},
            "topic": {**one_line(1, 300, "What the article is about:"), "examples": ["How to choose summer sandals"]},
        },
        {
            "request_id": {**REQUEST_ID, "description": "Idempotency key; made up when left out (then a retry "
                                                        "is not idempotent)."},
            "keywords": {"type": "array", "maxItems": 20, "default": [], "items": one_line(1, 60, "Each keyword:")},
            "language": {"type": "string", "pattern": "^[A-Za-z]{2,3}(-([A-Za-z]{2}|[0-9]{3}))?$", "default": "en"},
            "tone": {**one_line(1, 40, "The tone:"), "default": "informative"},
            "target_words": {"type": "integer", "minimum": 100, "maximum": 5000, "default": 800},
            "requested_at": {"type": "integer", "format": "int64", "minimum": 946_684_800_000,
                             "description": "ms since the epoch (UTC), from 2000-01-01 to one day from now; "
                                            "left out or null: now."},
            "audience": nullable("string", maxLength=200, pattern=ONE_LINE, default=None),
            "priority": {"type": "string", "enum": ["interactive", "bulk"], "default": "interactive",
                         "description": "bulk: served only with the budget interactive requests leave (and through "
                                        "the OpenAI Batch API when it is enabled)."},
            "retry": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**31 - 1, "default": 0,
                      "description": "Which run of the request this is; leave it out (only a retry, POST "
                                     "/api/blogs/{request_id}/retry, starts a later run)."},
        },
        closed=True,
        description="One blog request (docs/producing.md, \"The fields\"): checked as a whole, every problem "
                    "named by field (422).",
    ),
    "Batch": obj({"requests": {"type": "array", "minItems": 1, "items": ref("BlogRequest"),
                               "description": "At most intake_max_batch requests (1,000 by default)."}}, closed=True),
    "Accepted": obj({"accepted": COUNT, "request_ids": {"type": "array", "items": TEXT}}, {"request_id": TEXT}),
    "BlogSummary": obj({
        "request_id": TEXT, "site_id": TEXT,
        "status": {"enum": ["PENDING", "DONE", "FAILED", "CANCELLED"]}, "stage": TEXT,
        "title": nullable("string"), "post_id": nullable("string"), "post_url": nullable("string"),
        "error": nullable("string"), "created_at": TIME, "finished_at": TIME,
    }),
    "Blog": {"allOf": [ref("BlogSummary"), obj({
        "image_url": nullable("string"), "attempts": nullable("integer"), "prompt_tokens": nullable("integer"),
        "completion_tokens": nullable("integer"), "updated_at": TIME, "request": nullable("object"),
        "history": {"type": "array", "items": obj({"stage": TEXT, "at": TIME})},
        "cost_usd": {"type": "number", "minimum": 0,
                     "description": "What its paid calls cost so far (the price table x what the providers billed)."},
        "paid_calls": COUNT,
        "waiting": {"enum": ["paused", "budget_exhausted", None],
                    "description": "Why a PENDING request waits: its site is paused, or a spend cap holds it."},
    })]},
    "SitePage": obj({"site_id": TEXT, "items": {"type": "array", "items": ref("BlogSummary")},
                     "next_after": nullable("string", description="The `after` of the next page; null: the last.")}),
    "RetryAccepted": obj({"request_id": TEXT, "status": {"const": "PENDING"}, "previous_error": nullable("string")}),
    "IntakeFigures": obj({
        "pending": COUNT, "pending_in_database": COUNT, "accepted_here_not_yet_in_database": COUNT,
        "being_produced_here": COUNT, "age_seconds": nullable("number"), "queue_size_limit": COUNT,
        "bulk_pending": {**COUNT, "description": "Of the pending requests, the bulk ones."},
        "queue_interactive_reserve": {**COUNT, "description": "Of queue_size_limit, what bulk requests leave free "
                                                              "for interactive ones."},
        "max_batch": COUNT, "max_body_bytes": COUNT, "auth": {"type": "boolean"},
    }),
    "Site": obj({
        "site_id": TEXT, "name": TEXT, "wix_member_id": nullable("string"), "weight": NUMBER,
        "max_in_flight": INT, "max_queued": INT, "max_queued_bulk": INT, "paused": {"type": "boolean"},
    }, {
        "monthly_budget_usd": nullable("number", description="Spend cap per UTC calendar month; null: none."),
        "daily_budget_usd": nullable("number", description="Spend cap per UTC day; null: none."),
        "budget_exhausted": {"enum": ["month", "day", "global_day", None],
                             "description": "The spend cap that holds the site now (its requests wait); null: none."},
    }, description="A site's controls (never its Wix key)."),
    "SiteList": obj({"sites": {"type": "array", "items": {"allOf": [ref("Site"), obj({"pending": COUNT})]}}}),
    "SiteView": {"allOf": [ref("Site"), obj({
        "pending": COUNT,
        "pending_bulk": {**COUNT, "description": "Of the pending requests, the bulk ones (counted against "
                                                 "max_queued_bulk; the others against max_queued)."},
        "in_flight": nullable("integer", description="Requests holding a slot (the limiter's snapshot); null: "
                                                      "no recent snapshot."),
        "in_flight_age_seconds": nullable("number"),
        "queued_on_this_worker": {"type": "object", "additionalProperties": COUNT},
    })]},
    "SiteControls": obj({}, {
        "weight": {"type": "number", "minimum": WEIGHT_RANGE[0], "maximum": WEIGHT_RANGE[1],
                   "description": "Share of every contested budget relative to other sites (default 1)."},
        "max_in_flight": {"type": "integer", "minimum": MAX_IN_FLIGHT_RANGE[0], "maximum": MAX_IN_FLIGHT_RANGE[1]},
        "max_queued": {"type": "integer", "minimum": MAX_QUEUED_RANGE[0], "maximum": MAX_QUEUED_RANGE[1],
                       "description": "Interactive requests of the site pending at most (429 site_queue_full above)."},
        "max_queued_bulk": {"type": "integer", "minimum": MAX_QUEUED_BULK_RANGE[0], "maximum": MAX_QUEUED_BULK_RANGE[1],
                            "description": "Bulk requests of the site pending at most, counted apart."},
        "paused": {"type": "boolean"},
        "monthly_budget_usd": {"type": ["number", "null"], "minimum": BUDGET_RANGE[0], "maximum": BUDGET_RANGE[1],
                               "description": "US dollars per UTC calendar month; null removes the cap."},
        "daily_budget_usd": {"type": ["number", "null"], "minimum": BUDGET_RANGE[0], "maximum": BUDGET_RANGE[1],
                             "description": "US dollars per UTC day; null removes the cap."},
    }, closed=True, minProperties=1),
    "CostRow": obj({"usd": nullable("number"), "calls": COUNT, "requests": COUNT, "input_tokens": COUNT,
                    "output_tokens": COUNT, "images": COUNT, "unpriced_calls": COUNT},
                   {"day": TEXT, "model": TEXT, "request": TEXT},
                   description="Recorded paid calls of one day, model (provider:model) or request."),
    "SiteCosts": obj({
        "site_id": TEXT, "since": {"type": "string", "format": "date-time"}, "by": {"enum": ["day", "model", "request"]},
        "total_usd": NUMBER, "calls": COUNT, "rows": {"type": "array", "items": ref("CostRow")},
        "rows_cut": {"type": "boolean", "description": "More groups than the 1,000 rows shown (the dearest first); "
                     "total_usd and calls count every call all the same."},
        "monthly_budget_usd": nullable("number"), "daily_budget_usd": nullable("number"),
        "spent_this_month_usd": NUMBER, "spent_today_usd": NUMBER,
        "reserved_usd": {**NUMBER, "description": "What the site's bulk requests in running OpenAI batches may still "
                         "cost (their worst case): billed when the batches end, it counts as spent for the caps."},
        "budget_exhausted": {"enum": ["month", "day", "global_day", None]},
    }),
    "SiteChanged": {"allOf": [ref("Site"), obj({"applied_within_seconds": COUNT})]},
    "ControlsInvalid": with_error(fields={"type": "array", "items": TEXT}),
    "Cancelled": obj({"site_id": TEXT, "cancelled": COUNT, "request_ids": {"type": "array", "items": TEXT}}),
    "Budget": BUDGET,
    "Snapshot": obj({
        "snapshot_age_seconds": {"type": "number", "minimum": 0,
                                 "description": "Age of the coordinator's snapshot (it publishes one a second)."},
        "stale": {"type": "boolean", "description": "Older than 5 s (past 30 s the answer is 503)."},
    }),
    "Limiter": {"allOf": [ref("Snapshot"), obj({
        "openai_requests": ref("Budget"), "openai_tokens": ref("Budget"), "replicate_requests": ref("Budget"),
        "wix": {"type": "object", "additionalProperties": ref("Budget")},
        "slots": {"type": "object", "additionalProperties": COUNT},
        "shares": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": NUMBER}},
        "window_seconds": NUMBER, "grace_seconds": NUMBER, "coordinator": TEXT,
        "holding_until": nullable("number"), "book": {"type": "object", "additionalProperties": COUNT},
        "at": NUMBER,
    })]},
    "SeedStats": obj({
        "queueLength": COUNT, "requestsInLastMinute": COUNT, "maxRPM": COUNT, "effectiveRPM": COUNT,
        "rpmUsagePercent": NUMBER, "windowSeconds": NUMBER, "snapshotAgeSeconds": {"type": "number", "minimum": 0},
        "stale": {"type": "boolean"},
    }, {"tokensInLastMinute": COUNT, "maxTPM": COUNT, "tpmUsagePercent": NUMBER},
        description="The seed's JSON, global figures from the limiter coordinator's snapshot."),
    "Health": obj({"queue_size": COUNT, "errors_last_hour": COUNT, "completed_last_hour": COUNT,
                   "blogs_per_minute": NUMBER}),
}

WHY = {
    400: "The path, the query or the body is not what this route takes.",
    401: "A token is set and the header Authorization: Bearer <token> is missing or wrong.",
    403: "A browser page of another origin (Origin, Sec-Fetch-Site) tried to change something.",
    404: "No such request or site.",
    409: "The request cannot be taken in its current state.",
    413: "The body is too large.",
    415: "The body is not sent as Content-Type: application/json.",
    422: "Something in the submission is wrong; every problem is listed.",
    429: "A queue limit: wait Retry-After seconds, or send `room` requests; or (budget_exhausted) a spend cap "
         "holds the site until it is raised or the period ends.",
    503: "Something the worker needs (Postgres, Kafka, the limiter's snapshot) is not there; retry after "
         "Retry-After seconds.",
}


def answer(schema: str, description: str = "") -> dict[str, Any]:
    return {"description": description or schema, "content": {"application/json": {"schema": ref(schema)}}}


def errors(*statuses: int, **special: str) -> dict[str, Any]:
    """Error answers: each is `{"error": ...}` (or the named schema, e.g. 422=Invalid)."""
    return {str(s): answer(special.get(f"s{s}", "Error"), WHY[s]) for s in statuses}


def path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


SITE = [path_param("site_id", SITE_ID)]
REQUEST = [path_param("request_id", REQUEST_ID)]

def op(summary: str, ok: str, *statuses: int, status: str = "200", params: list[dict[str, Any]] | None = None,
       request: dict[str, Any] | None = None, **special: str) -> dict[str, Any]:
    """An operation: its summary, its answer on success (`status`, schema `ok`), its error statuses."""
    out: dict[str, Any] = {"summary": summary, "responses": {status: answer(ok), **errors(*statuses, **special)}}
    if params:
        out["parameters"] = params
    if request:
        out["requestBody"] = body(request)
    return out


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/blogs"): op(
        "Submit one request, or a batch: 202 once Kafka has every record (docs/intake.md).", "Accepted",
        400, 409, 413, 415, 422, 429, 503, status="202", request={"oneOf": [ref("BlogRequest"), ref("Batch")]},
        s409="Invalid", s413="TooLarge", s422="Invalid", s429="Refused", s503="NotConfirmed"),
    ("GET", "/api/blogs/{request_id}"): op("One request's status and history.", "Blog", 400, 404, 503, params=REQUEST),
    ("POST", "/api/blogs/{request_id}/retry"): op(
        "Run a FAILED request again once its error is fixed; paid effects are reused.", "RetryAccepted",
        400, 404, 409, 503, status="202", params=REQUEST),
    ("GET", "/api/intake"): op("The pending figure the intake admits against, and its limits.", "IntakeFigures", 503),
    ("GET", "/api/sites"): op("Every site with its controls and pending count.", "SiteList", 503),
    ("GET", "/api/sites/{site_id}"): op(
        "One site: controls, pending, in flight (the limiter's snapshot), queued on this worker.", "SiteView",
        400, 404, 503, params=SITE),
    ("PATCH", "/api/sites/{site_id}"): op(
        "Change a site's controls; every worker applies them within two seconds.", "SiteChanged",
        400, 404, 413, 503, params=SITE, request=ref("SiteControls"), s400="ControlsInvalid"),
    ("POST", "/api/sites/{site_id}/pause"): op(
        "Pause a site: its requests wait, nothing is lost.", "SiteChanged", 400, 404, 503, params=SITE),
    ("POST", "/api/sites/{site_id}/resume"): op("Resume a paused site.", "SiteChanged", 400, 404, 503, params=SITE),
    ("POST", "/api/sites/{site_id}/cancel"): op(
        "Cancel a site's requests that no stage has started (and its parked ones).", "Cancelled",
        400, 404, 503, params=SITE),
    ("GET", "/api/sites/{site_id}/costs"): op(
        "What a site's paid calls cost (recorded per provider call), its spend caps and what it spent this "
        "UTC month and day.", "SiteCosts", 400, 404, 503, params=SITE + [
            {"name": "since", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,4}[dh]$",
                                                        "default": "30d"}},
            {"name": "by", "in": "query", "schema": {"enum": ["day", "model", "request"], "default": "day"}},
        ]),
    ("GET", "/api/sites/{site_id}/blogs"): op(
        "A site's requests, newest first, page by page.", "SitePage", 400, 503, params=SITE + [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
            {"name": "after", "in": "query", "schema": {**REQUEST_ID, "description": "next_after of the last page"}},
        ]),
    ("GET", "/api/limiter"): op(
        "Every budget, per-site Wix use, in-flight slots and shares: the coordinator's snapshot.", "Limiter", 503),
    ("GET", "/api/rate-limiter/stats"): op("The OpenAI budget in the seed's JSON (global).", "SeedStats", 503),
    ("GET", "/api/replicate-rate-limiter/stats"): op("The Replicate budget in the seed's JSON (global).", "SeedStats", 503),
    ("GET", "/health"): op("The seed's health figures: queue size, errors and completions in the last hour.", "Health", 503),
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics (text exposition format).",
        "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": TEXT}}}},
    },
    ("GET", "/api/openapi.json"): {
        "summary": "This document.",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
}

SECURITY = {INTAKE: [{"intakeToken": []}, {"adminToken": []}], ADMIN: [{"adminToken": []}], None: []}


def operation(method: str, path: str) -> dict[str, Any]:
    """One operation as described above, plus what every route of its kind can answer."""
    op = dict(OPERATIONS[(method, path)])
    access = ACCESS[(method, path)]
    responses = dict(op["responses"])
    if access.token is not None:
        responses.update(errors(401))
    if method in MUTATING:
        responses.update(errors(403, 415))
    op["responses"] = dict(sorted(responses.items()))
    op["security"] = SECURITY[access.token]
    op["operationId"] = (method.lower() + "_" + path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
                         .replace("-", "_").replace(".", "_"))
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path in OPERATIONS:
        paths.setdefault(path, {})[method.lower()] = operation(method, path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "blogstream",
            "version": API_VERSION,
            "description": "Every HTTP route a blogstream worker serves (any worker, same answers). Errors are "
                           "`{\"error\": \"<what is wrong and what to do>\", ...}`. Tokens are off unless set: "
                           "BLOGSTREAM_INTAKE_TOKEN for the intake, BLOGSTREAM_ADMIN_TOKEN (the intake token when "
                           "unset) for site controls, retries and the limiter's figures. Calls that change "
                           "something refuse other origins' browser pages (403) and bodies that are not JSON (415).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "intakeToken": {"type": "http", "scheme": "bearer",
                                "description": "BLOGSTREAM_INTAKE_TOKEN (the admin token works too)."},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "BLOGSTREAM_ADMIN_TOKEN, or the intake token when no admin token is set."},
            },
        },
    }


def text() -> str:
    """docs/openapi.json, byte for byte."""
    return json.dumps(document(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
