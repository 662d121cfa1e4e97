"""Wix bulk benchmark (issue 14, item 5): a site's posts ready together, one call at a time or in bulk.

The same backlog twice, each on a fresh simulator and database, one worker:
once with `BLOGSTREAM_WIX_BULK_MAX_ITEMS=1` (every import and create its own
call, as before) and once with bulk calls (the default, 100). OpenAI and
Replicate have room to spare, so Wix's per-site budget is what binds. Reports
Wix calls per post as the simulator counts them, how long the backlog took,
429s and duplicate posts. Writes docs/bench-wix-bulk.md and a PNG.

    .venv/bin/python -m stack.bench_wix_bulk [--sites 2] [--posts 150] [--site-rpm 100]
"""
from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime
from typing import Any

from stack.harness import ROOT, Outcomes, Pipeline, Simulators, summarize


async def run_once(sites: int, posts: int, site_rpm: int, bulk_max_items: int) -> dict[str, Any]:
    sim = Simulators.start({"latency_scale": 0.05, "window_seconds": 60,
                            "openai": {"error_rate": 0, "external_rpm": 0, "rpm": 5000, "tpm": 20_000_000},
                            "replicate": {"error_rate": 0, "external_rpm": 0, "create_rpm": 5000},
                            "wix": {"error_rate": 0, "external_rpm": 0, "site_rpm": site_rpm}})
    outcomes = await Outcomes.private()
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings={
        "openai_rpm": 5000, "openai_tpm": 20_000_000, "replicate_rpm": 5000, "wix_site_rpm": site_rpm,
        "wix_bulk_max_items": bulk_max_items,
    })
    names = [f"bench-shop-{i}" for i in range(sites)]
    try:
        await outcomes.add_sites(names)
        pipeline.start_worker()
        await pipeline.wait_ready()
        requests = [pipeline.request(site, n) for n in range(posts) for site in names]
        started = time.time()
        await pipeline.submit(requests)

        def progress(final: int, total: int, rows: Any) -> None:
            print(f"\r  bulk max {bulk_max_items}: {final}/{total} final after {time.time() - started:.0f} s",
                  end="", flush=True)

        rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=1800, progress=progress,
                                         poll=1.0, workers=pipeline.workers)
        print()
        wix = sim.ledger()["wix"]
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()
    finished = sorted(_seconds(row["finished_at"]) - started for row in rows.values() if row["finished_at"])
    calls = sum(wix["per_site"].get(site, {}).get("admitted", 0) for site in names)
    return {"bulk_max_items": bulk_max_items, "outcomes": summarize(rows), "posts": sum(wix["posts_per_site"].values()),
            "calls": calls, "calls_per_post": calls / max(1, len(requests)), "seconds": finished[-1] if finished else 0,
            "finished": finished, "rejected_429": wix["rejected_429"], "duplicates": wix["duplicate_posts_total"],
            "bulk_calls": wix["bulk_create_calls"] + wix["bulk_import_calls"], "requests": len(requests)}


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value) / (1000 if value > 1e11 else 1)


def report(runs: list[dict[str, Any]], sites: int, posts: int, site_rpm: int, plotted: bool) -> str:
    single, bulk = runs
    ideal_single = 2 * posts / site_rpm * 60
    lines = [
        "# Wix bulk calls benchmark (issue 14, item 5)",
        "",
        f"`make bench BENCH=wix`: one worker, {sites} sites with {posts} requests each submitted at once; Wix allows "
        f"{site_rpm} calls a minute per site (60 s window), OpenAI and Replicate have room to spare, latencies x0.05. "
        "Wix calls counted by the simulator (admitted calls of the benchmark's sites).",
        "",
        "| Figure | One call per import and create | Bulk calls (up to 100 items) |",
        "|---|---|---|",
        f"| outcomes | {single['outcomes']} | {bulk['outcomes']} |",
        f"| posts on the sites | {single['posts']} | {bulk['posts']} |",
        f"| Wix calls | {single['calls']} | {bulk['calls']} |",
        f"| **Wix calls per post** | **{single['calls_per_post']:.2f}** | **{bulk['calls_per_post']:.2f}** |",
        f"| bulk calls among them | {single['bulk_calls']} | {bulk['bulk_calls']} |",
        f"| backlog done after | {single['seconds']:.0f} s | {bulk['seconds']:.0f} s |",
        f"| 429s from Wix | {single['rejected_429']} | {bulk['rejected_429']} |",
        f"| duplicate posts | {single['duplicates']} | {bulk['duplicates']} |",
        "",
        f"One call at a time, a site's {posts} posts need {2 * posts} calls: at {site_rpm} a minute that is "
        f"{ideal_single:.0f} s at best. In bulk, the posts of a site that wait for its permit together share one "
        "call; how many ride together is bounded by the site's `max_in_flight` (20 by default), the number of its "
        "events a stage runs at once.",
    ]
    if plotted:
        lines += ["", "![posts done over time, one call at a time and in bulk](bench-wix-bulk.png)"]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for run, label in zip(runs, ("one call per import and create", "bulk calls")):
        ax.step(run["finished"], range(1, len(run["finished"]) + 1), where="post",
                label=f"{label}: {run['calls_per_post']:.2f} Wix calls per post")
    ax.set_xlabel("seconds after the backlog was submitted")
    ax.set_ylabel("requests DONE")
    ax.legend(loc="lower right")
    ax.set_title("A backlog against Wix's per-site budget")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-wix-bulk.png", dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--posts", type=int, default=150)
    parser.add_argument("--site-rpm", type=int, default=100)
    args = parser.parse_args()

    async def both() -> list[dict[str, Any]]:
        return [await run_once(args.sites, args.posts, args.site_rpm, most) for most in (1, 100)]

    runs = asyncio.run(both())
    text = report(runs, args.sites, args.posts, args.site_rpm, plot(runs))
    out = ROOT / "docs" / "bench-wix-bulk.md"
    out.write_text(text)
    print(text)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
