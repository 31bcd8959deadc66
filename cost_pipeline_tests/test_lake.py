"""The shared lake: DuckLake with its catalog in a real PostgreSQL (Debian's packages) and its data in a folder.

The extensions come from their wheels (`storage/lake.py`); nothing is downloaded.
"""

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.storage import lake
from cost_pipeline.storage.connect import connect

from .conftest import REPO

CLI = str(Path(sys.executable).with_name("cost-pipeline"))
DAY = "2026-11-04"
PASSWORD = "lake-password-5b1d"
"""Trust authentication ignores it; it must still never reach a log, the Dagster home or a table."""

TABLES_BY_DAY = {
    "raw_turns": "SELECT count(*), count(DISTINCT turn_id) FROM raw_turns",
    "cleaned_turns": "SELECT count(*), string_agg(turn_id || ':' || coalesce(cleaned_text, ''), '|' ORDER BY turn_id) "
    "FROM cleaned_turns",
    "function_calls": "SELECT count(*), string_agg(turn_id || ':' || coalesce(function_name, ''), '|' "
    "ORDER BY turn_id) FROM function_calls",
    "llm_calls": "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(total_cost_usd) FROM llm_calls",
    "llm_attempts": "SELECT count(*) FILTER (WHERE billed), sum(input_tokens), sum(cost_usd) FROM llm_attempts",
    "daily_cost_rollup": "SELECT sum(calls), sum(spend_usd), sum(total_cost_usd) FROM daily_cost_rollup",
}


def lake_location(port: int) -> str:
    return f"ducklake:postgres:dbname=lake host=127.0.0.1 port={port} user=dagster password={PASSWORD}"


def environment(folder: Path, **store: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("COST_PIPELINE_")},
        "COST_PIPELINE_START": "2026-11-01",
        "COST_PIPELINE_CONCURRENCY": "1",
        "DAGSTER_HOME": str(folder / "home"),
        **store,
    }


def demo(folder: Path, **store: str) -> subprocess.CompletedProcess:
    """`cost-pipeline demo` for DAY in `folder`, one call at a time (so the local server's prompt cache answers the
    same tokens on both stores), with the store settings given."""
    folder.mkdir()
    return subprocess.run(
        [CLI, "demo", "--day", DAY, "--turns", "60"],
        env=environment(folder, **store),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )


def figures(connection) -> dict:
    return {name: connection.execute(sql).fetchone() for name, sql in TABLES_BY_DAY.items()}


@pytest.mark.slow
def test_a_day_on_the_lake_equals_the_same_day_on_the_duckdb_file(tmp_path, postgres):
    on_file = demo(tmp_path / "file", COST_PIPELINE_DB=str(tmp_path / "file" / "store.duckdb"))
    assert on_file.returncode == 0, on_file.stderr[-3000:]
    data = tmp_path / "lake-data"
    location = lake_location(postgres)
    on_lake = demo(
        tmp_path / "lake",
        COST_PIPELINE_WAREHOUSE=location,
        COST_PIPELINE_LAKE_DATA=str(data),
        COST_PIPELINE_DB=str(tmp_path / "lake" / "unused.duckdb"),
    )
    assert on_lake.returncode == 0, on_lake.stderr[-3000:]

    with duckdb.connect(str(tmp_path / "file" / "store.duckdb"), read_only=True) as connection:
        expected = figures(connection)
    with connect(location, read_only=True) as connection:
        found = figures(connection)
    assert found == expected
    assert found["raw_turns"][0] == 60 and found["llm_attempts"][2] > Decimal(0)
    assert not (tmp_path / "lake" / "unused.duckdb").exists(), "with the warehouse set, COST_PIPELINE_DB is not used"
    assert list(data.rglob("*.parquet")), "the lake's data is Parquet in its data folder"
    output = on_lake.stdout + on_lake.stderr
    assert "to DuckLake (catalog PostgreSQL dbname=lake host=127.0.0.1" in output, "the run log names the store"
    assert PASSWORD not in output
    counted = subprocess.run(
        [CLI, "sql", "SELECT count(*) AS turns FROM raw_turns"],
        env=environment(tmp_path / "lake", COST_PIPELINE_WAREHOUSE=location),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "60" in counted.stdout, "cost-pipeline sql reads the lake, its data path remembered by the catalog"
    leaks = [
        path for path in (tmp_path / "lake").rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()
    ]
    assert leaks == []


def test_a_missing_extension_wheel_is_named_in_one_sentence(monkeypatch):
    monkeypatch.setitem(lake.EXTENSION_WHEELS, "httpfs", ("duckdb_extension_httpfs_absent", "httpfs"))
    with pytest.raises(lake.MissingExtension) as raised:
        lake.extension_file("httpfs")
    assert str(raised.value) == (
        f"the lake needs DuckDB's httpfs extension: pip install duckdb-extension-httpfs-absent=={duckdb.__version__}"
    )
    assert lake.extension_file("postgres_scanner").name == "postgres_scanner.duckdb_extension"


WRITER = textwrap.dedent(
    """
    import sys
    from cost_pipeline.storage.connect import connect

    location, day = sys.argv[1], sys.argv[2]
    with connect(location) as connection:  # the first one creates the catalog; all four attach at once
        connection.execute("CREATE TABLE IF NOT EXISTS days (day VARCHAR, n INTEGER)")
        connection.execute("BEGIN")
        connection.execute("DELETE FROM days WHERE day = 'shared'")  # a new day: no row to conflict on
        connection.execute("INSERT INTO days SELECT 'shared', range FROM range(1000)")
        connection.execute("DELETE FROM days WHERE day = ?", [day])
        connection.execute("INSERT INTO days SELECT ?, range FROM range(500)", [day])
        connection.execute("COMMIT")
    """
)


@pytest.mark.slow
def test_writers_in_separate_processes_take_turns_on_a_fresh_lake(tmp_path, postgres):
    """Four processes, sharing nothing but PostgreSQL and the data folder, create the catalog and replace the same
    new day at once: DuckLake alone would fail three first ATTACHes and commit the new day four times."""
    location = lake_location(postgres)
    env = {**os.environ, lake.LAKE_DATA_ENV: str(tmp_path / "data")}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, location, f"day-{number}"],
            cwd=REPO,
            env={**env, "TMPDIR": str(tmp_path / f"scratch-{number}")},
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(4)
        if not (tmp_path / f"scratch-{number}").mkdir()
    ]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * 4, errors
    with connect(location, read_only=True) as connection:
        rows = dict(connection.execute("SELECT day, count(*) FROM days GROUP BY 1").fetchall())
    assert rows == {"shared": 1000, **{f"day-{number}": 500 for number in range(4)}}


@pytest.mark.slow
def test_the_weekly_maintenance_merges_small_files_and_expires_snapshots(tmp_path, postgres, monkeypatch):
    import dagster as dg

    from cost_pipeline.defs.maintenance import store_maintenance
    from cost_pipeline.defs.warehouse import DuckDBWarehouse

    monkeypatch.setenv(lake.LAKE_DATA_ENV, str(tmp_path / "data"))
    location = lake_location(postgres)
    with connect(location) as connection:  # a ledger appended to by 40 checkpoints: a Parquet file each
        connection.execute("CREATE TABLE appended (n BIGINT, sent_at TIMESTAMPTZ)")
        for _ in range(40):
            connection.execute("INSERT INTO appended SELECT range, now() FROM range(100)")
        before = lake.files_per_table(connection)["appended"]
        rows = connection.execute("SELECT count(*), sum(n) FROM appended").fetchone()

    def maintenance(database: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [store_maintenance],
            resources={"warehouse": DuckDBWarehouse(database=database)},
            run_config={"ops": {"store_maintenance": {"config": {"keep_snapshots_days": 0}}}},
        )

    result = maintenance(location)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("store_maintenance")
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    with connect(location, read_only=True) as connection:
        after = lake.files_per_table(connection)["appended"]
        assert connection.execute("SELECT count(*), sum(n) FROM appended").fetchone() == rows
        assert lake.snapshot_count(connection) == 1
    assert (before, after) == (40, 1)
    assert materialization.metadata["files_after"].value < materialization.metadata["files_before"].value
    assert checks == {"files_merged": True, "old_snapshots_expired": True}
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 1, "the merged-away files are deleted too"

    on_file = maintenance(str(tmp_path / "store.duckdb"))
    assert on_file.success and all(c.passed for c in on_file.get_asset_check_evaluations())
