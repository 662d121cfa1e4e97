"""How a worker's loops fail while something they need is away: back off, and say it once.

A loop that retries (the limiter's scheduler while the broker restarts, the sink
or the site policies while Postgres is down, the lag export, the heartbeat)
must neither spin nor flood the log: one broker restart once wrote 15 MB of the
same traceback in three minutes, and no permit was granted meanwhile.

- `Backoff`: the pause before the next try, doubling from `first` up to `cap`
  (with a little jitter, so workers do not retry in step); `reset()` after a
  success.
- `LogLimit`: one per loop. The first failure of a kind (exception type) is
  logged with its traceback; the same kind again within `interval` seconds is
  only counted, and the next line after the interval says how many there were.
  `ok()` logs one line when the loop works again.
- `RepeatFilter`: the same for any logger's WARNING-and-above lines (aiokafka
  logs an ERROR for every failed reconnect; a stage logs one per event when
  the database is down): per logger and message template, `burst` lines per
  `interval` pass, the rest are counted, and the count is logged once the
  interval is over. `install()` puts it on the root logger's handlers.

Nothing here imports the project: any module may use it.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]


class Backoff:
    """Exponential back-off with a cap: first, 2 x first, 4 x first, ... cap, cap, ..."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, factor: float = 2.0, jitter: float = 0.1) -> None:
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self.failures = 0

    def next(self) -> float:
        """The pause after one more failure."""
        delay = min(self.cap, self.first * self.factor ** self.failures)
        self.failures += 1
        return delay * (1.0 + random.uniform(0.0, self.jitter)) if self.jitter else delay

    def reset(self) -> None:
        self.failures = 0


@dataclass
class _Run:
    since: float  # first failure of this kind since the loop last worked
    logged_at: float  # last line written for it
    total: int = 1
    unlogged: int = 0  # failures counted, not logged, since logged_at


class LogLimit:
    """Failures of one loop: the first of a kind with its traceback, then one line per interval."""

    MAX_KINDS = 20

    def __init__(self, logger: logging.Logger, what: str, interval: float = 30.0, clock: Clock = time.monotonic) -> None:
        self.logger, self.what, self.interval, self.clock = logger, what, interval, clock
        self._runs: dict[str, _Run] = {}

    @property
    def failing(self) -> bool:
        return bool(self._runs)

    def failed(self, exc: BaseException | None = None, detail: str = "", *, level: int = logging.WARNING) -> bool:
        """Count one failure; returns True when it was logged."""
        kind = type(exc).__name__ if exc is not None else "failure"
        text = f"{kind}: {exc}" if exc is not None else kind
        suffix = f" ({detail})" if detail else ""
        now = self.clock()
        run = self._runs.get(kind)
        if run is None:
            if len(self._runs) >= self.MAX_KINDS:
                self._runs.pop(next(iter(self._runs)))
            self._runs[kind] = _Run(since=now, logged_at=now)
            self.logger.log(level, "%s%s: %s", self.what, suffix, text, exc_info=exc)
            return True
        run.total += 1
        if now - run.logged_at < self.interval:
            run.unlogged += 1
            return False
        self.logger.log(
            level, "%s%s: still failing, %d more times in the last %.0f s (%d since %.0f s ago): %s",
            self.what, suffix, run.unlogged + 1, now - run.logged_at, run.total, now - run.since, text,
        )
        run.logged_at, run.unlogged = now, 0
        return True

    def ok(self) -> None:
        """The loop worked: one line if it had been failing, and the counts start again."""
        if not self._runs:
            return
        now = self.clock()
        total = sum(r.total for r in self._runs.values())
        since = min(r.since for r in self._runs.values())
        kinds = ", ".join(sorted(self._runs))
        self._runs.clear()
        self.logger.info("%s: works again after %d failures in %.0f s (%s)", self.what, total, now - since, kinds)


class RepeatFilter(logging.Filter):
    """Per logger and message template: `burst` WARNING+ lines per interval pass, the rest are counted.

    The counts are logged (one line per template, logger `streams.log_limit`)
    by the first record of any level after its interval ends, so a worker whose
    heartbeat still logs reports them within an interval or so.

    Thread-safe (Faust's consumer thread logs too), and it never raises: a
    filter's exception goes out of the `log.error(...)` call that logged, and
    one raised inside aiokafka's metadata task once stopped a worker's
    consumer for good. Whatever goes wrong here lets the line through.
    """

    MAX_KEYS = 500

    def __init__(self, interval: float = 30.0, burst: int = 5, level: int = logging.WARNING,
                 clock: Clock = time.monotonic) -> None:
        super().__init__()
        self.interval, self.burst, self.level, self.clock = interval, burst, level, clock
        self.handlers: list[logging.Handler] = []  # where the counts are written (install() fills it)
        self._seen: dict[tuple[str, str, str], list] = {}  # key -> [window start, passed, left out]
        self._swept = clock()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_repeat_filter", None)  # a second handler, or our own count: as decided
        if decided is not None:
            return decided
        try:
            with self._lock:
                reports: list[tuple[tuple[str, str, str], int, float]] = []
                now = self.clock()
                if now - self._swept >= self.interval / 2:
                    self._sweep(now, reports)
                passed = record.levelno < self.level or self._decide(record, now, reports)
            record._repeat_filter = passed
            for report in reports:  # outside the lock: a handler may log again
                self._report(*report)
        except Exception:  # noqa: BLE001 - a filter that raises breaks whoever logged
            return True
        return passed

    def _decide(self, record: logging.LogRecord, now: float, reports: list) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), exc)
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.interval:
            if state is not None and state[2]:
                reports.append((key, state[2], now - state[0]))
            elif state is None and len(self._seen) >= self.MAX_KEYS:
                self._sweep(now, reports, everything=True)
            self._seen[key] = [now, 1, 0]
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def _sweep(self, now: float, reports: list, everything: bool = False) -> None:
        self._swept = now
        for key, state in list(self._seen.items()):
            if everything or now - state[0] >= self.interval:
                self._seen.pop(key, None)
                if state[2]:
                    reports.append((key, state[2], now - state[0]))

    def _report(self, key: tuple[str, str, str], left_out: int, seconds: float) -> None:
        name, msg, exc = key
        record = logging.getLogger(__name__).makeRecord(
            __name__, logging.WARNING, __file__, 0,
            "%d more lines like %r (logger %s%s) in the last %.0f s were not logged", (
                left_out, msg[:200], name, f", {exc}" if exc else "", seconds), None)
        record._repeat_filter = True
        for handler in self.handlers:
            handler.handle(record)


_installed: RepeatFilter | None = None


def install(interval: float = 30.0, burst: int = 5) -> RepeatFilter:
    """Put one RepeatFilter on every handler of the root logger (idempotent); returns it."""
    global _installed
    if _installed is None:
        _installed = RepeatFilter(interval=interval, burst=burst)
    for handler in logging.getLogger().handlers:
        if _installed not in handler.filters:
            handler.addFilter(_installed)
            _installed.handlers.append(handler)
    return _installed
