"""What a Gemini call cost, in exact Decimal dollars, at the price in force on the call's date.

Prices come from the `genai-prices` library (offline, versioned with the package), or
from an override for a negotiated rate or a model the library lacks. The token
semantics follow the Gemini API and the library: cached tokens are part of the prompt
count and are billed once, at the cache-read rate; thinking tokens are output; tool-use
prompt tokens are input; a prompt over a long-context threshold moves the whole request
to the higher tier. A model with no price is never costed as zero: its costs stay null
and its `price_status` is `missing`.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

import genai_prices
import pandas as pd
from genai_prices.types import ModelPrice, calc_unit_price

MONEY_PLACES = Decimal("0.000000000001")
"""Twelve places: one token at $0.01 per million tokens is 0.00000001."""
MONEY_SQL_TYPE = "DECIMAL(20,12)"
PER_MILLION = 1_000_000
OK, MISSING = "ok", "missing"
LIBRARY_SOURCE = f"genai-prices {genai_prices.__version__}"


@dataclass(frozen=True)
class TokenCounts:
    """A call's tokens with the API's meaning: `input` includes `cached`; `thinking` is separate from `output`."""

    input: int = 0
    cached: int = 0
    output: int = 0
    thinking: int = 0
    tool_prompt: int = 0


@dataclass(frozen=True)
class CallCost:
    input_cost: Decimal | None
    """Uncached prompt tokens (tool-use prompt included)."""
    cached_input_cost: Decimal | None
    output_cost: Decimal | None
    """Candidates and thinking tokens."""
    total_cost: Decimal | None
    price_source: str | None
    price_status: str


@dataclass(frozen=True)
class PriceOverride:
    """A flat per-million-token price for one model, replacing the library's."""

    input_mtok: Decimal
    output_mtok: Decimal
    cached_input_mtok: Decimal | None = None

    def model_price(self) -> ModelPrice:
        return ModelPrice(input_mtok=self.input_mtok, output_mtok=self.output_mtok,
                          cache_read_mtok=self.cached_input_mtok if self.cached_input_mtok is not None else self.input_mtok)


ZERO = Decimal(0).quantize(MONEY_PLACES)
"""Zero dollars at money precision: what a call never made (no function decision) cost."""


class PriceBook:
    """Prices calls; remembers each distinct (model, day, tokens) so a day of calls costs little CPU."""

    def __init__(self, overrides: dict[str, PriceOverride] | None = None, override_source: str = "override"):
        self.overrides = overrides or {}
        self.override_source = override_source
        self._memo: dict[tuple, CallCost] = {}

    def cost(self, model: str, tokens: TokenCounts, at: datetime) -> CallCost:
        """The cost of `tokens` on `model` at time `at`; status `missing` when no price is known."""
        key = (model, at.date(), tokens)
        if key not in self._memo:
            self._memo[key] = self._price(model, tokens, at)
        return self._memo[key]

    def _price(self, model: str, tokens: TokenCounts, at: datetime) -> CallCost:
        usage = genai_prices.Usage(
            input_tokens=tokens.input + tokens.tool_prompt,
            cache_read_tokens=tokens.cached,
            input_tool_tokens=tokens.tool_prompt,
            output_tokens=tokens.output + tokens.thinking,
            output_reasoning_tokens=tokens.thinking,
        )
        if model in self.overrides:
            model_price, source = self.overrides[model].model_price(), self.override_source
            calculated = model_price.calc_price(usage)
            input_price, output_price = calculated["input_price"], calculated["output_price"]
        else:
            try:
                calculated = genai_prices.calc_price(usage, model, provider_id="google", genai_request_timestamp=at)
            except LookupError:
                return CallCost(None, None, None, None, None, MISSING)
            model_price, source = calculated.model_price, LIBRARY_SOURCE
            input_price, output_price = calculated.input_price, calculated.output_price
        cached = calc_unit_price(getattr(model_price, "cache_read_mtok", None), tokens.cached,
                                 tokens.input + tokens.tool_prompt, PER_MILLION)
        input_cost, cached_cost, output_cost = (_money(input_price - cached), _money(cached), _money(output_price))
        return CallCost(input_cost, cached_cost, output_cost, input_cost + cached_cost + output_cost, source, OK)


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def parse_overrides(table: dict) -> dict[str, PriceOverride]:
    """`{model: {input_mtok, output_mtok, cached_input_mtok?}}` (numbers as strings or numbers) to overrides."""
    overrides = {}
    for model, prices in table.items():
        unknown = set(prices) - {"input_mtok", "output_mtok", "cached_input_mtok"}
        if unknown or not {"input_mtok", "output_mtok"} <= set(prices):
            raise ValueError(f"price override for {model!r} needs input_mtok and output_mtok "
                             f"(and optionally cached_input_mtok); got {sorted(prices)}")
        override = PriceOverride(**{name: Decimal(str(value)) for name, value in prices.items()})
        if any(price < 0 for price in (override.input_mtok, override.output_mtok, override.cached_input_mtok or 0)):
            raise ValueError(f"price override for {model!r} has a negative price")
        overrides[model] = override
    return overrides


COST_COLUMNS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "total_cost_usd", "saved_cost_usd"]
BILLED_SOURCES = {"reported", "estimated"}


def price_calls(calls: pd.DataFrame, book: PriceBook) -> pd.DataFrame:
    """`llm_calls` rows with cost columns: what each call was billed, and what a cache hit saved.

    Cache hits and failed calls were billed nothing; a cache hit's `saved_cost_usd` is its
    saved tokens priced like a real call. Rows of a model without a price keep null costs.
    """
    columns: dict[str, list] = {name: [] for name in [*COST_COLUMNS, "price_source", "price_status"]}
    for row in calls.itertuples(index=False):
        at = row.called_at.to_pydatetime() if hasattr(row.called_at, "to_pydatetime") else row.called_at
        billed = TokenCounts(row.input_tokens, row.cached_tokens, row.output_tokens, row.thinking_tokens, row.tool_prompt_tokens)
        saved = TokenCounts(row.saved_input_tokens, row.saved_cached_tokens, row.saved_output_tokens, row.saved_thinking_tokens)
        paid = book.cost(row.model, billed if row.usage_source in BILLED_SOURCES else TokenCounts(), at)
        avoided = book.cost(row.model, saved, at)
        columns["input_cost_usd"].append(paid.input_cost)
        columns["cached_input_cost_usd"].append(paid.cached_input_cost)
        columns["output_cost_usd"].append(paid.output_cost)
        columns["total_cost_usd"].append(paid.total_cost)
        columns["saved_cost_usd"].append(avoided.total_cost)
        columns["price_source"].append(paid.price_source)
        columns["price_status"].append(paid.price_status)
    return calls.assign(**columns)
