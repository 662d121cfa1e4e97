"""Bulk lane benchmark (issue 14): what a backfill costs through the Batch API, and what it does to interactive work.

1. Cost: the same N bulk requests (same sites, topics and lengths) through the
   real-time lane, then through the batch lane (BLOGSTREAM_OPENAI_BATCH_ENABLED),
   each on a fresh simulator; the OpenAI cost is what the simulator bills
   (`/_sim/ledger` openai billing: usage at its price table, batch lines at batch prices).
2. Interactive latency: K interactive requests arriving at a steady rate on an idle
   system, then the same stream while a backfill of N bulk requests goes through the
   batch lane; completion time = finished_at - submit time, p50 / p95.

Providers at the seed's limits (OpenAI 450 RPM, Replicate 450 RPM, Wix 200 per site),
latencies scaled down; one worker. Writes docs/bench-bulk.md and docs/bench-bulk.png.

    .venv/bin/python -m stack.bench_bulk [--bulk 5000] [--interactive 40] [--rate 1.0] [--latency-only]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from stack.harness import ROOT, Outcomes, Pipeline, Simulators, summarize

BULK_SITES = [f"backfill-{i}" for i in range(10)]
LIVE_SITES = [f"shop-{i}" for i in range(5)]
SIM = {"latency_scale": 0.1, "window_seconds": 60,
       "openai": {"error_rate": 0.0, "external_rpm": 0,
                  "batch": {"validation_seconds": 2.0, "seconds_per_request": 0.2, "finalizing_seconds": 1.0}},
       "replicate": {"error_rate": 0.0, "external_rpm": 0}, "wix": {"error_rate": 0.0, "external_rpm": 0}}
LANE = {"openai_batch_enabled": "true", "openai_batch_collect_seconds": 5.0, "openai_batch_poll_seconds": 2.0}
FAST = {"openai_rpm": 100_000, "openai_tpm": 100_000_000, "replicate_rpm": 100_000, "replicate_other_rpm": 100_000,
        "wix_site_rpm": 100_000}  # the cost runs: nothing waits for a budget (cost does not depend on speed)
FAST_SIM = {"openai": {"rpm": 100_000, "tpm": 100_000_000}, "replicate": {"create_rpm": 100_000, "other_rpm": 100_000},
            "wix": {"site_rpm": 100_000}}


def bulk_requests(pipeline: Pipeline, n: int) -> list[dict[str, Any]]:
    return [pipeline.request(BULK_SITES[i % len(BULK_SITES)], i, priority="bulk") for i in range(n)]


async def phase(settings: dict[str, Any], sim_patch: dict[str, Any], body: Any) -> dict[str, Any]:
    """One run on a fresh simulator, database and pipeline (one worker)."""
    sim = Simulators.start(SIM)
    sim.configure(sim_patch)
    outcomes = await Outcomes.private()
    await outcomes.add_sites(BULK_SITES + LIVE_SITES, max_in_flight=50)
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings=dict(settings))
    try:
        pipeline.start_worker()
        await pipeline.wait_ready()
        return await body(pipeline, outcomes, sim)
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()


async def backfill_cost(n: int, batch: bool) -> dict[str, Any]:
    async def body(pipeline: Pipeline, outcomes: Outcomes, sim: Simulators) -> dict[str, Any]:
        requests = bulk_requests(pipeline, n)
        started = time.time()
        await pipeline.submit(requests)
        rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=3600, workers=pipeline.workers)
        openai = sim.ledger()["openai"]
        usage = openai["usage_by_model"]["gpt-4o-mini"]
        return {"seconds": time.time() - started, "statuses": summarize(rows), "usd": openai["billing"]["usd"],
                "realtime_requests": usage["realtime"]["requests"], "batch_requests": usage["batch"]["requests"],
                "batches": openai["batch"]["batches_created"], "max_rpm_window": openai["max_requests_in_window"]}

    return await phase({**FAST, **(LANE if batch else {})}, FAST_SIM, body)


async def interactive_stream(pipeline: Pipeline, outcomes: Outcomes, k: int, rate: float) -> list[float]:
    """K interactive requests, `rate` a second; their completion times in seconds."""
    submitted: dict[str, float] = {}
    for i in range(k):
        request = pipeline.request(LIVE_SITES[i % len(LIVE_SITES)], i)
        submitted[request["request_id"]] = time.time()
        await pipeline.submit([request])
        await asyncio.sleep(1.0 / rate)
    rows = await outcomes.wait_final(list(submitted), timeout=900, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": k}, summarize(rows)
    return sorted(rows[rid]["finished_at"].timestamp() - at for rid, at in submitted.items())


async def interactive_latency(k: int, rate: float, backfill: int) -> dict[str, Any]:
    async def body(pipeline: Pipeline, outcomes: Outcomes, sim: Simulators) -> dict[str, Any]:
        bulk = bulk_requests(pipeline, backfill)
        waited = 0.0
        if bulk:
            await pipeline.submit(bulk)
            started = time.time()
            # The hardest part for interactive work: the batch's results coming back into the image and
            # publish stages (thousands at once). The stream starts when the first bulk request is DONE.
            ids = [r["request_id"] for r in bulk]
            while not summarize(await outcomes.rows(ids)).get("DONE"):
                assert time.time() - started < 900, "no bulk request was done after 15 minutes"
                await asyncio.sleep(1.0)
            waited = time.time() - started
        times = await interactive_stream(pipeline, outcomes, k, rate)
        bulk_rows = await outcomes.rows([r["request_id"] for r in bulk]) if bulk else {}
        openai = sim.ledger()["openai"]
        return {"times": times, "bulk_statuses_then": summarize(bulk_rows), "load": os.getloadavg()[0],
                "stream_after": waited,
                "realtime_requests": openai["usage_by_model"].get("gpt-4o-mini", {}).get("realtime", {}).get("requests", 0)}

    return await phase(LANE, {}, body)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def plot(idle: list[float], busy: list[float], costs: tuple[float, float]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for times, label in ((idle, "idle"), (busy, "during the backfill")):
        left.plot(times, [(i + 1) / len(times) for i in range(len(times))], label=label)
    left.set_xlabel("interactive completion time (s)")
    left.set_ylabel("share of requests")
    left.legend()
    left.grid(alpha=0.3)
    right.bar(["real-time lane", "batch lane"], costs, color=["tab:gray", "tab:green"])
    right.set_ylabel("OpenAI cost of the backfill (USD, as billed)")
    fig.tight_layout()
    name = "bench-bulk.png"
    fig.savefig(ROOT / "docs" / name, dpi=100)
    return name


def report(r: dict[str, Any], image: str | None) -> str:
    rt, bt = r["realtime"], r["batch"]
    ratio = bt["usd"] / rt["usd"] if rt["usd"] else float("nan")
    idle, busy = r["idle"]["times"], r["busy"]["times"]
    p95_ratio = p(busy, 95) / p(idle, 95)
    lines = [
        "# Bulk lane benchmark (issue 14)",
        "",
        f"`.venv/bin/python -m stack.bench_bulk --bulk {r['n']} --interactive {r['k']} --rate {r['rate']}` "
        "(stack/bench_bulk.py); one worker on this 2-core machine, providers simulated with latencies x0.1.",
        "",
        "## Cost of a backfill",
        "",
        f"The same {r['n']} bulk requests (10 sites), once through the real-time lane and once through the batch",
        "lane, each on a fresh simulator; OpenAI cost as the simulator bills it (usage at its price table,",
        "gpt-4o-mini: batch prices are half the real-time ones).",
        "",
        "| Figure | Real-time lane | Batch lane | Goal |",
        "|---|---|---|---|",
        f"| outcomes | {rt['statuses']} | {bt['statuses']} | all DONE |",
        f"| OpenAI cost billed | {rt['usd']:.4f} USD | {bt['usd']:.4f} USD ({100 * ratio:.1f}%) | batch <= 51% |",
        f"| real-time OpenAI requests | {rt['realtime_requests']} | {bt['realtime_requests']} | 0 in the batch lane |",
        f"| batch lines / batches | {rt['batch_requests']} / {rt['batches']} | {bt['batch_requests']} / {bt['batches']} | |",
        f"| wall time | {rt['seconds']:.0f} s | {bt['seconds']:.0f} s | |",
        "",
        "## Interactive requests during a backfill",
        "",
        f"{r['k']} interactive requests ({len(LIVE_SITES)} sites, {r['rate']} a second) on an idle system, then the",
        f"same stream while {r['n']} bulk requests go through the batch lane: it starts when the first of them is",
        f"DONE ({r['busy']['stream_after']:.0f} s after they were submitted), so it meets the batch's results flooding",
        "the image and publish stages (seed limits: OpenAI 450 RPM, Replicate 450 RPM, Wix 200 per site).",
        "Completion time: finished_at - submit time.",
        "",
        "| Figure | Idle | During the backfill | Goal |",
        "|---|---|---|---|",
        f"| p50 | {p(idle, 50):.2f} s | {p(busy, 50):.2f} s | |",
        f"| p95 | {p(idle, 95):.2f} s | {p(busy, 95):.2f} s ({p95_ratio:.2f}x) | <= 1.2x idle |",
        f"| max | {max(idle):.2f} s | {max(busy):.2f} s | |",
        f"| bulk requests when the stream ended | | {r['busy']['bulk_statuses_then']} | |",
        f"| real-time OpenAI requests in the run | {r['idle']['realtime_requests']} | "
        f"{r['busy']['realtime_requests']} | the interactive ones only |",
        f"| machine load average (1 min) when the stream ended | {r['idle']['load']:.1f} | {r['busy']['load']:.1f} | |",
    ]
    if image:
        lines += ["", f"![interactive completion times and backfill cost]({image})"]
    return "\n".join(lines) + "\n"


async def run(n: int, k: int, rate: float, latency_only: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"n": n, "k": k, "rate": rate}
    if not latency_only:
        result["realtime"] = await backfill_cost(n, batch=False)
        print("real-time lane:", result["realtime"], flush=True)
        result["batch"] = await backfill_cost(n, batch=True)
        print("batch lane:", result["batch"], flush=True)
    result["idle"] = await interactive_latency(k, rate, backfill=0)
    print("idle p95:", p(result["idle"]["times"], 95), flush=True)
    result["busy"] = await interactive_latency(k, rate, backfill=n)
    print("busy p95:", p(result["busy"]["times"], 95), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bulk", type=int, default=5000)
    parser.add_argument("--interactive", type=int, default=40)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--latency-only", action="store_true", help="only the interactive latency part (printed)")
    args = parser.parse_args()
    result = asyncio.run(run(args.bulk, args.interactive, args.rate, args.latency_only))
    if args.latency_only:
        idle, busy = result["idle"]["times"], result["busy"]["times"]
        print(f"p50 {p(idle, 50):.2f} / {p(busy, 50):.2f} s, p95 {p(idle, 95):.2f} / {p(busy, 95):.2f} s "
              f"({p(busy, 95) / p(idle, 95):.2f}x), max {max(idle):.2f} / {max(busy):.2f} s (idle / backfill)")
        return
    image = plot(result["idle"]["times"], result["busy"]["times"], (result["realtime"]["usd"], result["batch"]["usd"]))
    text = report(result, image)
    out = ROOT / "docs" / "bench-bulk.md"
    out.write_text(text)
    print(text)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
