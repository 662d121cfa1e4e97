"""One fault at a time: nothing one record, one request or one outage does may stop or lose anyone else's work.

Each test runs real workers through one fault and then holds the run to what
every fault must leave intact (`stack.chaos.check_run`): every accepted request
ends DONE or FAILED exactly once (its result records agree with its row),
no post is published twice, no provider window went over its limit (the
simulators' ledger: no 429 either), nothing is left PENDING.

- the broker restarts (a private broker: the shared one is never stopped): the
  limiter coordinator recovers by itself and does not log the same traceback
  over and over;
- Postgres is down when the workers start, and again while they work (a
  private cluster): nothing is lost, nothing crashes or spins, and the recorded
  costs are what the simulators billed;
- a worker is SIGKILLed with work in flight and restarted, twice;
- the providers answer a share of calls with a 5xx and leave some unanswered.

Everything waits on conditions with deadlines; the only fixed waits are the
lengths of the outages themselves.
"""
from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal

import pytest

from stack.chaos import (
    check_run, final_count, on_broker, repeated_tracebacks, request_ids, wait_started, wait_until,
)
from stack.harness import Outcomes, Pipeline, Worker
from stack.stack import PrivateKafka, PrivatePostgres

from .test_costs import billed_usd, spent

SITES = 6
KEPT = re.compile(r"could not record the cost of a paid call: works again after (\d+) failures")
# Provider calls take 0.1-0.4 s: work is surely in flight when a fault lands, and a run takes a minute or two.
LATENCY = {"latency_scale": 0.2}


def requests_for(pipeline: Pipeline, n: int) -> list[dict]:
    sites = [f"{pipeline.name}-s{i}" for i in range(SITES)]
    return [pipeline.request(sites[i % SITES], i) for i in range(n)]


async def submit(pipeline: Pipeline, outcomes: Outcomes, n: int) -> list[dict]:
    requests = requests_for(pipeline, n)
    await outcomes.add_sites(sorted({r["site_id"] for r in requests}))
    await pipeline.submit(requests)
    return requests


async def until_final(outcomes: Outcomes, ids: list[str], at_least: int, timeout: float) -> None:
    async def enough() -> bool:
        return await final_count(outcomes, ids) >= at_least

    await wait_until(enough, f"{at_least} of {len(ids)} requests final", timeout)


async def finish_and_check(pipeline: Pipeline, outcomes: Outcomes, sim, requests: list[dict], timeout: float = 300) -> dict:
    rows = await outcomes.wait_final(request_ids(requests), timeout=timeout, workers=pipeline.workers)
    assert all(r["status"] != "PENDING" for r in rows.values()), "requests still PENDING after the deadline"
    figures = await check_run(pipeline, outcomes, sim, requests)
    print(figures)
    return figures


def assert_no_repeated_traceback(worker: Worker, at_most: int = 3) -> None:
    repeated = [(n, last) for n, last in repeated_tracebacks(worker.log_text()) if n > at_most]
    assert not repeated, f"{worker.name} logged the same traceback over and over: {repeated} ({worker.log_path})"


def lines_between(worker: Worker, start: int, end: int | None = None) -> list[str]:
    text = worker.log_path.read_bytes()[start:end].decode(errors="replace")
    return text.splitlines()


# --------------------------------------------------------------------------- the broker


@pytest.fixture
def kafka():
    broker = PrivateKafka().start()
    yield broker
    broker.destroy()


async def test_after_a_broker_restart_the_pipeline_and_its_limiter_recover_by_themselves(kafka, sim, outcomes):
    sim.configure(LATENCY)
    with on_broker(kafka.bootstrap):
        pipeline = Pipeline(database=outcomes.database, sim_url=sim.url)
        try:
            pipeline.start_worker(), pipeline.start_worker()
            await pipeline.wait_ready(timeout=180)
            requests = await submit(pipeline, outcomes, 150)
            ids = request_ids(requests)
            await until_final(outcomes, ids, 30, timeout=180)

            kafka.kill()  # SIGKILL: no controlled shutdown
            down_at = time.time()
            await asyncio.sleep(10)  # the outage
            await asyncio.to_thread(kafka.start)
            assert all(w.alive for w in pipeline.workers), "a worker exited while the broker was away"
            print(f"broker back after {time.time() - down_at:.0f} s")

            await finish_and_check(pipeline, outcomes, sim, requests)
            for worker in pipeline.workers:
                assert_no_repeated_traceback(worker)
                text = worker.log_text()
                assert text.count("limiter scheduler pass failed") <= 5, worker.log_path
                assert text.count("Unable connect to node") <= 20, worker.log_path  # aiokafka: paced, then counted
        finally:
            pipeline.stop(delete_topics=False)  # the broker and its topics go with the fixture


# --------------------------------------------------------------------------- Postgres


@pytest.fixture
def postgres():
    cluster = PrivatePostgres().start()
    yield cluster
    cluster.destroy()


async def test_postgres_down_at_worker_start_and_again_later_loses_nothing(postgres, sim):
    sim.configure(LATENCY)
    outcomes = Outcomes(postgres.dsn())
    pipeline = Pipeline(sim_url=sim.url, settings={"database_url": postgres.dsn(), "heartbeat_seconds": 5})
    requests = requests_for(pipeline, 100)
    ids = request_ids(requests)
    await outcomes.add_sites(sorted({r["site_id"] for r in requests}))
    try:
        await asyncio.to_thread(postgres.stop)
        pipeline.start_worker(), pipeline.start_worker()
        await wait_started(pipeline.workers)
        await pipeline.submit(requests)
        marks = [w.log_path.stat().st_size for w in pipeline.workers]
        await asyncio.sleep(15)  # requests are read, nothing can be recorded or paid for
        assert all(w.alive for w in pipeline.workers), "a worker exited while Postgres was away"
        for worker, mark in zip(pipeline.workers, marks):
            lines = lines_between(worker, mark)
            assert len(lines) < 600, f"{worker.name}: {len(lines)} log lines in 15 s without Postgres ({worker.log_path})"
        await asyncio.to_thread(postgres.start)

        await until_final(outcomes, ids, 30, timeout=180)
        await asyncio.to_thread(postgres.stop)  # again, with work in flight
        await asyncio.sleep(10)
        assert all(w.alive for w in pipeline.workers)
        await asyncio.to_thread(postgres.start)

        await finish_and_check(pipeline, outcomes, sim, requests)
        for worker in pipeline.workers:
            assert_no_repeated_traceback(worker, at_most=5)
        # Costs of calls that ended while Postgres was away waited and were written: none is missing.
        recorded, billed = (await spent(outcomes))[0], billed_usd(sim.ledger())
        kept = sum(int(n) for w in pipeline.workers for n in KEPT.findall(w.log_text()))
        print(f"recorded {recorded:.6f} USD, simulators billed {billed:.6f} USD; {kept} cost rows waited for Postgres")
        assert billed > 0 and abs(recorded - billed) <= billed * Decimal("0.001"), (recorded, billed)
    finally:
        pipeline.stop()


# --------------------------------------------------------------------------- a worker


async def test_a_worker_sigkilled_with_work_in_flight_and_restarted_twice_loses_nothing(pipeline, sim, outcomes):
    sim.configure(LATENCY)
    workers = [pipeline.start_worker() for _ in range(3)]
    await pipeline.wait_ready(timeout=180)
    requests = await submit(pipeline, outcomes, 150)
    ids = request_ids(requests)
    for round_, victim in enumerate(workers[:2]):
        await until_final(outcomes, ids, 30 * (round_ + 1), timeout=240)
        victim.kill()
        victim.start()  # the same name and port: the same worker identity
    await finish_and_check(pipeline, outcomes, sim, requests)


# --------------------------------------------------------------------------- the providers


async def test_providers_answering_5xx_nothing_at_all_or_half_an_answer_end_every_request_once(sim, outcomes):
    # cut_rate: the call is done (billed, the post made) and its answer ends half-way: the stage cannot
    # tell whether it was, and must neither lose the request nor post it twice.
    faults = {"error_rate": 0.15, "timeout_rate": 0.05, "timeout_seconds": 5.0, "cut_rate": 0.1}
    # OpenAI lists a stored completion 3 s after it is written: a lost article is looked for until it shows.
    sim.configure({**LATENCY, "openai": {**faults, "stored_lag_seconds": 3.0}, "replicate": faults, "wix": faults})
    timeouts = {"openai_timeout": 2.0, "replicate_timeout": 2.0, "wix_timeout": 2.0, "retry_base_seconds": 0.3,
                "openai_lost_answer_wait_seconds": 10.0}
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings=timeouts)
    try:
        pipeline.start_worker(), pipeline.start_worker()
        await pipeline.wait_ready(timeout=180)
        requests = await submit(pipeline, outcomes, 120)
        figures = await finish_and_check(pipeline, outcomes, sim, requests)
        assert all(figures["errors_5xx"].values()) and all(figures["timeouts"].values()), figures
        assert all(figures["answers_cut"].values()), figures
        # A passing fault fails a request only after 5 minutes of them (retry_patience_seconds): none here.
        assert figures["statuses"] == {"DONE": len(requests)}, figures
        # A create whose answer was cut off is found again, not paid twice (5xx and timeouts make none).
        replicate = sim.ledger()["replicate"]
        assert replicate["answers_cut"] and replicate["predictions_created"] == len(requests), \
            {k: replicate[k] for k in ("predictions_created", "answers_cut", "timeouts", "endpoints")}
        # So is an article whose answer was cut off: it is found among the stored completions (generate.py).
        openai = sim.ledger()["openai"]
        assert openai["answers_cut"] and openai["completions"] == len(requests), \
            {k: openai[k] for k in ("completions", "answers_cut", "timeouts", "stored_completions")}
    finally:
        pipeline.stop()
