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
from typing import Any

import genai_prices
import pandas as pd
from genai_prices.types import ModelPrice, calc_unit_price

from cost_pipeline.gemini.settings import STANDARD
from cost_pipeline.gemini.usage import MODALITIES, PRICED_FIELDS, Usage, normalized_model

MONEY_PLACES = Decimal("0.000000000001")
"""Twelve places: one token at $0.01 per million tokens is 0.00000001."""
MONEY_SQL_TYPE = "DECIMAL(20,12)"
PER_MILLION = 1_000_000
OK, MISSING = "ok", "missing"
LIBRARY_SOURCE = f"genai-prices {genai_prices.__version__}"


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
        return ModelPrice(
            input_mtok=self.input_mtok,
            output_mtok=self.output_mtok,
            cache_read_mtok=self.cached_input_mtok if self.cached_input_mtok is not None else self.input_mtok,
        )


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

    def cost(
        self, model: str, tokens: Usage, at: datetime, served_model: str | None = None, processing: str = STANDARD
    ) -> CallCost:
        """The cost of `tokens` on `model` at time `at`; status `missing` when no price is known.

        `served_model` is the `modelVersion` the response named (a `models/` prefix and case
        do not matter): the provider bills the model that served the request, so its price
        wins when it is known; an alias with no price of its own falls back to the requested
        model's. `processing` `batch` prices with the library's batch variant where the model
        has one (an override prices both modes alike).
        """
        key = (model, served_model, _utc_day(at), tokens, processing)
        if key not in self._memo:
            served = normalized_model(served_model)
            priced = self._price(served, tokens, at, processing) if served and served != model else None
            if priced is None or priced.price_status == MISSING:
                priced = self._price(model, tokens, at, processing)
            self._memo[key] = priced
            if len(self._memo) > MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            return priced
        return self._memo[key]

    def _model_price(
        self, model: str, at: datetime, modalities: frozenset[str], processing: str = STANDARD
    ) -> tuple[ModelPrice, ModelPrice, str] | None:
        """(full price, price to calculate with, source) of `model` on `at`'s day; None when nobody prices it.

        Looked up once per model, day and set of modalities: the library's model match is the
        same for every call of a day, and so is the price less the units a call never uses.
        """
        key = (model, _utc_day(at), modalities, processing)
        if key not in self._model_prices:
            if model in self.overrides:
                full, source = self.overrides[model].model_price(), self.override_source
            else:
                context = {"processing": processing} if processing != STANDARD else None
                try:
                    full = genai_prices.calc_price(
                        genai_prices.Usage(),
                        model,
                        provider_id="google",
                        genai_request_timestamp=at,
                        price_context=context,
                    ).model_price
                except LookupError:
                    full = None
                source = LIBRARY_SOURCE if processing == STANDARD else f"{LIBRARY_SOURCE} ({processing})"
            self._model_prices[key] = (full, _without_unused_units(full, modalities), source) if full else None
        return self._model_prices[key]

    def modality_rates(
        self, model: str, at: datetime, processing: str = STANDARD, long_context: bool = False
    ) -> dict[tuple[str, str], Decimal | None] | None:
        """USD per million tokens of each invoice kind in audio, image and video; None when nobody prices `model`.

        What the invoice's modality lines cost: a modality without a price of its own is
        billed at its kind's text rate, as genai-prices bills it.
        """
        prices = self._model_price(normalized_model(model) or model, at, frozenset(MODALITIES), processing)
        if prices is None:
            return None
        full = prices[0]

        def rate(*keys: str) -> Decimal | None:
            value = next((v for key in keys if (v := getattr(full, key, None)) is not None), None)
            if value is None or isinstance(value, Decimal):
                return value
            return value.tiers[-1].price if long_context and value.tiers else value.base

        return {
            key: value
            for modality in MODALITIES
            for key, value in (
                (("input", modality), rate(f"input_{modality}_mtok", "input_mtok")),
                (("cached_input", modality), rate(f"cache_{modality}_read_mtok", "cache_read_mtok")),
                (("output", modality), rate(f"output_{modality}_mtok", "output_mtok")),
            )
        }

    def _price(self, model: str, tokens: Usage, at: datetime, processing: str = STANDARD) -> CallCost:
        modalities = tokens.modalities()
        prices = self._model_price(model, at, modalities, processing=processing)
        if prices is None:
            return CallCost(None, None, None, None, None, MISSING)
        model_price, calculating_price, source = prices
        calculated = calculating_price.calc_price(library_usage(tokens))
        input_price, output_price = calculated["input_price"], calculated["output_price"]
        # The cached part of the input price, split out as the invoice does: each modality at its own cache-read
        # rate where the model has one, the rest at the text rate (the library's own split of the same usage).
        text_rate = getattr(model_price, "cache_read_mtok", None)
        total_input = tokens.input_tokens + tokens.tool_prompt_tokens
        cached_text = tokens.cached_tokens
        cached = Decimal(0)
        for modality in modalities:
            count = getattr(tokens, f"cached_{modality}_tokens")
            rate = getattr(model_price, f"cache_{modality}_read_mtok", None)
            if rate is not None:
                cached += calc_unit_price(rate, count, total_input, PER_MILLION)
                cached_text -= count
        cached += calc_unit_price(text_rate, cached_text, total_input, PER_MILLION)
        input_cost, cached_cost, output_cost = (_money(input_price - cached), _money(cached), _money(output_price))
        return CallCost(input_cost, cached_cost, output_cost, input_cost + cached_cost + output_cost, source, OK)


def invoice_split(
    counts, costs: tuple[Decimal | None, Decimal | None, Decimal | None], rates: dict[tuple[str, str], Decimal | None]
) -> list[tuple[str, str, int, Decimal | None]]:
    """(kind, modality, tokens, cost) of one call's or one group's tokens and (input, cached, output) costs, as an
    invoice splits them: audio, image and video at their `modality_rates`, text the rest of the kind's cost.

    `counts(name)` gives a token column's value (`input_tokens`, `cached_audio_tokens`, ...). A cost that
    cannot be split (unpriced, or a modality without a rate) is None, never 0.
    """
    kinds = (
        (
            "input",
            counts("input_tokens") - counts("cached_tokens") + counts("tool_prompt_tokens"),
            costs[0],
            {m: counts(f"input_{m}_tokens") - counts(f"cached_{m}_tokens") for m in MODALITIES},
        ),
        ("cached_input", counts("cached_tokens"), costs[1], {m: counts(f"cached_{m}_tokens") for m in MODALITIES}),
        (
            "output",
            counts("output_tokens") + counts("thinking_tokens"),
            costs[2],
            {m: counts(f"output_{m}_tokens") for m in MODALITIES},
        ),
    )
    split = []
    for kind, tokens, cost, by_modality in kinds:
        text_cost = cost
        for modality, count in by_modality.items():
            if count:
                rate = rates.get((kind, modality))
                part = None if cost is None or rate is None else rate * count / PER_MILLION
                split.append((kind, modality, count, part))
                text_cost = None if text_cost is None or part is None else text_cost - part
        text_tokens = tokens - sum(by_modality.values())
        if text_tokens or text_cost:
            split.append((kind, "text", text_tokens, text_cost))
    return split


def library_usage(tokens: Usage) -> genai_prices.Usage:
    """`tokens` in genai-prices' units, as its own extractor reads a Gemini `usageMetadata`.

    A modality's input, cache-read and output counts are given together, zeros included, as
    the library refuses cached and modality tokens without their overlap.
    """
    by_modality = {}
    for modality in tokens.modalities():
        by_modality.update(
            {
                f"input_{modality}_tokens": getattr(tokens, f"input_{modality}_tokens"),
                f"cache_{modality}_read_tokens": getattr(tokens, f"cached_{modality}_tokens"),
                f"output_{modality}_tokens": getattr(tokens, f"output_{modality}_tokens"),
            }
        )
    return genai_prices.Usage(
        input_tokens=tokens.input_tokens + tokens.tool_prompt_tokens,
        cache_read_tokens=tokens.cached_tokens,
        input_tool_tokens=tokens.tool_prompt_tokens,
        output_tokens=tokens.output_tokens + tokens.thinking_tokens,
        output_reasoning_tokens=tokens.thinking_tokens,
        **by_modality,
    )


_NEVER_REPORTED_UNITS = ("web_searches_kcount",)
"""Units genai-prices lists for Gemini that no call of ours has a count for."""


def _without_unused_units(model_price: ModelPrice, modalities: frozenset[str]) -> ModelPrice:
    """`model_price` less the units this call has none of: the same dollars, computed in about a quarter of the time.

    genai-prices splits a usage over every unit its price lists (text, audio, image and
    video, cached and not, web searches) before multiplying; units with zero counts add
    zero and take nothing from the others, so leaving them out changes no digit
    (`test_pricing` checks this against the library for every Google model). A modality's
    units go as a group (the library requires its cached price beside the others).
    """
    unused = tuple(f"_{modality}_" for modality in MODALITIES if modality not in modalities)
    return ModelPrice(
        **{
            key: value
            for key, value in model_price.__dict__.items()
            if value is not None and key not in _NEVER_REPORTED_UNITS and not any(part in key for part in unused)
        }
    )


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
            raise ValueError(
                f"price override for {model!r} needs input_mtok and output_mtok "
                f"(and optionally cached_input_mtok); got {sorted(prices)}"
            )
        override = PriceOverride(**{name: Decimal(str(value)) for name, value in prices.items()})
        if any(price < 0 for price in (override.input_mtok, override.output_mtok, override.cached_input_mtok or 0)):
            raise ValueError(f"price override for {model!r} has a negative price")
        overrides[model] = override
    return overrides


COST_COLUMNS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "total_cost_usd", "saved_cost_usd"]


def token_counts(row, prefix: str = "") -> Usage:
    """The priced token kinds of a row (an itertuples row of llm_calls or llm_attempts) as a `Usage`."""
    counts: dict[str, Any] = {name: int(getattr(row, prefix + name, 0) or 0) for name in PRICED_FIELDS}
    return Usage(**counts)


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
    priced = [
        name
        for name in ("model", "model_version", "processing", *PRICED_FIELDS, *(f"saved_{n}" for n in PRICED_FIELDS))
        if name in calls.columns
    ]
    called_at = calls["called_at"]
    times = (
        called_at.array.to_pydatetime()
        if pd.api.types.is_datetime64_any_dtype(called_at.dtype)
        else [at.to_pydatetime() if hasattr(at, "to_pydatetime") else at for at in called_at]
    )
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
