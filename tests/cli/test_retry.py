"""`blogstream retry`: by id, and `--failed` (the seed's "retry failed blogs of the last hour") over the
real test database, each through the worker's POST /api/blogs/{id}/retry (answered from memory)."""
from __future__ import annotations

import json
from datetime import timedelta

import click
import pytest

from streams.cli import output
from streams.cli.retry import Duration

from .conftest import failed_rows, on_db, uid


@pytest.fixture
def retries(worker, monkeypatch):
    refused: dict[str, str] = {}

    def retry(request, body):
        request_id = request.url.path.split("/")[3]
        if request_id in refused:
            return 409, {"error": refused[request_id]}
        return 202, {"request_id": request_id, "status": "PENDING", "previous_error": "boom"}

    class Routes(dict):
        def get(self, key, default=None):
            method, path = key
            return retry if method == "POST" and path.endswith("/retry") else super().get(key, default)

    worker.routes = Routes(worker.routes)
    return refused


def posted(worker) -> list[str]:
    return [path.split("/")[3] for method, path, _ in worker.calls if method == "POST"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800),
                                                ("1h30m", 5400), ("1.5h", 5400), ("1W", 604800)])
def test_durations(text, seconds):
    assert Duration().convert(text, None, None) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "1h 2", "-1h", "yesterday"])
def test_not_durations(text):
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)


def test_retry_by_id_prints_a_line_each_and_fails_if_one_was_refused(run, worker, retries):
    retries["r2"] = "request r2 is DONE, only FAILED requests can be retried"
    result = run("retry", "r1", "r2")
    assert result.exit_code == 1
    assert result.stdout == "r1: sent again (it had failed with: boom)\nretried 1 of 2 request(s); 1 refused\n"
    assert result.stderr == "r2: not retried: request r2 is DONE, only FAILED requests can be retried\n"
    assert run("retry", "r1").exit_code == 0


def test_retry_json(run, worker, retries):
    retries["r2"] = "no request r2 is known"
    result = run("retry", "r1", "r2", "--json")
    assert json.loads(result.stdout) == {"retried": [{"request_id": "r1", "previous_error": "boom"}],
                                         "refused": [{"request_id": "r2", "reason": "no request r2 is known"}]}


def test_an_unreachable_worker_stops_with_one_line(run, worker):
    worker.down = True
    result = run("retry", "r1", "r2", "--worker", "http://w:1")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("blogstream: error: no worker answered at http://w:1 (ConnectError), start one "
                             "(faust -A streams worker -l info) or pass --worker URL\n")


def test_a_refused_token_stops_with_one_line_naming_the_admin_token(run, worker, use_settings):
    # Retries are a control-plane route: a worker with an admin token refuses the intake token for them.
    # Told to set BLOGSTREAM_INTAKE_TOKEN (set already), the operator could not get the retry through.
    use_settings(intake_token="intake-secret")
    refused = (401, {"error": "missing or wrong admin token: send the header Authorization: Bearer <token>"})
    worker.routes = type("R", (dict,), {"get": lambda self, key, d=None: refused})()
    result = run("retry", "r1")
    assert result.exit_code == 1 and "BLOGSTREAM_ADMIN_TOKEN" in result.stderr, result.stderr
    assert "set BLOGSTREAM_INTAKE_TOKEN" not in result.stderr and "admin token" in result.stderr
    assert "intake-secret" not in result.stderr


def test_failed_ids_by_site_and_age_oldest_first():
    site, other = uid("site"), uid("site")
    old, recent, newest = failed_rows(site, ages_minutes=[120, 30, 1])
    failed_rows(other, ages_minutes=[1])
    assert on_db(lambda db: db.failed_request_ids(site)) == [old, recent, newest]
    assert on_db(lambda db: db.failed_request_ids(site, timedelta(hours=1))) == [recent, newest]
    everyone = on_db(lambda db: db.failed_request_ids(None, timedelta(hours=1)))
    assert {recent, newest} <= set(everyone) and old not in everyone


def test_retry_failed_of_the_last_hour_with_yes(run, worker, retries):
    site = uid("site")
    old, recent, newest = failed_rows(site, ages_minutes=[90, 20, 2])
    retries[newest] = f"request {newest} is PENDING, only FAILED requests can be retried"
    result = run("retry", "--failed", "--site", site, "--since", "1h", "--yes", "--quiet")
    assert result.exit_code == 1  # one was refused
    assert posted(worker) == [recent, newest]
    lines = result.stdout.splitlines()
    assert lines[0] == f"2 FAILED request(s) of site {site} created in the last 1h: {recent}, {newest}"
    assert lines[-1] == "retried 1 of 2 request(s); 1 refused"
    assert f"{newest}: not retried: request {newest} is PENDING" in result.stderr


def test_retry_failed_asks_first_on_a_terminal(run, worker, retries, monkeypatch):
    monkeypatch.setattr(output, "interactive", lambda: True)
    site = uid("site")
    ids = failed_rows(site, ages_minutes=[5, 4, 3, 2, 1, 0.5, 0.2])
    result = run("retry", "--failed", "--site", site, input="n\n")
    assert result.exit_code == 1 and posted(worker) == []  # said no: Aborted
    assert "Retry these 7 request(s)? [y/N]" in result.stderr
    assert "... (and 2 more)" in result.stdout
    result = run("retry", "--failed", "--site", site, "--quiet", input="y\n")
    assert result.exit_code == 0 and posted(worker) == ids
    assert result.stdout.splitlines()[-1] == "retried 7 of 7 request(s); 0 refused"


def test_retry_failed_without_a_terminal_needs_yes(run, worker, retries):
    site = uid("site")
    failed_rows(site, ages_minutes=[1])
    result = run("retry", "--failed", "--site", site)
    assert result.exit_code == 1 and posted(worker) == []
    assert result.stderr == ("blogstream: error: not confirmed: 1 request(s) would be retried, run it on a terminal "
                             "to be asked, or pass --yes\n")


def test_retry_failed_json_keeps_stdout_for_the_answer(run, worker, retries):
    site = uid("site")
    (one,) = failed_rows(site, ages_minutes=[1])
    result = run("retry", "--failed", "--site", site, "--yes", "--json")
    assert json.loads(result.stdout) == {"retried": [{"request_id": one, "previous_error": "boom"}], "refused": []}
    assert "1 FAILED request(s)" in result.stderr


def test_nothing_to_retry(run, worker):
    result = run("retry", "--failed", "--site", uid("empty"), "--since", "30m")
    assert result.exit_code == 0 and "no FAILED requests of site" in result.stdout and worker.calls == []


@pytest.mark.parametrize(("args", "message"), [
    (["r1", "--failed"], "retry needs REQUEST_IDs or --failed (not both)"),
    (["r1", "--site", "s"], "--site and --since go with --failed"),
])
def test_ids_and_failed_do_not_mix(run, args, message):
    result = run("retry", *args)
    assert result.exit_code == 2 and result.stderr.startswith(f"blogstream: error: {message}")
