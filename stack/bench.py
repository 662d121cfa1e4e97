"""`make bench`: every benchmark in turn; each prints its table and writes it to docs/.

    limiter   docs/bench-limiter.md    global budgets with 1, 2 and 3 workers (issue 3)
    fairness  docs/bench-fairness.md   a big backlog and small sites arriving (issue 4)
    intake    docs/bench-intake.md     5,000 concurrent HTTP clients, then a flood (issue 5)
    capacity  docs/bench-capacity.md   one worker's blogs/s and CPU per blog at zero provider latency (issue 13)
    capacity-latency  docs/bench-capacity-latency.md   the same with the tier's provider latencies (~30 s articles)
    chaos     docs/bench-chaos.md      broker, Postgres and worker faults, provider 5xx and timeouts (`make chaos`)
    bulk      docs/bench-bulk.md       a 5,000-request backfill: batch lane cost, interactive latency during it (issue 14)
    budget    docs/bench-budget.md     capped sites stop within the overspend bound, 3 workers (issue 14)
    tier      docs/bench-tier.md       OpenAI 5,000 RPM / 4M TPM at ~30 s, 1,000 sites, 3 workers (issue 13)
    wix       docs/bench-wix-bulk.md   a site's backlog against Wix's per-site budget, one call at a time or in bulk (issue 14)
    growth    docs/bench-growth.md     permit latency and coordinator CPU over 10 to 10,000 active sites, RSS over queued requests (issue 13)

    .venv/bin/python -m stack.bench [limiter fairness intake capacity capacity-latency chaos budget bulk tier wix growth]
"""
from __future__ import annotations

import importlib
import sys
import time

BENCHES = {"limiter": "stack.bench_limiter", "fairness": "stack.bench_fairness", "intake": "stack.bench_intake",
           "capacity": "stack.bench_capacity", "chaos": "stack.chaos", "bulk": "stack.bench_bulk"}
BENCHES["budget"] = "stack.bench_budget"
BENCHES["tier"] = "stack.bench_tier"
BENCHES["growth"] = "stack.bench_growth"
BENCHES["wix"] = "stack.bench_wix_bulk"
# name -> extra arguments for its module's main()
ARGS = {"capacity-latency": ["--latency", "tier"]}
BENCHES["capacity-latency"] = "stack.bench_capacity"


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHES)
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    for name in chosen:
        started = time.time()
        print(f"\n=== benchmark: {name} ===", flush=True)
        module = importlib.import_module(BENCHES[name])
        saved, sys.argv = sys.argv, [BENCHES[name], *ARGS.get(name, ())]
        try:
            module.main()
        finally:
            sys.argv = saved
        print(f"=== {name} took {time.time() - started:.0f} s ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
