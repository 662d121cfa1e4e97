"""Capacity benchmark (issue 13): what one worker costs per blog when the providers cost nothing.

The providers answer at once and never limit (simulator latency 0, limits far
above the load), the budgets are as large, so the worker's own CPU is the only
bound. N requests over M sites go through all three stages; we report blogs/s
(first submit to last DONE), the worker's CPU ms per blog (its own user+sys
time from /proc over the run), its peak RSS, the simulators' CPU (if they
were the bottleneck it would show there), the load of the machine, and, with
--profile, where the worker's CPU goes: py-spy samples every thread of the
worker over the measured run; the summary (own time per function, time per
package) goes into the doc. Writes docs/bench-capacity.md and two plots next
to it: completions and worker CPU over time, and the worker's RSS over time.
Text below KEEP_MARK in the doc (the history of changes) is kept.

    .venv/bin/python -m stack.bench_capacity [--requests 3000] [--sites 150] [--profile] [--latency tier]

--latency tier: the providers answer as in the tier benchmark (articles after a
lognormal ~30 s, images after 5-15 s), still without limits, with the tier's
2,000 calls per stage in flight (docs/bench-capacity-latency.md;
`make bench BENCH=capacity-latency`). Each blog then costs what it costs when
few events arrive together: fewer items per Postgres statement and per Kafka
request than at zero latency.

KEEP_TOPICS=1 leaves the run's topics on the broker (they are deleted otherwise), to
count the records each topic got per blog.
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
from typing import Iterator

from stack.bench_limiter import counter_total, scrape_metrics
from stack.harness import ROOT, Outcomes, Pipeline, Simulators, summarize

# Worker counters read at the end of the run: what each blog cost the limiter.
PERMIT_COUNTERS = ("permits_leased", "permit_late_sends", "permit_reasks", "permits_expired")

HUGE = 10_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DOCS = ROOT / "docs"
KEEP_MARK = "<!-- written by hand below: the benchmark keeps this part -->"
SAMPLE_SECONDS = 0.25
LATENCIES = {"zero": "providers at zero latency", "tier": "providers at the tier benchmark's latencies"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc (the kernel's own accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


async def sample(pid: int, samples: list[tuple[float, float, float]]) -> None:
    """(time, RSS MB, CPU seconds so far) of a process every SAMPLE_SECONDS, until cancelled."""
    while True:
        try:
            samples.append((time.time(), _status_mb(pid, "VmRSS:"), cpu_seconds(pid)))
        except OSError:  # the process ended
            return
        await asyncio.sleep(SAMPLE_SECONDS)


async def run(n: int, sites: int, profile: Path | None, latency: str = "zero") -> dict:
    config = {
        "latency_scale": 0.0,
        "openai": {"rpm": HUGE, "tpm": HUGE * 100, "error_rate": 0, "external_rpm": 0},
        "replicate": {"create_rpm": HUGE, "other_rpm": HUGE, "error_rate": 0, "external_rpm": 0},
        "wix": {"site_rpm": HUGE, "error_rate": 0, "external_rpm": 0},
    }
    if latency == "tier":
        from stack.bench_tier import OPENAI_LATENCY, REPLICATE_LATENCY  # it imports this module

        config["latency_scale"], config["max_events"] = 1.0, max(1_000_000, 10 * n)
        config["openai"]["latency"], config["replicate"]["latency"] = OPENAI_LATENCY, REPLICATE_LATENCY
    sim = Simulators.start(config)
    outcomes = await Outcomes.private()
    names = [f"cap-{i:04d}" for i in range(sites)]
    await outcomes.add_sites(names)
    env = {"openai_rpm": HUGE, "openai_tpm": HUGE * 100, "replicate_rpm": HUGE, "wix_site_rpm": HUGE,
           "heartbeat_seconds": 30, "queue_size_limit": max(10_000, 2 * n)}
    if latency == "tier":  # as many calls in flight as the tier benchmark lets each stage hold
        env.update(stage_concurrency=2000, read_ahead=20_000)
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
        load0 = os.getloadavg()[0]
        samples: list[tuple[float, float, float]] = []
        sampler_task = asyncio.ensure_future(sample(worker.proc.pid, samples))
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
        sampler_task.cancel()
        load1 = os.getloadavg()[0]
        scrape = "\n".join(await scrape_metrics(pipeline.workers))
        permits = {name: counter_total(scrape, f"blogstream_{name}_total") for name in PERMIT_COUNTERS}
        permits["all"] = counter_total(scrape, "blogstream_permit_overhead_seconds_count")  # leased ones too
        counts = summarize(rows)
        finished_at = sorted(r["finished_at"].timestamp() - started for r in rows.values() if r["finished_at"] is not None)
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(60)
    finally:
        pipeline.stop(delete_topics=not os.environ.get("KEEP_TOPICS"))
        sim.stop()
        await outcomes.drop()
    return {"requests": n, "sites": sites, "latency": latency, "counts": counts, "wall": wall, "blogs_per_s": n / wall,
            "cpu_ms_per_blog": 1000 * cpu / n, "permits": permits, "worker_cpu_s": cpu, "worker_cores": cpu / wall,
            "sim_cpu_ms_per_blog": 1000 * sim_cpu / n, "sim_cores": sim_cpu / wall, "peak_rss_mb": rss,
            "load": (load0, load1), "cores": os.cpu_count(),
            "samples": [(t - started, mb, c - cpu0) for t, mb, c in samples], "finished_at": finished_at}


def plot(result: dict, out: Path) -> list[str]:
    """Two PNGs next to the doc: completions and worker CPU over time; the worker's RSS over time.

    Returns their file names (none when matplotlib is not installed).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    samples, done = result["samples"], result["finished_at"]
    title = f"{result['requests']:,} blogs over {result['sites']} sites, one worker, {LATENCIES[result.get('latency', 'zero')]}"
    fig, (completed, cores) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    completed.step(done, range(1, len(done) + 1), where="post")
    completed.set_ylabel("blogs final (DONE/FAILED)")
    completed.set_title(title, fontsize=10)
    times = [t for t, _, _ in samples]
    rates = [(c1 - c0) / (t1 - t0) for (t0, _, c0), (t1, _, c1) in zip(samples, samples[1:]) if t1 > t0]
    cores.plot(times[1:len(rates) + 1], rates, linewidth=1)
    cores.axhline(1.0, color="red", linestyle="--", linewidth=1, label="one core (the event loop's bound)")
    cores.set_ylabel("worker CPU (cores)")
    cores.set_xlabel("seconds since the requests were submitted")
    cores.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    names = [f"{out.stem}-completions.png", f"{out.stem}-rss.png"]
    fig.savefig(out.parent / names[0], dpi=80)
    plt.close(fig)
    fig, rss = plt.subplots(figsize=(9, 3.5))
    rss.plot(times, [mb for _, mb, _ in samples])
    rss.axhline(300, color="red", linestyle="--", linewidth=1, label="goal: 300 MB")
    rss.set_ylim(0, max(320, max((mb for _, mb, _ in samples), default=0) * 1.1))
    rss.set_ylabel("worker RSS (MB)")
    rss.set_xlabel("seconds since the requests were submitted")
    rss.set_title(title, fontsize=10)
    rss.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out.parent / names[1], dpi=80)
    plt.close(fig)
    return names


def collapsed_stacks(text: str) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of each line of py-spy's collapsed output ("frame;frame;... count")."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def profile_summary(raw: Path, top: int = 25) -> list[str]:
    """Own time per function and inclusive time per package, from py-spy's collapsed stacks."""
    own: Counter = Counter()
    package: Counter = Counter()
    total = 0
    for frames, n in collapsed_stacks(raw.read_text()):
        total += n
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


def report(result: dict, profile: Path | None, plots: list[str] = ()) -> str:
    load0, load1 = result["load"]
    latency = result.get("latency", "zero")
    lines = [
        f"# Capacity benchmark: one worker, {LATENCIES[latency]} and no limits",
        "",
        ("Written by `.venv/bin/python -m stack.bench_capacity` (`make bench BENCH=capacity`). "
         if latency == "zero" else "Written by `.venv/bin/python -m stack.bench_capacity --latency tier` "
         "(`make bench BENCH=capacity-latency`): articles after a lognormal ~30 s, images after 5-15 s, up to "
         "2,000 calls per stage in flight. ")
        + f"{result['requests']:,} requests over {result['sites']} sites, one worker, on this 2-core machine "
        "(the simulators and Kafka share it).",
        "",
        "| Figure | Result | Goal |",
        "|---|---|---|",
        f"| Throughput of one worker | {result['blogs_per_s']:.1f} blogs/s | >= 200 blogs/s |",
        f"| Worker CPU per blog | {result['cpu_ms_per_blog']:.1f} ms | <= 5 ms |",
        f"| Worker peak RSS | {result['peak_rss_mb']:.0f} MB | <= 300 MB |",
        f"| Worker CPU used | {result['worker_cores']:.2f} cores | |",
        f"| Simulators' CPU per blog | {result['sim_cpu_ms_per_blog']:.1f} ms ({result['sim_cores']:.2f} cores) | |",
        f"| Outcomes | {result['counts']} | all DONE |",
        "| Permits per blog: in all / from a lease (no round trip) / sent late / expired / re-asked | "
        + " / ".join(f"{result['permits'][k] / result['requests']:.2f}" for k in
                     ("all", "permits_leased", "permit_late_sends", "permits_expired", "permit_reasks")) + " | |",
        "",
        f"Load average {load0:.1f} at the start, {load1:.1f} at the end, on {result['cores']} cores: other work on "
        "the machine lowers the throughput and raises the CPU per blog too; compare only runs at the same load.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in plots] + ([""] if plots else [])
    if profile and profile.exists():
        lines += ["## Where the worker's CPU goes", ""] + profile_summary(profile) + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--sites", type=int, default=150)
    parser.add_argument("--profile", action="store_true", help="sample the worker with py-spy (pip install py-spy)")
    parser.add_argument("--latency", choices=sorted(LATENCIES), default="zero", help="how fast the providers answer")
    parser.add_argument("--out", help="the doc (docs/bench-capacity.md, or -latency.md); its plots go next to it")
    args = parser.parse_args()
    out = Path(args.out or DOCS / ("bench-capacity.md" if args.latency == "zero" else "bench-capacity-latency.md"))
    profile = Path("/tmp") / f"blogstream-capacity-{os.getpid()}.collapsed" if args.profile else None
    result = asyncio.run(run(args.requests, args.sites, profile, args.latency))
    plots = plot(result, out)
    text = report(result, profile, plots)
    print(text)
    write_doc(out, text)


def write_doc(out: Path, text: str) -> None:
    """The new figures, then whatever the doc had below KEEP_MARK (written by hand)."""
    kept = out.read_text().partition(KEEP_MARK)[2] if out.exists() else ""
    out.write_text(text + "\n" + KEEP_MARK + (kept or "\n"))


if __name__ == "__main__":
    main()
