

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
