"""The simulators' shared state: config, RNG, clock, and the three provider simulators."""

from __future__ import annotations

import copy
import random
import time
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
        self.started_at = self.now()

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

    def ledger(self) -> dict:
        return {
            "now": self.now(),
            "window_seconds": self.window_seconds,
            **{name: {**p.ledger_json(), "timeouts": self.timeouts[name]} for name, p in self.providers.items()},
        }
