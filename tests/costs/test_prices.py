"""The price table: the committed file, overrides, what a call costs, and files that are refused."""
from __future__ import annotations

from decimal import Decimal

import pytest

from simulators.config import DEFAULTS as SIMULATOR_DEFAULTS
from streams.costs.prices import PricesError, TokenPrice, load_prices, parse_prices
from streams.settings import Settings


def test_the_committed_table_prices_the_default_models_and_halves_batch():
    table = load_prices("")
    mini = table.tokens("gpt-4o-mini")
    assert mini is not None and mini.input == Decimal("0.15") and mini.output == Decimal("0.60")
    for model, price in table.openai.items():
        assert price.batch_input * 2 == price.input and price.batch_output * 2 == price.output, model
    assert table.image("black-forest-labs/flux-schnell").per_image == Decimal("0.003")
    assert table.missing(openai_model="gpt-4o-mini", replicate_model="black-forest-labs/flux-schnell") == []


def test_the_table_agrees_with_what_the_simulators_bill():
    # Two copies of the providers' published prices: the simulator is the provider here.
    table = load_prices("")
    for model, sim in SIMULATOR_DEFAULTS["openai"]["prices"].items():
        price = table.tokens(model)
        assert price is not None, model
        assert {k: float(getattr(price, k)) for k in sim} == sim, model
    for model, sim in SIMULATOR_DEFAULTS["replicate"]["prices"].items():
        assert float(table.image(model).per_image) == sim["per_image"], model


def test_a_call_costs_its_usage_tokens_at_the_lane_price():
    price = TokenPrice(input=Decimal("0.15"), output=Decimal("0.60"), batch_input=Decimal("0.075"),
                       batch_output=Decimal("0.30"), cached_input=Decimal("0.075"))
    assert price.cost(1000, 2000) == Decimal("0.00135")
    assert price.cost(1000, 2000, lane="batch") == Decimal("0.000675")
    assert price.cost(1000, 0, cached_tokens=400) == (600 * Decimal("0.15") + 400 * Decimal("0.075")) / 10**6


def test_an_image_model_costs_per_image_or_per_second():
    table = parse_prices('[replicate."a/b"]\nper_image = 0.04\n[replicate."c/d"]\nper_second = 0.001\n', "t.toml")
    assert table.image("a/b").cost(images=2, seconds=9.0) == Decimal("0.08")
    assert table.image("c/d").cost(images=1, seconds=2.5) == Decimal("0.0025")


@pytest.mark.parametrize("text, words", [
    ('[openai."m"]\ninput = 1\n', "missing: output"),
    ('[openai."m"]\ninput = -1\noutput = 1\nbatch_input = 1\nbatch_output = 1\n', ">= 0"),
    ('[openai."m"]\ninput = "cheap"\noutput = 1\nbatch_input = 1\nbatch_output = 1\n', "number of US dollars"),
    ('[replicate."a/b"]\nper_image = 1\nper_second = 1\n', "exactly one of"),
    ('[anthropic."m"]\n', "unknown section"),
    ("input = [", "not valid TOML"),
])
def test_a_bad_table_is_refused_naming_the_field(text, words):
    with pytest.raises(PricesError, match="t.toml") as info:
        parse_prices(text, "t.toml")
    assert words in str(info.value)


def test_the_setting_overrides_the_table_and_is_checked_at_start(tmp_path):
    own = tmp_path / "prices.toml"
    own.write_text('[openai."gpt-4o-mini"]\ninput = 1\noutput = 2\nbatch_input = 0.5\nbatch_output = 1\n'
                   '[replicate."black-forest-labs/flux-schnell"]\nper_image = 0.01\n', encoding="utf-8")
    assert Settings.from_env(prices_file=str(own)).prices_file == str(own)
    assert load_prices(str(own)).tokens("gpt-4o-mini").input == Decimal(1)
    with pytest.raises(Exception, match="'gpt-4o' has no price"):
        Settings.from_env(prices_file=str(own), openai_model="gpt-4o")
    with pytest.raises(Exception, match="cannot read the price file"):
        Settings.from_env(prices_file=str(tmp_path / "none.toml"))
