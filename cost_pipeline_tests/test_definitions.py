"""The code location loads the way `dagster dev` loads it, with every asset and job."""

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from cost_pipeline.definitions import defs
from cost_pipeline.ingest.synthetic import generate

from .conftest import dagster_home

REPO = Path(__file__).parents[1]


def dg_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Dagster's `dg` CLI, run in the project as a person runs it, in its virtual environment."""
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        [str(Path(sys.executable).with_name("dg")), *args],
        cwd=REPO,
        env={**(env or os.environ), "VIRTUAL_ENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dg_checks_the_definitions_and_launches_a_day_of_them(tmp_path):
    checked = dg_command("check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    generate(tmp_path / "landing", date(2026, 11, 1), days=1, turns_per_day=30, seed=3)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home(tmp_path / "home")),
        "COST_PIPELINE_DB": str(tmp_path / "day.duckdb"),
        "COST_PIPELINE_LANDING": str(tmp_path / "landing"),
        "COST_PIPELINE_START": "2026-11-01",
    }
    launched = dg_command("launch", "--assets", "raw_turns,quarantined_turns", "--partition", "2026-11-01", env=env)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    with duckdb.connect(str(tmp_path / "day.duckdb"), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM raw_turns").fetchone() == (30,)


def test_definitions_hold_the_assets_and_the_daily_job():
    keys = {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}
    assert {"raw_turns", "quarantined_turns"} <= keys
    job = defs.resolve_job_def("daily_pipeline")
    assert job.partitions_def is not None


def test_dagster_definitions_validate_passes_from_the_workspace():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    ours = [line for line in result.stderr.splitlines() if "Warning" in line and "cost_pipeline" in line]
    assert ours == []


def test_settings_come_from_the_environment_as_env_vars(monkeypatch, tmp_path):
    from cost_pipeline import definitions

    monkeypatch.setenv("COST_PIPELINE_DB", str(tmp_path / "x.duckdb"))
    resources = definitions.local_resources()
    assert resources["io_manager"].database == dg.EnvVar("COST_PIPELINE_DB")
    monkeypatch.delenv("COST_PIPELINE_DB")
    assert definitions.local_resources()["io_manager"].database == "data/cost_pipeline.duckdb"


def test_models_thinking_and_limits_come_from_the_environment_by_name(monkeypatch):
    from cost_pipeline import definitions

    for name in (
        "COST_PIPELINE_CLEAN_MODEL",
        "COST_PIPELINE_FUNCTION_MODEL",
        "COST_PIPELINE_THINKING_BUDGET",
        "COST_PIPELINE_RPM",
        "COST_PIPELINE_TPM",
    ):
        monkeypatch.setenv(name, "gemini-2.5-flash" if "MODEL" in name else "120")
    gemini = definitions.local_resources()["gemini"]
    assert gemini.models.clean_model == dg.EnvVar("COST_PIPELINE_CLEAN_MODEL")
    assert gemini.models.function_model == dg.EnvVar("COST_PIPELINE_FUNCTION_MODEL")
    limits = gemini.limits
    assert [
        value.env_var_name
        for value in (gemini.models.thinking_budget, limits.requests_per_minute, limits.tokens_per_minute)
    ] == ["COST_PIPELINE_THINKING_BUDGET", "COST_PIPELINE_RPM", "COST_PIPELINE_TPM"]


def test_rate_limits_default_to_what_a_free_tier_key_accepts_on_googles_api(monkeypatch):
    from cost_pipeline.gemini.settings import FREE_TIER_RPM, FREE_TIER_TPM, EndpointSettings, GeminiSettings, RateLimits

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    google = GeminiSettings(endpoint=EndpointSettings(api_key="a-key"))
    assert (google.request_limit(), google.token_limit()) == (FREE_TIER_RPM, FREE_TIER_TPM) == (10, 250_000)
    local = GeminiSettings()
    assert (local.request_limit(), local.token_limit()) == (4_000, 4_000_000)
    faster = GeminiSettings(endpoint=google.endpoint, limits=RateLimits(requests_per_minute=2_000))
    assert faster.request_limit() == 2_000


def test_the_launchpad_shows_the_gemini_resource_in_sections():
    from cost_pipeline.defs.gemini.resource import GeminiResource

    fields = GeminiResource.to_config_schema().as_field().config_type.fields
    assert list(fields) == ["endpoint", "models", "limits", "retries", "cache", "processing"]
    limits = fields["limits"].config_type.fields
    assert set(limits) == {"max_concurrency", "requests_per_minute", "tokens_per_minute"}
    assert limits["max_concurrency"].description == "Requests in flight at once."
    assert "ledger" in fields["cache"].description


def test_every_asset_names_its_owner_and_code_and_the_rollup_says_when_it_is_stale():
    from datetime import timedelta

    for key in defs.resolve_asset_graph().get_all_asset_keys():
        spec = defs.resolve_assets_def(key).specs_by_key[key]
        assert spec.owners == ["team:cost-pipeline"], key
        assert "dagster/code_references" in spec.metadata, key
    rollup = defs.resolve_assets_def(dg.AssetKey("daily_cost_rollup")).specs_by_key[dg.AssetKey("daily_cost_rollup")]
    policy = rollup.freshness_policy
    assert (policy.deadline_cron, policy.lower_bound_delta, policy.timezone) == ("0 4 * * *", timedelta(hours=2), "UTC")


def test_every_column_of_every_table_asset_is_described():
    listed = [
        key.to_user_string()
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if "columns" in defs.resolve_assets_def(key).specs_by_key[key].metadata
    ]
    assert sorted(listed) == ["daily_cost_rollup", "evaluation_costs"], "money pages list their columns last"
    undescribed = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        metadata = defs.resolve_assets_def(key).specs_by_key[key].metadata
        schema = metadata.get("dagster/column_schema") or metadata.get("columns")
        schema = getattr(schema, "schema", schema)
        if schema is not None:
            undescribed.update(
                {f"{key.to_user_string()}.{c.name}": c.type for c in schema.columns if not c.description}
            )
    assert not undescribed


def test_each_column_meaning_is_written_once_and_shared_ones_come_from_the_common_wording():
    from collections import Counter

    from cost_pipeline.defs.costs import reconciliation, rollups
    from cost_pipeline.gemini_step.tables import TABLES
    from cost_pipeline.ingest.tables import QUARANTINED_TURNS, RAW_TURNS
    from cost_pipeline.money.ledger import COLUMNS as LEDGER
    from cost_pipeline.storage.columns import COMMON

    tables = {
        **TABLES,
        "raw_turns": RAW_TURNS,
        "quarantined_turns": QUARANTINED_TURNS,
        "llm_attempts": LEDGER,
        "daily_cost_rollup": rollups.ROLLUP_COLUMNS,
        "evaluation_costs": rollups.EVALUATION_COLUMNS,
        "billing_reconciliation": reconciliation.RECONCILIATION_COLUMNS,
    }
    declared = {id(column): column for columns in tables.values() for column in columns}  # a shared list: once
    written = Counter(
        (column.name, column.description) for column in declared.values() if column.description is not None
    )
    assert not [key for key, times in written.items() if times > 1], "a shared meaning belongs in COMMON"
    assert not [(name, text) for name, text in written if COMMON.get(name) == text], "repeats COMMON's wording"
    schema = (
        defs.resolve_assets_def(dg.AssetKey("llm_calls"))
        .specs_by_key[dg.AssetKey("llm_calls")]
        .metadata["dagster/column_schema"]
    )
    described = {column.name: column.description for column in schema.columns}
    assert described["endpoint"] == COMMON["endpoint"] and list(described) == [c.name for c in TABLES["llm_calls"]]
