"""The prod profile: a real PostgreSQL (Debian's packages) on loopback holds Dagster's runs and events."""

import os
import subprocess
from datetime import date

import duckdb
import psycopg2
import pytest

from cost_pipeline.ingest.synthetic import generate

from .conftest import REPO, dagster_home, materialize_command

DAY = "2026-11-04"


@pytest.mark.slow
def test_a_partition_runs_with_runs_and_events_in_postgres(tmp_path, postgres):
    port = postgres
    home = dagster_home(tmp_path / "home", REPO / "deploy" / "prod" / "dagster.yaml", initialize=False)
    landing, database = tmp_path / "landing", tmp_path / "store.duckdb"
    generate(landing, date.fromisoformat(DAY), days=1, turns_per_day=80, seed=6)
    env = {
        **os.environ,
        "DAGSTER_PG_URL": f"postgresql+psycopg2://dagster@127.0.0.1:{port}/dagster",
        "DAGSTER_HOME": str(home),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
    }
    run = subprocess.run(
        materialize_command(
            "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls,daily_cost_rollup", "--partition", DAY
        ),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    connection = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", dbname="dagster")
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT status FROM runs")
        statuses = [status for (status,) in cursor.fetchall()]
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND partition = %s",
            [DAY],
        )
        materializations = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM asset_check_executions WHERE partition = %s", [DAY])
        checks = cursor.fetchone()[0]
    finally:
        connection.close()
    assert statuses == ["SUCCESS"]
    assert materializations == 7 and checks >= 5, "six daily assets and the llm_attempts ledger append"
    assert not list(home.glob("**/*.db")), "no SQLite storage: everything went to PostgreSQL"
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM cleaned_turns").fetchone() == (80,)
