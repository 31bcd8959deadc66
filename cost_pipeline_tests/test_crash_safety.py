"""`kill -9` while a large partition is being written leaves the previous partition whole."""

import signal
import subprocess
import sys
import time

import duckdb
import pytest

from cost_pipeline_tests.crash_writer import DAY

LARGE = 8_000_000


def write_in_child(database, rows: int, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cost_pipeline_tests.crash_writer", str(database), str(rows), run_id],
        stdout=subprocess.PIPE,
        text=True,
    )


def partition(database) -> tuple:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(
            "SELECT count(*), min(run_id), max(run_id) FROM big WHERE partition_date = ?", [DAY]
        ).fetchone()


@pytest.mark.slow
@pytest.mark.parametrize("phase,delay_s", [("deleting", 0.0), ("inserting", 0.0), ("inserting", 0.25)])
def test_kill_9_mid_write_keeps_the_old_partition_and_the_next_run_succeeds(database, phase, delay_s):
    first = write_in_child(database, 1_000, "old-run")
    assert first.communicate()[0].splitlines()[-1] == "committed"

    victim = write_in_child(database, LARGE, "killed-run")
    seen = []
    for line in victim.stdout:
        seen.append(line.strip())
        if line.strip() == phase:
            break
    time.sleep(delay_s)
    victim.send_signal(signal.SIGKILL)
    remaining, _ = victim.communicate()
    seen += remaining.split()
    assert victim.returncode == -signal.SIGKILL
    assert "committed" not in seen, "the write finished before the kill; the test proved nothing"

    assert partition(database) == (1_000, "old-run", "old-run")

    after = write_in_child(database, 5_000, "next-run")
    assert after.communicate()[0].splitlines()[-1] == "committed"
    assert partition(database) == (5_000, "next-run", "next-run")
