"""Schemathesis against a running worker: every operation of the document it serves, three checks.

One worker (a private database and simulator, both tokens set, sites shop-1 and shop-2,
a FAILED request under the document's example id so a retry has something to do)
serves GET /api/openapi.json, which must be docs/openapi.json. Schemathesis' own engine
(its CLI: the examples, coverage and fuzzing phases, deterministic) then sends generated
cases to every operation and checks each answer with `not_a_server_error`,
`status_code_conformance` and `response_schema_conformance`:

1. every operation but the site controls, with the admin token (it opens every route);
2. the site controls on their own, last: a PATCH that sets shop-1's max_queued to 1
   would turn the intake's cases into 429s, each sent after the intake's one-second pause;
3. every operation without a token, a few cases each: 401s, and the open routes.

The summary line (operations, cases) is printed; run with -s to see it.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from stack.harness import Outcomes, Pipeline, Simulators
from tests.integration.conftest import FAST

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).parent / "st"
INTAKE, ADMIN = "schemathesis-intake-token", "schemathesis-admin-token"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
CONTROLS = r"^(patch_api_sites_site_id|post_api_sites_site_id_(pause|resume|cancel))$"
EXAMPLE_REQUEST = "shop-1-2024-05-01-sandals"  # the request_id example in docs/openapi.json
MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    simulators = Simulators.start(FAST)
    try:
        database = asyncio.run(Outcomes.private())
    except BaseException:  # a template database that cannot be migrated: no simulator left behind
        simulators.stop()
        raise
    pipeline = Pipeline(database=database.database, sim_url=simulators.url,
                        settings={"intake_token": INTAKE, "admin_token": ADMIN})
    try:
        asyncio.run(database.add_sites(["shop-1", "shop-2"]))
        asyncio.run(_failed_request(database.dsn))
        worker = pipeline.start_worker()
        asyncio.run(pipeline.wait_ready())
        yield worker
    finally:
        pipeline.stop()
        simulators.stop()
        log = pipeline.workers[0].log_text() if pipeline.workers else ""
        asyncio.run(database.drop())
        # No route failed (access.guard logs "HTTP <method> <path> failed") and no token was logged.
        failed = [line for line in log.splitlines() if " failed" in line and "] HTTP " in line]
        assert failed == [] and INTAKE not in log and ADMIN not in log, failed[:20]


async def _failed_request(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        request = {"request_id": EXAMPLE_REQUEST, "site_id": "shop-1", "topic": "How to choose summer sandals",
                   "keywords": ["sandals"], "language": "en", "tone": "friendly", "target_words": 300,
                   "requested_at": 1_714_000_000_000, "audience": None}
        await conn.execute(
            """INSERT INTO blog_generations (id, site_id, status, stage, stage_rank, request, error, finished_at)
               VALUES ($1, 'shop-1', 'FAILED', 'failed', 3, $2::text::jsonb, 'the simulator said no', now())""",
            EXAMPLE_REQUEST, json.dumps(request))
    finally:
        await conn.close()


def schemathesis(url: str, report: Path, *options: str) -> dict:
    """One `st run` against the worker's document; its JSON report."""
    command = [str(ST), "run", f"{url}/api/openapi.json", "--checks", CHECKS, "--generation-deterministic",
               "--workers", "1", "--request-timeout", "30", "--report", "json", "--report-json-path", str(report),
               "--no-color", *options]
    # Run beside the report: schemathesis keeps a cache of the failures it saw (.schemathesis/) in its directory.
    done = subprocess.run(command, cwd=report.parent, capture_output=True, text=True, timeout=600)
    assert report.exists(), done.stdout[-5000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert done.returncode == 0 and result["failures"] == [] and result["errors"] == [], done.stdout[-20000:]
    return result


def test_the_served_document_is_the_committed_one(worker):
    served = httpx.get(worker.url("/api/openapi.json"), timeout=10)  # no token: it is open
    assert served.status_code == 200
    assert served.json() == json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))


def test_every_operation_answers_as_documented_and_never_5xx(worker, tmp_path):
    admin = ["--header", f"Authorization: Bearer {ADMIN}"]
    phases = ["--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES)]
    runs = {
        "data": schemathesis(worker.url(), tmp_path / "data.json", *admin, *phases,
                             "--exclude-operation-id-regex", CONTROLS),
        "controls": schemathesis(worker.url(), tmp_path / "controls.json", *admin, *phases,
                                 "--include-operation-id-regex", CONTROLS),
        "no token": schemathesis(worker.url(), tmp_path / "anonymous.json", "--phases", "examples,coverage",
                                 "--max-examples", "3"),
    }
    tested = {name: run["operations"]["tested"] for name, run in runs.items()}
    cases = {name: run["test_cases"]["generated"] for name, run in runs.items()}
    # Schemathesis leaves out the document it loaded (GET /api/openapi.json): 17 of the 18 operations.
    assert tested == {"data": 13, "controls": 4, "no token": 17}, tested
    assert all(run["operations"]["errored"] == 0 for run in runs.values())
    print(f"\nschemathesis: {tested['data'] + tested['controls']} operations with a token "
          f"({cases['data'] + cases['controls']} cases), {tested['no token']} without ({cases['no token']} cases): "
          f"{sum(cases.values())} cases, 0 failures")
