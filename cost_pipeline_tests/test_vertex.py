"""Gemini on Vertex AI: the endpoint as google-genai's conventions set it, labels on every request, batch refused."""

import json
import os
import subprocess
import sys
import urllib.request
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.gemini.attempts import Attempt
from cost_pipeline.gemini.client import call_served_tier
from cost_pipeline.gemini.labels import check_labels, label_safe, request_labels
from cost_pipeline.gemini.local_endpoint import LOCAL_CLIENT_SECRET, LOCAL_REFRESH_TOKEN, local_credentials_file
from cost_pipeline.gemini.settings import EndpointSettings, GeminiSettings, ProcessingSettings
from cost_pipeline.gemini.usage import Usage
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.pricing import STANDARD, PriceBook, Tier

from .conftest import materialize_day, run_demo

DAY = date(2026, 11, 2)
CLI = str(Path(sys.executable).with_name("cost-pipeline"))
VERTEX_VARIABLES = (
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_VERTEX_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
)


def dict_of(labels: str) -> dict[str, str]:
    """BigQuery's labels column (a JSON array of {key, value}) as a dict."""
    return {item["key"]: item["value"] for item in json.loads(labels)}


@pytest.fixture
def clean_environment(monkeypatch):
    for name in VERTEX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_environment_switches_to_vertex_as_google_genai_reads_it(clean_environment):
    assert not EndpointSettings().on_vertex() and EndpointSettings().needs_local_server()
    clean_environment.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    clean_environment.setenv("GOOGLE_CLOUD_PROJECT", "acme-evals")
    endpoint = EndpointSettings()
    assert endpoint.on_vertex() and not endpoint.needs_local_server()
    assert endpoint.endpoint_id() == "vertex:acme-evals/global"  # the location defaults to global
    clean_environment.setenv("GOOGLE_GENAI_USE_ENTERPRISE", "false")  # the SDK reads this one first
    assert not EndpointSettings().on_vertex()
    clean_environment.delenv("GOOGLE_GENAI_USE_ENTERPRISE")
    clean_environment.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")
    clean_environment.setenv("GOOGLE_VERTEX_BASE_URL", "http://127.0.0.1:9")
    settings = GeminiSettings(endpoint=EndpointSettings())
    assert settings.endpoint_id() == "vertex:acme-evals/europe-west4@http://127.0.0.1:9"
    described = settings.describe_endpoint()
    assert "Vertex AI, project acme-evals, location europe-west4" in described
    assert "Application Default Credentials" in described


def test_express_mode_needs_only_a_key_and_a_project_less_vertex_without_one_is_refused(clean_environment):
    clean_environment.setenv("GOOGLE_GENAI_USE_VERTEXAI", "1")
    assert EndpointSettings().problem() == (
        "Vertex AI is on (GOOGLE_GENAI_USE_ENTERPRISE or GOOGLE_GENAI_USE_VERTEXAI) but no project is set "
        "(GOOGLE_CLOUD_PROJECT) and no API key for express mode: set the project, with credentials from Application "
        "Default Credentials"
    )
    clean_environment.setenv("GOOGLE_API_KEY", "express-key-not-logged")
    endpoint = EndpointSettings()
    assert endpoint.problem() is None and endpoint.express_mode() and endpoint.endpoint_id() == "vertex:express"
    described = GeminiSettings(endpoint=endpoint).describe_endpoint()
    assert "express mode" in described and "express-key-not-logged" not in described


def test_labels_follow_googles_rules_and_configured_ones_are_checked_not_rewritten():
    labels = request_labels("function", "Eval-Voice Assistant/v1", "2026-11-02", {"team": "evals"})
    assert labels == {
        "pipeline": "cost_pipeline",
        "stage": "function",
        "evaluation": "eval-voice-assistant-v1",
        "partition": "2026-11-02",
        "team": "evals",
    }
    assert len(label_safe("x" * 100)) == 63
    assert check_labels({"team": "evals", "cost-center": "r_and_d"}) == []
    assert check_labels({"Team": "x"}) and check_labels({"1team": "x"}) and check_labels({"team": "A B"})
    assert check_labels({"stage": "mine"}) == [
        "label 'stage' is set by the pipeline itself (pipeline, stage, evaluation, partition)"
    ]
    assert check_labels({f"k{n}": "v" for n in range(61)})[-1].startswith("61 labels configured: at most 60")


def test_batch_mode_on_vertex_refuses_in_one_sentence_before_any_call(
    landing_root, database, model_server, clean_environment
):
    generate(landing_root, DAY, days=1, turns_per_day=20, seed=2)
    with pytest.raises(dg.DagsterResourceFunctionError) as refused:
        materialize_day(
            DAY,
            landing_root,
            database,
            model_server,
            gemini={
                "endpoint": {"base_url": None, "vertexai": True, "project": "acme", "vertex_base_url": "http://x"},
                "processing": {"mode": "batch"},
            },
        )
    failure = refused.value.__cause__
    assert isinstance(failure, dg.Failure) and failure.description.startswith(
        "batch mode is not available on Vertex AI here: Vertex batch prediction reads its requests from Cloud Storage"
    )
    assert model_server.requests() == [], "nothing was sent"
    assert (
        ProcessingSettings(mode="batch")
        and GeminiSettings(processing=ProcessingSettings(mode="batch")).problem() is None
    )


def test_labels_that_break_googles_rules_fail_the_step_with_the_reason(landing_root, database, model_server, tmp_path):
    generate(landing_root, DAY, days=1, turns_per_day=20, seed=2)
    costs = tmp_path / "costs.toml"
    costs.write_text('[labels]\nTeam = "evals"\n')
    result = materialize_day(
        DAY, landing_root, database, model_server, costs=CostSettings(config_file=str(costs)), raise_on_error=False
    )
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "turns_through_gemini"
    assert "[labels] in" in failure.step_failure_data.user_failure_data.description
    assert model_server.requests() == []


def test_a_day_on_vertex_with_adc_is_labelled_priced_by_tier_and_leaks_no_credential(tmp_path, model_server):
    """`cost-pipeline demo` on Vertex AI through the real client, credentials refreshed by google-auth from a file."""

    credentials = local_credentials_file(tmp_path, model_server.url)
    env = {name: value for name, value in os.environ.items() if name not in VERTEX_VARIABLES}
    env.update(
        GOOGLE_GENAI_USE_VERTEXAI="true",
        GOOGLE_CLOUD_PROJECT="acme-evals",
        GOOGLE_CLOUD_LOCATION="us-central1",
        GOOGLE_VERTEX_BASE_URL=model_server.url,
        GOOGLE_APPLICATION_CREDENTIALS=str(credentials),
        COST_PIPELINE_DB=str(tmp_path / "store.duckdb"),
        COST_PIPELINE_LANDING=str(tmp_path / "landing"),
        DAGSTER_HOME=str(tmp_path / "home"),
    )
    model_server.configure(rate_provisioned=0.1, rate_500=0.05, seed=4)
    result = run_demo(env, tmp_path, DAY.isoformat(), 120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    sent = [r for r in model_server.requests() if r.get("surface") == "vertex" and r.get("status") != 401]
    assert sent and all(r["authorization"] and r["project"] == "acme-evals" for r in sent)
    assert {r["location"] for r in sent} == {"us-central1"}
    assert all(
        set(r["labels"]) == {"pipeline", "stage", "evaluation", "partition"}
        and r["labels"]["pipeline"] == "cost_pipeline"
        and r["labels"]["partition"] == DAY.isoformat()
        for r in sent
    ), "every request carried the pipeline's labels"
    with duckdb.connect(env["COST_PIPELINE_DB"], read_only=True) as connection:
        raw, cleaned = connection.execute(
            "SELECT (SELECT count(*) FROM raw_turns), (SELECT count(*) FROM cleaned_turns WHERE status = 'ok')"
        ).fetchone()
        endpoints = connection.execute("SELECT DISTINCT endpoint FROM llm_attempts").fetchall()
        unlabelled, mislabelled = connection.execute(
            "SELECT count(*) FILTER (WHERE labels IS NULL), "
            # Parenthesized: DuckDB 1.5 binds ->> looser than OR, DuckDB 2 tighter than <>.
            "count(*) FILTER (WHERE (labels->>'stage') <> stage OR (labels->>'partition') <> partition_date::VARCHAR) "
            "FROM llm_attempts"
        ).fetchone()
        tiers = dict(
            connection.execute(
                "SELECT coalesce(served_tier, 'none'), count(*) FROM llm_attempts WHERE billed GROUP BY 1"
            ).fetchall()
        )
        provisioned = connection.execute(
            "SELECT sum(cost_usd), min(price_source) FROM llm_attempts WHERE served_tier = 'PROVISIONED_THROUGHPUT'"
        ).fetchone()
        billed = connection.execute(
            "SELECT response_id, served_tier, input_tokens, cached_tokens, output_tokens FROM llm_attempts WHERE billed"
        ).fetchall()
        ledger_provisioned, rollup_provisioned = connection.execute(
            "SELECT (SELECT sum(total_tokens) FROM llm_attempts WHERE billed "
            "AND served_tier = 'PROVISIONED_THROUGHPUT'), (SELECT sum(provisioned_tokens) FROM daily_cost_rollup)"
        ).fetchone()
        ledger, rollup = connection.execute(
            "SELECT (SELECT sum(cost_usd) FROM llm_attempts), (SELECT sum(spend_usd) FROM daily_cost_rollup)"
        ).fetchone()
        # The cost of the data prices each call at the tier its billed attempts were served at.
        calls_by_tier = dict(
            connection.execute(
                "SELECT coalesce(served_tier, 'standard'), count(*) FILTER (WHERE total_cost_usd <> 0) "
                "FROM llm_calls WHERE NOT cache_hit AND billed_attempts > 0 GROUP BY 1"
            ).fetchall()
        )
    assert calls_by_tier["PROVISIONED_THROUGHPUT"] == 0 and calls_by_tier["standard"] > 100, calls_by_tier
    report = subprocess.run(
        [CLI, "report", "--start", DAY.isoformat(), "--end", DAY.isoformat(), "--by", "model"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"served on provisioned throughput: {ledger_provisioned:,} tokens ($0 marginal" in report
    board = tmp_path / "board.html"
    subprocess.run([CLI, "dashboard", "--out", str(board)], env=env, capture_output=True, check=True)
    assert f"served on provisioned throughput: {ledger_provisioned:,} tokens" in board.read_text()
    assert raw == cleaned > 100, "every turn cleaned, as on the Gemini API"
    assert endpoints == [(f"vertex:acme-evals/us-central1@{model_server.url}",)]
    assert (unlabelled, mislabelled) == (0, 0)
    assert set(tiers) == {"ON_DEMAND", "PROVISIONED_THROUGHPUT"} and tiers["PROVISIONED_THROUGHPUT"] > 5
    assert provisioned == (Decimal(0), "provisioned throughput: prepaid, $0 marginal")
    assert rollup_provisioned == ledger_provisioned > 0, "the rollup says apart what provisioned throughput served"
    assert ledger == rollup > 0
    # Tokens by kind and tier as the provider's own billing record has them, answer by answer.
    records = {r["response_id"]: r for r in model_server.billing() if r["surface"] == "vertex"}
    assert len(records) == len(billed)
    for response_id, tier, prompt, cached, output in billed:
        record = records[response_id]
        assert (record["traffic_type"], record["promptTokenCount"], record["candidatesTokenCount"]) == (
            tier,
            prompt,
            output,
        )
        assert record["cachedContentTokenCount"] == (cached or 0)
    assert "Vertex AI, project acme-evals, location us-central1" in result.stdout + result.stderr
    leaks = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file()
        and path != credentials
        and any(
            secret in path.read_bytes()
            for secret in (LOCAL_CLIENT_SECRET.encode(), LOCAL_REFRESH_TOKEN.encode(), b"ya29.")
        )
    ]
    assert leaks == []


def test_a_shared_vertex_project_reconciles_by_label_and_an_altered_line_of_ours_fails_by_name(
    landing_root, database, model_server, tmp_path, clean_environment
):
    """10% of answers from provisioned throughput (no per-token line); the provider's Vertex export with another
    team's lines, and unlabelled ones, in our project. (Flex is left out: genai-prices 0.2.5 has no flex price for
    the 2.5 models, so neither side can price those lines and the check says so, as test_pricing shows.)"""
    from .test_reconciliation import check, metadata, reconcile, rows_of, write_rows

    clean_environment.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(local_credentials_file(tmp_path, model_server.url)))
    generate(landing_root, DAY, days=1, turns_per_day=80, seed=5)
    model_server.configure(rate_provisioned=0.1, seed=6)
    vertex = {"base_url": None, "vertexai": True, "project": "acme-evals", "vertex_base_url": model_server.url}
    materialize_day(DAY, landing_root, database, model_server, gemini={"endpoint": vertex})
    with urllib.request.urlopen(f"{model_server.url}/admin/billing/export?surface=vertex", timeout=10) as response:
        (folder := tmp_path / "billing").mkdir()
        (folder / "export.csv").write_bytes(response.read())
    ours = rows_of(folder / "export.csv")
    assert ours and all(dict_of(row["labels"])["pipeline"] == "cost_pipeline" for row in ours)
    other_team = [{**row, "labels": json.dumps([{"key": "pipeline", "value": "chatbot"}])} for row in ours]
    unlabelled = [{**row, "labels": "[]"} for row in ours]
    write_rows(folder / "export.csv", ours + other_team + unlabelled)
    billing_day = datetime.now(timezone.utc).date()

    result = reconcile(landing_root, database, model_server, folder, billing_day)
    evaluation = check(result)
    assert evaluation.passed, evaluation.description
    found = metadata(result)
    assert "another spender (pipeline=chatbot)" in found["not_ours"]
    assert "another spender (not labelled by this pipeline)" in found["not_ours"]
    with duckdb.connect(str(database), read_only=True) as connection:
        tiers = {tier for (tier,) in connection.execute("SELECT DISTINCT tier FROM billing_reconciliation").fetchall()}
    assert tiers == {"standard"}, "provisioned throughput has no per-token line and is not compared"

    output = next(row for row in ours if row["sku.description"].endswith("Text Output - Predictions"))
    output["usage.amount"] = str(int(output["usage.amount"]) + 1)
    write_rows(folder / "export.csv", ours + other_team + unlabelled)
    evaluation = check(reconcile(landing_root, database, model_server, folder, billing_day))
    assert not evaluation.passed and "+1 tokens" in evaluation.description
    assert "output text (standard, short)" in evaluation.description


def test_a_requested_flex_tier_is_sent_recorded_and_never_priced_as_standard(landing_root, database, model_server):
    """COST_PIPELINE_SERVICE_TIER=flex on the Gemini API, which does not say which tier served: each answer is
    recorded at the tier asked, and genai-prices 0.2.5 has no flex price for gemini-2.5-flash-lite: missing."""
    generate(landing_root, DAY, days=1, turns_per_day=20, seed=2)
    materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini={"processing": {"service_tier": "flex"}},
        raise_on_error=False,
    )
    bodies = [r["body"] for r in model_server.requests() if "body" in r]
    assert bodies and all(body.get("serviceTier") == "flex" for body in bodies)
    with duckdb.connect(str(database), read_only=True) as connection:
        tiers = connection.execute(
            "SELECT DISTINCT served_tier, price_status, cost_usd IS NULL FROM llm_attempts WHERE billed"
        ).fetchall()
        calls = connection.execute(
            "SELECT DISTINCT served_tier, price_status FROM llm_calls WHERE NOT cache_hit AND billed_attempts > 0"
        ).fetchall()
    assert tiers == [("ON_DEMAND_FLEX", "missing", True)]
    assert calls == [("ON_DEMAND_FLEX", "missing")], "the cost of the data is not priced as standard either"
    assert ProcessingSettings(mode="batch", service_tier="flex").problem() == (
        "the Batch API is a tier of its own: service tier flex cannot be asked in batch mode"
    )
    assert "COST_PIPELINE_SERVICE_TIER" in (ProcessingSettings(service_tier="cheap").problem() or "")


def test_a_call_answered_at_two_tiers_is_unpriced_rather_than_priced_at_either():
    """A rejected flex answer retried and served on demand: the call's summed tokens have no one price."""

    def attempt(number: int, tier: str | None, billed: bool | None = True) -> Attempt:
        return Attempt(
            f"a{number}",
            "c",
            "r",
            "2026-10-21",
            "e",
            "t",
            "clean",
            "gemini-2.5-flash",
            "x",
            "h",
            number,
            0.0,
            billed=billed,
            served_tier=tier,
        )

    assert call_served_tier([attempt(1, "ON_DEMAND_FLEX"), attempt(2, "ON_DEMAND_FLEX")]) == "ON_DEMAND_FLEX"
    assert call_served_tier([attempt(1, None, billed=False), attempt(2, "ON_DEMAND")]) is None
    mixed = call_served_tier([attempt(1, "ON_DEMAND_FLEX"), attempt(2, None)])
    assert mixed == "ON_DEMAND+ON_DEMAND_FLEX"
    tokens = Usage(input_tokens=1000, output_tokens=100)
    at = datetime(2026, 10, 21, tzinfo=timezone.utc)
    book = PriceBook()
    assert book.cost("gemini-2.5-flash", tokens, at, None, Tier(STANDARD, None)).price_status == "ok"
    assert book.cost("gemini-2.5-flash", tokens, at, None, Tier(STANDARD, mixed)).price_status == "missing"
