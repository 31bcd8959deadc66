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
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal

import genai_prices
import pandas as pd
from genai_prices.types import ModelPrice, calc_unit_price

MONEY_PLACES = Decimal("0.000000000001")
"""Twelve places: one token at $0.01 per million tokens is 0.00000001."""
MONEY_SQL_TYPE = "DECIMAL(20,12)"
PER_MILLION = 1_000_000
OK, MISSING = "ok", "missing"
STANDARD, BATCH = "standard", "batch"
"""Processing modes: genai-prices' `batch` price variant (Gemini's Batch API: half the input and output rates)."""
LIBRARY_SOURCE = f"genai-prices {genai_prices.__version__}"


@dataclass(frozen=True)
class TokenCounts:
    """A call's tokens with the API's meaning: `input` includes `cached`; `thinking` is separate from `output`."""

    input: int = 0
    cached: int = 0
    output: int = 0
    thinking: int = 0
    tool_prompt: int = 0
    input_audio: int = 0
    """The audio part of `input` (genai-prices prices audio apart from text); likewise the two below."""
    cached_audio: int = 0
    output_audio: int = 0


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


MEMO_ENTRIES = 8192


class PriceBook:
    """Prices calls; remembers recent distinct (model, day, tokens), so repeats cost little CPU and memory stays flat.

    Nearly every call has its own token counts, so an unbounded memo would grow with the
    day; the most recent `MEMO_ENTRIES` are kept (the oldest go first).
    """

    def __init__(self, overrides: dict[str, PriceOverride] | None = None, override_source: str = "override"):
        self.overrides = overrides or {}
        self.override_source = override_source
        self._memo: dict[tuple, CallCost] = {}
        self._model_prices: dict[tuple, tuple[ModelPrice, ModelPrice, str] | None] = {}

    def cost(self, model: str, tokens: TokenCounts, at: datetime, served_model: str | None = None,
             processing: str = STANDARD) -> CallCost:
        """The cost of `tokens` on `model` at time `at`; status `missing` when no price is known.

        `served_model` is the `modelVersion` the response named: the provider bills the model
        that served the request, so its price wins when it is known; an alias with no price
        of its own falls back to the requested model's. `processing` `batch` prices with the
        library's batch variant where the model has one (an override prices both modes alike).
        """
        key = (model, served_model, _utc_day(at), tokens, processing)
        if key not in self._memo:
            priced = self._price(served_model, tokens, at, processing) if served_model and served_model != model else None
            if priced is None or priced.price_status == MISSING:
                priced = self._price(model, tokens, at, processing)
            self._memo[key] = priced
            if len(self._memo) > MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            return priced
        return self._memo[key]

    def _model_price(self, model: str, at: datetime, with_audio: bool,
                     processing: str = STANDARD) -> tuple[ModelPrice, ModelPrice, str] | None:
        """(full price, price to calculate with, source) of `model` on `at`'s day; None when nobody prices it.

        Looked up once per model, day and audio or not: the library's model match is the
        same for every call of a day, and so is the price less the units a call never uses.
        """
        key = (model, _utc_day(at), with_audio, processing)
        if key not in self._model_prices:
            if model in self.overrides:
                full, source = self.overrides[model].model_price(), self.override_source
            else:
                context = {"processing": processing} if processing != STANDARD else None
                try:
                    full = genai_prices.calc_price(genai_prices.Usage(), model, provider_id="google",
                                                   genai_request_timestamp=at, price_context=context).model_price
                except LookupError:
                    full = None
                source = LIBRARY_SOURCE if processing == STANDARD else f"{LIBRARY_SOURCE} ({processing})"
            self._model_prices[key] = (full, _without_unused_units(full, with_audio), source) if full else None
        return self._model_prices[key]

    def _price(self, model: str, tokens: TokenCounts, at: datetime, processing: str = STANDARD) -> CallCost:
        usage = genai_prices.Usage(
            input_tokens=tokens.input + tokens.tool_prompt,
            cache_read_tokens=tokens.cached,
            input_tool_tokens=tokens.tool_prompt,
            output_tokens=tokens.output + tokens.thinking,
            output_reasoning_tokens=tokens.thinking,
            **({"input_audio_tokens": tokens.input_audio} if tokens.input_audio else {}),
            # Reported whenever audio is: genai-prices refuses cached and audio tokens without their overlap.
            **({"cache_audio_read_tokens": tokens.cached_audio} if tokens.input_audio else {}),
            **({"output_audio_tokens": tokens.output_audio} if tokens.output_audio else {}),
        )
        prices = self._model_price(model, at, with_audio=bool(tokens.input_audio or tokens.output_audio),
                                   processing=processing)
        if prices is None:
            return CallCost(None, None, None, None, None, MISSING)
        model_price, calculating_price, source = prices
        calculated = calculating_price.calc_price(usage)
        input_price, output_price = calculated["input_price"], calculated["output_price"]
        text_rate = getattr(model_price, "cache_read_mtok", None)
        audio_rate = getattr(model_price, "cache_audio_read_mtok", None) or text_rate
        total_input = tokens.input + tokens.tool_prompt
        cached = (calc_unit_price(text_rate, tokens.cached - tokens.cached_audio, total_input, PER_MILLION)
                  + calc_unit_price(audio_rate, tokens.cached_audio, total_input, PER_MILLION))
        input_cost, cached_cost, output_cost = (_money(input_price - cached), _money(cached), _money(output_price))
        return CallCost(input_cost, cached_cost, output_cost, input_cost + cached_cost + output_cost, source, OK)


_AUDIO_UNITS = ("input_audio_mtok", "cache_audio_read_mtok", "output_audio_mtok")
_NEVER_REPORTED_UNITS = ("web_searches_kcount",)
"""Units genai-prices lists for Gemini that no call of ours has a count for."""


def _without_unused_units(model_price: ModelPrice, with_audio: bool) -> ModelPrice:
    """`model_price` less the units this call has none of: the same dollars, computed in about a quarter of the time.

    genai-prices splits a usage over every unit its price lists (text and audio, cached and
    not, web searches) before multiplying; units with zero counts add zero and take nothing
    from the others, so leaving them out changes no digit (`test_pricing` checks this
    against the library for every Google model). Audio units go as a group (the library
    requires the cached-audio price beside cached and audio ones); any other key stays.
    """
    unused = _NEVER_REPORTED_UNITS + (() if with_audio else _AUDIO_UNITS)
    return ModelPrice(**{key: value for key, value in model_price.__dict__.items()
                         if value is not None and key not in unused})


def _utc_day(at: datetime):
    """The UTC day of `at` (naive times are UTC): prices are looked up, and remembered, per UTC day."""
    return (at.astimezone(timezone.utc) if at.tzinfo else at).date()


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


def token_counts(row, prefix: str = "") -> TokenCounts:
    """The priced token kinds of a row (an itertuples row of llm_calls or llm_attempts)."""
    get = lambda name: int(getattr(row, prefix + name, 0) or 0)
    return TokenCounts(get("input_tokens"), get("cached_tokens"), get("output_tokens"), get("thinking_tokens"),
                       get("tool_prompt_tokens"), get("input_audio_tokens"), get("cached_audio_tokens"),
                       get("output_audio_tokens"))


_PRICED_TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "thinking_tokens", "tool_prompt_tokens",
                  "input_audio_tokens", "cached_audio_tokens", "output_audio_tokens")


def price_calls(calls: pd.DataFrame, book: PriceBook) -> pd.DataFrame:
    """`llm_calls` rows with cost columns: what each call's attempts were billed, and what a cache hit saved.

    A call's tokens are the billed usage of all its attempts in this run, rejected answers
    included; a cache hit was billed nothing and its `saved_cost_usd` is its saved tokens
    priced like a real call. Rows of a model without a price keep null costs.
    """
    columns: dict[str, list] = {name: [] for name in [*COST_COLUMNS, "price_source", "price_status"]}
    if calls.empty:
        return calls.assign(**columns)
    # Only the columns pricing reads, and the times converted in one go: a row tuple of every column, its
    # timestamps boxed one by one, cost more than the (memoised) pricing itself.
    priced = [name for name in ("model", "model_version", "processing", *_PRICED_TOKENS,
                                *(f"saved_{n}" for n in _PRICED_TOKENS)) if name in calls.columns]
    called_at = calls["called_at"]
    times = (called_at.array.to_pydatetime() if pd.api.types.is_datetime64_any_dtype(called_at.dtype)
             else [at.to_pydatetime() if hasattr(at, "to_pydatetime") else at for at in called_at])
    for row, at in zip(calls[priced].itertuples(index=False), times):
        served = row.model_version if isinstance(row.model_version, str) else None
        processing = getattr(row, "processing", None)
        processing = processing if isinstance(processing, str) else STANDARD
        paid = book.cost(row.model, token_counts(row), at, served, processing)
        avoided = book.cost(row.model, token_counts(row, "saved_"), at, served, processing)
        columns["input_cost_usd"].append(paid.input_cost)
        columns["cached_input_cost_usd"].append(paid.cached_input_cost)
        columns["output_cost_usd"].append(paid.output_cost)
        columns["total_cost_usd"].append(paid.total_cost)
        columns["saved_cost_usd"].append(avoided.total_cost)
        columns["price_source"].append(paid.price_source)
        columns["price_status"].append(paid.price_status)
    return calls.assign(**columns)
