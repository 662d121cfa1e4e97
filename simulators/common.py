"""Shared helpers: what a simulator sees of the shared state, latency sampling, fault rolls, JSON responses."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from typing import Any, Optional, Protocol

from aiohttp import web


class SimContext(Protocol):
    """The shared state as a provider simulator uses it (``simulators.state.SimState``)."""

    config: dict[str, Any]
    rng: random.Random
    now: Callable[[], float]  # unix seconds

    @property
    def window_seconds(self) -> float: ...

    @property
    def latency_scale(self) -> float: ...

    @property
    def max_events(self) -> int: ...


def sample_latency(rng: random.Random, spec: Any, scale: float) -> float:
    if isinstance(spec, (int, float)):
        base = float(spec)
    elif isinstance(spec, (list, tuple)):
        base = rng.uniform(float(spec[0]), float(spec[1]))
    elif isinstance(spec, dict):
        if "median" in spec:
            base = rng.lognormvariate(math.log(float(spec["median"])), float(spec.get("sigma", 0.0)))
        elif "min" in spec or "max" in spec:
            lo = float(spec.get("min", 0.0))
            base = rng.uniform(lo, float(spec.get("max", lo)))
        elif "stddev" in spec:
            base = rng.gauss(float(spec.get("mean", 0.0)), float(spec["stddev"]))
        else:
            m = float(spec.get("mean", 0.0))
            j = float(spec.get("jitter", 0.0))
            base = rng.uniform(m - j, m + j)
    else:
        base = 0.0
    return max(0.0, base) * scale


def provider_latency(rng: random.Random, pcfg: dict, spec: Any, scale: float) -> float:
    """Normal latency, or ``slow_seconds`` with probability ``slow_rate``."""
    if pcfg.get("slow_rate", 0) and rng.random() < pcfg["slow_rate"]:
        return float(pcfg.get("slow_seconds", 0.0)) * scale
    return sample_latency(rng, spec, scale)


def roll(rng: random.Random, rate: float) -> bool:
    return bool(rate) and (rate >= 1 or rng.random() < rate)


async def sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
    else:
        await asyncio.sleep(0)


def json_response(body: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


async def read_json(request: web.Request) -> tuple[Any, Optional[str]]:
    """Return (body, error_message)."""
    try:
        raw = await request.read()
        if not raw:
            return None, "empty request body"
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"invalid JSON body: {exc}"
