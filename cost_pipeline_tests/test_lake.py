"""The shared lake: DuckLake with its catalog in a real PostgreSQL (Debian's packages) and its data in a folder.

The extensions come from their wheels (`storage/lake.py`); nothing is downloaded.
"""

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg2
import pytest

from cost_pipeline.defs.partitions import DUCKDB_POOL
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage import lake
from cost_pipeline.storage.connect import LAKE_MEMORY, STEP_MEMORY, connect, size_bytes
from cost_pipeline.storage.tables import table_exists

from .conftest import REPO, dagster_home, materialize_command, run_demo

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
    return run_demo(environment(folder, **store), folder, DAY, 40, timeout=600)


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
    assert found["raw_turns"][0] == 40 and found["llm_attempts"][2] > Decimal(0)
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
    assert "40" in counted.stdout, "cost-pipeline sql reads the lake, its data path remembered by the catalog"
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

    # A step's short reads and writes get the lake's floor: Parquet row groups do not fit in the file's 64MB.
    with connect(location, memory_limit=STEP_MEMORY) as connection:
        (limit,) = connection.execute("SELECT current_setting('memory_limit')").fetchone()
    assert size_bytes(limit) >= 0.9 * size_bytes(LAKE_MEMORY) > size_bytes(STEP_MEMORY)

    on_file = maintenance(str(tmp_path / "store.duckdb"))
    assert on_file.success and all(c.passed for c in on_file.get_asset_check_evaluations())


WORKERS, DAYS = 4, 8
FIRST_DAY = date(2026, 11, 1)
DAILY = "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls,daily_cost_rollup"


def worker_env(folder: Path, postgres: int, model_server, landing: Path) -> dict[str, str]:
    """A machine of its own: its working folder, its DAGSTER_HOME (the prod profile: the shared PostgreSQL), its
    scratch; shared with the others only PostgreSQL, the lake's data folder and the landing folder."""
    folder.mkdir(parents=True)
    home = dagster_home(folder / "home", REPO / "deploy" / "prod" / "dagster.yaml", initialize=False)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COST_PIPELINE_", "GEMINI_", "GOOGLE_"))},
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": f"postgresql+psycopg2://dagster@127.0.0.1:{postgres}/dagster",
        "COST_PIPELINE_START": "2026-11-01",
        "COST_PIPELINE_WAREHOUSE": lake_location(postgres),
        "COST_PIPELINE_LAKE_DATA": str(folder.parent / "lake-data"),
        "COST_PIPELINE_LANDING": str(landing),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
        "COST_PIPELINE_SCRATCH": str(folder / "scratch"),
        "GOOGLE_GEMINI_BASE_URL": model_server.url,
        "GEMINI_API_KEY": "test-key",
        "TMPDIR": str(folder / "tmp"),
    }


@pytest.mark.slow
def test_eight_days_from_four_workers_sharing_only_postgres_and_the_data_folder(tmp_path, postgres, model_server):
    """Four worker processes, each its own working folder, DAGSTER_HOME and scratch, run two days each at once into
    one lake: every day whole and written by one run, every answer the server billed in the ledger exactly once and
    at its tokens, the ledger's spend equal to the rollups', and the report reading the lake while they write."""
    landing = tmp_path / "landing"
    days = [(FIRST_DAY + timedelta(days=n)).isoformat() for n in range(DAYS)]
    generate(landing, FIRST_DAY, days=DAYS, turns_per_day=20, seed=31)
    envs = [worker_env(tmp_path / f"worker-{n}", postgres, model_server, landing) for n in range(WORKERS)]
    for env in envs:
        Path(env["TMPDIR"]).mkdir()
    # Set at deploy time (docs/deployment.md): a fresh instance's first claims on a pool from several machines at
    # once race to create its limit in PostgreSQL, and all but one fail.
    subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "instance", "concurrency", "set", DUCKDB_POOL, "4"],
        env=envs[0],
        check=True,
        capture_output=True,
    )
    workers = [
        subprocess.Popen(
            [
                "bash",
                "-c",
                " && ".join(shlex.join(materialize_command(DAILY, "--partition", day)) for day in days[n::WORKERS]),
            ],
            env=env,
            cwd=env["DAGSTER_HOME"].removesuffix("/home"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, env in enumerate(envs)
    ]
    reports = []
    while any(worker.poll() is None for worker in workers):
        for command in (
            ["report", "--start", days[0], "--end", days[-1], "--format", "json"],
            ["dashboard", "--start", days[0], "--end", days[-1], "--out", str(tmp_path / "board.html")],
        ):
            reports.append(subprocess.run([CLI, *command], env=envs[0], capture_output=True, text=True, timeout=120))
        time.sleep(3)  # each read is a process of its own: a few while the runs write, not a core's worth
    errors = [worker.stderr.read()[-2000:] for worker in workers if worker.returncode]
    assert errors == []
    # Read while the runs wrote; before the first rollup the dashboard says so, in one sentence.
    refused = [r for r in reports if r.returncode and "no daily_cost_rollup in the DuckLake" not in r.stderr]
    assert reports and refused == [], [r.stderr[-500:] for r in refused]
    assert any(r.returncode == 0 and "dashboard of" in r.stdout for r in reports), "a dashboard drawn mid-backfill"

    with connect(lake_location(postgres), read_only=True) as connection:
        per_day = connection.execute(
            """SELECT partition_date::VARCHAR, count(*), count(DISTINCT run_id) FROM cleaned_turns GROUP BY 1
            ORDER BY 1"""
        ).fetchall()
        landed = connection.execute("SELECT partition_date::VARCHAR, count(*) FROM raw_turns GROUP BY 1").fetchall()
        billed = connection.execute(
            "SELECT response_id, input_tokens, output_tokens, cached_tokens FROM llm_attempts WHERE billed"
        ).fetchall()
        ledger, rollup = connection.execute(
            "SELECT (SELECT sum(cost_usd) FROM llm_attempts), (SELECT sum(spend_usd) FROM daily_cost_rollup)"
        ).fetchone()
    assert [day for day, _, _ in per_day] == days
    assert all(runs == 1 for _, _, runs in per_day), "each day is one run's whole partition"
    assert dict(landed) == {day: rows for day, rows, _ in per_day}
    records = {r["response_id"]: r for r in model_server.billing()}
    assert len(billed) == len(records) == len({row[0] for row in billed}), "every billed answer once"
    for response_id, prompt, output, cached in billed:
        record = records[response_id]
        assert (record["promptTokenCount"], record["candidatesTokenCount"]) == (prompt, output)
        assert record["cachedContentTokenCount"] == (cached or 0)
    assert ledger == rollup > 0
    with psycopg2.connect(host="127.0.0.1", port=postgres, user="dagster", dbname="dagster") as instance:
        with instance.cursor() as cursor:
            cursor.execute("SELECT status, count(*) FROM runs GROUP BY 1")
            assert dict(cursor.fetchall()) == {"SUCCESS": DAYS}, "every run in the shared instance, all green"
            cursor.execute(
                "SELECT (SELECT count(*) FROM event_logs WHERE event LIKE %s), "
                "(SELECT count(*) FROM runs WHERE run_body LIKE %s)",
                [f"%{PASSWORD}%"] * 2,
            )
            assert cursor.fetchone() == (0, 0), "the warehouse's password is in no event and no run"
    assert not list(tmp_path.rglob("*.duckdb")), "no DuckDB file anywhere: every table is in the lake"


@pytest.mark.slow
def test_kill_9_on_the_lake_leaves_old_or_new_and_the_rerun_pays_for_nothing_twice(tmp_path, postgres, model_server):
    """A run killed mid-calls, then runs killed at later moments (around their commits): each batch of tables holds
    one run's whole day or none, every answer the server billed is in the lake's ledger once (one in flight at a
    kill as billing unknown), and all the runs together paid for at most a concurrency's worth of repeated calls."""
    landing = tmp_path / "landing"
    generate(landing, FIRST_DAY, days=1, turns_per_day=300, seed=5)
    env = worker_env(tmp_path / "worker", postgres, model_server, landing)
    Path(env["TMPDIR"]).mkdir()
    location = lake_location(postgres)
    command = materialize_command(DAILY, "--partition", FIRST_DAY.isoformat())

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path / "worker",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def batches() -> list[tuple]:
        """(rows, run ids) of each table the Gemini step commits together, once it has committed anything."""
        with connect(location, read_only=True) as connection:
            if not table_exists(connection, "main", "llm_calls"):
                return []
            return [
                connection.execute(f"SELECT count(*), list(DISTINCT run_id) FROM {table}").fetchone()
                for table in ("cleaned_turns", "function_calls", "llm_calls")
            ]

    def answered() -> int:
        return model_server.stats().get("requests", 0)

    def in_ledger() -> int:
        with connect(location, read_only=True) as connection:
            if not table_exists(connection, "main", "llm_attempts"):
                return 0
            return connection.execute("SELECT count(*) FROM llm_attempts WHERE billed").fetchone()[0]

    run = start()
    while answered() < 60:
        assert run.poll() is None, "the run ended too soon"
        time.sleep(0.02)
    so_far = answered()
    time.sleep(2.5)
    assert in_ledger() >= so_far, "a billed attempt reaches the lake's ledger within a second or two of its answer"
    while answered() < 150:
        assert run.poll() is None, "the run ended before the kill"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert batches() == [], "killed mid-calls: nothing committed"
    for delay in (3.0, 6.0, 9.0):
        run = start()
        time.sleep(delay)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        found = batches()
        writers = {tuple(run_ids) for _, run_ids in found}
        assert len(writers) <= 1 and all(len(run_ids) == 1 for _, run_ids in found), f"a mix at {delay} s: {found}"
        assert found == [] or found[0][0] == 300
    assert start().wait(timeout=300) == 0
    with connect(location, read_only=True) as connection:
        known, unknown = connection.execute(
            "SELECT count(*) FILTER (WHERE billed), count(*) FILTER (WHERE billed IS NULL) FROM llm_attempts"
        ).fetchone()
        needed = connection.execute("SELECT count(DISTINCT request_hash) FROM llm_calls").fetchone()[0]
        rows = connection.execute("SELECT count(*) FROM cleaned_turns").fetchone()[0]
    assert rows == 300
    # Every answer the server gave is in the ledger, the killed runs' included: billed, or billing unknown when it was
    # in flight at a kill (some of those never reached the server).
    assert known <= answered() <= known + unknown, (known, unknown, answered())
    assert needed <= answered() <= needed + int(env.get("COST_PIPELINE_CONCURRENCY", 64)), (needed, answered())


def test_an_error_quoting_the_catalogs_connection_string_loses_its_password():
    location = lake_location(5432)
    with pytest.raises(duckdb.IOException) as raised, lake._no_password(location):
        raise duckdb.IOException(f'Failed to attach DuckLake MetaData at "{lake.catalog_dsn(location)}"')
    assert PASSWORD not in str(raised.value) and "password=***" in str(raised.value)
    with pytest.raises(duckdb.CatalogException, match="no table"), lake._no_password(location):
        raise duckdb.CatalogException("no table")  # other errors pass through untouched


@pytest.mark.slow
def test_a_batch_day_on_the_lake_records_its_job_and_pays_each_answer_once(
    tmp_path, postgres, model_server, monkeypatch, landing_root
):
    from cost_pipeline.gemini.batch import jobs

    from .conftest import materialize_day

    monkeypatch.setenv(lake.LAKE_DATA_ENV, str(tmp_path / "data"))
    location = lake_location(postgres)
    generate(landing_root, FIRST_DAY, days=1, turns_per_day=30, seed=8)
    gemini = {"processing": {"mode": "batch", "batch_poll_s": 0.1}}
    result = materialize_day(FIRST_DAY, landing_root, location, model_server, gemini=gemini)
    assert result.success
    with connect(location, read_only=True) as connection:
        states = connection.execute(f"SELECT state, collected_at IS NOT NULL FROM {jobs.TABLE}").fetchall()
        cleaned = connection.execute("SELECT count(*) FROM cleaned_turns WHERE status = 'ok'").fetchone()[0]
        billed = connection.execute("SELECT count(*), count(DISTINCT response_id) FROM llm_attempts WHERE billed")
        attempts, distinct = billed.fetchone()
    assert len(states) == 2 and all(collected for _, collected in states), "both stages' jobs recorded, collected"
    assert cleaned == 30 and attempts == distinct == len(model_server.billing())
