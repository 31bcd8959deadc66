"""Answers Google's servers really sent (fixtures/responses, recorded by public projects), replayed through the real
google-genai client and a real day run: every billed one costs in the ledger exactly what genai-prices computes for
the same body; one without token counts is billing unknown; a retired model routed to its successor is priced, and
named, as the successor."""

import json
import logging
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import genai_prices
import pytest

from cost_pipeline.gemini.usage import normalized_model
from cost_pipeline.ingest.synthetic import generate

from .conftest import materialize_day

DAY = date(2026, 11, 1)
RESPONSES = Path(__file__).parent / "fixtures" / "responses"
NO_FAILURE_LIMIT = {"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}}


def recorded() -> dict[str, dict]:
    """Each recorded body by its file's name, which it carries as its responseId so its ledger row can be found
    (some recordings have none, two share one)."""
    return {
        path.stem: {**json.loads(path.read_text())["body"], "responseId": path.stem}
        for path in sorted(RESPONSES.glob("*.json"))
    }


TIER_WORDS = {"ON_DEMAND_FLEX": "flex", "ON_DEMAND_PRIORITY": "priority"}
"""Vertex's trafficType of a flex or priority answer, as genai-prices names its service tier."""


def library_cost(body: dict, at) -> Decimal | None:
    """genai-prices' own price of a body: its extractor, its model match (the served model as prices name it), and
    the service tier Vertex says served it (the extractor alone prices every body at the standard rate)."""
    named = {**body, "modelVersion": normalized_model(body["modelVersion"])}
    try:
        extracted = genai_prices.extract_usage(named, provider_id="google")
    except ValueError:  # no token counts at all
        return None
    tier = TIER_WORDS.get((body.get("usageMetadata") or {}).get("trafficType", ""))
    context = {"service_tier": tier} if tier else None
    return extracted.calc_price(genai_request_timestamp=at, price_context=context).total_price


def ledger_rows(database) -> dict[str, tuple]:
    with duckdb.connect(str(database), read_only=True) as connection:
        rows = connection.execute(
            "SELECT response_id, model, model_version, billed, usage_source, reason, cost_usd, "
            "sent_at, output_image_tokens, price_status FROM llm_attempts"
        ).fetchall()
    return {row[0]: row[1:] for row in rows if row[0]}


@pytest.fixture
def replayed_day(landing_root, database, model_server):
    bodies = recorded()
    generate(landing_root, DAY, days=1, turns_per_day=60, seed=3)
    model_server.replay(list(bodies.values()))
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        run_config=NO_FAILURE_LIMIT,
        gemini={"limits": {"max_concurrency": 4}},
    )
    assert result.success
    return bodies, ledger_rows(database)


def test_every_recorded_answer_costs_what_genai_prices_computes_for_it(replayed_day):
    bodies, rows = replayed_day
    assert set(bodies) <= set(rows), "every replayed answer reached the ledger"
    compared, tier_without_price = 0, 0
    for name, body in bodies.items():
        model, served, billed, source, reason, cost, sent_at, image_tokens, status = rows[name]
        expected = library_cost(body, sent_at)
        if expected is None:
            continue
        compared += 1
        assert billed and source == "reported", name
        assert served == normalized_model(body["modelVersion"]), name
        if cost is None:  # served at a tier genai-prices has no price for: never priced as standard
            assert status == "missing" and body["usageMetadata"]["trafficType"] in TIER_WORDS, name
            tier_without_price += 1
            continue
        assert cost == expected.quantize(cost), (name, cost, expected)
    assert compared == len(bodies) - 3
    assert tier_without_price == 2, "the two recorded flex answers of gemini-3-flash-preview, which 0.2.5 cannot price"


def test_image_output_is_recorded_and_priced_as_image(replayed_day):
    bodies, rows = replayed_day
    *_, cost, _, image_tokens, _ = rows["img_gemini-2.5-flash-image_image_only"]
    assert image_tokens == 1290 and cost == Decimal("0.038703")  # 10 x $0.30 + 1,290 x $30 per million, not $2.50


def test_a_models_prefixed_version_is_priced_as_the_model_that_served_it(replayed_day):
    _, rows = replayed_day
    model, served, *_, cost, _, _, _ = rows["modelsprefix_gemini-2.5-pro_text_output_function"]
    # Requested flash-lite, served (and billed) gemini-2.5-pro: 49 x $1.25 + (12 + 264) x $10 per million.
    assert (model, served, cost) == ("gemini-2.5-flash-lite", "gemini-2.5-pro", Decimal("0.00282125"))


def test_usage_without_token_counts_is_billing_unknown_never_estimated(replayed_day):
    _, rows = replayed_day
    for name in (
        "vertex_trafficType_only_model_armor_block",
        "vertex_stream_chunk_trafficType_only",
        "vertex_gemini-3.1-pro-preview_stream_chunk_trafficType_only",
    ):
        _, _, billed, source, reason, cost, *_ = rows[name]
        assert (billed, source, cost) == (None, "unknown", None), name
        assert "usageMetadata without token counts (trafficType ON_DEMAND): billing unknown" in reason, name


def test_a_retired_model_routed_to_its_successor_is_priced_and_named_as_the_successor(
    landing_root, database, model_server
):
    # Public deprecation notes: from 2026-12-01 gemini-2.5-flash requests are routed to gemini-3.5-flash-lite,
    # billed at its rates (fixtures/responses/README.md).
    model_server.configure(model_aliases="gemini-2.5-flash=gemini-3.5-flash-lite")
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=4)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini={"models": {"clean_model": "gemini-2.5-flash"}},
        instance=instance,
    )
    assert result.success
    with duckdb.connect(str(database), read_only=True) as connection:
        attempts = connection.execute(
            "SELECT model_version, input_tokens, cached_tokens, output_tokens, thinking_tokens, cost_usd, sent_at "
            "FROM llm_attempts WHERE model = 'gemini-2.5-flash' AND billed"
        ).fetchall()
    assert attempts and {served for served, *_ in attempts} == {"gemini-3.5-flash-lite"}
    for _, prompt, cached, output, thoughts, cost, sent_at in attempts:
        usage = genai_prices.Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=output + thoughts)
        expected = genai_prices.calc_price(
            usage, "gemini-3.5-flash-lite", provider_id="google", genai_request_timestamp=sent_at
        ).total_price
        assert cost == expected.quantize(cost)
    (calls,) = [
        m
        for m in result.asset_materializations_for_node("turns_through_gemini")
        if m.asset_key == dg.AssetKey("llm_calls")
    ]
    table = calls.metadata["served_by_another_model"].value
    assert "| gemini-2.5-flash | gemini-3.5-flash-lite |" in table
    told = [
        entry
        for entry in instance.all_logs(result.run_id)
        if "gemini-2.5-flash was answered by gemini-3.5-flash-lite" in entry.user_message
    ]
    assert len(told) == 1 and told[0].level == logging.WARNING  # once per run, not once per call


def test_a_billed_answer_the_sdk_cannot_read_is_billing_unknown_never_free(landing_root, database, model_server):
    # A recorded body with a thoughtSignature that is not base64: google-genai rejects the 200 while parsing it.
    body = recorded()["text_gemini-3-flash-preview"]
    part = body["candidates"][0]["content"]["parts"][0]
    body["candidates"][0]["content"]["parts"][0] = {**part, "thoughtSignature": "<not base64>"}
    generate(landing_root, DAY, days=1, turns_per_day=10, seed=4)
    model_server.replay([body])
    assert materialize_day(DAY, landing_root, database, model_server, run_config=NO_FAILURE_LIMIT).success
    with duckdb.connect(str(database), read_only=True) as connection:
        unread = connection.execute(
            "SELECT http_status, billed, usage_source, cost_usd, reason FROM llm_attempts "
            "WHERE reason LIKE 'answer google-genai could not read%'"
        ).fetchall()
    assert [row[:4] for row in unread] == [(200, None, "unknown", None)]
