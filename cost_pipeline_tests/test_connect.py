"""Waiting out another process's lock on the DuckDB file."""

import subprocess
import sys
import time

import duckdb
import pytest

from cost_pipeline.storage.connect import DatabaseBusy, connect

HOLD_LOCK = """
import duckdb, sys, time
connection = duckdb.connect(sys.argv[1])
connection.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(database, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(database), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_writer_waits_for_the_lock_and_then_succeeds(database):
    holder = hold_lock(database, 1.0)
    started = time.monotonic()
    with connect(database, timeout_s=30) as connection:
        waited = time.monotonic() - started
        assert connection.execute("SELECT x FROM t").fetchone() == (1,)
    holder.wait()
    assert waited > 0.3, "the connection should have waited for the other process"


def test_a_reader_opens_read_only_after_the_writer_leaves(database):
    holder = hold_lock(database, 0.5)
    with connect(database, read_only=True, timeout_s=30) as connection:
        assert connection.execute("SELECT x FROM t").fetchone() == (1,)
        with pytest.raises(duckdb.Error):
            connection.execute("INSERT INTO t VALUES (2)")
    holder.wait()


def test_a_lock_held_too_long_is_a_clear_error(database):
    holder = hold_lock(database, 5.0)
    try:
        with pytest.raises(DatabaseBusy, match=rf"{database.name} stayed locked by another process for 1s"):
            with connect(database, timeout_s=1.0):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_errors_other_than_the_lock_are_raised_as_they_are(tmp_path):
    with pytest.raises(duckdb.IOException) as raised:
        with connect(tmp_path / "missing.duckdb", read_only=True, timeout_s=30):
            pass
    assert not isinstance(raised.value, DatabaseBusy)
