"""`cost-pipeline run` and `backfill`: a newcomer's first session, missing days, and the runs as the UI sees them.

In a fresh copy of the project, the README's daily-task commands, pasted verbatim into a shell
with no `DAGSTER_HOME` and no project variables, run a day, a 3-day backfill and a report; the
runs land in the instance `make ui` reads (`.dagster_home/`), under the code location and job
the UI lists, as its GraphQL API answers.
"""

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cost_pipeline.launch import CODE_LOCATION
from cost_pipeline.money.forecast import FORECAST_TAG

from .conftest import REPO, graphql, make_ui

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
DEMO_DAY = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()  # `cost-pipeline demo`'s default
ASSET_CHECKS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""
CHECK_EXECUTIONS = """
query($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 100) { status partition }
}"""
UI_RUNS = """
query($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status tags { key value }
                            repositoryOrigin { repositoryLocationName repositoryName } } }
  }
}"""


def readme_commands(heading: str) -> str:
    """The first ```bash block after `heading` in the README, as a person would copy it."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading) :]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def unfinished_or_red_checks(ui: str) -> list[tuple[str, str, str | None, str]]:
    """Every asset check execution the UI lists that did not pass: (asset, check, partition, status)."""
    found = []
    for node in graphql(ui, ASSET_CHECKS)["data"]["assetNodes"]:
        path = node["assetKey"]["path"]
        for check in node["assetChecksOrError"].get("checks", []):
            for execution in graphql(ui, CHECK_EXECUTIONS, {"path": path, "name": check["name"]})["data"][
                "assetCheckExecutions"
            ]:
                if execution["status"] != "SUCCEEDED":
                    found.append(("/".join(path), check["name"], execution["partition"], execution["status"]))
    return found


def fresh_copy(into: Path) -> Path:
    """The project's files as a clone has them (tracked and new, nothing ignored), with the test's venv as `.venv`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    (into / ".venv").symlink_to(Path(sys.prefix))
    return into


def newcomer_environment() -> dict[str, str]:
    """A shell as a newcomer has it: no DAGSTER_HOME, no project variables, no key."""
    dropped = ("COST_PIPELINE_", "DAGSTER_", "GEMINI_", "GOOGLE_")
    return {name: value for name, value in os.environ.items() if not name.startswith(dropped)}


@pytest.mark.slow
@pytest.mark.ui
def test_the_readmes_daily_tasks_run_in_a_fresh_copy_with_make_ui_up_and_leave_nothing_red(tmp_path):
    """The block pasted verbatim while `make ui` runs (started before `generate`): the UI's daemon takes the runs,
    the UI and the CLI agree on the partitions, and a day that never landed leaves no red run or check."""
    project = fresh_copy(tmp_path / "cost_pipeline")
    commands = readme_commands("## Daily tasks from the command line")
    assert "cost-pipeline run --day" in commands and "cost-pipeline backfill" in commands and "report" in commands
    cli = str(project / ".venv" / "bin" / "cost-pipeline")
    demo = subprocess.run(  # `make demo`, smaller: the README's block starts after it
        [cli, "demo", "--turns", "300"], cwd=project, env=newcomer_environment(), capture_output=True, timeout=300
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    env = {**newcomer_environment(), "DAGSTER_HOME": str(project / ".dagster_home")}  # as the Makefile sets it
    with make_ui(project, env) as ui:
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", commands],
            cwd=project,
            env=newcomer_environment(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert shell.returncode == 0, shell.stdout[-3000:] + shell.stderr[-3000:]
        assert "submitted to the run queue that dagster dev's daemon serves" in shell.stdout
        missing = subprocess.run(
            [cli, "run", "--day", "2026-11-04"],
            cwd=project,
            env=newcomer_environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        daily = graphql(ui, UI_RUNS, {"job": "daily_pipeline"})["data"]
        totals = graphql(ui, UI_RUNS, {"job": "evaluation_costs_job"})["data"]
        checks = unfinished_or_red_checks(ui)

    # The report printed each day's spend, and the dashboard was written.
    for day in DAYS:
        assert re.search(rf"^{day}\s+eval-", shell.stdout, re.M), shell.stdout[-3000:]
    assert (project / "data" / "dashboard.html").is_file()
    assert not (project / ".env").exists(), "no command rewrites a setting the running UI read"
    assert missing.returncode == 1 and "Nothing was launched" in missing.stderr

    with dg.DagsterInstance.from_config(str(project / ".dagster_home")) as instance:
        backfills = instance.get_backfills()
        assert [list(backfill.partition_names) for backfill in backfills] == [DAYS]
        backfill_runs = instance.get_runs(
            filters=dg.RunsFilter(tags=dg.DagsterRun.tags_for_backfill_id(backfills[0].backfill_id))
        )
        assert sorted(run.tags["dagster/partition"] for run in backfill_runs) == DAYS
    runs = daily["runsOrError"]["results"]
    assert sorted(next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition") for run in runs) == [
        DAYS[0],
        *DAYS,
        DEMO_DAY,
    ]
    assert {run["status"] for run in runs} == {"SUCCESS"}
    # Under the UI's code location, so the Overview timeline and the job's run history list them.
    assert {
        (run["repositoryOrigin"]["repositoryLocationName"], run["repositoryOrigin"]["repositoryName"]) for run in runs
    } == {(CODE_LOCATION, "__repository__")}
    assert [run["status"] for run in totals["runsOrError"]["results"]] == ["SUCCESS"] * 3
    assert checks == [], checks

    # The backfill's run of 2026-11-01 replaced the first run's day exactly.
    with duckdb.connect(str(project / "data" / "cost_pipeline.duckdb"), read_only=True) as connection:
        per_day = connection.execute(
            "SELECT partition_date::VARCHAR, count(*), count(DISTINCT run_id) FROM cleaned_turns GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert per_day == [(day, 300, 1) for day in [*DAYS, DEMO_DAY]]


def test_a_missing_day_is_skipped_in_a_backfill_and_refused_by_run_before_anything_is_launched(tmp_path):
    """A backfill over a day that never landed stays green and says `skipped`; `run --day` for it launches nothing
    and says, in one sentence, where the files go and that the sensor that would wait for them is stopped."""
    env = {
        **newcomer_environment(),
        "COST_PIPELINE_START": "2026-11-01",
        "COST_PIPELINE_LANDING": str(tmp_path / "landing"),
    }
    cli = [str(Path(sys.executable).with_name("cost-pipeline"))]
    subprocess.run(
        [*cli, "generate", "--start", DAYS[0], "--days", "3", "--turns-per-day", "40"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tmp_path / "landing" / DAYS[1])

    backfill = subprocess.run(
        [*cli, "backfill", "--from", DAYS[0], "--to", DAYS[2], "--no-totals"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-3000:]
    lines = {line.split()[0]: line for line in backfill.stdout.splitlines() if line.startswith("  2026-")}
    assert [lines[day].split()[1] for day in DAYS] == ["SUCCESS"] * 3
    assert f"skipped, written empty: No landing files for {DAYS[1]}" in lines[DAYS[1]]
    assert "skipped" not in lines[DAYS[0]] + lines[DAYS[2]]
    assert "3 of 3 run(s) succeeded (1 day(s) skipped" in backfill.stdout
    # Each landed day was forecast before anything was sent; its run carries the figure, and its llm_calls the
    # spend beside it.
    assert "Forecast, before any call:" in backfill.stdout and f"{DAYS[1]}  never landed" in backfill.stdout
    # While the runs work, the wait says how they stand; at the end, each day's spend (the ledger's) against its
    # forecast, and the total.
    assert re.search(r"^  2026-11-0\d   (QUEUED|STARTING|STARTED|NOT_STARTED) +\d+\.\d s", backfill.stdout, re.M)
    with duckdb.connect(str(tmp_path / "data" / "cost_pipeline.duckdb"), read_only=True) as connection:
        ledger = dict(
            connection.execute("SELECT partition_date::VARCHAR, sum(cost_usd) FROM llm_attempts GROUP BY 1").fetchall()
        )
    closing = backfill.stdout[backfill.stdout.index("Spend against forecast") :].splitlines()
    for day in (DAYS[0], DAYS[2]):
        (row,) = [line for line in closing if line.startswith(day)]
        assert f"${ledger[day]:,.6f}" in row and ("inside" in row or "OUTSIDE" in row), row
    (never,) = [line for line in closing if line.startswith(DAYS[1])]
    assert "never landed" in never and "$0.000000" in never
    (total,) = [line for line in closing if line.startswith("TOTAL")]
    assert f"${sum(ledger.values()):,.6f}" in total

    alone = subprocess.run(
        [*cli, "run", "--day", DAYS[1]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert alone.returncode == 1 and alone.stdout == ""
    refusal = alone.stderr.strip().splitlines()[-1]  # after Dagster's own notes on opening the instance, if any
    assert refusal.startswith(f"No landing files for {DAYS[1]}: expected ") and "Traceback" not in alone.stderr
    assert "Nothing was launched" in refusal and "late_landing_sensor (it is stopped" in refusal

    early = subprocess.run(
        [*cli, "run", "--day", "2026-10-31"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert (
        early.returncode == 2
        and "2026-10-31 not a partition of daily_pipeline (partitions: 2026-11-01 to" in early.stderr
    )
    with dg.DagsterInstance.from_config(str(tmp_path / ".dagster_home")) as instance:
        statuses = sorted(
            (run.tags["dagster/partition"], run.status.value, "dagster/backfill" in run.tags)
            for run in instance.get_runs()
        )
        forecast_tags = {
            run.tags["dagster/partition"]: run.tags.get(FORECAST_TAG)
            for run in instance.get_runs()
            if "dagster/backfill" in run.tags
        }
        (latest,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("llm_calls"), asset_partitions=[DAYS[2]]), limit=1
        ).records
        calls_metadata = latest.asset_materialization.metadata
    assert statuses == [
        (DAYS[0], "SUCCESS", True),
        (DAYS[1], "SUCCESS", True),
        (DAYS[2], "SUCCESS", True),
    ]
    assert forecast_tags[DAYS[1]] is None and all(Decimal(forecast_tags[day]) > 0 for day in (DAYS[0], DAYS[2]))
    assert calls_metadata["forecast"].value == f"${Decimal(forecast_tags[DAYS[2]]):,.6f}"
    assert 50 < calls_metadata["spend_vs_forecast_pct"].value < 200


def test_the_cli_the_ui_and_the_daemon_name_one_code_location():
    """A run launched by the CLI is listed under the UI's location only if both name it alike."""
    import tomllib

    import yaml

    from cost_pipeline.launch import DEFINITIONS_MODULE

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert (tool["module_name"], tool["code_location_name"]) == (DEFINITIONS_MODULE, CODE_LOCATION)
    assert (entry["python_module"]["module_name"], entry["python_module"]["location_name"]) == (
        DEFINITIONS_MODULE,
        CODE_LOCATION,
    )


@pytest.mark.slow
def test_ctrl_c_cancels_every_unfinished_run_and_leaves_none_half_canceled(tmp_path):
    """With one run at a time, Ctrl-C during a 3-day backfill: the running day is canceled, the two never launched are
    CANCELED at once (not left CANCELING for a launcher that never had them)."""
    import signal
    import time

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        (REPO / ".dagster_home" / "dagster.yaml")
        .read_text()
        .replace("max_concurrent_runs: 4", "max_concurrent_runs: 1")
    )
    env = {
        **newcomer_environment(),
        "DAGSTER_HOME": str(home),
        "COST_PIPELINE_START": "2026-11-01",
        "COST_PIPELINE_LANDING": str(tmp_path / "landing"),
    }
    cli = [str(Path(sys.executable).with_name("cost-pipeline"))]
    subprocess.run(
        [*cli, "generate", "--start", DAYS[0], "--days", "3", "--turns-per-day", "600"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    backfill = subprocess.Popen(
        [*cli, "backfill", "--from", DAYS[0], "--to", DAYS[2], "--no-totals"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while not any(run.status == dg.DagsterRunStatus.STARTED for run in instance.get_runs()):
            assert time.monotonic() < deadline and backfill.poll() is None, "no run started"
            time.sleep(0.3)
        backfill.send_signal(signal.SIGINT)
        output = backfill.communicate(timeout=120)[0]
        assert "interrupted: canceled 3 unfinished run(s)" in output, output[-2000:]
        while any(run.status == dg.DagsterRunStatus.CANCELING for run in instance.get_runs()):
            assert time.monotonic() < deadline + 60, "a run stayed CANCELING"
            time.sleep(0.5)
        statuses = sorted(run.status.value for run in instance.get_runs())
    assert statuses == ["CANCELED"] * 3
