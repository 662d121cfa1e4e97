"""`blogstream submit`: one request from flags or a JSONL/CSV file, through a worker's intake (answered
from memory), with --json for the report."""
from __future__ import annotations

import json

import pytest

from .conftest import uid


@pytest.fixture
def intake(worker):
    accepted: list[dict] = []

    def post(request, body):
        items = body["requests"]
        bad = [i for i, r in enumerate(items) if r["site_id"] == "ghost"]
        if bad:
            return 422, {"error": "site ghost", "errors": [
                {"item": i, "field": f"requests[{i}].site_id", "message": "site ghost is not registered"} for i in bad]}
        accepted.extend(items)
        return 202, {"accepted": len(items)}

    worker.routes[("POST", "/api/blogs")] = post
    return accepted


def test_one_request_from_flags(run, intake):
    result = run("submit", "--site", "shop-1", "--topic", "Summer sandals", "--keywords", "sandals, summer",
                 "--request-id", "req-1", "--worker", "http://w")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "submitted 1 request(s) via http://w; 0 invalid line(s) skipped; 0 rejected by the worker", "request id: req-1"]
    (sent,) = intake
    assert (sent["site_id"], sent["topic"], sent["keywords"], sent["target_words"]) == (
        "shop-1", "Summer sandals", ["sandals", "summer"], 800)


def test_priority_from_flags_and_for_every_line_of_a_file(run, intake, tmp_path):
    assert run("submit", "--site", "shop-1", "--topic", "Boots", "--priority", "bulk", "--quiet").exit_code == 0
    path = tmp_path / "backfill.jsonl"
    path.write_text("\n".join(json.dumps({"site_id": "shop-1", "topic": f"Guide {n}"}) for n in range(2)))
    assert run("submit", "--file", str(path), "--priority", "bulk", "--quiet").exit_code == 0
    assert run("submit", "--file", str(path), "--quiet").exit_code == 0
    assert [r.get("priority", "interactive") for r in intake] == ["bulk", "bulk", "bulk", "interactive", "interactive"]
    assert run("submit", "--site", "shop-1", "--topic", "Boots", "--priority", "urgent").exit_code == 2


def test_json_report(run, intake):
    result = run("submit", "--site", "shop-1", "--topic", "Boots", "--request-id", "req-2", "--json", "--quiet")
    assert json.loads(result.stdout) == {"worker": "http://127.0.0.1:6066", "accepted": 1, "invalid": [],
                                         "rejected": [], "throttled_seconds": 0.0, "request_id": "req-2"}


def test_a_file_with_invalid_lines_and_a_rejected_request(run, intake, tmp_path):
    path = tmp_path / "requests.jsonl"
    good = {"site_id": "shop-1", "topic": "Care guide", "request_id": uid()}
    ghost = {"site_id": "ghost", "topic": "Boo", "request_id": uid()}
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({"site_id": "shop-1"}), json.dumps(ghost)]))
    result = run("submit", "--file", str(path), "--quiet", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["accepted"] == 1
    assert [p.split(":")[0] for p in report["invalid"]] == ["line 2", "line 3"]
    assert report["rejected"] == [f"request {ghost['request_id']}: requests[1].site_id: site ghost is not registered"]
    text = run("submit", "--file", str(path), "--quiet")
    assert "skipped line 2: not valid JSON" in text.stderr and f"rejected request {ghost['request_id']}" in text.stderr


def test_a_csv_file(run, intake, tmp_path):
    path = tmp_path / "requests.csv"
    path.write_text("site_id,topic,keywords,target_words\nshop-1,Sandals,\"a,b\",500\nshop-1,Bad,,many\n")
    result = run("submit", "--file", str(path), "--quiet")
    assert result.exit_code == 0 and [r["keywords"] for r in intake] == [["a", "b"]]
    assert "skipped line 3: target_words: not a whole number" in result.stderr


def test_nothing_valid_is_exit_code_1(run, intake, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("[1, 2]\n")
    result = run("submit", "--file", str(path))
    assert result.exit_code == 1 and "submitted 0 request(s)" in result.stdout


def test_an_invalid_request_from_flags_is_one_line(run, intake):
    result = run("submit", "--site", "shop-1", "--topic", "x" * 400)
    assert result.exit_code == 2 and result.stderr.startswith("blogstream: error: invalid request: topic: ")
    assert intake == []


def test_a_worker_that_wants_a_token_stops_the_submit(run, worker):
    worker.routes[("POST", "/api/blogs")] = (401, {"error": "an intake token is required"})
    result = run("submit", "--site", "shop-1", "--topic", "Sandals", "--worker", "http://w")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("blogstream: error: submit stopped: the worker at http://w wants the intake "
                                    "token: set BLOGSTREAM_INTAKE_TOKEN")


@pytest.mark.parametrize(("name", "bad_line", "problem"), [
    ("deep.jsonl", b"[" * 100_000, "not valid JSON"),  # nested past what the parser takes
    ("digits.jsonl", b'{"site_id": "shop-1", "topic": "T", "target_words": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ("latin1.jsonl", b'{"site_id": "shop-1", "topic": "Caf\xe9"}', "not UTF-8 text"),
    ("latin1.csv", b"shop-1,Caf\xe9", "not UTF-8 text"),
    ("long.csv", b"shop-1," + b"x" * 200_000, "not valid CSV"),  # past csv's field size limit
])
def test_a_line_nothing_can_read_is_skipped_and_named_and_the_others_are_sent(run, intake, tmp_path, name, bad_line,
                                                                               problem):
    # The intake answers these bodies 400; in a file they are one bad line, never a crash that sends nothing.
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_bytes(b"site_id,topic\nshop-1,Before\n" + bad_line + b"\nshop-1,After\n")
    else:
        path.write_bytes(b'{"site_id": "shop-1", "topic": "Before"}\n' + bad_line + b'\n{"site_id": "shop-1", "topic": "After"}\n')
    result = run("submit", "--file", str(path), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accepted"] == 2 and [r["topic"] for r in intake] == ["Before", "After"]
    assert len(report["invalid"]) == 1 and report["invalid"][0].startswith(f"line {3 if name.endswith('.csv') else 2}: {problem}")


@pytest.mark.parametrize("batch_size", ["1", "500"])
def test_a_request_id_another_site_uses_rejects_that_line_and_the_others_are_sent(run, worker, tmp_path, batch_size):
    # The intake answers 409 for an id another site owns, item by item like a 422. The submit stopped there
    # ("fix that and submit again"): the lines after it were never sent, and sending the file again gave
    # the lines already accepted, those without a request_id, new ids: their articles and posts twice.
    accepted: list[dict] = []

    def post(request, body):
        items = body["requests"]
        taken = [i for i, r in enumerate(items) if r["request_id"] == "taken"]
        if taken:
            return 409, {"error": "nothing was accepted: request id taken is already used by another site", "errors": [
                {"item": i, "field": f"requests[{i}].request_id",
                 "message": "request id taken is already used by another site; choose another id"} for i in taken]}
        accepted.extend(items)
        return 202, {"accepted": len(items)}

    worker.routes[("POST", "/api/blogs")] = post
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"site_id": "shop-1", "topic": "A"}, {"site_id": "shop-1", "topic": "B", "request_id": "taken"},
        {"site_id": "shop-1", "topic": "C"}]))
    result = run("submit", "--file", str(path), "--quiet", "--json", "--batch-size", batch_size)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accepted"] == 2 and [r["topic"] for r in accepted] == ["A", "C"]
    item = 0 if batch_size == "1" else 1  # its place in the batch it was sent in
    assert report["rejected"] == [f"request taken: requests[{item}].request_id: request id taken is already used by "
                                  "another site; choose another id"]


def test_a_submit_that_stops_midway_says_what_was_accepted_and_keeps_the_rest_with_their_ids(run, worker, tmp_path):
    # The first batch is accepted, then the worker refuses (here its token changed; a long outage ends the same
    # way: "gave up after 300s", its last batch perhaps taken by Kafka). The error said only "fix that and submit
    # again": the file again gives its lines without a request_id new ids, so the accepted ones are written, paid
    # for and posted twice.
    calls: list[list[dict]] = []

    def post(request, body):
        calls.append(body["requests"])
        if len(calls) > 1:
            return 401, {"error": "missing or wrong intake token"}
        return 202, {"accepted": len(body["requests"])}

    worker.routes[("POST", "/api/blogs")] = post
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join([json.dumps({"site_id": "shop-1", "topic": "A"}), "{not json",
                               json.dumps({"site_id": "shop-1", "topic": "B"}), json.dumps({"site_id": "shop-1", "topic": "C"}),
                               json.dumps({"site_id": "shop-1", "topic": "D"})]))
    result = run("submit", "--file", str(path), "--quiet", "--batch-size", "2")
    assert result.exit_code == 1 and [r["topic"] for r in calls[0]] == ["A", "B"]
    error = result.stderr.splitlines()[-1]
    rest = tmp_path / "requests.jsonl.unsent.jsonl"
    assert f"2 of 4 request(s) were accepted, the other 2 are in {rest}" in error, error
    assert f"then submit {rest}, not requests.jsonl again" in error, error
    kept = [json.loads(line) for line in rest.read_text().splitlines()]
    assert kept == calls[1]  # C and D with the ids they were sent with: submitting them again is idempotent

    calls.clear()
    worker.routes[("POST", "/api/blogs")] = lambda request, body: calls.append(body["requests"]) or (202, {})
    assert run("submit", "--file", str(rest), "--quiet").exit_code == 0
    assert [r["request_id"] for r in calls[0]] == [r["request_id"] for r in kept]


def test_a_single_request_that_stops_is_told_its_id(run, worker):
    worker.routes[("POST", "/api/blogs")] = (400, {"error": "the worker is odd"})
    result = run("submit", "--site", "shop-1", "--topic", "Sandals", "--worker", "http://w")
    (sent,) = [body["requests"][0] for _, _, body in worker.calls]
    assert result.exit_code == 1 and f"--request-id {sent['request_id']}" in result.stderr


@pytest.mark.parametrize("name, text", [
    ("excel.csv", "site_id,topic,keywords\r\nshop-1,Sandals,\"summer,beach\"\r\n"),  # Excel's "CSV UTF-8"
    ("notepad.jsonl", '{"site_id": "shop-1", "topic": "Sandals", "keywords": ["summer", "beach"]}\r\n'),
])
def test_a_file_saved_with_a_byte_order_mark_reads_like_one_without(tmp_path, name, text):
    from streams.cli.submit import read_file

    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    requests, problems = read_file(path)
    assert problems == []
    assert [(r["site_id"], r["topic"], r["keywords"]) for r in requests] == [("shop-1", "Sandals", ["summer", "beach"])]


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    """The waits of submit's retry loop, recorded instead of slept."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) > 50:
            raise AssertionError(f"submit kept retrying: {waited[:5]} ...")

    monkeypatch.setattr("streams.cli.submit.asyncio.sleep", sleep)
    return waited


def test_no_worker_at_the_address_stops_at_once_and_says_to_start_one(run, worker, pauses, tmp_path):
    # Nothing listens at the address (the worker is not started, or --worker names the wrong port): every POST is
    # refused before anything is sent. submit retried that for 5 minutes (give_up_after), silently for a request
    # from flags (no progress bar), where `retry` and `health` say at once that no worker answered.
    worker.down = True
    result = run("submit", "--site", "shop-1", "--topic", "Sandals", "--worker", "http://w")
    assert result.exit_code == 1 and pauses == []
    error = result.stderr.strip().splitlines()[-1]
    assert "no worker answered at http://w (ConnectError)" in error, error
    assert "start one (faust -A streams worker -l info) or pass --worker URL" in error, error
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"site_id": "shop-1", "topic": "A"}) + "\n")
    result = run("submit", "--file", str(path), "--quiet", "--worker", "http://w")
    assert result.exit_code == 1 and pauses == [] and "no worker answered at http://w" in result.stderr


def test_a_worker_that_answered_and_goes_away_is_waited_for(run, worker, pauses, tmp_path):
    """Once the worker has answered, a refused connection is a restart: the rest is sent when it is back."""
    sent: list[str] = []

    def post(request, body):
        if len(sent) == 1 and not pauses:  # the second batch finds the worker restarting
            raise __import__("httpx").ConnectError("refused", request=request)
        sent.extend(r["topic"] for r in body["requests"])
        return 202, {"accepted": len(body["requests"])}

    worker.routes[("POST", "/api/blogs")] = post
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"site_id": "shop-1", "topic": t}) + "\n" for t in "AB"))
    result = run("submit", "--file", str(path), "--quiet", "--batch-size", "1", "--worker", "http://w")
    assert result.exit_code == 0, result.stderr
    assert sent == ["A", "B"] and len(pauses) == 1


@pytest.mark.parametrize("command", [["submit", "--site", "shop-1", "--topic", "Sandals"], ["retry", "abc"],
                                     ["health"]])
def test_a_worker_address_that_is_not_an_url_is_said_so(run, worker, pauses, command):
    # `--worker 127.0.0.1:6066` (no http://) can never work: submit retried it for 5 minutes, and retry and health
    # said "no worker answered ... (UnsupportedProtocol), start one", about a worker that may well be running.
    result = run(*command, "--worker", "127.0.0.1:6066")
    assert result.exit_code == 2 and pauses == [] and worker.calls == []
    assert result.stderr.strip().splitlines()[-1] == (
        "blogstream: error: --worker '127.0.0.1:6066' is not a web address, give it as http://HOST:PORT")
