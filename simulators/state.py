"""The simulators' shared state: config, RNG, clock, and the three provider simulators."""

from __future__ import annotations

import copy
import random
import time
from collections import deque
from typing import Any, Optional

from .config import config_from_env, merge_config
from .openai_sim import OpenAISim
from .replicate_sim import ReplicateSim
from .wix_sim import WixSim


class SimState:
    def __init__(self, config: Optional[dict] = None):
        self.config: dict[str, Any] = copy.deepcopy(config) if config is not None else config_from_env()
        self.rng = random.Random(self.config["seed"])
        self.now = time.time  # unix seconds; everything (windows, events, TTLs) uses this clock
        self.openai = OpenAISim(self)
        self.replicate = ReplicateSim(self)
        self.wix = WixSim(self, self.replicate)
        self.providers = {"openai": self.openai, "replicate": self.replicate, "wix": self.wix}
        self.timeouts = {name: 0 for name in self.providers}  # calls left unanswered (timeout_rate)
        self.cuts = {name: 0 for name in self.providers}  # calls done whose answer was cut off (cut_rate)
        self.started_at = self.now()
        # How late the server's event loop wakes (app.py samples it): a request is counted only when
        # its handler runs, so this is how long after its bytes arrived a call may be admitted.
        self.loop_lag: deque[float] = deque(maxlen=100_000)
        self.collector = _no_collections()  # its garbage collections (app.CollectorClock), own process only

    @property
    def window_seconds(self) -> float:
        return float(self.config["window_seconds"])

    @property
    def latency_scale(self) -> float:
        return float(self.config["latency_scale"])

    @property
    def max_events(self) -> int:
        return int(self.config["max_events"])

    def update_config(self, patch: dict) -> dict:
        self.config = merge_config(self.config, patch)
        if "seed" in patch:
            self.rng.seed(self.config["seed"])
        return self.config

    def reset(self) -> None:
        self.rng.seed(self.config["seed"])
        for p in self.providers.values():
            p.reset()
        self.timeouts = {name: 0 for name in self.providers}
        self.cuts = {name: 0 for name in self.providers}
        self.loop_lag.clear()
        self.collector = _no_collections()

    def ledger(self) -> dict:
        return {
            "now": self.now(),
            "window_seconds": self.window_seconds,
            "loop_lag": _quantiles(self.loop_lag),
            "collector": {k: round(v, 4) for k, v in self.collector.items()},
            **{name: {**p.ledger_json(), "timeouts": self.timeouts[name],
                      "answers_cut": self.cuts[name]} for name, p in self.providers.items()},
        }


def _no_collections() -> dict[str, float]:
    # longest_gen0/1/2 are added by the first collection of each generation
    return {"pauses": 0, "seconds": 0.0, "cpu_seconds": 0.0, "longest": 0.0}


def _quantiles(samples: "deque[float]") -> dict[str, float | int]:
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0}
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)  # noqa: E731
    return {"samples": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999), "max": pick(1.0)}
