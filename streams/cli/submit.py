"""`blogstream` command line: submit requests, register sites, check health.

    blogstream submit --site shop-1 --topic "Summer sandals" [--keywords a,b]
    blogstream submit --file requests.jsonl        (or .csv; a progress bar shows)
    blogstream sites add shop-1 --wix-api-key KEY [--member-id M] [--weight 2]
    blogstream sites list | pause SITE | resume SITE | cancel SITE | set SITE --weight 2 --max-in-flight 10
    blogstream retry REQUEST_ID ...                 (run FAILED requests again, after fixing their error)
    blogstream health [--sites 20]                  (the seed's health check, then a per-site table)

The worker itself runs with `faust -A streams worker -l info`.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from streams.settings import settings

# --------------------------------------------------------------------------- submit


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "request_id": args.request_id or uuid.uuid4().hex,
        "site_id": args.site,
        "topic": args.topic,
        "keywords": [k.strip() for k in (args.keywords or "").split(",") if k.strip()],
        "language": args.language,
        "tone": args.tone,
        "target_words": args.target_words,
        "requested_at": int(time.time() * 1000),
        "audience": None,
    }


def read_requests(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, request or None, problem) for each line of a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                item: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
                if "keywords" in item:
                    item["keywords"] = [k.strip() for k in item["keywords"].split(",") if k.strip()]
                if "target_words" in item:
                    try:
                        item["target_words"] = int(item["target_words"])
                    except ValueError:
                        yield n, None, "target_words: not a whole number"
                        continue
                yield n, item, ""
        return
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(item, dict):
                yield n, None, "not a JSON object"
                continue
            yield n, item, ""


def complete_request(item: dict[str, Any]) -> dict[str, Any]:
    from streams.contract import RecordError, encode, validate_request

    item = dict(item)
    item.setdefault("request_id", uuid.uuid4().hex)
    item.setdefault("requested_at", int(time.time() * 1000))
    encode("BlogRequest", item)  # the shape; raises RecordError naming the field
    errors = validate_request(item)  # the limits (lengths, ranges, ids)
    if errors:
        raise RecordError("; ".join(str(e) for e in errors), errors=errors)
    return item


@dataclass
class SubmitReport:
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)  # "request <id>: <field>: <why>" from the worker's 422s
    throttled_seconds: float = 0.0  # time spent waiting on 429s (the queue was full)


class SubmitAborted(RuntimeError):
    pass


async def submit(
    requests: list[dict[str, Any]],
    *,
    worker: str,
    batch_size: int = 500,
    progress: bool = True,
    give_up_after: float = 300.0,
) -> SubmitReport:
    """Send requests through a worker's HTTP intake (POST /api/blogs) in batches.

    Obeys the intake's backpressure: a 429 (queue or site queue full) waits its
    Retry-After and sends at most the `room` it reported; 503s and connection
    errors are retried with the same request ids, which is safe because ids are
    idempotency keys. Items the worker rejects (422, e.g. an unregistered site)
    are reported and the rest of their batch is sent again. Gives up when no
    batch got through for `give_up_after` seconds of errors (not of 429 waits).
    """
    import httpx
    from tqdm import tqdm

    headers = _intake_headers()
    report = SubmitReport()
    todo = list(requests)
    size = max(1, min(batch_size, settings.intake_max_batch))
    bar = tqdm(total=len(requests), unit="req", desc="submitting", disable=not progress)
    failing_since: float | None = None
    delay = 0.5
    try:
        async with httpx.AsyncClient(base_url=worker.rstrip("/"), headers=headers, timeout=60.0) as client:
            while todo:
                chunk = todo[:size]
                try:
                    response = await client.post("/api/blogs", json={"requests": chunk})
                except httpx.TransportError as exc:
                    response, problem = None, f"no answer from {worker} ({type(exc).__name__})"
                else:
                    problem = _error_text(response)
                if response is not None and response.status_code == 202:
                    del todo[: len(chunk)]
                    report.accepted += len(chunk)
                    bar.update(len(chunk))
                    bar.set_postfix_str("")
                    size = max(1, min(batch_size, settings.intake_max_batch))
                    failing_since, delay = None, 0.5
                    continue
                status = response.status_code if response is not None else None
                if status == 429:
                    body = _json_or_empty(response)
                    room = body.get("room") if isinstance(body.get("room"), int) else 0
                    if 0 < room < len(chunk):
                        size = room  # what fits now goes now; the rest waits its turn
                        continue
                    wait = _retry_after(response)
                    bar.set_postfix_str(f"waiting {wait:g}s: {body.get('reason', 'queue full')}")
                    report.throttled_seconds += wait
                    await asyncio.sleep(wait)
                    continue
                if status == 422:
                    errors = [e for e in _json_or_empty(response).get("errors", []) if isinstance(e, dict)]
                    if any(not str(e.get("field", "")).startswith("requests[") for e in errors):
                        if size > 1:  # a batch-level limit (e.g. this worker's max batch is smaller)
                            size = max(1, size // 2)
                            continue
                        raise SubmitAborted(f"the worker refused a batch: {problem}")
                    bad = {e.get("item") for e in errors} & set(range(len(chunk)))
                    if not bad:
                        raise SubmitAborted(f"the worker refused a batch: {problem}")
                    for e in errors:
                        if e.get("item") in bad:
                            report.rejected.append(f"request {chunk[e['item']]['request_id']}: {e.get('field')}: {e.get('message')}")
                    todo[: len(chunk)] = [r for i, r in enumerate(chunk) if i not in bad]
                    bar.total -= len(bad)
                    bar.refresh()
                    continue
                if status == 413 and size > 1:
                    size = max(1, size // 2)
                    continue
                if status in (401, 403):
                    raise SubmitAborted(
                        f"the worker at {worker} wants the intake token: set BLOGSTREAM_INTAKE_TOKEN ({problem})"
                    )
                if status is not None and status < 500 and status != 408:
                    raise SubmitAborted(f"the worker at {worker} answered {status}: {problem}")
                # 5xx, 408, no answer: retry the same ids after a pause
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > give_up_after:
                    raise SubmitAborted(f"gave up after {give_up_after:.0f}s of errors; last: {problem}")
                wait = _retry_after(response) if response is not None and "retry-after" in response.headers else delay
                bar.set_postfix_str(f"retrying in {wait:g}s: {problem[:60]}")
                await asyncio.sleep(wait)
                delay = min(delay * 2, 10.0)
    finally:
        bar.close()
    return report


def _intake_headers() -> dict[str, str]:
    """The intake token, when one is set (settings.intake_token)."""
    return {"Authorization": f"Bearer {settings.intake_token}"} if settings.intake_token else {}


def _json_or_empty(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: Any) -> str:
    return str(_json_or_empty(response).get("error") or f"HTTP {response.status_code}")


def _retry_after(response: Any) -> float:
    try:
        return min(60.0, max(0.5, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def cmd_submit(args: argparse.Namespace) -> int:
    from streams.contract import RecordError

    requests: list[dict[str, Any]] = []
    problems: list[str] = []
    if args.file:
        for n, item, problem in read_requests(Path(args.file)):
            if item is None:
                problems.append(f"line {n}: {problem}")
                continue
            try:
                requests.append(complete_request(item))
            except RecordError as exc:
                problems.append(f"line {n}: {exc.reason}")
    else:
        if not (args.site and args.topic):
            print("submit needs --file, or --site and --topic", file=sys.stderr)
            return 2
        try:
            requests.append(complete_request(request_from_args(args)))
        except RecordError as exc:
            print(f"invalid request: {exc.reason}", file=sys.stderr)
            return 2
    for p in problems[:50]:
        print(f"skipped {p}", file=sys.stderr)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more invalid lines", file=sys.stderr)
    report = SubmitReport()
    if requests:
        try:
            report = asyncio.run(
                submit(requests, worker=args.worker, batch_size=args.batch_size, progress=not args.quiet)
            )
        except SubmitAborted as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return 1
    for r in report.rejected[:50]:
        print(f"rejected {r}", file=sys.stderr)
    if len(report.rejected) > 50:
        print(f"... and {len(report.rejected) - 50} more rejected by the worker", file=sys.stderr)
    waited = f"; waited {report.throttled_seconds:.0f}s for queue room" if report.throttled_seconds else ""
    print(
        f"submitted {report.accepted} request(s) via {args.worker}; {len(problems)} invalid line(s) skipped; "
        f"{len(report.rejected)} rejected by the worker{waited}"
    )
    if len(requests) == 1 and report.accepted == 1:
        print(f"request id: {requests[0]['request_id']}")
    return 1 if (problems or report.rejected) and not report.accepted else 0


# --------------------------------------------------------------------------- sites


async def _with_db(fn):
    from store.database import Database

    db = Database(settings.database_url, min_size=1, max_size=2)
    await db.start()
    try:
        return await fn(db)
    finally:
        await db.close()


def cmd_sites(args: argparse.Namespace) -> int:
    from store.sites import Site

    async def run(db) -> int:
        if args.action == "add":
            await db.upsert_site(
                Site(
                    site_id=args.site,
                    name=args.name or args.site,
                    wix_api_key=args.wix_api_key or "",
                    wix_member_id=args.member_id,
                    weight=args.weight or 1.0,
                    max_in_flight=args.max_in_flight or settings.site_max_in_flight,
                    max_queued=args.max_queued or settings.site_max_queued,
                )
            )
            print(f"site {args.site} registered")
            return 0
        if args.action == "list":
            for s in await db.list_sites():
                state = "paused" if s.paused else "active"
                print(f"{s.site_id:30} {state:7} weight={s.weight:g} max_in_flight={s.max_in_flight} max_queued={s.max_queued}")
            return 0
        if args.action == "cancel":
            if await db.get_site(args.site) is None:
                print(f"site {args.site} is not registered", file=sys.stderr)
                return 1
            cancelled = await db.cancel_queued(args.site, reason=f"cancelled by an operator (site {args.site}) before it started")
            print(f"cancelled {len(cancelled)} queued request(s) of site {args.site}")
            return 0
        controls: dict[str, Any] = {}
        if args.action in ("pause", "resume"):
            controls["paused"] = args.action == "pause"
        else:
            controls = {"weight": args.weight, "max_in_flight": args.max_in_flight, "max_queued": args.max_queued}
        site = await db.update_site_controls(args.site, **controls)
        if site is None:
            print(f"site {args.site} is not registered (blogstream sites add {args.site} --wix-api-key ...)", file=sys.stderr)
            return 1
        print(f"{site!r}")
        return 0

    return asyncio.run(_with_db(run))


# --------------------------------------------------------------------------- health


def limiter_stats(worker: str) -> tuple[dict[str, Any] | None, str]:
    """The coordinator's figures (`/api/limiter`) through a worker, or None and why not."""
    import httpx

    try:
        response = httpx.get(f"{worker}/api/limiter", timeout=8)
        body = response.json()
    except Exception as exc:
        return None, f"no worker answered at {worker} ({type(exc).__name__})"
    if response.status_code != 200 or not isinstance(body, dict):
        error = _json_or_empty(response).get("error", "")  # e.g. 503: the coordinator is moving
        return None, f"the worker at {worker} answered {response.status_code}: {error}"
    return body, ""


def site_table(
    pending: dict[str, int], limiter: dict[str, Any] | None, *, why_not: str = "", top: int = 20
) -> list[str]:
    """The per-site lines of `blogstream health`: queued, in flight, share of each global budget.

    Queued is PENDING in Postgres (requests not finished yet, in flight
    included); in flight and shares come from the limiter coordinator. Without
    a coordinator's answer only the queued column is printed. The busiest
    sites come first: the table is for spotting a site that crowds others out.
    """
    from streams.metrics import site_budget_shares

    if limiter is None:
        unknown = f"in flight and budget shares unknown, {why_not or 'no limiter figures'}"
        if not pending:
            return [f"Sites: nothing queued in Postgres; {unknown}"]
        rows = sorted(pending.items(), key=lambda kv: (-kv[1], kv[0]))
        lines = [f"Sites: {unknown}; queued from Postgres:"]
        table = [["site", "queued"]] + [[site, str(n)] for site, n in rows[:top or None]]
        return lines + _columns(table) + _more(len(rows), top)
    in_flight: dict[str, int] = {site: int(n) for site, n in (limiter.get("slots") or {}).items()}
    shares = site_budget_shares(limiter)
    budgets = list(shares)
    sites = set(pending) | set(in_flight) | {site for by_site in shares.values() for site in by_site}
    if not sites:
        return ["Sites: nothing queued, in flight or granted in the current window"]

    def busiest(site: str) -> tuple[int, float, str]:
        share = sum(shares[b].get(site, (0.0, 0.0))[1] for b in budgets)
        return (-(pending.get(site, 0) + in_flight.get(site, 0)), -share, site)

    rows = sorted(sites, key=busiest)
    window = float(limiter.get("window_seconds") or 60)
    lines = [f"Sites (queued: PENDING in Postgres; in flight, and units (share) of each budget granted in the last "
             f"{window:g} s: limiter coordinator):"]
    table = [["site", "queued", "in flight", *budgets]]
    for site in rows[:top or None]:
        cells = [site, str(pending.get(site, 0)), str(in_flight.get(site, 0))]
        for budget in budgets:
            units, part = shares[budget].get(site, (0.0, 0.0))
            cells.append(f"{units:,.0f} ({100 * part:.1f}%)" if units else "-")
        table.append(cells)
    return lines + _columns(table) + _more(len(rows), top)


def _columns(table: list[list[str]]) -> list[str]:
    """Rows as aligned columns: the first (the site) left, the figures right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    ]


def _more(rows: int, top: int) -> list[str]:
    return [f"  ... and {rows - top} more site(s) (--sites 0 lists all)"] if top and rows > top else []


def cmd_health(args: argparse.Namespace) -> int:
    """Prints what the seed's health-check script printed, then a per-site table."""
    import httpx

    async def run(db) -> int:
        figures = await db.health()
        print("=== Blog Generation System Health ===")
        print(f"Queue Size: {figures.queue_size}")
        for label, path in (("OpenAI Rate Limiter", "/api/rate-limiter/stats"), ("Replicate Rate Limiter", "/api/replicate-rate-limiter/stats")):
            try:
                stats = httpx.get(f"{args.worker}{path}", timeout=8).json()
            except Exception as exc:
                stats = {"error": f"no worker answered at {args.worker} ({type(exc).__name__}); start one: faust -A streams worker"}
            print(f"{label}: {json.dumps(stats)}")
        print(f"Errors (last hour): {figures.errors_last_hour}")
        print(f"Completed (last hour): {figures.completed_last_hour}")
        print(f"Rate: {figures.blogs_per_minute:.1f} blogs/min")
        by_site = await db.pending_by_site()
        if by_site:
            top = sorted(by_site.items(), key=lambda kv: -kv[1])[:10]
            print("Pending by site: " + ", ".join(f"{s}={n}" for s, n in top))
        limiter, why_not = limiter_stats(args.worker)
        for line in site_table(by_site, limiter, why_not=why_not, top=args.sites):
            print(line)
        return 0

    return asyncio.run(_with_db(run))


# --------------------------------------------------------------------------- retry


def cmd_retry(args: argparse.Namespace) -> int:
    """Run FAILED requests again through a worker (POST /api/blogs/{id}/retry)."""
    import httpx

    headers = _intake_headers()
    failures = 0
    with httpx.Client(base_url=args.worker.rstrip("/"), headers=headers, timeout=30.0) as client:
        for request_id in args.request_ids:
            try:
                response = client.post(f"/api/blogs/{request_id}/retry")
            except httpx.TransportError as exc:
                print(f"{request_id}: no answer from {args.worker} ({type(exc).__name__}); is a worker running?",
                      file=sys.stderr)
                failures += 1
                continue
            body = _json_or_empty(response)
            if response.status_code == 202:
                print(f"{request_id}: sent again (it had failed with: {body.get('previous_error') or 'no error text'})")
            else:
                print(f"{request_id}: not retried: {body.get('error') or response.text}", file=sys.stderr)
                failures += 1
    return 1 if failures else 0


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blogstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="send blog requests through a worker's HTTP intake (waits while the queue is full)")
    s.add_argument("--file", help="JSONL or CSV file of requests")
    s.add_argument("--site")
    s.add_argument("--topic")
    s.add_argument("--keywords", help="comma-separated")
    s.add_argument("--language", default="en")
    s.add_argument("--tone", default="informative")
    s.add_argument("--target-words", type=int, default=800)
    s.add_argument("--request-id", help="idempotency key (default: a new uuid)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--worker", default=f"http://127.0.0.1:{settings.web_port}", help="any worker's web address")
    s.add_argument("--batch-size", type=int, default=500, help="requests per POST (at most the intake's max batch)")
    s.set_defaults(fn=cmd_submit)

    st = sub.add_parser("sites", help="the sites registry")
    st.add_argument("action", choices=["add", "list", "pause", "resume", "set", "cancel"])
    st.add_argument("site", nargs="?")
    st.add_argument("--name")
    st.add_argument("--wix-api-key")
    st.add_argument("--member-id")
    st.add_argument("--weight", type=float)
    st.add_argument("--max-in-flight", type=int)
    st.add_argument("--max-queued", type=int)
    st.set_defaults(fn=cmd_sites)

    r = sub.add_parser("retry", help="run FAILED requests again (after fixing what their error says)")
    r.add_argument("request_ids", nargs="+", metavar="REQUEST_ID")
    r.add_argument("--worker", default=f"http://127.0.0.1:{settings.web_port}", help="any worker's web address")
    r.set_defaults(fn=cmd_retry)

    h = sub.add_parser("health", help="queue size, limiter usage, errors and completions in the last hour")
    h.add_argument("--worker", default=f"http://127.0.0.1:{settings.web_port}", help="any worker's web address")
    h.add_argument("--sites", type=int, default=20, help="rows of the per-site table, busiest first (0: all)")
    h.set_defaults(fn=cmd_health)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "action", None) not in (None, "list") and not getattr(args, "site", None):
        print(f"sites {args.action} needs a SITE", file=sys.stderr)
        return 2
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
