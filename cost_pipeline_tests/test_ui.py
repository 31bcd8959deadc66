"""The Dagster UI in a real browser: Debian's Chromium, driven by Playwright, against `dagster dev`.

Run alone with `pytest -m ui`. Screenshots go to `test-artifacts/ui/`.
"""

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate

from .conftest import REPO, RunningUI, dagster_home, graphql, make_ui

ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAY = "2026-11-02"
ASSETS = [
    "raw_turns",
    "quarantined_turns",
    "cleaned_turns",
    "function_calls",
    "llm_calls",
    "daily_cost_rollup",
    "evaluation_costs",
]

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
PARTITION_STATUSES = """
query($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } }
  }
}"""


class DagsterDev(str):
    """The UI's URL (a str, as before), carrying the DuckDB file its runs write, the environment it runs in, and the
    dashboard's URL."""

    def __new__(cls, ui: RunningUI, database: Path, env: dict[str, str], landing: Path):
        instance = super().__new__(cls, ui)
        instance.database, instance.env, instance.landing = database, env, landing
        instance.dashboard = ui.dashboard
        return instance


@pytest.fixture
def dagster_dev(tmp_path):
    """`make ui` (the UI, its daemon and the dashboard server) on loopback, with a temp DAGSTER_HOME, DuckDB file and
    landing folder holding one day."""
    home, landing = dagster_home(tmp_path / "home", initialize=False), tmp_path / "landing"
    generate(landing, date.fromisoformat(DAY), days=1, turns_per_day=120, seed=3)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COST_PIPELINE_DB": str(tmp_path / "ui.duckdb"),
        "COST_PIPELINE_LANDING": str(landing),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
        "COST_PIPELINE_BILLING": str(tmp_path / "billing"),
        "COST_PIPELINE_START": "2026-11-01",
    }
    for secret in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        env.pop(secret, None)
    with make_ui(REPO, env) as ui:
        yield DagsterDev(ui, tmp_path / "ui.duckdb", env, landing)


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it"
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.ui
@pytest.mark.slow
def test_the_ui_shows_the_graph_runs_a_partition_and_shows_costs_and_checks(dagster_dev, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(60_000)

    page.goto(f"{dagster_dev}/assets")
    for asset in ASSETS:
        page.get_by_text(asset, exact=True).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "1-assets.png"), full_page=True)

    page.goto(f"{dagster_dev}/locations/cost_pipeline/asset-groups/gemini")
    page.get_by_text("llm_calls", exact=True).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "2-asset-graph.png"))

    launched = graphql(
        dagster_dev,
        LAUNCH_RUN,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "cost_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": "daily_pipeline",
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAY}]},
                "runConfigData": "{}",
            }
        },
    )["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    page.goto(f"{dagster_dev}/runs/{run_id}")
    deadline = time.monotonic() + 300
    while (status := graphql(dagster_dev, RUN_STATUS, {"id": run_id})["data"]["runOrError"]["status"]) not in (
        "SUCCESS",
        "FAILURE",
        "CANCELED",
    ):
        assert time.monotonic() < deadline, f"run still {status}"
        time.sleep(2)
    page.screenshot(path=str(ARTIFACTS / "3-run.png"))
    assert status == "SUCCESS"

    page.goto(f"{dagster_dev}/assets/daily_cost_rollup")
    # What a person sees first, on the first screen: the day's spend, formatted once, then by evaluation x model.
    with duckdb.connect(str(dagster_dev.database), read_only=True) as connection:
        (spend,) = connection.execute("SELECT sum(spend_usd) FROM daily_cost_rollup").fetchone()
        (calls,) = connection.execute("SELECT sum(calls) FROM daily_cost_rollup").fetchone()
        by_evaluation = connection.execute(
            "SELECT evaluation_id, model, sum(spend_usd) FROM daily_cost_rollup GROUP BY ALL"
        ).fetchall()
    figure = page.get_by_text(f"${spend:,.6f}", exact=True).first
    figure.wait_for()
    assert figure.bounding_box()["y"] < 1000, "spend is on the first screen"
    page.get_by_text("by_evaluation_and_model").first.wait_for()
    for evaluation, model, amount in by_evaluation:
        page.get_by_role("cell", name=f"${amount:,.6f}").first.wait_for()
    assert page.get_by_text("spend_usd_exact").count() == 0 and page.get_by_text("Columns", exact=True).count() == 0
    page.get_by_text("cache_hit_pct").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "4-daily-cost-rollup.png"), full_page=True)
    listed = page.get_by_text("[Show Table Schema]").first  # the columns, listed at the end of the metadata
    listed.wait_for()
    assert listed.bounding_box()["y"] > figure.bounding_box()["y"]
    listed.click()
    page.get_by_text("total_cost_usd").first.wait_for()
    page.keyboard.press("Escape")
    page.goto(f"{dagster_dev}/assets/daily_cost_rollup?view=checks")
    page.get_by_text("rollup_reconciles_with_calls").first.wait_for()
    page.get_by_text("Passed").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "5-daily-cost-rollup-checks.png"), full_page=True)

    # The totals job writes the dashboard; its asset page links it, and the link opens the page.
    totals = graphql(
        dagster_dev,
        LAUNCH_RUN,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "cost_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": "evaluation_costs_job",
                },
                "runConfigData": "{}",
            }
        },
    )["data"]["launchRun"]
    assert totals["__typename"] == "LaunchRunSuccess", totals
    deadline = time.monotonic() + 300
    while (
        status := graphql(dagster_dev, RUN_STATUS, {"id": totals["run"]["runId"]})["data"]["runOrError"]["status"]
    ) not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"totals run still {status}"
        time.sleep(2)
    assert status == "SUCCESS"
    page.goto(f"{dagster_dev}/assets/cost_dashboard")
    link = page.get_by_role("link", name="Open the dashboard").first
    link.wait_for()
    board = link.get_attribute("href")
    assert board == dagster_dev.dashboard
    page.screenshot(path=str(ARTIFACTS / "6-cost-dashboard-asset.png"), full_page=True)
    opened = page.goto(board)
    assert opened is not None and opened.status == 200, "the asset page's link opens the dashboard"
    assert page.locator('[data-figure="spend"]').inner_text() == f"${spend:,.6f}"
    assert page.locator('[data-figure="calls"]').inner_text() == f"{calls:,}"
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 8")
    page.screenshot(path=str(ARTIFACTS / "7-dashboard.png"), full_page=True)

    # A backfill from the CLI while the UI runs: the daemon's queue takes its runs. 2026-11-01 never landed:
    # it is reported skipped, and every day of the asset stays green (materialized, none failed).
    generate(dagster_dev.landing, date(2026, 11, 3), days=1, turns_per_day=60, seed=5)
    backfill = subprocess.run(
        [
            str(Path(sys.executable).with_name("cost-pipeline")),
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-03",
            "--no-totals",
        ],
        env=dagster_dev.env,
        cwd=dagster_dev.database.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-3000:]
    assert "submitted to the run queue that dagster dev's daemon serves" in backfill.stdout
    assert "skipped, written empty: No landing files for 2026-11-01" in backfill.stdout
    for asset in ("raw_turns", "daily_cost_rollup"):
        ranges = graphql(dagster_dev, PARTITION_STATUSES, {"path": [asset]})["data"]["assetNodeOrError"][
            "assetPartitionStatuses"
        ]["ranges"]
        assert [(r["status"], r["startKey"], r["endKey"]) for r in ranges] == [
            ("MATERIALIZED", "2026-11-01", "2026-11-03")
        ], ranges
    page.goto(f"{dagster_dev}/assets/raw_turns?view=partitions")
    page.get_by_text("Failed (0)").first.wait_for()
    page.get_by_text("Materialized (3)").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "8-backfill-with-a-missing-day.png"), full_page=True)
    page.goto(f"{dagster_dev}/overview/activity/timeline")
    page.get_by_text("daily_pipeline").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "9-overview-timeline.png"), full_page=True)
