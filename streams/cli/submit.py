"""`blogstream submit`: blog requests from flags or a JSONL/CSV file, through a worker's HTTP intake.

    blogstream submit --site shop-1 --topic "Summer sandals" [--keywords a,b]
    blogstream submit --file requests.jsonl        (or .csv; a progress bar shows on stderr)
"""
from __future__ import annotations

import asyncio
import csv
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click

from streams.cli import connect
from streams.cli.output import CliError, emit_json, json_option, listed, say, worker_option


def request_from_options(
    *, site: str, topic: str, keywords: str | None = None, language: str = "en", tone: str = "informative",
    target_words: int = 800, request_id: str | None = None, priority: str = "interactive",
) -> dict[str, Any]:
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "site_id": site,
        "topic": topic,
        "keywords": [k.strip() for k in (keywords or "").split(",") if k.strip()],
        "language": language,
        "tone": tone,
        "target_words": target_words,
        "requested_at": int(time.time() * 1000),
        "audience": None,
        "priority": priority,
    }


# Bytes of the file that are not UTF-8, as `errors="surrogateescape"` reads them: only such bytes give these.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def read_requests(path: Path) -> Iterator[tuple[Any, dict[str, Any] | None, str]]:
    """(line number, request or None, problem) for each line of a JSONL or CSV file (a CSV row's first line,
    "3 (to line 5)" for a row whose quoted cells span lines).

    A line nothing can read (not UTF-8, nested too deeply, a number of thousands of digits,
    a CSV field past csv's size limit) is a problem of that line, like any other. A JSONL line is
    read as the HTTP doors read a body (streams/contract/json_text.py), so a line is refused here
    exactly when the intake would refuse it as a body, for the same reason.
    """
    if path.suffix.lower() == ".csv":
        yield from _csv_requests(path)
        return
    from streams.contract.json_text import NotJson, read_json

    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                item = read_json(raw.removesuffix(b"\n"))  # the line's end is not in the request
            except NotJson as exc:
                if exc.reason != "empty":  # a blank line (a BOM at most) is skipped
                    yield n, None, exc.reason
                continue
            if not isinstance(item, dict):
                yield n, None, "not a JSON object"
                continue
            yield n, item, ""


def _csv_rows(path: Path) -> tuple[list[tuple[int, int, list[str] | str]], int]:
    """([(first line, last line, cells or why the row cannot be read)], the file's last line), the header first.

    Lines are the file's: a quoted cell may hold line breaks, so a row may span several.
    """
    rows: list[tuple[int, int, list[str] | str]] = []
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:  # Excel writes a BOM
        reader = csv.reader(fh)
        start = 1
        while True:
            try:
                cells: list[str] | str = next(reader)
            except StopIteration:
                return rows, reader.line_num
            except csv.Error as exc:
                cells = f"not valid CSV ({exc})"
            if cells != []:  # a blank line
                rows.append((start, reader.line_num, cells))
            start = reader.line_num + 1


def _csv_requests(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    rows, last = _csv_rows(path)
    if not rows:
        return
    _, _, header = rows[0]
    if isinstance(header, str) or any(_NOT_UTF8.search(name) for name in header):
        yield 1, None, f"the header is {header if isinstance(header, str) else 'not UTF-8 text'}; nothing of this file was read"
        return
    if repeated := next((name for n, name in enumerate(header) if name in header[:n]), None):
        # As JSON refuses a key twice: which of the two cells counts is a guess (it was the last one, so a
        # row meant for one site_id went to another).
        yield 1, None, (f"the header has {repeated} twice; every column needs a name of its own, nothing of this "
                        "file was read")
        return
    for first, end, cells in rows[1:]:
        n: Any = first if end == first else (
            f"{first} (to line {end}{', the end of the file: a quote not closed?' if end == last else ''})")
        if isinstance(cells, str):
            yield n, None, cells
            continue
        if len(cells) > len(header):
            yield n, None, f"has {len(cells)} cells, the header {len(header)} columns"
            continue
        if any(_NOT_UTF8.search(v) for v in cells):
            yield n, None, "not UTF-8 text"
            continue
        item: dict[str, Any] = {k: v for k, v in zip(header, cells) if v != ""}
        if "keywords" in item:
            item["keywords"] = [k.strip() for k in item["keywords"].split(",") if k.strip()]
        if "target_words" in item:
            try:
                item["target_words"] = int(item["target_words"])
            except ValueError:
                yield n, None, "target_words: not a whole number"
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
    """The submit stopped; `report` says what was accepted before, `unsent` what was not sent (in order)."""

    report: SubmitReport | None = None
    unsent: list[dict[str, Any]] = []


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
    idempotency keys; but a connection refused before the worker ever answered stops at
    once (none runs there, or --worker is wrong: nothing was sent). Items the worker rejects (422, e.g. an unregistered site;
    409, an id another site uses) are reported and the rest of their batch is sent again. Gives up when no
    batch got through for `give_up_after` seconds of errors (not of 429 waits).
    """
    import httpx
    from tqdm import tqdm

    headers = connect.intake_headers()
    report = SubmitReport()
    todo = list(requests)
    size = max(1, min(batch_size, connect.settings().intake_max_batch))
    bar = tqdm(total=len(requests), unit="req", desc="submitting", disable=not progress)
    failing_since: float | None = None
    delay = 0.5
    answered = False  # the worker answered once: a refused connection after that is a restart, waited for
    try:
        async with httpx.AsyncClient(base_url=worker.rstrip("/"), headers=headers, timeout=60.0) as client:
            while todo:
                chunk = todo[:size]
                try:
                    response = await client.post("/api/blogs", json={"requests": chunk})
                except httpx.TransportError as exc:
                    if not answered and isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                        raise SubmitAborted(f"{connect.no_worker(worker, exc).message}") from None
                    response, problem = None, f"no answer from {worker} ({type(exc).__name__})"
                else:
                    answered = True
                    problem = connect.error_text(response)
                if response is not None and response.status_code == 202:
                    del todo[: len(chunk)]
                    report.accepted += len(chunk)
                    bar.update(len(chunk))
                    bar.set_postfix_str("")
                    size = max(1, min(batch_size, connect.settings().intake_max_batch))
                    failing_since, delay = None, 0.5
                    continue
                status = response.status_code if response is not None else None
                if status == 429:
                    body = connect.json_or_empty(response)
                    room = body.get("room") if isinstance(body.get("room"), int) else 0
                    if 0 < room < len(chunk):
                        size = room  # what fits now goes now; the rest waits its turn
                        continue
                    wait = _retry_after(response)
                    bar.set_postfix_str(f"waiting {wait:g}s: {body.get('reason', 'queue full')}")
                    report.throttled_seconds += wait
                    await asyncio.sleep(wait)
                    continue
                if status in (409, 422):  # 409: ids another site uses, item by item like a 422
                    errors = [e for e in connect.json_or_empty(response).get("errors", []) if isinstance(e, dict)]
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
    except SubmitAborted as exc:  # what was accepted before, and what was not sent: the caller says where to go on
        exc.report, exc.unsent = report, list(todo)
        raise
    finally:
        bar.close()
    return report


def _retry_after(response: Any) -> float:
    try:
        return min(60.0, max(0.5, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def read_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(complete requests, "line N: problem" for each invalid line) of a JSONL or CSV file."""
    from streams.contract import RecordError

    requests: list[dict[str, Any]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}  # request id -> the line that has it
    for n, item, problem in read_requests(path):
        if item is None:
            problems.append(f"line {n}: {problem}")
            continue
        try:
            request = complete_request(item)
        except RecordError as exc:
            problems.append(f"line {n}: {exc.reason}")
            continue
        # As the intake refuses an id repeated in one batch, whatever batches the file is cut into: the
        # pipeline takes a repeat for a copy of the first, so a repeat with other fields would never run.
        if (first := first_line.setdefault(request["request_id"], n)) != n:
            problems.append(f"line {n}: request_id {request['request_id']} repeats line {first}'s; every "
                            "request needs its own id")
            continue
        requests.append(request)
    return requests, problems


def stopped(exc: SubmitAborted, requests: list[dict[str, Any]], path: Path | None) -> CliError:
    """The error of a submit that stopped, and how to go on without sending anything twice.

    The requests got their ids here: the same input sent again gives those without one new ids, so
    whatever was accepted (and a batch that met 503s or no answer, which Kafka may have taken) would
    be written, paid for and posted twice. The requests not accepted go to a file, with their ids,
    to submit instead; a single request is told its id.
    """
    unsent, accepted = exc.unsent, exc.report.accepted if exc.report is not None else 0
    if not unsent:
        return CliError(f"submit stopped: {exc}", "fix that and submit again")
    if path is None:
        return CliError(f"submit stopped: {exc}",
                        f"fix that and submit it again with --request-id {unsent[0]['request_id']} (the same id: it "
                        "never runs twice, should Kafka have taken it)")
    rest = path.with_name(path.name + ".unsent.jsonl")
    try:
        rest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unsent), encoding="utf-8",
                        errors="surrogateescape")
    except OSError as err:  # a folder we may not write: say so, and which request was the first not accepted
        return CliError(
            f"submit stopped: {exc}; {accepted} of {len(requests)} request(s) were accepted, and the other "
            f"{len(unsent)} could not be kept in {rest} ({err.strerror or type(err).__name__})",
            f"fix that, then submit only the requests from the one with topic {unsent[0].get('topic')!r} on, "
            "each with the request_id it was sent with where you can: what was accepted must not be sent again")
    return CliError(
        f"submit stopped: {exc}; {accepted} of {len(requests)} request(s) were accepted, the other {len(unsent)} "
        f"are in {rest} with their request ids",
        f"fix that, then submit {rest}, not {path.name} again (its lines without a request_id would get new ids: "
        "what was accepted would run twice)")


@click.command()
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL or CSV file of requests (invalid lines are reported and skipped).")
@click.option("--site", help="The site of a single request (with --topic).")
@click.option("--topic", help="The article's topic.")
@click.option("--keywords", help="Comma-separated keywords.")
@click.option("--language", default="en", show_default=True)
@click.option("--tone", default="informative", show_default=True)
@click.option("--target-words", type=int, default=800, show_default=True)
@click.option("--request-id", help="Idempotency key [default: a new uuid].")
@click.option("--priority", type=click.Choice(["interactive", "bulk"]),
              help="bulk: served with what interactive requests leave (a backfill); given with --file, every "
                   "line gets it [default: interactive, or a line's own].")
@click.option("--quiet", is_flag=True, help="No progress bar (a --file shows one on stderr).")
@worker_option
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Requests per POST (at most the intake's max batch).")
@json_option
def submit_command(
    path: Path | None, site: str | None, topic: str | None, keywords: str | None, language: str, tone: str,
    target_words: int, request_id: str | None, priority: str | None, quiet: bool, worker: str | None,
    batch_size: int, as_json: bool,
) -> None:
    """Send blog requests through a worker's HTTP intake (waits while the queue is full)."""
    from streams.contract import RecordError

    worker = connect.worker_url(worker)
    if path is not None:
        requests, problems = read_file(path)
        if priority:
            requests = [request | {"priority": priority} for request in requests]
    elif site and topic:
        try:
            requests = [complete_request(request_from_options(
                site=site, topic=topic, keywords=keywords, language=language, tone=tone,
                target_words=target_words, request_id=request_id, priority=priority or "interactive"))]
        except RecordError as exc:
            raise CliError(f"invalid request: {exc.reason}", "fix that option", exit_code=2) from None
        problems = []
    else:
        raise CliError("submit needs --file, or --site and --topic", "see blogstream submit --help", exit_code=2)
    if not as_json:
        listed([f"skipped {p}" for p in problems], more="more invalid lines")
    report = SubmitReport()
    if requests:
        try:
            report = asyncio.run(submit(requests, worker=worker, batch_size=batch_size,
                                         progress=path is not None and not quiet))
        except SubmitAborted as exc:
            raise stopped(exc, requests, path) from None
    if as_json:
        answer: dict[str, Any] = {
            "worker": worker, "accepted": report.accepted, "invalid": problems, "rejected": report.rejected,
            "throttled_seconds": round(report.throttled_seconds, 1),
        }
        if len(requests) == 1 and report.accepted == 1:
            answer["request_id"] = requests[0]["request_id"]
        emit_json(answer)
    else:
        listed([f"rejected {r}" for r in report.rejected], more="more rejected by the worker")
        waited = f"; waited {report.throttled_seconds:.0f}s for queue room" if report.throttled_seconds else ""
        say(f"submitted {report.accepted} request(s) via {worker}; {len(problems)} invalid line(s) skipped; "
            f"{len(report.rejected)} rejected by the worker{waited}", as_json=False)
        if len(requests) == 1 and report.accepted == 1:
            say(f"request id: {requests[0]['request_id']}", as_json=False)
    if (problems or report.rejected) and not report.accepted:
        raise click.exceptions.Exit(1)
