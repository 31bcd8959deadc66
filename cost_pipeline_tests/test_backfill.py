"""A three-day backfill through Dagster's own CLI and daemon, on one DuckDB file."""

import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cost_pipeline.synthetic import generate

BIN = Path(sys.executable).parent
REPO = Path(__file__).parents[1]
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.mark.slow
def test_job_backfill_over_three_days_runs_every_partition(tmp_path, landing_root, database):
    generate(landing_root, date(2026, 11, 1), days=3, turns_per_day=60, seed=23)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "COST_PIPELINE_DB": str(database),
           "COST_PIPELINE_LANDING": str(landing_root), "COST_PIPELINE_COSTS": str(REPO / "costs.toml")}
    dg.DagsterInstance.from_config(str(home)).dispose()
    launched = subprocess.run(
        [str(BIN / "dagster"), "job", "backfill", "-m", "cost_pipeline.definitions", "-j", "daily_pipeline",
         "--from", DAYS[0], "--to", DAYS[-1], "--noprompt"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-2000:]
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "cost_pipeline.definitions"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = instance.get_runs()
                if len(runs) == 3 and all(run.is_finished for run in runs):
                    break
                time.sleep(2)
            statuses = sorted((run.tags["dagster/partition"], run.status.value) for run in instance.get_runs())
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert statuses == [(day, "SUCCESS") for day in DAYS]
    with duckdb.connect(str(database), read_only=True) as connection:
        days = connection.execute("SELECT DISTINCT partition_date::VARCHAR FROM daily_cost_rollup ORDER BY 1").fetchall()
        runs = connection.execute("SELECT partition_date, count(DISTINCT run_id) FROM llm_calls GROUP BY 1").fetchall()
    assert [d for (d,) in days] == DAYS
    assert all(count == 1 for _, count in runs)
