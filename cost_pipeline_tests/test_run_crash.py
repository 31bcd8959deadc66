"""`kill -9` of a whole Dagster run (its process group) at several points: every table keeps a whole partition."""

import json
import os
import signal
import subprocess
import time
from datetime import date

import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage.staging import staging_root

from .conftest import REPO, dagster_home, materialize_command

DAY = date(2026, 11, 1)
DAILY = "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls,daily_cost_rollup"
BATCHES = [("raw_turns", "quarantined_turns"), ("cleaned_turns", "function_calls", "llm_calls")]


# Small chunks, so a kill lands with several chunks of conversations read and several of rows staged.
CHUNKED = {
    "ops": {
        "turns_through_gemini": {"config": {"chunk_turns": 50, "staged_chunk_rows": 64, "conversations_in_flight": 8}}
    }
}


def start_run(env, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        materialize_command(DAILY, "--partition", str(DAY), "--config-json", json.dumps(CHUNKED)),
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def partition_state(database) -> dict:
    """For each table: (rows, the run ids that wrote them) in the day's partition."""
    with duckdb.connect(str(database), read_only=True) as connection:
        return {
            table: connection.execute(
                f"SELECT count(*), list(DISTINCT run_id ORDER BY run_id) FROM {table} WHERE partition_date = ?", [DAY]
            ).fetchone()
            for batch in BATCHES
            for table in batch
        }


@pytest.mark.slow
def test_killing_a_run_mid_flight_leaves_old_or_new_partitions_never_a_mix(tmp_path, landing_root, database):
    home = dagster_home(tmp_path / "home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
    }
    env.pop("GEMINI_API_KEY", None), env.pop("GOOGLE_API_KEY", None), env.pop("GOOGLE_GEMINI_BASE_URL", None)

    generate(landing_root, DAY, days=1, turns_per_day=300, seed=1)
    assert start_run(env, tmp_path).wait(timeout=300) == 0
    states = [partition_state(database)]
    generate(landing_root, DAY, days=1, turns_per_day=700, seed=2)
    left_behind = []
    for delay in (4.0, 7.0, 10.0, 13.0):
        run = start_run(env, tmp_path)
        time.sleep(delay)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        state = partition_state(database)
        for batch in BATCHES:
            writers = {tuple(state[table][1]) for table in batch}
            assert len(writers) == 1 and len(next(iter(writers))) == 1, (
                f"{batch} mixes runs after a kill at {delay}s: {state}"
            )
        # Each batch holds one run's whole partition: the old day (300 turns) or the new one (700).
        assert state["raw_turns"][0] in (300, 700) and state["cleaned_turns"][0] in (300, 700)
        assert state["llm_calls"][1] == state["cleaned_turns"][1] == state["function_calls"][1]
        states.append(state)
        left_behind.append(len(list(staging_root(database).iterdir())) if staging_root(database).exists() else 0)
    assert states[1]["cleaned_turns"][0] == 300, "the first kill came before the run could commit anything"
    assert max(left_behind) >= 1, "no kill landed while a step was staging rows; the cleanup below proves nothing"
    assert start_run(env, tmp_path).wait(timeout=300) == 0
    final = partition_state(database)
    assert final["raw_turns"][0] == 700 and final["cleaned_turns"][0] == 700
    assert len({tuple(final[t][1]) for t in BATCHES[1]}) == 1
    # The killed runs' staging was never read as data (the counts above) and is gone now.
    assert not any(staging_root(database).iterdir())
