"""What a Gemini call cost, in exact Decimal dollars, at the price in force on the call's date.

Prices come from the `genai-prices` library (offline, versioned with the package), or
from an override for a negotiated rate or a model the library lacks. The token
semantics follow the Gemini API and the library: cached tokens are part of the prompt
count and are billed once, at the cache-read rate; thinking tokens are output; tool-use
prompt tokens are input; a prompt over a long-context threshold moves the whole request
to the higher tier. A model with no price is never costed as zero: its costs stay null
and its `price_status` is `missing`.

Vertex AI names the tier that served each answer (`usageMetadata.trafficType`). Flex and
priority answers are priced with the library's `service_tier` variants; an answer on
provisioned throughput costs nothing more (the capacity is prepaid); a tier the library
has no price for leaves the answer unpriced, never at the standard rate, because the
library itself answers an unknown tier with standard prices.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any

import genai_prices
import pandas as pd
from genai_prices.types import ModelPrice, PriceCalculation, calc_unit_price

from cost_pipeline.gemini.settings import BATCH, STANDARD
from cost_pipeline.gemini.traffic import PROVISIONED_THROUGHPUT, STANDARD_TRAFFIC_TYPES
from cost_pipeline.gemini.usage import MODALITIES, PRICED_FIELDS, Usage, normalized_model

MONEY_PLACES = Decimal("0.000000000001")
"""Twelve places: one token at $0.01 per million tokens is 0.00000001."""
MONEY_SQL_TYPE = "DECIMAL(20,12)"
PER_MILLION = 1_000_000
OK, MISSING = "ok", "missing"
LIBRARY_SOURCE = f"genai-prices {genai_prices.__version__}"
PROVISIONED_SOURCE = "provisioned throughput: prepaid, $0 marginal"


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


@dataclass(frozen=True)
class Tier:
    """How an answer was processed and served: `processing` (standard or batch) and Vertex's `trafficType`.

    `served_tier` is the value as Vertex sends it (`ON_DEMAND_FLEX`, `ON_DEMAND_PRIORITY`,
    `PROVISIONED_THROUGHPUT`, ...); None, `ON_DEMAND` and `TRAFFIC_TYPE_UNSPECIFIED` are the
    standard tier. Batch wins over a served tier: the Batch API is a tier of its own (no batch
    answer is served flex, priority or from provisioned throughput), and genai-prices resolves a
    context naming both to a key-by-key mix of the two variants, a price nobody bills.
    """

    processing: str = STANDARD
    served_tier: str | None = None

    def resolved(self) -> "Tier":
        """The same tier spelt one way: the served tier an upper-case `str`, None when standard or when batch."""
        if self.served_tier is None:
            return self
        served = self.served_tier.strip().upper()  # a plain str, also from google-genai's `TrafficType` enum
        if self.processing == BATCH or not served or served in STANDARD_TRAFFIC_TYPES:
            return Tier(self.processing)
        return Tier(self.processing, served)

    def price_context(self) -> dict[str, str] | None:
        """genai-prices' context for this (resolved) tier: `ON_DEMAND_FLEX` is its service tier `flex`."""
        if self.processing != STANDARD:
            return {"processing": self.processing}
        if self.served_tier:
            return {"service_tier": self.served_tier.removeprefix("ON_DEMAND_").lower()}
        return None


@lru_cache(maxsize=256)
def _tier(processing: "str | Tier") -> Tier:
    """`processing` (a mode, or a `Tier`) as a resolved `Tier`; remembered, as a call's tier is one of a few."""
    return (processing if isinstance(processing, Tier) else Tier(processing)).resolved()


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
        self,
        model: str,
        tokens: Usage,
        at: datetime,
        served_model: str | None = None,
        processing: str | Tier = STANDARD,
    ) -> CallCost:
        """The cost of `tokens` on `model` at time `at`; status `missing` when no price is known.

        `served_model` is the `modelVersion` the response named (a `models/` prefix and case
        do not matter): the provider bills the model that served the request, so its price
        wins when it is known; an alias with no price of its own falls back to the requested
        model's. `processing` is a processing mode (`standard`, or `batch`: the library's batch
        variant where the model has one) or a `Tier`, which adds the tier Vertex served the
        answer at: flex and priority at the library's `service_tier` variants, provisioned
        throughput at exactly $0 (source `PROVISIONED_SOURCE`), and a tier the library has no
        variant for, on that day, `missing`: never the standard price, and never the requested
        model's price when the served model is priced but not at that tier. An override prices
        every mode and on-demand tier alike.
        """
        tier = _tier(processing)
        key = (model, served_model, _utc_day(at), tokens, tier)
        if key not in self._memo:
            if tier.served_tier == PROVISIONED_THROUGHPUT:
                priced = CallCost(ZERO, ZERO, ZERO, ZERO, PROVISIONED_SOURCE, OK)
            else:
                served = normalized_model(served_model)
                as_served = self._price(served, tokens, at, tier) if served and served != model else None
                if as_served is None or (as_served.price_status == MISSING and not self._is_priced(served, at)):
                    priced = self._price(model, tokens, at, tier)
                else:
                    priced = as_served
            self._memo[key] = priced
            if len(self._memo) > MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            return priced
        return self._memo[key]

    def _is_priced(self, model: str | None, at: datetime) -> bool:
        """Whether anybody prices `model` on `at`'s day at all, whatever the tier."""
        return model is not None and self._model_price(model, at, frozenset(), Tier()) is not None

    def _model_price(
        self, model: str, at: datetime, modalities: frozenset[str], tier: Tier
    ) -> tuple[ModelPrice, ModelPrice, str] | None:
        """(full price, price to calculate with, source) of `model` at `tier` on `at`'s day; None when nobody
        prices it (at that tier).

        Looked up once per model, day, set of modalities and tier: the library's model match is
        the same for every call of a day, and so is the price less the units a call never uses.
        """
        key = (model, _utc_day(at), modalities, tier)
        if key not in self._model_prices:
            full: ModelPrice | None
            if model in self.overrides:
                full, source = self.overrides[model].model_price(), self.override_source
            else:
                context = tier.price_context()
                try:
                    calculation = genai_prices.calc_price(
                        genai_prices.Usage(),
                        model,
                        provider_id="google",
                        genai_request_timestamp=at,
                        price_context=context,
                    )
                except LookupError:
                    full = None
                else:
                    served_variant = tier.served_tier is None or _has_variant(calculation, context or {}, at)
                    full = calculation.model_price if served_variant else None
                source = LIBRARY_SOURCE if context is None else f"{LIBRARY_SOURCE} ({next(iter(context.values()))})"
            self._model_prices[key] = (full, _without_unused_units(full, modalities), source) if full else None
        return self._model_prices[key]

    def modality_rates(
        self, model: str, at: datetime, processing: str | Tier = STANDARD, long_context: bool = False
    ) -> dict[tuple[str, str], Decimal | None] | None:
        """USD per million tokens of each invoice kind in audio, image and video; None when nobody prices `model`
        (at `processing`'s tier, as `cost` prices it; provisioned throughput's rates are all 0).

        What the invoice's modality lines cost: a modality without a price of its own is
        billed at its kind's text rate, as genai-prices bills it.
        """
        tier = _tier(processing)
        if tier.served_tier == PROVISIONED_THROUGHPUT:
            return {(kind, modality): ZERO for modality in MODALITIES for kind in ("input", "cached_input", "output")}
        prices = self._model_price(normalized_model(model) or model, at, frozenset(MODALITIES), tier)
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

    def _price(self, model: str, tokens: Usage, at: datetime, tier: Tier) -> CallCost:
        modalities = tokens.modalities()
        prices = self._model_price(model, at, modalities, tier)
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


def _has_variant(calculation: PriceCalculation, context: dict[str, str], at: datetime) -> bool:
    """Whether the library priced `calculation` with a variant for `context` in force at `at`.

    The library falls back to the standard price, silently, for a context none of the model's
    variants names, and ignores the context for a model it found under another provider.
    """
    model = calculation.model
    if not any(model is candidate for candidate in calculation.provider.models):
        return False
    return any(
        all(context.get(name) == value for name, value in variant.when.items())
        and (variant.constraint is None or variant.constraint.active(at))
        for variant in model.price_variants or ()
    )


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
    priced like a real call. Rows of a model without a price keep null costs. The optional
    `processing` and `served_tier` (Vertex's `trafficType`) columns select the tier (`Tier`).
    """
    columns: dict[str, list] = {name: [] for name in [*COST_COLUMNS, "price_source", "price_status"]}
    if calls.empty:
        return calls.assign(**columns)
    # Only the columns pricing reads, and the times converted in one go: a row tuple of every column, its
    # timestamps boxed one by one, cost more than the (memoised) pricing itself.
    priced = [
        name
        for name in (
            "model",
            "model_version",
            "processing",
            "served_tier",
            *PRICED_FIELDS,
            *(f"saved_{n}" for n in PRICED_FIELDS),
        )
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
        served_tier = getattr(row, "served_tier", None)
        tier = Tier(
            processing if isinstance(processing, str) else STANDARD,
            served_tier if isinstance(served_tier, str) else None,
        )
        paid = book.cost(row.model, token_counts(row), at, served, tier)
        avoided = book.cost(row.model, token_counts(row, "saved_"), at, served, tier)
        columns["input_cost_usd"].append(paid.input_cost)
        columns["cached_input_cost_usd"].append(paid.cached_input_cost)
        columns["output_cost_usd"].append(paid.output_cost)
        columns["total_cost_usd"].append(paid.total_cost)
        columns["saved_cost_usd"].append(avoided.total_cost)
        columns["price_source"].append(paid.price_source)
        columns["price_status"].append(paid.price_status)
    return calls.assign(**columns)
