

def test_each_garbage_collection_is_timed_by_generation_and_the_callback_is_installed_once():
    import gc

    from streams import metrics
    from streams.monitoring import GcPauses

    def count(generation: int) -> tuple[float, float]:
        child = metrics.gc_pause_seconds.labels(str(generation))
        return child._sum.get(), sum(b.get() for b in child._buckets)

    before = [count(g) for g in range(3)]
    cpu_before = metrics.gc_cpu_seconds.labels("2")._value.get()
    GcPauses().install()
    GcPauses().install()
    try:
        assert sum(isinstance(c, GcPauses) for c in gc.callbacks) == 1
        gc.collect(2)
        gc.collect(0)
        after = [count(g) for g in range(3)]
        assert after[2][1] == before[2][1] + 1 and after[0][1] >= before[0][1] + 1
        assert after[2][0] > before[2][0]  # it took some time
        # and some of a core (the rest of a pause is waiting for one)
        cpu = metrics.gc_cpu_seconds.labels("2")._value.get() - cpu_before
        assert 0 < cpu
    finally:
        gc.callbacks[:] = [c for c in gc.callbacks if not isinstance(c, GcPauses)]


def test_the_loop_lag_samples_sleep_a_random_while_around_their_period():
    """Fixed sleeps lock in step with the young collections' clock and measure them at every fifth sample."""
    from streams import monitoring

    pauses = [monitoring._random_pause() for _ in range(1_000)]
    assert all(0.5 * monitoring.LOOP_LAG_EVERY <= p <= 1.5 * monitoring.LOOP_LAG_EVERY for p in pauses)
    assert len(set(pauses)) > 900


def test_a_loop_lag_sample_is_the_wake_past_the_while_it_slept():
    import asyncio

    from streams import monitoring

    observed: list[float] = []
    asyncio.run(monitoring.loop_lag_sample(observed.append, pause=lambda: 0.001))
    assert len(observed) == 1 and 0.0 <= observed[0] < 1.0


def test_each_source_of_the_global_gauges_says_when_it_was_last_read(monkeypatch):
    """The lag, PENDING and budget gauges keep their last value while the broker, Postgres or the
    coordinator does not answer; blogstream_figures_last_success_timestamp_seconds{source} tells how
    old they are (alerts.yml, BlogstreamFiguresStale), and only a read that worked moves it."""
    import asyncio
    from types import SimpleNamespace

    from streams import metrics, monitoring
    from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS

    def read_at(source: str) -> float | None:
        return metrics.registry.get_sample_value("blogstream_figures_last_success_timestamp_seconds",
                                                 {"source": source})

    clock = [1000.0]
    monkeypatch.setattr(monitoring.time, "time", lambda: clock[0])
    for source in metrics.FIGURE_SOURCES:
        metrics.figures_last_success.labels(source).set(0)

    async def broker_away() -> dict[str, int]:
        raise ConnectionError("broker away")

    async def broker_back() -> dict[str, int]:
        return {"blog.requests": 7}

    async def stats(timeout: float) -> dict:
        figures = {"used_in_window": 1, "effective_limit": 10, "limit": 10, "waiting": 0}
        return {OPENAI_REQUESTS: figures, OPENAI_TOKENS: figures, REPLICATE_REQUESTS: figures}

    async def database_down() -> None:
        raise ConnectionError("database down")

    monkeypatch.setattr(monitoring, "group_lag", broker_away)
    asyncio.run(monitoring.read_consumer_lag())
    assert read_at("kafka") == 0
    monkeypatch.setattr(monitoring, "group_lag", broker_back)
    asyncio.run(monitoring.read_consumer_lag())
    assert read_at("kafka") == 1000.0
    clock[0] = 1100.0
    monkeypatch.setattr(monitoring, "group_lag", broker_away)
    asyncio.run(monitoring.read_consumer_lag())
    assert read_at("kafka") == 1000.0  # the lag gauge still says 7: 100 s old
    assert metrics.registry.get_sample_value("blogstream_consumer_lag", {"topic": "blog.requests"}) == 7

    # Postgres down, the coordinator answering: the budget gauges are fresh, the request counts are not
    monkeypatch.setattr(monitoring, "budgets", SimpleNamespace(stats=stats))
    monkeypatch.setattr(monitoring.deps, "ready", database_down)
    asyncio.run(monitoring.beat())
    assert read_at("limiter") == 1100.0 and read_at("postgres") == 0
