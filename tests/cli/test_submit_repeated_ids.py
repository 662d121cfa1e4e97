"""`blogstream submit --file` with lines that repeat a request_id: the same answer whatever the batch size.

A request id is an idempotency key: the pipeline runs one request per id, and a repeat is taken
as a copy of the first (its article, image and post). The intake refuses an id repeated within
one POST (422, "repeats requests[0].request_id"), so in a file it depended on where the batches
were cut: two lines with the same id in one batch gave the second a rejection; in two batches
both were accepted, and the second line's request (another topic, another article) was silently
never written. The worker here answers with the intake's own checks (streams.api.validation).
"""
from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.api.validation import check_items, invalid

LINES = st.lists(
    st.fixed_dictionaries({"topic": st.sampled_from(["A", "B", "C", "D"])},
                          optional={"request_id": st.sampled_from(["id-1", "id-2", "id-3"])}),
    min_size=1, max_size=8,
)


@settings(database=None, deadline=None, max_examples=80,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=LINES, batch_size=st.integers(1, 9))
def test_every_line_is_accepted_once_under_its_own_id_or_reported(run: Any, worker: Any, tmp_path_factory: Any,
                                                                    lines: list[dict[str, Any]], batch_size: int) -> None:
    accepted: list[dict[str, Any]] = []

    def post(request: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests, errors = check_items(body["requests"], batch=True)
        if errors:
            failure = invalid(errors)
            return failure.status, failure.body()
        accepted.extend(requests)
        return 202, {"accepted": len(requests), "request_ids": [r["request_id"] for r in requests]}

    worker.routes[("POST", "/api/blogs")] = post
    path = tmp_path_factory.mktemp("repeats") / "requests.jsonl"
    path.write_text("".join(json.dumps({"site_id": "shop-1", **line}) + "\n" for line in lines))
    result = run("submit", "--file", str(path), "--quiet", "--json", "--batch-size", str(batch_size))
    report = json.loads(result.stdout)
    ids = [r["request_id"] for r in accepted]
    assert len(ids) == len(set(ids)), f"two requests accepted under one id: {accepted}"  # one would never run
    assert report["accepted"] + len(report["invalid"]) + len(report["rejected"]) == len(lines)
    first = {}
    for line in lines:
        if "request_id" in line:
            first.setdefault(line["request_id"], line["topic"])
    assert {r["request_id"]: r["topic"] for r in accepted if r["request_id"] in first} == first
