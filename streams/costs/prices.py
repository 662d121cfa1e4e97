"""The price table: what OpenAI and Replicate charge per model, and the cost of one call.

Costs come from what the provider says it used (`usage` tokens, output images,
predict time), never from our own estimates. Money is Decimal: the sums in
Postgres (numeric) and here agree to the last digit.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_PRICES_FILE", "ImagePrice", "PriceTable", "PricesError", "TokenPrice", "load_prices",
]

DEFAULT_PRICES_FILE = Path(__file__).with_name("prices.toml")
MILLION = Decimal(1_000_000)
Lane = Literal["realtime", "batch"]

_TOKEN_FIELDS = ("input", "output", "batch_input", "batch_output")


class PricesError(ValueError):
    """The price file cannot be used; the message names the file, the model and the field."""


@dataclass(frozen=True)
class TokenPrice:
    """US dollars per million tokens."""

    input: Decimal
    output: Decimal
    batch_input: Decimal
    batch_output: Decimal
    cached_input: Decimal | None = None  # None: cached prompt tokens cost `input` (or `batch_input`)

    def cost(self, input_tokens: int, output_tokens: int, *, lane: Lane = "realtime", cached_tokens: int = 0) -> Decimal:
        """What one call that used these tokens costs (cached_tokens are part of input_tokens, as in `usage`)."""
        batch = lane == "batch"
        per_input = self.batch_input if batch else self.input
        per_output = self.batch_output if batch else self.output
        per_cached = per_input
        if self.cached_input is not None:  # the Batch API halves the cached price too
            per_cached = self.cached_input / 2 if batch else self.cached_input
        cached = min(max(cached_tokens, 0), input_tokens)
        total = (input_tokens - cached) * per_input + cached * per_cached + output_tokens * per_output
        return total / MILLION


@dataclass(frozen=True)
class ImagePrice:
    """A Replicate model: billed per output image, or per second on its hardware."""

    per_image: Decimal | None = None
    per_second: Decimal | None = None

    def cost(self, *, images: int, seconds: float | None) -> Decimal:
        if self.per_image is not None:
            return images * self.per_image
        assert self.per_second is not None
        return Decimal(str(round(max(seconds or 0.0, 0.0), 3))) * self.per_second


@dataclass(frozen=True)
class PriceTable:
    openai: dict[str, TokenPrice]
    replicate: dict[str, ImagePrice]
    source: str = ""

    def tokens(self, model: str) -> TokenPrice | None:
        return self.openai.get(model)

    def image(self, model: str) -> ImagePrice | None:
        return self.replicate.get(model)

    def missing(self, *, openai_model: str, replicate_model: str) -> list[str]:
        """The configured models this table has no price for, as lines naming the file."""
        out = []
        if openai_model not in self.openai:
            out.append(f"OpenAI model {openai_model!r} has no price in {self.source}")
        if replicate_model not in self.replicate:
            out.append(f"Replicate model {replicate_model!r} has no price in {self.source}")
        return out


def _money(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PricesError(f"{where} must be a number of US dollars, not {value!r}")
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise PricesError(f"{where} must be a finite amount >= 0, not {value!r}")
    return amount


def parse_prices(text: str, source: str) -> PriceTable:
    """A PriceTable from TOML text; PricesError names what is wrong and where."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PricesError(f"{source} is not valid TOML: {exc}") from None
    unknown = set(data) - {"openai", "replicate"}
    if unknown:
        raise PricesError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; expected openai and replicate")
    openai: dict[str, TokenPrice] = {}
    for model, fields in (data.get("openai") or {}).items():
        where = f"{source}: openai.{model!r}"
        if not isinstance(fields, dict):
            raise PricesError(f"{where} must be a table of prices")
        missing = [name for name in _TOKEN_FIELDS if name not in fields]
        extra = set(fields) - set(_TOKEN_FIELDS) - {"cached_input"}
        if missing or extra:
            raise PricesError(f"{where} needs {', '.join(_TOKEN_FIELDS)} (and may have cached_input); "
                              f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(sorted(extra)) or '-'}")
        values = {name: _money(fields[name], f"{where}.{name}") for name in fields}
        openai[model] = TokenPrice(**values)
    replicate: dict[str, ImagePrice] = {}
    for model, fields in (data.get("replicate") or {}).items():
        where = f"{source}: replicate.{model!r}"
        if not isinstance(fields, dict) or len(set(fields) & {"per_image", "per_second"}) != 1 or \
                set(fields) - {"per_image", "per_second"}:
            raise PricesError(f"{where} needs exactly one of per_image, per_second")
        replicate[model] = ImagePrice(**{name: _money(value, f"{where}.{name}") for name, value in fields.items()})
    return PriceTable(openai, replicate, source)


@lru_cache(maxsize=4)
def load_prices(path: str = "") -> PriceTable:
    """The table in `path` (BLOGSTREAM_PRICES_FILE), else the committed prices.toml; read once per path."""
    file = Path(path) if path else DEFAULT_PRICES_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricesError(f"cannot read the price file {file}: {exc.strerror or exc}; "
                          "set BLOGSTREAM_PRICES_FILE to a readable TOML file like streams/costs/prices.toml") from None
    return parse_prices(text, str(file))
