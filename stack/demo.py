"""`make demo`: 500 blog requests for 20 Wix sites, end to end on the local stack.

Registers demo-site-01..20 in the `blogstream` database, resets the provider
simulators to realistic limits (OpenAI 450 requests / 450k tokens, Replicate
600 creates, Wix 200 calls per site, per 60 s window), starts one worker,
submits 500 requests and follows them to DONE/FAILED, then prints a summary.
Exits non-zero unless all 500 are DONE and no post was published twice.

    .venv/bin/python -m stack.demo [--requests 500] [--sites 20] [--latency-scale 0.5]
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import sys
import time
from typing import Any

import httpx
from tqdm import tqdm

from simulators.config import DEFAULTS as SIM_DEFAULTS
from stack.harness import ROOT, Outcomes, Pipeline, Simulators, database_url, summarize
from streams.settings import Settings

TOPICS = (
    "How to care for {thing}", "Five mistakes people make with {thing}", "A beginner's guide to {thing}",
    "Choosing the right {thing} for your home", "What nobody tells you about {thing}", "Seasonal tips for {thing}",
)
THINGS = ("houseplants", "cast iron pans", "leather boots", "espresso machines", "wool sweaters",
          "garden tools", "road bikes", "sourdough starters", "hiking backpacks", "wooden furniture")
TIMEOUT = 15 * 60


def say(text: str = "") -> None:
    print(text, flush=True)


def sim_config(latency_scale: float) -> dict[str, Any]:
    """The simulators' documented defaults (realistic limits), no injected faults, faster calls."""
    config = copy.deepcopy(SIM_DEFAULTS)
    config["window_seconds"] = 60.0
    config["latency_scale"] = latency_scale
    for provider in ("openai", "replicate", "wix"):
        config[provider].update(error_rate=0.0, slow_rate=0.0, external_rpm=0.0)
    config["replicate"]["fail_rate"] = 0.0
    return config


def demo_requests(pipeline: Pipeline, sites: list[str], n: int) -> list[dict[str, Any]]:
    rng = random.Random(2024)
    out = []
    for i in range(n):
        site = sites[i % len(sites)]
        topic = rng.choice(TOPICS).format(thing=rng.choice(THINGS))
        out.append(pipeline.request(site, i, topic=topic, target_words=rng.choice((300, 400, 500)),
                                    keywords=[w for w in topic.lower().split() if len(w) > 4][:3] or ["tips"]))
    return out


def check_stack(sim: Simulators) -> str | None:
    try:
        sim.http.get("/_sim/health").raise_for_status()
    except httpx.HTTPError:
        return f"the provider simulators do not answer at {sim.url}"
    return None


async def main(args: argparse.Namespace) -> int:
    say("blogstream demo: every blog request goes requests -> generate (OpenAI) -> image (Replicate) -> publish (Wix),")
    say("  one Kafka topic per step; a Faust worker runs the steps, a global limiter keeps every provider within its")
    say("  per-minute limits, and each step is recorded in Postgres (blog_generations). Providers are local simulators.")
    say(f"  We register {args.sites} sites, send {args.requests} requests, and watch them finish.")
    say()

    settings = Settings.from_env()  # what the worker will run with (it inherits this environment)
    sim = Simulators()
    problem = check_stack(sim)
    if problem:
        say(f"cannot start: {problem}. Run `make stack-up` first (or `stack/stack.sh status`).")
        return 2
    sim.reset()
    sim.configure(sim_config(args.latency_scale))
    say(f"[1/4] simulators reset: OpenAI {SIM_DEFAULTS['openai']['rpm']} RPM / {SIM_DEFAULTS['openai']['tpm']:,} TPM, "
        f"Replicate {SIM_DEFAULTS['replicate']['create_rpm']} creates/min, Wix {SIM_DEFAULTS['wix']['site_rpm']} calls/min "
        f"per site; latencies x{args.latency_scale}")
    say(f"      the worker's global budgets per {settings.budget_window_seconds:.0f} s: OpenAI {settings.openai_rpm} requests / "
        f"{settings.openai_tpm:,} tokens, Replicate {settings.replicate_rpm}, Wix {settings.wix_site_rpm} per site")

    outcomes = Outcomes(database_url("blogstream"), "blogstream")
    sites = [f"demo-site-{i:02d}" for i in range(1, args.sites + 1)]
    await outcomes.add_sites(sites)
    say(f"[2/4] sites registered in the blogstream database: {sites[0]} .. {sites[-1]}")

    pipeline = Pipeline(database="blogstream", name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    worker = pipeline.start_worker()
    exit_code = 1
    try:
        say(f"[3/4] starting a worker (log: {worker.log_path.relative_to(ROOT)}) ...")
        await pipeline.wait_ready(timeout=180)

        requests = demo_requests(pipeline, sites, args.requests)
        ids = [r["request_id"] for r in requests]
        started = time.time()
        with tqdm(total=len(requests), desc="submitting", unit="req") as bar:
            for i in range(0, len(requests), 50):
                chunk = requests[i:i + 50]
                await pipeline.submit(chunk)
                bar.update(len(chunk))

        say(f"[4/4] following {len(ids)} requests until they are DONE or FAILED (at most {TIMEOUT // 60} min)")
        bar = tqdm(total=len(ids), desc="finished", unit="blog")

        def progress(final: int, total: int, rows: dict[str, dict[str, Any]]) -> None:
            counts = summarize(rows)
            minutes = max(time.time() - started, 1e-6) / 60
            bar.set_postfix(done=counts.get("DONE", 0), failed=counts.get("FAILED", 0),
                            pending=total - final, blogs_per_min=f"{counts.get('DONE', 0) / minutes:.0f}", refresh=False)
            bar.update(final - bar.n)

        try:
            rows = await outcomes.wait_final(ids, timeout=TIMEOUT, progress=progress, poll=1.0, workers=[worker])
        finally:
            bar.close()
        wall = time.time() - started

        counts = summarize(rows)
        done = counts.get("DONE", 0)
        failed = counts.get("FAILED", 0)
        finished = [r["finished_at"].timestamp() for r in rows.values() if r["status"] == "DONE" and r["finished_at"]]
        busy_minutes = ((max(finished) - started) / 60) if finished else 0.0
        ledger = sim.ledger()
        wix = ledger["wix"]
        duplicates = int(wix["duplicate_posts_total"])  # a second post for a slug already published
        async with httpx.AsyncClient(base_url=worker.url(), timeout=15) as http:
            health = (await http.get("/health")).json()
            stats = (await http.get("/api/rate-limiter/stats")).json()
            replicate_stats = (await http.get("/api/replicate-rate-limiter/stats")).json()

        say()
        say("=== Summary ===")
        say(f"requests: {len(ids)}   DONE: {done}   FAILED: {failed}   still pending: {len(ids) - done - failed}")
        say(f"wall time: {wall:.0f} s   blogs per minute: {done / busy_minutes:.0f}" if busy_minutes else f"wall time: {wall:.0f} s")
        say(f"posts on Wix: {wix['posts_total']} ({len(wix['posts_per_site'])} sites)   duplicate posts: {duplicates}")
        say("429s the providers sent: " + ", ".join(f"{p} {ledger[p]['rejected_429']}" for p in ("openai", "replicate", "wix"))
            + f"   (most OpenAI calls in any 60 s: {ledger['openai']['max_requests_in_window']} of {ledger['openai']['limits']['rpm']},"
            f" tokens {ledger['openai']['max_tokens_in_window_enforced']:,} of {ledger['openai']['limits']['tpm']:,})")
        say("health (seed style, whole blog_generations table incl. earlier runs): "
            f"Queue Size {health.get('queue_size')}, Errors (last hour) {health.get('errors_last_hour')}, "
            f"Completed (last hour) {health.get('completed_last_hour')}, Rate {float(health.get('blogs_per_minute', 0)):.1f} blogs/min")
        say(f"OpenAI rate limiter (/api/rate-limiter/stats): {json.dumps(stats)}")
        say(f"Replicate rate limiter (/api/replicate-rate-limiter/stats): {json.dumps(replicate_stats)}")
        if failed:
            errors = sorted({(r["error"] or "")[:200] for r in rows.values() if r["status"] == "FAILED"})
            say("failures (distinct errors): " + "; ".join(errors[:5]))
        ok = done == len(ids) and duplicates == 0
        say("RESULT: " + ("OK, every request DONE, no duplicate post" if ok else "NOT OK"))
        exit_code = 0 if ok else 1
    finally:
        pipeline.stop()
        say(f"worker stopped (the stack stays up: `make stack-down` stops it). Worker log: {worker.log_path}")
    return exit_code


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--latency-scale", type=float, default=0.5, help="scale the simulators' default latencies")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
