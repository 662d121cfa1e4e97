"""Capacity benchmark (issue 13): what one worker costs per blog when the providers cost nothing.

The providers answer at once and never limit (simulator latency 0, limits far
above the load), the budgets are as large, so the worker's own CPU is the only
bound. N requests over M sites go through all three stages; we report blogs/s
(first submit to last DONE), the worker's CPU ms per blog (its own user+sys
time from /proc over the run), its peak RSS, the simulators' CPU, and, with
--profile, where the worker's CPU goes: py-spy samples every thread of the
worker over the measured run; the summary (own time per function, time per
package) goes into the doc. Writes docs/bench-capacity.md.

    .venv/bin/python -m stack.bench_capacity [--requests 3000] [--sites 150] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from stack.harness import ROOT, Outcomes, Pipeline, Simulators, summarize

HUGE = 10_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc (the kernel's own accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(n: int, sites: int, profile: Path | None) -> dict:
    sim = Simulators.start({
        "latency_scale": 0.0,
        "openai": {"rpm": HUGE, "tpm": HUGE * 100, "error_rate": 0, "external_rpm": 0},
        "replicate": {"create_rpm": HUGE, "other_rpm": HUGE, "error_rate": 0, "external_rpm": 0},
        "wix": {"site_rpm": HUGE, "error_rate": 0, "external_rpm": 0},
    })
    outcomes = await Outcomes.private()
    names = [f"cap-{i:04d}" for i in range(sites)]
    await outcomes.add_sites(names)
    env = {"openai_rpm": HUGE, "openai_tpm": HUGE * 100, "replicate_rpm": HUGE, "wix_site_rpm": HUGE,
           "heartbeat_seconds": 30, "queue_size_limit": max(10_000, 2 * n)}
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings=env)
    sampler = None
    try:
        worker = pipeline.start_worker()
        await pipeline.wait_ready()
        warm = [pipeline.request(names[0], -1)]
        await pipeline.submit(warm)
        await outcomes.wait_final([warm[0]["request_id"]], timeout=120, workers=pipeline.workers)
        requests = [pipeline.request(names[i % sites], i) for i in range(n)]
        if profile:
            sampler = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(worker.proc.pid),
                                        "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(profile)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, sim0 = cpu_seconds(worker.proc.pid), cpu_seconds(sim.proc.pid)
        started = time.time()
        await pipeline.submit(requests)
        last = [time.time()]

        def progress(final: int, total: int, rows: dict) -> None:
            if final and final != progress.seen:  # type: ignore[attr-defined]
                progress.seen = final  # type: ignore[attr-defined]
                last[0] = time.time()
                print(f"  {final}/{total} final after {last[0] - started:.1f} s", flush=True)
        progress.seen = 0  # type: ignore[attr-defined]

        rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=max(600, n / 2),
                                         workers=pipeline.workers, progress=progress, poll=1.0)
        finished = max(r["finished_at"].timestamp() for r in rows.values() if r["finished_at"] is not None)
        wall = finished - started
        cpu = cpu_seconds(worker.proc.pid) - cpu0
        sim_cpu = cpu_seconds(sim.proc.pid) - sim0
        rss = peak_rss_mb(worker.proc.pid)
        counts = summarize(rows)
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(60)
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()
    return {"requests": n, "sites": sites, "counts": counts, "wall": wall, "blogs_per_s": n / wall,
            "cpu_ms_per_blog": 1000 * cpu / n, "worker_cpu_s": cpu, "sim_cpu_ms_per_blog": 1000 * sim_cpu / n,
            "peak_rss_mb": rss}


def profile_summary(raw: Path, top: int = 25) -> list[str]:
    """Own time per function and inclusive time per package, from py-spy's collapsed stacks."""
    own: Counter = Counter()
    package: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        seen = set()
        for frame in frames:
            where = frame.split("(", 1)[-1].split(":", 1)[0]  # "function (path/to/file.py:12)"
            where = where.split("site-packages/", 1)[-1].split("/work/main/", 1)[-1]
            name = where.split("/", 1)[0].removesuffix(".py") if "/" in where else where.removesuffix(".py")
            if name and name not in seen:
                seen.add(name)
                package[name] += n
    if not total:
        return ["(no samples)"]
    lines = [f"{total:,} samples of every thread of the worker (idle waits excluded).", "",
             "| Own time | Function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f}% | `{frame[:110]}` |" for frame, n in own.most_common(top)]
    lines += ["", "| Inclusive | Package or module |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f}% | `{name}` |" for name, n in package.most_common(top)]
    return lines


def report(result: dict, profile: Path | None) -> str:
    lines = [
        "# Capacity benchmark: one worker, providers at zero latency and no limits",
        "",
        "Written by `.venv/bin/python -m stack.bench_capacity` (`make bench BENCH=capacity`). "
        f"{result['requests']:,} requests over {result['sites']} sites, one worker, on this 2-core machine "
        "(the simulators and Kafka share it).",
        "",
        "| Figure | Result | Goal |",
        "|---|---|---|",
        f"| Throughput of one worker | {result['blogs_per_s']:.1f} blogs/s | >= 200 blogs/s |",
        f"| Worker CPU per blog | {result['cpu_ms_per_blog']:.1f} ms | <= 5 ms |",
        f"| Worker peak RSS | {result['peak_rss_mb']:.0f} MB | <= 300 MB |",
        f"| Simulators' CPU per blog | {result['sim_cpu_ms_per_blog']:.1f} ms | |",
        f"| Outcomes | {result['counts']} | all DONE |",
        "",
    ]
    if profile and profile.exists():
        lines += ["## Where the worker's CPU goes", ""] + profile_summary(profile) + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--sites", type=int, default=150)
    parser.add_argument("--profile", action="store_true", help="sample the worker with py-spy (pip install py-spy)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench-capacity.md"))
    args = parser.parse_args()
    out = Path(args.out)
    profile = Path("/tmp") / f"blogstream-capacity-{os.getpid()}.collapsed" if args.profile else None
    result = asyncio.run(run(args.requests, args.sites, profile))
    text = report(result, profile)
    print(text)
    out.write_text(text)


if __name__ == "__main__":
    main()
