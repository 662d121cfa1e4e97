"""`blogstream retry`: run FAILED requests again through a worker (POST /api/blogs/{id}/retry).

    blogstream retry REQUEST_ID ...                     (after fixing what their error says)
    blogstream retry --failed [--site S] [--since 1h]   (every FAILED one that matches; asks first)

What was already paid for (the article, the image) is reused from the effect ledger.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import click

from streams.cli import connect, output
from streams.cli.output import CliError, emit_json, json_option, listed, say, worker_option

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class Duration(click.ParamType):
    """`90s`, `30m`, `1h`, `2d`, `1h30m` -> timedelta."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower().replace(" ", "")
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration: give e.g. 30m, 1h, 2d or 1h30m", param, ctx)
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


@dataclass
class RetryReport:
    retried: list[dict[str, Any]] = field(default_factory=list)  # {"request_id", "previous_error"}
    refused: list[dict[str, Any]] = field(default_factory=list)  # {"request_id", "reason"}

    def as_json(self) -> dict[str, Any]:
        return {"retried": self.retried, "refused": self.refused}


def retry_each(request_ids: list[str], worker: str, *, progress: bool, on_each: Any = None) -> RetryReport:
    """POST each id's retry to the worker; refusals (404, 409 ...) are collected, an unreachable
    worker or a missing intake token stops it all (the rest would fail the same way)."""
    import httpx
    from tqdm import tqdm

    from streams.contract.errors import path_segment

    report = RetryReport()
    with httpx.Client(base_url=worker, headers=connect.admin_headers(), timeout=30.0) as client, \
            tqdm(total=len(request_ids), unit="req", desc="retrying", disable=not progress) as bar:
        for request_id in request_ids:
            try:
                response = client.post(f"/api/blogs/{path_segment(request_id)}/retry")
            except httpx.TransportError as exc:
                raise _stopped(connect.no_worker(worker, exc), report, len(request_ids)) from None
            body = connect.json_or_empty(response)
            if response.status_code in (401, 403):  # retries are a control-plane route: the admin token's
                raise _stopped(CliError(f"the worker at {worker} refused the retry: {connect.error_text(response)}",
                                        "set BLOGSTREAM_ADMIN_TOKEN to the worker's admin token (the intake token "
                                        "opens retries only on a worker without one)"), report, len(request_ids))
            if response.status_code == 202:
                outcome = {"request_id": request_id, "previous_error": body.get("previous_error")}
                report.retried.append(outcome)
            else:
                outcome = {"request_id": request_id, "reason": body.get("error") or f"HTTP {response.status_code}"}
                report.refused.append(outcome)
            if on_each is not None:
                on_each(outcome)
            bar.update(1)
    return report


def _stopped(error: CliError, report: RetryReport, total: int) -> CliError:
    done = len(report.retried) + len(report.refused)
    if done:
        error.message += f" (stopped after {done} of {total}: {len(report.retried)} retried)"
    return error


def failed_ids(site: str | None, since: timedelta | None) -> list[str]:
    return connect.run_db(lambda db: db.failed_request_ids(site, since))


@click.command()
@click.argument("request_ids", nargs=-1, metavar="[REQUEST_ID]...")
@click.option("--failed", is_flag=True, help="Retry every FAILED request (narrow with --site, --since).")
@click.option("--site", help="With --failed: only this site's requests.")
@click.option("--since", type=Duration(), metavar="DURATION",
              help="With --failed: only requests created within this long (30m, 1h, 2d); the seed's retry takes 1h.")
@click.option("--yes", "-y", is_flag=True, help="With --failed: do not ask before retrying.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@worker_option
@json_option
def retry(request_ids: tuple[str, ...], failed: bool, site: str | None, since: timedelta | None, yes: bool,
          quiet: bool, worker: str | None, as_json: bool) -> None:
    """Run FAILED requests again, after fixing what their error says (by id, or every FAILED one)."""
    if failed == bool(request_ids):
        raise CliError("retry needs REQUEST_IDs or --failed (not both)",
                       "see blogstream retry --help", exit_code=2)
    if (site or since) and not failed:
        raise CliError("--site and --since go with --failed", "add --failed, or give only ids", exit_code=2)
    worker = connect.worker_url(worker)
    ids = list(request_ids)
    if failed:
        ids = failed_ids(site, since)
        scope = (f" of site {site}" if site else "") + (f" created in the last {_words(since)}" if since else "")
        if not ids:
            if as_json:
                emit_json(RetryReport().as_json())
            else:
                say(f"no FAILED requests{scope}: nothing to retry", as_json=False)
            return
        preview = ", ".join(ids[:5]) + (f" ... (and {len(ids) - 5} more)" if len(ids) > 5 else "")
        say(f"{len(ids)} FAILED request(s){scope}: {preview}", as_json=as_json)
        if not yes:
            if not output.interactive():
                raise CliError(f"not confirmed: {len(ids)} request(s) would be retried",
                               "run it on a terminal to be asked, or pass --yes", exit_code=1)
            click.confirm(f"Retry these {len(ids)} request(s)?", abort=True, err=True)

    def each(outcome: dict[str, Any]) -> None:  # by id: a line per request, as it goes
        if "reason" in outcome:
            click.echo(f"{outcome['request_id']}: not retried: {outcome['reason']}", err=True)
        else:
            click.echo(f"{outcome['request_id']}: sent again (it had failed with: "
                       f"{outcome['previous_error'] or 'no error text'})")

    by_id = not failed and not as_json
    report = retry_each(ids, worker, progress=failed and not quiet, on_each=each if by_id else None)
    if as_json:
        emit_json(report.as_json())
    else:
        if failed:
            listed([f"{r['request_id']}: not retried: {r['reason']}" for r in report.refused], more="more refused")
        say(f"retried {len(report.retried)} of {len(ids)} request(s); {len(report.refused)} refused", as_json=False)
    if report.refused:
        raise click.exceptions.Exit(1)


def _words(since: timedelta) -> str:
    seconds = since.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
