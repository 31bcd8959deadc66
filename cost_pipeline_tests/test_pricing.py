"""Prices against figures computed by hand from Google's published per-million-token rates.

Rates used (USD per 1M tokens): gemini-2.5-flash-lite input 0.10, cached 0.01, output 0.40;
gemini-2.5-flash input 0.30, cached 0.03, output 2.50; gemini-2.5-pro up to 200k prompt
tokens input 1.25, cached 0.125, output 10, above 200k input 2.50, cached 0.25, output 15.
Served tiers (Vertex `trafficType`) are checked against genai-prices' own `service_tier` variants.
"""

from datetime import datetime, timezone
from decimal import Decimal

import genai_prices
import pandas as pd
import pytest
from genai_prices import data_snapshot
from google.genai import types

from cost_pipeline.gemini.settings import BATCH, STANDARD
from cost_pipeline.gemini.usage import Usage
from cost_pipeline.money.pricing import (
    LIBRARY_SOURCE,
    MISSING,
    PROVISIONED_SOURCE,
    PriceBook,
    Tier,
    library_usage,
    parse_overrides,
    price_calls,
)

AT = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
D = Decimal


def counts(**tokens) -> Usage:
    """A call's usage by short names: input, cached, output, thinking, tool_prompt, input_audio, output_image, ..."""
    return Usage(**{f"{name}_tokens": value for name, value in tokens.items()})


def cost(model, **tokens):
    return PriceBook().cost(model, counts(**tokens), AT)


def test_flash_lite_with_cached_tokens_bills_the_cached_part_once_at_the_cache_rate():
    c = cost("gemini-2.5-flash-lite", input=1000, cached=400, output=100)
    assert c.input_cost == D("0.000060")  # 600 uncached x 0.10 / 1M
    assert c.cached_input_cost == D("0.000004")  # 400 cached x 0.01 / 1M
    assert c.output_cost == D("0.000040")  # 100 x 0.40 / 1M
    assert c.total_cost == D("0.000104")
    assert c.price_source == LIBRARY_SOURCE and c.price_status == "ok"


def test_thinking_tokens_are_billed_as_output():
    c = cost("gemini-2.5-pro", input=10_000, output=500, thinking=1_500)
    assert c.input_cost == D("0.0125")  # 10,000 x 1.25 / 1M
    assert c.output_cost == D("0.02")  # (500 + 1,500) x 10 / 1M
    assert c.total_cost == D("0.0325")


def test_a_long_context_prompt_moves_the_whole_request_to_the_higher_tier():
    c = cost("gemini-2.5-pro", input=250_000, cached=50_000, output=2_000, thinking=1_000)
    assert c.input_cost == D("0.5")  # 200,000 uncached x 2.50 / 1M
    assert c.cached_input_cost == D("0.0125")  # 50,000 x 0.25 / 1M
    assert c.output_cost == D("0.045")  # 3,000 x 15 / 1M
    assert c.total_cost == D("0.5575")


def test_just_under_the_threshold_stays_on_the_base_tier():
    assert cost("gemini-2.5-pro", input=200_000).input_cost == D("0.25")


def test_one_million_tokens_cost_the_per_million_rate_not_a_millionth_of_it():
    assert cost("gemini-2.5-flash", input=1_000_000).total_cost == D("0.30")
    assert cost("gemini-2.5-flash", output=1_000_000).total_cost == D("2.50")


def test_a_zero_token_call_costs_exactly_zero():
    c = cost("gemini-2.5-flash-lite")
    assert (c.input_cost, c.cached_input_cost, c.output_cost, c.total_cost) == (0, 0, 0, 0)
    assert c.price_status == "ok"


def test_tool_use_prompt_tokens_are_input():
    assert cost("gemini-2.5-flash", input=1000, tool_prompt=500).input_cost == D("0.00045")


def test_money_is_decimal_with_twelve_places():
    c = cost("gemini-2.5-flash-lite", input=1)
    assert isinstance(c.total_cost, Decimal) and c.total_cost == D("0.0000001")
    assert c.total_cost.as_tuple().exponent == -12


def test_an_unknown_model_is_missing_not_free():
    c = cost("gemini-9-ultra", input=1000, output=10)
    assert c.price_status == MISSING
    assert c.total_cost is None and c.input_cost is None


def test_overrides_replace_library_prices_and_price_unknown_models():
    overrides = parse_overrides(
        {
            "gemini-2.5-flash-lite": {"input_mtok": "0.08", "output_mtok": "0.32", "cached_input_mtok": "0.008"},
            "gemini-9-ultra": {"input_mtok": 5, "output_mtok": 20},
        }
    )
    book = PriceBook(overrides, override_source="override costs.toml")
    lite = book.cost("gemini-2.5-flash-lite", counts(input=1000, cached=500, output=100), AT)
    assert (lite.input_cost, lite.cached_input_cost, lite.output_cost) == (D("0.00004"), D("0.000004"), D("0.000032"))
    assert lite.price_source == "override costs.toml"
    ultra = book.cost("gemini-9-ultra", counts(input=1000, output=10), AT)
    assert ultra.total_cost == D("0.0052") and ultra.price_status == "ok"


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"input_mtok": "1"}, "needs input_mtok and output_mtok"),
        ({"input_mtok": "1", "output_mtok": "2", "cache": "3"}, "needs input_mtok and output_mtok"),
        ({"input_mtok": "-1", "output_mtok": "2"}, "negative price"),
    ],
)
def test_a_malformed_override_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides({"m": bad})


def test_audio_tokens_are_priced_apart_from_text():
    text = cost("gemini-2.5-flash", input=10_000, output=100)
    audio = cost("gemini-2.5-flash", input=10_000, input_audio=10_000, output=100)
    assert audio.input_cost == D("0.01")  # 10,000 audio x 1.00 / 1M, not 0.30 as text
    assert text.input_cost == D("0.003") and audio.output_cost == text.output_cost


def test_the_served_model_is_priced_and_an_unpriced_alias_falls_back_to_the_requested_model():
    book = PriceBook()
    served = book.cost("gemini-flash-lite-latest", counts(input=1_000_000), AT, served_model="gemini-2.5-flash-lite")
    assert served.input_cost == D("0.1")
    fallback = book.cost("gemini-2.5-flash-lite", counts(input=1_000_000), AT, served_model="gemini-unknown-build-7")
    assert fallback.input_cost == D("0.1") and fallback.price_status == "ok"


def _google_models():
    return [
        model.id
        for provider in data_snapshot.get_snapshot().providers
        if provider.id == "google"
        for model in provider.models
    ]


def _carries(model_id: str, context: dict[str, str], at: datetime) -> bool:
    """Whether the library's data has a variant for `context` on `model_id` in force at `at`."""
    google = next(provider for provider in data_snapshot.get_snapshot().providers if provider.id == "google")
    model = next(model for model in google.models if model.id == model_id)
    return any(
        variant.when == context and (variant.constraint is None or variant.constraint.active(at))
        for variant in model.price_variants or ()
    )


TIERS = [
    (Tier(), None),
    (Tier(BATCH), {"processing": BATCH}),
    (Tier(served_tier="ON_DEMAND_FLEX"), {"service_tier": "flex"}),
    (Tier(served_tier="ON_DEMAND_PRIORITY"), {"service_tier": "priority"}),
]


@pytest.mark.parametrize("model", _google_models())
def test_every_google_model_costs_exactly_what_genai_prices_computes(model):
    """The price book's shortcut (units a call has none of left out) must agree with the library to the digit,
    text, audio, image and video alike."""
    import random

    rng = random.Random(model)
    book = PriceBook()
    for at in (AT, datetime(2025, 3, 1, tzinfo=timezone.utc)):
        for _ in range(40):
            size = rng.choice([5_000, 300_000])  # below and above the long-context threshold
            text, cached_text = rng.randint(0, size), rng.choice([0, rng.randint(0, size)])
            media = {}
            for modality in rng.sample(["audio", "image", "video"], rng.randint(0, 2)):
                uncached, cached_part = rng.randint(0, size), rng.choice([0, rng.randint(0, size)])
                media[modality] = (uncached + cached_part, cached_part, rng.choice([0, 0, 700]))
            prompt = text + cached_text + sum(total for total, _, _ in media.values())
            cached = cached_text + sum(part for _, part, _ in media.values())
            output_media = sum(out for _, _, out in media.values())
            tokens = counts(
                input=prompt,
                cached=cached,
                output=rng.randint(0, 4_000) + output_media,
                thinking=rng.choice([0, 900]),
                tool_prompt=rng.choice([0, 35]),
                **{
                    f"{kind}_{m}": value
                    for m, values in media.items()
                    for kind, value in zip(("input", "cached", "output"), values)
                },
            )
            usage = genai_prices.Usage(
                input_tokens=tokens.input_tokens + tokens.tool_prompt_tokens,
                cache_read_tokens=tokens.cached_tokens,
                input_tool_tokens=tokens.tool_prompt_tokens,
                output_tokens=tokens.output_tokens + tokens.thinking_tokens,
                output_reasoning_tokens=tokens.thinking_tokens,
                **{
                    key: value
                    for m, (total, part, out) in media.items()
                    for key, value in (
                        (f"input_{m}_tokens", total),
                        (f"cache_{m}_read_tokens", part),
                        (f"output_{m}_tokens", out),
                    )
                },
            )
            tier, context = rng.choice(TIERS)  # batch, flex and priority variants too, where the library has them
            try:
                library = genai_prices.calc_price(
                    usage, model, provider_id="google", genai_request_timestamp=at, price_context=context
                )
            except LookupError:
                assert book.cost(model, tokens, at, processing=tier).price_status == MISSING
                continue
            ours = book.cost(model, tokens, at, processing=tier)
            if tier.served_tier and not _carries(model, context, at):  # the library would say: standard price
                assert ours.price_status == MISSING and ours.total_cost is None, (model, tier)
                continue
            assert ours.input_cost + ours.cached_input_cost == library.input_price.quantize(ours.total_cost), tokens
            assert ours.output_cost == library.output_price.quantize(ours.total_cost), tokens


def test_image_output_is_priced_at_the_image_rate_not_as_text():
    # A real body of gemini-2.5-flash-image: 10 prompt tokens, 1,290 image tokens out ($30 per million, not $2.50).
    image = cost("gemini-2.5-flash-image", input=10, output=1290, output_image=1290)
    assert image.output_cost == D("0.0387")  # 1,290 x 30 / 1M
    assert image.input_cost == D("0.000003")  # 10 x 0.30 / 1M
    text = cost("gemini-2.5-flash-image", input=10, output=1290)
    assert image.output_cost / text.output_cost == 12


def test_the_served_model_is_priced_whatever_prefix_or_case_the_api_sends():
    book = PriceBook()
    tokens = counts(input=1_000_000, output=100_000)
    pro = book.cost("gemini-2.5-pro", tokens, AT)
    for served in ("models/gemini-2.5-pro", "Models/Gemini-2.5-Pro", "publishers/google/models/gemini-2.5-pro"):
        assert book.cost("gemini-2.5-flash-lite", tokens, AT, served_model=served) == pro, served


# Served tiers. genai-prices 0.2.5 carries flex and priority for Google's gemini-4-* and gemini-3.8-*-tts
# models only; gemini-4-argon's are in force from 2026-10-14 (flex half of standard, priority 1.8x).
TIERED = "gemini-4-argon"
FLEX, PRIORITY = Tier(served_tier="ON_DEMAND_FLEX"), Tier(served_tier="ON_DEMAND_PRIORITY")


@pytest.mark.parametrize("served_tier,service_tier", [("ON_DEMAND_FLEX", "flex"), ("ON_DEMAND_PRIORITY", "priority")])
def test_flex_and_priority_cost_what_genai_prices_computes_for_that_service_tier(served_tier, service_tier):
    tokens = counts(input=120_000, cached=30_000, output=4_000, thinking=1_000)
    book = PriceBook()
    ours = book.cost(TIERED, tokens, AT, processing=Tier(served_tier=served_tier))
    library = genai_prices.calc_price(
        library_usage(tokens),
        TIERED,
        provider_id="google",
        genai_request_timestamp=AT,
        price_context={"service_tier": service_tier},
    )
    assert ours.price_status == "ok" and ours.price_source == f"{LIBRARY_SOURCE} ({service_tier})"
    assert ours.input_cost + ours.cached_input_cost == library.input_price
    assert ours.output_cost == library.output_price and ours.total_cost == library.total_price
    assert all(isinstance(c, Decimal) for c in (ours.input_cost, ours.cached_input_cost, ours.output_cost))
    assert ours.total_cost != book.cost(TIERED, tokens, AT).total_cost


def test_flex_is_half_and_priority_one_point_eight_times_the_standard_price_of_gemini_4_argon():
    book, tokens = PriceBook(), counts(input=1_000_000, cached=200_000, output=1_000_000)
    standard = book.cost(TIERED, tokens, AT)
    assert standard.total_cost == D("11.62")  # (800,000 x 2 + 200,000 x 0.10 + 1M x 10) / 1M
    assert book.cost(TIERED, tokens, AT, processing=FLEX).total_cost == standard.total_cost / 2
    assert book.cost(TIERED, tokens, AT, processing=PRIORITY).total_cost == standard.total_cost * D("1.8")


@pytest.mark.parametrize("model", ["gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro"])
@pytest.mark.parametrize("tier,service_tier", [(FLEX, "flex"), (PRIORITY, "priority")], ids=["flex", "priority"])
def test_a_tier_the_library_has_no_variant_for_is_missing_though_the_library_would_price_it_as_standard(
    model, tier, service_tier
):
    tokens = counts(input=10_000, output=1_000)
    context = {"service_tier": service_tier}
    library = genai_prices.calc_price(
        library_usage(tokens), model, provider_id="google", genai_request_timestamp=AT, price_context=context
    )
    standard = PriceBook().cost(model, tokens, AT)
    assert library.total_price == standard.total_cost  # the library's silent fallback we must not take
    priced = PriceBook().cost(model, tokens, AT, processing=tier)
    assert priced.price_status == MISSING
    assert (priced.input_cost, priced.cached_input_cost, priced.output_cost, priced.total_cost) == (None,) * 4


@pytest.mark.parametrize("served_tier", ["ON_DEMAND_OFFPEAK", "SOMETHING_NEW", "flex-ish"])
@pytest.mark.parametrize("model", [TIERED, "gemini-2.5-flash-lite"])
def test_offpeak_or_an_unknown_tier_has_no_price_never_the_standard_one(model, served_tier):
    priced = PriceBook().cost(model, counts(input=10_000, output=1_000), AT, processing=Tier(served_tier=served_tier))
    assert priced.price_status == MISSING and priced.total_cost is None


def test_a_variant_counts_only_from_the_day_the_library_puts_it_in_force():
    # gemini-4-neon's flex price starts on 2026-11-19; the day before, no flex price is known.
    tokens, book = counts(input=1_000_000), PriceBook()
    before, after = datetime(2026, 11, 18, 23, tzinfo=timezone.utc), datetime(2026, 11, 19, 1, tzinfo=timezone.utc)
    assert book.cost("gemini-4-neon", tokens, before, processing=FLEX).price_status == MISSING
    assert book.cost("gemini-4-neon", tokens, after, processing=FLEX).total_cost == D("1.5")
    assert book.cost("gemini-4-neon", tokens, after).total_cost == D("3")


@pytest.mark.parametrize("model", [TIERED, "gemini-2.5-flash-lite", "gemini-9-ultra"])
def test_provisioned_throughput_costs_exactly_zero_with_its_own_source(model):
    priced = PriceBook().cost(
        model,
        counts(input=500_000, cached=100_000, output=20_000),
        AT,
        processing=Tier(served_tier="PROVISIONED_THROUGHPUT"),
    )
    assert (priced.input_cost, priced.cached_input_cost, priced.output_cost, priced.total_cost) == (0, 0, 0, 0)
    assert isinstance(priced.total_cost, Decimal) and priced.total_cost.as_tuple().exponent == -12
    assert priced.price_source == PROVISIONED_SOURCE and priced.price_status == "ok"


@pytest.mark.parametrize("model", [TIERED, "gemini-2.5-flash-lite"])
def test_no_tier_on_demand_and_unspecified_are_all_the_standard_price(model):
    book, tokens = PriceBook(), counts(input=10_000, cached=2_000, output=500)
    standard = book.cost(model, tokens, AT)
    for processing in (
        STANDARD,
        Tier(),
        Tier(served_tier="ON_DEMAND"),
        Tier(served_tier="TRAFFIC_TYPE_UNSPECIFIED"),
        Tier(served_tier=types.TrafficType.ON_DEMAND),
        Tier(served_tier=""),
    ):
        assert book.cost(model, tokens, AT, processing=processing) == standard, processing
    assert standard.price_source == LIBRARY_SOURCE


def test_the_tier_is_read_whatever_its_case_or_google_genai_enum():
    book, tokens = PriceBook(), counts(input=10_000, output=500)
    flex = book.cost(TIERED, tokens, AT, processing=FLEX)
    assert book.cost(TIERED, tokens, AT, processing=Tier(served_tier="on_demand_flex")) == flex
    assert book.cost(TIERED, tokens, AT, processing=Tier(served_tier=types.TrafficType.ON_DEMAND_FLEX)) == flex


@pytest.mark.parametrize(
    "served_tier", ["ON_DEMAND_FLEX", "ON_DEMAND_PRIORITY", "PROVISIONED_THROUGHPUT", "ON_DEMAND_OFFPEAK"]
)
def test_batch_wins_over_a_served_tier(served_tier):
    book, tokens = PriceBook(), counts(input=10_000, output=500)
    batch = book.cost(TIERED, tokens, AT, processing=BATCH)
    assert book.cost(TIERED, tokens, AT, processing=Tier(BATCH, served_tier)) == batch
    assert batch.price_source == f"{LIBRARY_SOURCE} (batch)"


def test_a_served_model_priced_but_not_at_the_tier_is_missing_not_the_requested_models_tier_price():
    book, tokens = PriceBook(), counts(input=10_000, output=500)
    # gemini-2.5-flash has a price but no flex one: its flex answer is not priced as gemini-4-argon's flex.
    served = book.cost(TIERED, tokens, AT, served_model="gemini-2.5-flash", processing=FLEX)
    assert served.price_status == MISSING
    # A build nobody prices still falls back to the requested model, at the tier.
    alias = book.cost(TIERED, tokens, AT, served_model="gemini-4-argon-build-x", processing=FLEX)
    assert alias == book.cost(TIERED, tokens, AT, processing=FLEX) and alias.price_status == "ok"


def test_an_override_prices_every_on_demand_tier_alike_but_provisioned_stays_zero():
    book = PriceBook(parse_overrides({TIERED: {"input_mtok": "1", "output_mtok": "4"}}), override_source="override")
    tokens = counts(input=1_000_000, output=1_000_000)
    for tier in (Tier(), FLEX, PRIORITY, Tier(served_tier="ON_DEMAND_OFFPEAK")):
        priced = book.cost(TIERED, tokens, AT, processing=tier)
        assert priced.total_cost == D("5") and priced.price_source == "override", tier
    assert book.cost(TIERED, tokens, AT, processing=Tier(served_tier="PROVISIONED_THROUGHPUT")).total_cost == 0


def test_modality_rates_follow_the_tier():
    book = PriceBook()
    standard, flex = book.modality_rates(TIERED, AT), book.modality_rates(TIERED, AT, FLEX)
    assert standard is not None and flex is not None
    assert flex[("input", "audio")] == standard[("input", "audio")] / 2 == D("1")
    assert book.modality_rates("gemini-2.5-flash-lite", AT, FLEX) is None
    provisioned = book.modality_rates(TIERED, AT, Tier(served_tier="PROVISIONED_THROUGHPUT"))
    assert provisioned is not None and set(provisioned.values()) == {0}


def test_price_calls_reads_a_served_tier_column():
    tiers = ["ON_DEMAND_FLEX", "ON_DEMAND_PRIORITY", "PROVISIONED_THROUGHPUT", "ON_DEMAND_OFFPEAK", None, "ON_DEMAND"]
    calls = pd.DataFrame(
        {
            "called_at": pd.to_datetime([AT] * 7, utc=True),
            "model": [TIERED] * 7,
            "model_version": [TIERED] * 6 + [None],
            "processing": [STANDARD] * 6 + [BATCH],
            "served_tier": [*tiers, "ON_DEMAND_FLEX"],
            "input_tokens": [1_000_000] * 7,
            "output_tokens": [0] * 7,
        }
    )
    priced = price_calls(calls, PriceBook())
    assert priced["total_cost_usd"].tolist() == [D("1"), D("3.6"), 0, None, D("2"), D("2"), D("1")]
    assert priced["price_status"].tolist() == ["ok", "ok", "ok", MISSING, "ok", "ok", "ok"]
    assert priced["price_source"].tolist() == [
        f"{LIBRARY_SOURCE} (flex)",
        f"{LIBRARY_SOURCE} (priority)",
        PROVISIONED_SOURCE,
        None,
        LIBRARY_SOURCE,
        LIBRARY_SOURCE,
        f"{LIBRARY_SOURCE} (batch)",
    ]
    without = price_calls(calls.drop(columns="served_tier"), PriceBook())
    assert without["total_cost_usd"].tolist()[:6] == [D("2")] * 6
