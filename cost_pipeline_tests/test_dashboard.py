"""The cost dashboard in Debian's Chromium: the figures it shows are the tables' figures, and it works offline."""

import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.reports import dashboard

from .conftest import REPO, THREE_DAYS
from .test_ui import browser  # noqa: F401  (the Chromium fixture)

ARTIFACTS = REPO / "test-artifacts"


def fetch(database, sql):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def page_path(three_days, database, tmp_path):
    budgets = {"default": Decimal("1.00"), "eval-voice-assistant-v1": Decimal("0.02")}
    return dashboard.write(database, tmp_path / "dashboard.html", THREE_DAYS[0], THREE_DAYS[-1], budgets)[0]


def test_the_dashboard_shows_the_tables_numbers_in_chromium_offline(page_path, database, browser):  # noqa: F811
    text = page_path.read_text()
    assert "<script" not in text and "<link" not in text and 'src="http' not in text, "no CDN, nothing fetched"
    assert text.count("<svg") == 8
    spend, data_cost, saved, calls, hits, failures = fetch(
        database,
        """
        SELECT sum(spend_usd), sum(total_cost_usd), sum(saved_cost_usd), sum(calls), sum(cache_hits), sum(failures)
        FROM daily_cost_rollup""",
    )[0]
    (p50,) = fetch(
        database, "SELECT quantile_cont(latency_ms, 0.5) FROM llm_calls WHERE NOT cache_hit AND status = 'ok'"
    )[0]
    rows = fetch(database, "SELECT count(*) FROM daily_cost_rollup")[0][0]

    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(page_path.as_uri())
    shown = {
        name: page.locator(f'[data-figure="{name}"]').inner_text()
        for name in (
            "spend",
            "data_cost",
            "saved",
            "calls",
            "cache_hit_rate",
            "failure_rate",
            "latency_p50",
            "completeness",
        )
    }
    assert shown["spend"] == f"${spend:,.6f}" and shown["data_cost"] == f"${data_cost:,.6f}"
    assert shown["saved"] == f"${saved:,.6f}" and shown["calls"] == f"{calls:,}"
    assert shown["cache_hit_rate"] == f"{hits / calls:.1%}" and shown["failure_rate"] == f"{failures / calls:.1%}"
    assert shown["latency_p50"] == f"{p50:,.0f} ms" and shown["completeness"] == "complete"
    assert page.locator('table[data-table="detail"] tbody tr').count() == rows
    assert page.locator("svg").count() == 8 and page.locator("svg").first.bounding_box()["width"] > 300
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    context.close()


def test_budget_burn_down_projects_the_recent_daily_spend_to_the_months_end(three_days, database):
    budgets = {"default": Decimal("1.00"), "eval-voice-assistant-v1": Decimal("0.02")}
    data = dashboard.load(database, THREE_DAYS[0], THREE_DAYS[-1], budgets)
    plan = dashboard.burn_down(data).set_index("evaluation_id")
    per_day = fetch(
        database,
        """SELECT evaluation_id, sum(spend_usd), count(DISTINCT partition_date)
                                 FROM daily_cost_rollup GROUP BY 1""",
    )
    for evaluation, spent, days in per_day:
        row = plan.loc[evaluation]
        budget = budgets.get(evaluation, budgets["default"])
        days_left = (row["month_end"] - THREE_DAYS[-1]).days
        assert row["spent_usd"] == spent and row["left_usd"] == budget - spent
        assert row["per_day_usd"] == spent / days  # its days with data, all within the projection window
        assert row["projected_left_usd"] == budget - spent - spent / days * days_left


def test_the_cli_writes_the_dashboard_beside_the_database(three_days, database, tmp_path):
    cli = Path(sys.executable).parent / "cost-pipeline"
    run = subprocess.run(
        [str(cli), "dashboard", "--database", str(database), "--out", str(tmp_path / "d.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"dashboard for {THREE_DAYS[-1] - timedelta(days=59)} to {THREE_DAYS[-1]} written to" in run.stdout
    assert 'data-figure="spend"' in (tmp_path / "d.html").read_text()
    missing = subprocess.run(
        [str(cli), "dashboard", "--database", str(tmp_path / "none.duckdb")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "no DuckDB file" in missing.stderr


def test_the_dashboard_asset_writes_the_page_and_links_it(three_days, landing_root, database, model_server):
    import dagster as dg

    from cost_pipeline.definitions import all_assets

    from .conftest import local_resources

    result = dg.materialize(
        all_assets, selection=["cost_dashboard"], resources=local_resources(landing_root, database, model_server)
    )
    (materialization,) = result.asset_materializations_for_node("cost_dashboard")
    link = materialization.metadata["dashboard"].value
    page = dashboard.default_path(database)
    assert link == page.as_uri() and page.exists()
    (spend,) = fetch(database, "SELECT sum(spend_usd) FROM daily_cost_rollup")[0]
    assert materialization.metadata["spend"].value == f"${spend:,.6f}"
    assert f'data-figure="spend">${spend:,.6f}<' in page.read_text()


def test_billed_tokens_by_kind_add_up_to_the_ledgers_billed_tokens(three_days, database):
    with duckdb.connect(str(database), read_only=True) as connection:
        rollup = connection.execute("SELECT * FROM daily_cost_rollup").df()
        (ledger, cached), *_ = connection.execute(
            """SELECT sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0) + coalesce(thinking_tokens, 0)
                          + coalesce(tool_prompt_tokens, 0)), sum(coalesce(cached_tokens, 0))
               FROM llm_attempts WHERE billed"""
        ).fetchall()
    parts = dashboard.billed_token_parts(rollup)
    assert int(parts.to_numpy().sum()) == ledger, "the prompt count includes its cached part: counted once"
    assert int(parts["cached input"].sum()) == cached
