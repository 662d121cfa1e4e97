"""`blogstream` command line: submit requests, register sites, check health.

    blogstream submit --site shop-1 --topic "Summer sandals" [--keywords a,b]
    blogstream submit --file requests.jsonl        (or .csv; a progress bar shows)
    blogstream sites add shop-1 --wix-api-key KEY [--member-id M] [--weight 2]
    blogstream sites list | pause SITE | resume SITE | cancel SITE | set SITE --weight 2 --max-in-flight 10
    blogstream health                               (the seed's health check)

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
from pathlib import Path
from typing import Any, Iterator

from streams.app import topic_name as _topic
from streams.settings import settings

def _bootstrap() -> str:
    return settings.kafka_broker.replace("kafka://", "").split(";")[0]


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
    from streams.records import RecordError, encode, validate_request

    item = dict(item)
    item.setdefault("request_id", uuid.uuid4().hex)
    item.setdefault("requested_at", int(time.time() * 1000))
    encode("BlogRequest", item)  # the shape; raises RecordError naming the field
    errors = validate_request(item)  # the limits (lengths, ranges, ids)
    if errors:
        raise RecordError("; ".join(str(e) for e in errors), errors=errors)
    return item


async def submit(requests: list[dict[str, Any]], *, progress: bool = True) -> int:
    """Produce requests keyed by site id; waits for every broker ack."""
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    from streams.records import encode

    from streams.app import ensure_topics

    await ensure_topics()
    producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(), acks="all", linger_ms=5)
    await producer.start()
    bar = tqdm(total=len(requests), unit="req", desc="submitting", disable=not progress)
    try:
        pending = []
        for item in requests:
            fut = await producer.send(_topic("blog.requests"), key=item["site_id"].encode(), value=encode("BlogRequest", item))
            pending.append(fut)
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
            bar.update(len(pending))
    finally:
        bar.close()
        await producer.stop()
    return len(requests)


def cmd_submit(args: argparse.Namespace) -> int:
    from streams.records import RecordError

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
    sent = asyncio.run(submit(requests, progress=not args.quiet)) if requests else 0
    print(f"submitted {sent} request(s) to {_topic('blog.requests')}; {len(problems)} invalid line(s) skipped")
    if len(requests) == 1:
        print(f"request id: {requests[0]['request_id']}")
    return 1 if problems and not sent else 0


# --------------------------------------------------------------------------- sites


async def _with_db(fn):
    from connectors.postgres import Database

    db = Database(settings.database_url, min_size=1, max_size=2)
    await db.start()
    try:
        return await fn(db)
    finally:
        await db.close()


def cmd_sites(args: argparse.Namespace) -> int:
    from connectors.postgres import Site

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


def cmd_health(args: argparse.Namespace) -> int:
    """Prints what the seed's health-check script printed."""
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
        return 0

    return asyncio.run(_with_db(run))


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blogstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="produce blog requests to blog.requests")
    s.add_argument("--file", help="JSONL or CSV file of requests")
    s.add_argument("--site")
    s.add_argument("--topic")
    s.add_argument("--keywords", help="comma-separated")
    s.add_argument("--language", default="en")
    s.add_argument("--tone", default="informative")
    s.add_argument("--target-words", type=int, default=800)
    s.add_argument("--request-id", help="idempotency key (default: a new uuid)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
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

    h = sub.add_parser("health", help="queue size, limiter usage, errors and completions in the last hour")
    h.add_argument("--worker", default=f"http://127.0.0.1:{settings.web_port}", help="any worker's web address")
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
