"""Fairness benchmark (issue 4): a big backlog, then small sites arrive.

Site A queues 2,000 requests; 10 s later five small sites submit 10 each (two
of them hash to A's partition). OpenAI is the binding limit; three workers.
Reports each small site's completion time against its ideal under max-min fair
share, Jain's fairness index per window while all are backlogged, and the
utilization of the binding limit. Writes docs/bench-fairness.md.

    .venv/bin/python -m stack.bench_fairness [--big 2000] [--workers 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka.partitioner import DefaultPartitioner

from stack.bench_limiter import window_counts
from stack.harness import ROOT, Outcomes, Pipeline, Simulators

WINDOW = 20.0
GRACE = 0.3
OPENAI_PER_WINDOW = 100  # 5 requests a second: the binding limit
SLICE = 4.0  # seconds per fairness window (about 20 grants: enough to compare six sites)
BIG = "bench-big"


def small_sites(n: int = 5) -> list[str]:
    parts = list(range(12))
    p = DefaultPartitioner()
    big_part = p(BIG.encode(), parts, parts)
    names = [f"bench-small-{i}" for i in range(200)]
    same = [s for s in names if p(s.encode(), parts, parts) == big_part][:2]
    other = [s for s in names if p(s.encode(), parts, parts) != big_part][: n - len(same)]
    return same + other


def jain(values: list[float]) -> float:
    total = sum(values)
    squares = sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


async def run(big_n: int, small_n: int, workers: int) -> dict:
    sim = Simulators.start({
        "window_seconds": WINDOW, "latency_scale": 0.1,
        "openai": {"rpm": OPENAI_PER_WINDOW, "tpm": 10_000_000, "error_rate": 0, "external_rpm": 0},
        "replicate": {"create_rpm": 2000, "error_rate": 0, "external_rpm": 0},
        "wix": {"site_rpm": 2000, "error_rate": 0, "external_rpm": 0},
    })
    outcomes = await Outcomes.private()
    smalls = small_sites()
    await outcomes.add_sites([BIG] + smalls)
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings={
        "budget_window_seconds": WINDOW, "permit_grace_seconds": GRACE, "openai_rpm": OPENAI_PER_WINDOW,
        "openai_tpm": 10_000_000, "replicate_rpm": 2000, "wix_site_rpm": 2000, "heartbeat_seconds": 10,
    })
    try:
        for _ in range(workers):
            pipeline.start_worker()
        await pipeline.wait_ready()
        # One request alone first: the unloaded latency through all three stages.
        probe = pipeline.request("bench-probe", 0)
        await outcomes.add_sites(["bench-probe"])
        t0 = time.time()
        await pipeline.submit([probe])
        rows = await outcomes.wait_final([probe["request_id"]], timeout=180, workers=pipeline.workers)
        base_latency = rows[probe["request_id"]]["finished_at"].timestamp() - t0
        print(f"unloaded latency through generate, image, publish: {base_latency:.2f} s")

        big = [pipeline.request(BIG, n) for n in range(big_n)]
        big_at = time.time()
        await pipeline.submit(big)
        print(f"{BIG}: {big_n} requests queued; small sites arrive in 10 s")
        await asyncio.sleep(10)
        small = {s: [pipeline.request(s, n) for n in range(small_n)] for s in smalls}
        small_at = time.time()
        await pipeline.submit([r for rs in small.values() for r in rs])
        ids = [r["request_id"] for rs in small.values() for r in rs]
        rows = await outcomes.wait_final(ids, timeout=600, workers=pipeline.workers)
        done_at = time.time()
        # Keep measuring the backlog a little after the small sites are served.
        await asyncio.sleep(20)
        end = time.time()
        events = [e for e in sim.events("openai", since=big_at)]
        ledger = sim.ledger()
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()

    rate = OPENAI_PER_WINDOW / WINDOW
    effective = OPENAI_PER_WINDOW / (WINDOW + GRACE)
    backlogged = 1 + len(smalls)
    ideal = small_n * backlogged / rate + base_latency
    per_site = []
    for site, requests in small.items():
        finished = max(rows[r["request_id"]]["finished_at"].timestamp() for r in requests) - small_at
        per_site.append({"site": site, "seconds": finished, "ideal": ideal, "ratio": finished / ideal,
                         "same_partition_as_big": site in smalls[:2],
                         "done": sum(rows[r["request_id"]]["status"] == "DONE" for r in requests)})

    # Jain's index per slice while every small site still had a request not yet sent to OpenAI.
    last_call = {s: max((e[0] for e in events if e[1] == s), default=small_at) for s in smalls}
    all_backlogged_until = min(last_call.values())
    slices = []
    t = small_at + 1.0  # the small sites' first asks need a moment to reach the coordinator
    while t + SLICE <= all_backlogged_until:
        counts = {s: 0 for s in [BIG] + smalls}
        for e in events:
            if t <= e[0] < t + SLICE and e[1] in counts:
                counts[e[1]] += 1
        slices.append(jain(list(counts.values())))
        t += SLICE
    # As in the limiter benchmark: the mean over every instant t from one window
    # after A's first OpenAI call (the backlog waits from then on, and a paced
    # budget fills its window over one window) to the end, of the calls in
    # (t - W, t] divided by the limit.
    first_call = min((e[0] for e in events if e[1] == BIG), default=big_at)
    counts = window_counts([e[0] for e in events], WINDOW, first_call + WINDOW, end)
    utilization = sum(counts) / len(counts) / OPENAI_PER_WINDOW if counts else 0.0
    return {
        "workers": workers, "big": big_n, "small_sites": len(smalls), "small_each": small_n,
        "limit": f"OpenAI {OPENAI_PER_WINDOW} requests / {WINDOW:.0f} s window (grace {GRACE} s)",
        "base_latency": base_latency, "per_site": per_site,
        "jain_min": min(slices) if slices else None, "jain_mean": statistics.mean(slices) if slices else None,
        "jain_slices": len(slices), "utilization": utilization, "utilization_cap": effective / rate,
        "first_call_after": first_call - big_at,
        "rejected_429": ledger["openai"]["rejected_429"],
        "max_in_window": ledger["openai"]["max_requests_in_window"], "small_done_after": done_at - small_at,
    }


def report(r: dict) -> str:
    lines = [
        "# Fairness benchmark (issue 4)",
        "",
        f"`make bench` / `.venv/bin/python -m stack.bench_fairness` — {r['workers']} workers, site A with "
        f"{r['big']} queued requests, then {r['small_sites']} small sites with {r['small_each']} each arriving 10 s "
        f"later (the first two on A's partition). Binding limit: {r['limit']}. Unloaded latency through the three "
        f"stages: {r['base_latency']:.2f} s.",
        "",
        "Ideal completion of a small site under max-min fair share = its requests x backlogged sites / limit rate "
        "+ unloaded latency.",
        "",
        "| small site | same partition as A | done | completed after (s) | ideal (s) | ratio (target <= 1.5) |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["per_site"]:
        lines.append(f"| {s['site']} | {'yes' if s['same_partition_as_big'] else 'no'} | {s['done']}/{r['small_each']} | "
                     f"{s['seconds']:.1f} | {s['ideal']:.1f} | {s['ratio']:.2f} |")
    jm = f"{r['jain_min']:.3f}" if r["jain_min"] is not None else "n/a"
    ja = f"{r['jain_mean']:.3f}" if r["jain_mean"] is not None else "n/a"
    lines += [
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| Jain's index per {SLICE:.0f} s slice while all backlogged (min / mean over {r['jain_slices']} slices) | {jm} / {ja} | >= 0.95 |",
        f"| utilization of the binding limit (mean of OpenAI calls in the last window / limit, from one window after "
        f"A's first call ({r['first_call_after']:.1f} s after its backlog was submitted) to the end) "
        f"| {100 * r['utilization']:.1f}% | >= 97% |",
        f"| utilization cap of the safety rule W/(W+grace) | {100 * r['utilization_cap']:.1f}% | |",
        f"| 429s sent by the OpenAI simulator | {r['rejected_429']} | 0 |",
        f"| most OpenAI requests in any window | {r['max_in_window']} | <= {OPENAI_PER_WINDOW} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=2000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.big, args.small, args.workers))
    text = report(result)
    out = ROOT / "docs" / "bench-fairness.md"
    out.write_text(text)
    print(text)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
