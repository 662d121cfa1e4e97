"""Latency specs: a lognormal spec is accepted, checked, and sampled around its median."""
from __future__ import annotations

import random
import statistics

import pytest

from simulators.common import sample_latency
from simulators.config import DEFAULTS, ConfigError, merge_config


def test_a_lognormal_latency_is_accepted_from_the_config():
    cfg = merge_config(DEFAULTS, {"openai": {"latency": {"median": 30, "sigma": 0.35}}})
    assert cfg["openai"]["latency"] == {"median": 30.0, "sigma": 0.35}


@pytest.mark.parametrize("spec", [{"median": 0, "sigma": 0.3}, {"median": 30, "sigma": -1}, {"median": 30},
                                  {"median": "30", "sigma": 0.3}, {"median": 30, "sigma": 0.3, "max": 60}])
def test_a_bad_lognormal_latency_is_refused_with_what_it_needs(spec):
    with pytest.raises(ConfigError, match="openai.latency"):
        merge_config(DEFAULTS, {"openai": {"latency": spec}})


def test_lognormal_samples_center_on_the_median_with_a_long_right_tail():
    rng = random.Random(7)
    samples = [sample_latency(rng, {"median": 30.0, "sigma": 0.35}, 1.0) for _ in range(20_000)]
    assert statistics.median(samples) == pytest.approx(30.0, rel=0.02)
    assert statistics.mean(samples) > statistics.median(samples)  # skewed right, as LLM answer times are
    assert min(samples) > 0


def test_lognormal_latency_scales_with_the_global_scale():
    spec = {"median": 30.0, "sigma": 0.0}
    assert sample_latency(random.Random(1), spec, 0.5) == pytest.approx(15.0)
