"""An 8-day backfill through Dagster's own CLI and daemon, 4 runs at once on one DuckDB file, reported on
meanwhile; one day never landed and is written empty, not failed; the automation sensor then refreshes the totals."""

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate

from .conftest import REPO, dagster_home

BIN = Path(sys.executable).parent
START, DAYS = date(2026, 11, 1), 8
PARTITIONS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
NEVER_LANDED = PARTITIONS[6]


def totals_after(instance: dg.DagsterInstance, runs) -> bool:
    """Whether evaluation_costs was materialized after the last of `runs` ended."""
    latest = instance.fetch_materializations(dg.AssetKey("evaluation_costs"), limit=1).records
    ended = [r.end_time for r in instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id for run in runs]))]
    return bool(latest) and all(ended) and latest[0].timestamp > max(ended)


def most_runs_at_once(runs) -> int:
    spans = [(run.start_time, run.end_time) for run in runs]
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


@pytest.mark.slow
def test_job_backfill_over_eight_days_with_four_runs_at_once(tmp_path, landing_root, database):
    generate(landing_root, START, days=DAYS, turns_per_day=40, seed=23)
    for path in (landing_root / NEVER_LANDED).iterdir():
        path.unlink()
    home = dagster_home(tmp_path / "dagster_home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
    }
    launched = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "backfill",
            "-m",
            "cost_pipeline.definitions",
            "-j",
            "daily_pipeline",
            "--from",
            PARTITIONS[0],
            "--to",
            PARTITIONS[-1],
            "--noprompt",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "cost_pipeline.definitions"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reports = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                runs = [run for run in instance.get_runs() if "dagster/partition" in run.tags]
                if len(runs) == DAYS and all(run.is_finished for run in runs) and totals_after(instance, runs):
                    break
                if database.exists():
                    reports.append(
                        subprocess.run(
                            [
                                str(BIN / "cost-pipeline"),
                                "report",
                                "--database",
                                str(database),
                                "--start",
                                PARTITIONS[0],
                                "--end",
                                PARTITIONS[-1],
                                "--format",
                                "json",
                            ],
                            capture_output=True,
                            text=True,
                            timeout=120,
                        )
                    )
                time.sleep(1)
            records = [r for r in instance.get_run_records() if "dagster/partition" in r.dagster_run.tags]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    statuses = sorted((r.dagster_run.tags["dagster/partition"], r.dagster_run.status.value) for r in records)
    assert statuses == [(day, "SUCCESS") for day in PARTITIONS]
    assert 2 <= most_runs_at_once(records) <= 4
    assert reports and all(report.returncode == 0 for report in reports), [r.stderr for r in reports if r.returncode]
    with duckdb.connect(str(database), read_only=True) as connection:
        days = connection.execute(
            "SELECT DISTINCT partition_date::VARCHAR FROM daily_cost_rollup ORDER BY 1"
        ).fetchall()
        runs = connection.execute("SELECT partition_date, count(DISTINCT run_id) FROM llm_calls GROUP BY 1").fetchall()
        totals = connection.execute(
            "SELECT min(first_day)::VARCHAR, max(last_day)::VARCHAR, sum(calls), sum(total_cost_usd) FROM "
            "evaluation_costs"
        ).fetchone()
        rolled = connection.execute("SELECT sum(calls), sum(total_cost_usd) FROM daily_cost_rollup").fetchone()
    # Every run is green: the day that never landed was written empty (no rollup rows).
    assert [d for (d,) in days] == [day for day in PARTITIONS if day != NEVER_LANDED]
    assert all(count == 1 for _, count in runs)
    assert totals == (PARTITIONS[0], PARTITIONS[-1], *rolled), "evaluation_costs was refreshed after the last day"
