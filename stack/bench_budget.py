"""Spend caps benchmark (issue 14): capped sites stop within the stated overspend bound, with 3 workers.

One pipeline with three workers. Each round registers a new site with a monthly
cap and `max_in_flight` K, submits N requests for it, waits until each is DONE
or parked (and no paid call of the site is running), and measures what it
spent against cap + K x the dearest single call (docs/operations.md, "Costs and
budgets"). Then it raises the cap and waits until every request is DONE. At the
end, the costs recorded in Postgres are compared with what the simulators bill.
Writes docs/bench-budget.md and docs/bench-budget.png.

    .venv/bin/python -m stack.bench_budget [--rounds 5] [--requests 40] [--in-flight 8] [--workers 3]
"""
from __future__ import annotations

import argparse
import asyncio
import time
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from stack.harness import ROOT, Outcomes, Pipeline, Simulators
from streams.costs.prices import load_prices

MAX_TOKENS = 1200
OPENAI_MODEL = "gpt-4o-mini"
IMAGE_MODEL = "black-forest-labs/flux-schnell"


def dearest_call() -> Decimal:
    """The most one paid call can cost: an article at a 2,000-token prompt and max_tokens, or one image."""
    prices = load_prices("")
    return max(prices.tokens(OPENAI_MODEL).cost(2_000, MAX_TOKENS), prices.image(IMAGE_MODEL).cost(images=1, seconds=None))


async def settled(conn: asyncpg.Connection, sim: Any, site: str, ids: list[str], timeout: float) -> tuple[int, int, int]:
    """Until the capped site can spend nothing more; (done, parked, waiting for a slot).

    That is: a cap holds it, no call of it runs at the providers, every call they answered is
    recorded, no image step of it is under way, and each request is DONE, parked, or an article
    step waiting for an in-flight slot (those check the cap again before they pay, and stop).
    """
    deadline = time.time() + timeout
    while True:
        held = await conn.fetchval("SELECT budget_exhausted FROM sites WHERE site_id = $1", site)
        done = await conn.fetchval(
            "SELECT count(*) FROM blog_generations WHERE id = ANY($1::text[]) AND status = 'DONE'", ids)
        parked = await conn.fetchval("SELECT count(DISTINCT request_id) FROM parked_events WHERE site_id = $1", site)
        claims = await conn.fetch("SELECT stage, count(*) AS n FROM stage_outputs WHERE site_id = $1 "
                                  "AND status = 'claimed' GROUP BY stage", site)
        claimed = {c["stage"]: c["n"] for c in claims}
        recorded = {r["provider"]: r["n"] for r in await conn.fetch(
            "SELECT provider, count(*) AS n FROM request_costs WHERE provider = 'openai' AND site_id = $1 "
            "OR provider = 'replicate' GROUP BY provider", site)}
        ledger = sim.ledger()
        openai = ledger["openai"]["per_site"].get(site, {})
        replicate = ledger["replicate"]
        waiting = claimed.get("generate", 0)
        if (held is not None and openai.get("in_progress", 0) == 0
                and openai.get("admitted", 0) == recorded.get("openai", 0)
                and replicate["predictions_in_progress"] == 0
                and replicate["predictions_created"] == recorded.get("replicate", 0)
                and set(claimed) <= {"generate"} and done + parked + waiting == len(ids)):
            return done, parked, waiting
        if time.time() > deadline:
            raise TimeoutError(f"site {site}: held {held}, {done} done, {parked} parked, claims {claimed}, "
                               f"recorded {recorded}, openai {openai}, replicate in progress "
                               f"{replicate['predictions_in_progress']} of {replicate['predictions_created']}")
        await asyncio.sleep(0.5)


async def run(rounds: int, requests: int, in_flight: int, workers: int) -> dict[str, Any]:
    sim = Simulators.start({"latency_scale": 0.05, "window_seconds": 60,
                            "openai": {"error_rate": 0, "external_rpm": 0, "rpm": 2000, "tpm": 10_000_000},
                            "replicate": {"error_rate": 0, "external_rpm": 0, "create_rpm": 2000},
                            "wix": {"error_rate": 0, "external_rpm": 0, "site_rpm": 2000}})
    outcomes = await Outcomes.private()
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings={
        "openai_max_tokens": MAX_TOKENS, "openai_rpm": 2000, "openai_tpm": 10_000_000, "replicate_rpm": 2000,
        "wix_site_rpm": 2000,
    })
    bound = in_flight * dearest_call()
    results: list[dict[str, Any]] = []
    try:
        for _ in range(workers):
            pipeline.start_worker()
        await pipeline.wait_ready()
        conn = await asyncpg.connect(outcomes.dsn)
        async with httpx.AsyncClient(timeout=30) as http:
            for n in range(rounds):
                site = f"bench-capped-{n}"
                cap = round(0.005 + 0.005 * n, 4)  # 0.005, 0.010, ... USD: from one request's worth to several
                await outcomes.add_sites([site], max_in_flight=in_flight)
                worker = pipeline.workers[n % workers]
                r = await http.patch(worker.url(f"/api/sites/{site}"), json={"monthly_budget_usd": cap})
                r.raise_for_status()
                await asyncio.sleep(2.5)  # the cap reaches every worker's copy of the site
                batch = [pipeline.request(site, i) for i in range(requests)]
                ids = [b["request_id"] for b in batch]
                started = time.time()
                await pipeline.submit(batch)
                done, parked, waiting = await settled(conn, sim, site, ids, timeout=120)
                stopped_after = time.time() - started
                spent = Decimal(await conn.fetchval(
                    "SELECT coalesce(sum(cost_usd), 0) FROM request_costs WHERE site_id = $1", site))
                results.append({"site": site, "cap": cap, "spent": float(spent), "over": float(spent - Decimal(str(cap))),
                                "bound": float(bound), "done": done, "parked": parked, "waiting": waiting,
                                "within": Decimal(str(cap)) <= spent <= Decimal(str(cap)) + bound,
                                "stopped_after_s": stopped_after})
                print(f"round {n}: cap {cap} USD, spent {spent:.6f}, over {spent - Decimal(str(cap)):.6f} "
                      f"(bound {bound:.6f}), {done} done, {parked} parked, {waiting} waiting for a slot", flush=True)
                r = await http.patch(worker.url(f"/api/sites/{site}"), json={"monthly_budget_usd": None})
                r.raise_for_status()
                rows = await outcomes.wait_final(ids, timeout=300, workers=pipeline.workers)
                results[-1]["released_done"] = sum(1 for row in rows.values() if row["status"] == "DONE")
        recorded = Decimal(await conn.fetchval("SELECT coalesce(sum(cost_usd), 0) FROM request_costs"))
        await conn.close()
        ledger = sim.ledger()
        billed = Decimal(str(ledger["openai"]["billing"]["usd"])) + Decimal(str(ledger["replicate"]["billing"]["usd"]))
        posts = sum(ledger["wix"]["posts_per_site"].get(r["site"], 0) for r in results)
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()
    return {"rounds": results, "recorded": float(recorded), "billed": float(billed), "posts": posts,
            "requests": requests, "in_flight": in_flight, "workers": workers, "bound": float(bound)}


def report(r: dict[str, Any], plotted: bool) -> str:
    lines = [
        "# Spend caps benchmark",
        "",
        f"`make bench BENCH=budget`: {r['workers']} workers; each round a new site with a monthly cap, "
        f"`max_in_flight` {r['in_flight']}, and {r['requests']} requests submitted at once. The stated bound "
        f"(docs/operations.md, \"Costs and budgets\"): spend <= cap + max_in_flight x the dearest single call "
        f"= cap + {r['in_flight']} x {r['bound'] / r['in_flight']:.4f} = cap + {r['bound']:.4f} USD.",
        "",
        "| round | cap (USD) | spent (USD) | over the cap (USD) | bound (USD) | within | done / parked / waiting at the stop | "
        "DONE after the cap was removed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, x in enumerate(r["rounds"]):
        lines.append(f"| {n} | {x['cap']:.4f} | {x['spent']:.6f} | {x['over']:.6f} | {x['bound']:.4f} | "
                     f"{'yes' if x['within'] else '**no**'} | {x['done']} / {x['parked']} / {x['waiting']} | "
                     f"{x.get('released_done', 0)} of {r['requests']} |")
    diff = abs(r["recorded"] - r["billed"]) / r["billed"] if r["billed"] else 0.0
    lines += [
        "",
        f"Costs recorded in Postgres: {r['recorded']:.6f} USD; billed by the simulators: {r['billed']:.6f} USD "
        f"(difference {diff:.4%}). Posts published: {r['posts']} (one per request: nothing ran twice).",
    ]
    if plotted:
        lines += ["", "![spend against cap and bound per round](bench-budget.png)"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rounds = r["rounds"]
    xs = list(range(len(rounds)))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(xs, [x["spent"] for x in rounds], width=0.6, color="#4a7ab5", label="spent")
    ax.scatter(xs, [x["cap"] for x in rounds], color="#333", marker="_", s=900, label="cap")
    ax.scatter(xs, [x["cap"] + x["bound"] for x in rounds], color="#d9534f", marker="_", s=900,
               label="cap + bound")
    ax.set_xlabel("round (a new capped site each)")
    ax.set_ylabel("US dollars")
    ax.set_xticks(xs)
    ax.legend(loc="upper left")
    ax.set_title(f"Capped sites, {r['workers']} workers, max_in_flight {r['in_flight']}")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-budget.png", dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.requests, args.in_flight, args.workers))
    text = report(result, plot(result))
    out = ROOT / "docs" / "bench-budget.md"
    out.write_text(text)
    print(text)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
