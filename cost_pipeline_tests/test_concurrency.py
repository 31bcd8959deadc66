"""Two processes materialize different partitions of one DuckDB file at once, through Dagster's CLI."""

import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate

from .conftest import dagster_home, materialize_command
from .test_connect import hold_lock

DAGSTER = str(Path(sys.executable).with_name("dagster"))


@pytest.mark.slow
def test_two_runs_on_one_file_both_succeed(tmp_path, landing_root, database):
    summaries = generate(landing_root, date(2026, 11, 1), days=2, turns_per_day=3_000, seed=11)
    env = {
        **os.environ,
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    dagster_home(tmp_path / "dagster_home")
    # Holding the file until both runs have started their step forces both to wait for the lock
    # and then contend for it, instead of relying on lucky timing (a fixed 12 s hold was not
    # enough once the suite ran on parallel workers: the CLI took longer than that to start).
    holder = hold_lock(database, 100.0)
    runs = [
        subprocess.Popen(
            materialize_command("raw_turns,quarantined_turns", "--partition", str(day.day)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for day in summaries
    ]
    lines: list[list[str]] = [[] for _ in runs]
    started = [threading.Event() for _ in runs]

    def read(number: int) -> None:
        for line in runs[number].stdout:
            lines[number].append(line)
            if "STEP_START" in line:
                started[number].set()
        started[number].set()  # ended without starting a step: the assertions below say why

    readers = [threading.Thread(target=read, args=(number,)) for number in range(len(runs))]
    for reader in readers:
        reader.start()
    for event in started:
        event.wait(timeout=100)
    time.sleep(1.0)  # both steps now reach the file while it is held
    holder.terminate()
    holder.wait()
    for run, reader in zip(runs, readers):
        run.wait(timeout=300)
        reader.join()
    outputs = ["".join(output) for output in lines]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-3000:]
        assert "RUN_SUCCESS" in output
        assert "for the lock on DuckDB file" in output, "the run never had to wait; nothing was contended"
    with duckdb.connect(str(database), read_only=True) as connection:
        counts = dict(connection.execute("SELECT partition_date, count(*) FROM raw_turns GROUP BY 1").fetchall())
    assert counts == {s.day: s.good_lines for s in summaries}
