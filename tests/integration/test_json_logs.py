"""BLOGSTREAM_LOG_FORMAT=json on a real worker: every line it writes is a JSON object (time, level,
logger, message), the seed's heartbeat line carries its figures as keys, and the operator's
`blogstream health` says healthy about it."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess

from stack.harness import ROOT, database_url


def records(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "the worker wrote nothing"
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line[:300]}") from None
    return out


async def test_a_json_worker_writes_only_json_lines_with_the_heartbeat_figures(pipeline, sim, outcomes):
    await outcomes.add_sites(["shop-j"])
    pipeline.settings.update(log_format="json", heartbeat_seconds=1)
    worker = pipeline.start_worker()
    requests = [pipeline.request("shop-j", n) for n in range(2)]
    await pipeline.submit(requests)
    await outcomes.wait_final([r["request_id"] for r in requests], timeout=90, workers=pipeline.workers)

    heartbeat: dict = {}
    for _ in range(40):  # the heartbeat ticks every second; the figures count the last window
        beats = [r for r in records(worker.log_text()) if r["message"].startswith("[Blog Worker] Heartbeat - cycle")
                 and "openai_rpm_used" in r]
        if beats and beats[-1]["openai_rpm_used"] == 2 and beats[-1]["queue"] == 0:
            heartbeat = beats[-1]
            break
        await asyncio.sleep(0.5)
    assert heartbeat, worker.log_text()[-3000:]
    assert (heartbeat["level"], heartbeat["logger"]) == ("INFO", "streams.monitoring")
    o, r = heartbeat["openai_rpm_used"], heartbeat["replicate_rpm_used"]  # Replicate's may include a lease
    assert (heartbeat["openai_rpm_limit"], heartbeat["replicate_rpm_limit"]) == (450, 450) and r >= 2
    assert heartbeat["message"] == (
        f"[Blog Worker] Heartbeat - cycle {heartbeat['cycle']} | Queue: 0 | OpenAI RPM: {o}/450 ({100 * o / 450:.1f}%) "
        f"| Replicate RPM: {r}/450 ({100 * r / 450:.1f}%)")
    assert heartbeat["openai_tpm_used"] > 0 and heartbeat["openai_tpm_limit"] == 450_000

    health = subprocess.run(
        [str(ROOT / ".venv/bin/blogstream"), "health", "--json", "--worker", worker.url()], cwd=ROOT,
        env=dict(os.environ, BLOGSTREAM_DATABASE_URL=database_url(outcomes.database)),
        capture_output=True, text=True, timeout=60,
    )
    report = json.loads(health.stdout)
    assert (health.returncode, report["status"], report["problems"]) == (0, "healthy", []), health.stdout
    assert report["database"]["completed_last_hour"] == 2 and report["limiter"]["openai_requests"]["limit"] == 450

    worker.stop()  # the shutdown lines too
    lines = records(worker.log_text())
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert lines[0]["message"] == "worker starting" and lines[0]["banner"]["id"] == pipeline.name
    assert any(r["message"].endswith("Stopping...") for r in lines)
    assert {r["level"] for r in lines} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
