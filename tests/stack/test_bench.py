"""`make bench` runs every benchmark through stack/bench.py: each must have the entry point it calls."""
from __future__ import annotations

import importlib

import pytest

from stack.bench import BENCHES, main


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_every_benchmark_has_the_main_that_make_bench_calls(name):
    module = importlib.import_module(BENCHES[name])
    assert callable(getattr(module, "main", None)), f"{BENCHES[name]} has no main(): make bench would crash"


def test_an_unknown_benchmark_is_refused_with_the_choices(capsys):
    assert main(["nope"]) == 2
    assert "limiter" in capsys.readouterr().err
