"""Failing loops back off and log once per interval (streams/log_limit.py)."""
from __future__ import annotations

import logging

from streams.log_limit import Backoff, LogLimit, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_reset():
    backoff = Backoff(first=0.5, cap=4.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
    jittered = Backoff(first=1.0, cap=8.0, jitter=0.1)
    assert all(1.0 <= jittered.next() / d <= 1.1 for d in (1.0, 2.0, 4.0, 8.0, 8.0))


def test_the_same_failure_is_logged_once_per_interval_with_a_count(caplog):
    clock = Clock()
    limit = LogLimit(logging.getLogger("test.loop"), "pass failed", interval=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.loop"):
        for _ in range(100):  # a hot failure: 100 in 10 s
            limit.failed(TypeError("'NoneType' object is not iterable"))
            clock.now += 0.1
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None  # the first, with its traceback
        clock.now += 25
        assert limit.failed(TypeError("'NoneType' object is not iterable"))  # the interval is over: a count
        assert len(caplog.records) == 2
        assert "100 more times" in caplog.records[1].getMessage() and caplog.records[1].exc_info is None
        assert limit.failed(ValueError("other"))  # another kind: its own first line
        clock.now += 3
        limit.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "works again after 102 failures in 38 s" in lines[-1]
    assert not limit.failing
    limit.ok()  # nothing to say when it was not failing
    assert len(caplog.records) == 4


def test_repeated_warnings_pass_a_few_per_interval_and_their_count_is_logged_after_it():
    clock = Clock()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    repeat = RepeatFilter(interval=30.0, burst=3, clock=clock)
    handler.addFilter(repeat)
    repeat.handlers.append(handler)
    logger = logging.getLogger("test.repeat")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for node in range(1000):  # aiokafka while the broker is away: same template, other arguments
            logger.error("Unable connect to node with id %s: %s", node, "refused")
            logger.info("an info line %s", node)  # never held back
            clock.now += 0.01
        errors = [r for r in seen if r.levelno == logging.ERROR]
        assert len(errors) == 3 and sum(r.levelno == logging.INFO for r in seen) == 1000
        clock.now += 25
        logger.info("heartbeat")  # the first line after the interval brings the count
        counts = [r.getMessage() for r in seen if r.name == "streams.log_limit"]
        assert len(counts) == 1 and "997 more lines like 'Unable connect to node with id %s: %s'" in counts[0]
        logger.error("Unable connect to node with id %s: %s", 1, "refused")  # a new interval: passes again
        assert sum(r.levelno == logging.ERROR for r in seen) == 4
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_the_filter_is_safe_from_many_threads_and_never_raises():
    # A filter's exception goes out of the log call: once, a KeyError from two threads
    # sweeping at once stopped aiokafka's metadata task, and with it a worker's consumer.
    import threading

    clock = Clock()
    repeat = RepeatFilter(interval=0.001, burst=1, clock=clock)
    errors: list[BaseException] = []

    def log_a_lot(n: int) -> None:
        try:
            for i in range(3000):
                clock.now += 0.0005  # windows end all the time: sweeps race each other
                record = logging.LogRecord(f"t{n}", logging.ERROR, __file__, 1, "same %s", (i,), None)
                repeat.filter(record)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=log_a_lot, args=(n % 2,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    odd = logging.LogRecord("t", logging.ERROR, __file__, 1, Broken(), None, None)
    assert repeat.filter(odd) is True  # let through rather than raise
