"""Staged rows (Parquet chunks), the day's turns read back by conversation, and a streamed day end to end."""

import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal

import duckdb
import pandas as pd
import pytest

from cost_pipeline.gemini_step.writer_process import WriterProcess
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.day_turns import conversation_chunks, export_day_turns
from cost_pipeline.storage.staging import StagingArea, query_staged, remove_stale, staging_root
from cost_pipeline.storage.tables import TableWrite, replace_partitions

from .conftest import materialize_day

DAY = date(2026, 11, 1)
DECLARED = {"name": "VARCHAR", "count": "INTEGER", "cost": "DECIMAL(20,12)", "at": "TIMESTAMPTZ", "ok": "BOOLEAN"}


def rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "name": f"row {i}",
            "count": i,
            "cost": Decimal("0.000000000001") * i,
            "at": datetime(2026, 11, 1, 0, 0, i % 60, tzinfo=timezone.utc),
            "ok": i % 2 == 0,
        }
        for i in range(start, start + n)
    ]


def test_chunks_keep_the_declared_types_and_insert_like_a_frame(tmp_path):
    area = StagingArea(tmp_path / "db.duckdb.staging", "run-step")
    writer = area.writer("t", DECLARED, chunk_rows=3)
    writer.extend(rows(7))
    writer.append({"name": None, "count": None, "cost": None, "at": None, "ok": None})  # an all-null chunk
    staged = writer.close()
    assert staged.rows == 8
    with connect(tmp_path / "db.duckdb") as connection:
        replace_partitions(connection, [TableWrite("staged", staged, DAY, "r1", DECLARED)])
        replace_partitions(
            connection, [TableWrite("framed", pd.DataFrame(rows(7) + [dict.fromkeys(DECLARED)]), DAY, "r1", DECLARED)]
        )
        staged_rows = connection.execute("SELECT * FROM staged ORDER BY count NULLS LAST").fetchall()
        framed_rows = connection.execute("SELECT * FROM framed ORDER BY count NULLS LAST").fetchall()
        types = connection.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'staged' ORDER BY ordinal_position"
        ).fetchall()
    assert staged_rows == framed_rows and staged_rows[6][3] == Decimal("0.000000000006")
    assert [t for (t,) in types] == [
        "DATE",
        "VARCHAR",
        "INTEGER",
        "DECIMAL(20,12)",
        "TIMESTAMP WITH TIME ZONE",
        "BOOLEAN",
        "VARCHAR",
    ]
    assert query_staged("SELECT count(*), sum(count) FROM t", t=staged) == [(8, 21)]
    staged.release()
    assert not area.folder.exists()


def test_a_dead_writers_staging_is_removed_and_a_live_one_kept(tmp_path):
    root = tmp_path / "db.duckdb.staging"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from cost_pipeline.storage.staging import StagingArea; "
                f"a = StagingArea(Path({str(root)!r}), 'live-run'); print('ready', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        dead = StagingArea(root, "dead-run")
        dead.writer("t", DECLARED).close()
        dead._lock.close()  # the process that held it is gone: its lock is free
        assert remove_stale(root) == 1
        assert sorted(p.name for p in root.iterdir()) == ["live-run", "live-run.lock"]
    finally:
        holder.kill()
        holder.wait()
    mine = StagingArea(root, "next-run")  # opening an area sweeps what the killed holder left
    assert mine.removed_stale == 1 and sorted(p.name for p in root.iterdir()) == ["next-run", "next-run.lock"]


def test_the_day_reads_back_in_whole_conversations_in_order(tmp_path, landing_root, database):
    generate(landing_root, DAY, days=1, turns_per_day=400, seed=3)
    assert materialize_day(DAY, landing_root, database).success
    path = tmp_path / "turns.parquet"
    total = export_day_turns(database, DAY, path)
    chunks = list(conversation_chunks(path, chunk_turns=25))
    conversations = [conversation for chunk in chunks for conversation in chunk]
    with duckdb.connect(str(database), read_only=True) as connection:
        expected = connection.execute(
            "SELECT evaluation_id, conversation_id, list(turn_index ORDER BY turn_index) FROM raw_turns "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    got = [(c[0]["evaluation_id"], c[0]["conversation_id"], [t["turn_index"] for t in c]) for c in conversations]
    assert got == [(e, c, list(i)) for e, c, i in expected]
    assert sum(len(c) for c in conversations) == total > 350
    assert len(chunks) > 5 and all(sum(map(len, chunk)) < 25 + max(map(len, chunk)) for chunk in chunks)


TABLE_KEYS = {
    "cleaned_turns": "turn_id, cleaned_text, confidence, changes, status, cleaning_model",
    "function_calls": "turn_id, function_name, arguments, status, model",
}
# Which of two identical requests pays and which hits the cache depends on timing, so calls compare by their sums;
# costs are left out, as the server's implicit prompt cache (cached tokens) depends on the order requests arrive.
CALL_SUMS = (
    "SELECT stage, model, status, count(*), count(*) FILTER (WHERE cache_hit), sum(input_tokens), "
    "sum(output_tokens), sum(thinking_tokens) FROM llm_calls GROUP BY ALL ORDER BY ALL"
)


def day_rows(database) -> dict:
    with duckdb.connect(str(database), read_only=True) as connection:
        return {
            **{
                table: connection.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()
                for table, columns in TABLE_KEYS.items()
            },
            "llm_calls": connection.execute(CALL_SUMS).fetchall(),
        }


def calls_metadata(result) -> dict:
    """llm_calls' metadata values of a run's materialization."""
    event = next(
        event
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key.to_user_string() == "llm_calls"
    )
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.mark.slow
def test_a_day_streamed_in_tiny_chunks_writes_the_rows_of_one_big_chunk(
    tmp_path, landing_root, model_server, monkeypatch
):
    generate(landing_root, DAY, days=1, turns_per_day=300, seed=5)
    whole, streamed = tmp_path / "whole.duckdb", tmp_path / "streamed.duckdb"
    writers = []
    start = WriterProcess.start.__func__
    monkeypatch.setattr(
        WriterProcess, "start", classmethod(lambda cls, *args: writers.append(start(cls, *args)) or writers[-1])
    )
    one_chunk = materialize_day(
        DAY,
        landing_root,
        whole,
        model_server,
        run_config={
            "ops": {
                "turns_through_gemini": {
                    "config": {"chunk_turns": 100_000, "staged_chunk_rows": 100_000, "conversations_in_flight": 10_000}
                }
            }
        },
    )
    assert one_chunk.success and writers == [], "a day within one chunk is staged by the step itself"
    assert "writer_peak_rss_mb" not in calls_metadata(one_chunk) and calls_metadata(one_chunk)["step_peak_rss_mb"] > 50
    tiny = {"chunk_turns": 7, "staged_chunk_rows": 5, "conversations_in_flight": 3}
    chunked = materialize_day(
        DAY, landing_root, streamed, model_server, run_config={"ops": {"turns_through_gemini": {"config": tiny}}}
    )
    assert chunked.success and len(writers) == 1 and writers[0].closed, "many chunks are staged by the writer process"
    # Each process's own peak: the writer's is not the step's pages it was forked with.
    step_mb, writer_mb = calls_metadata(chunked)["step_peak_rss_mb"], calls_metadata(chunked)["writer_peak_rss_mb"]
    assert writer_mb == round(writers[0].peak_rss_mb, 1) and 50 < writer_mb < step_mb
    first = day_rows(streamed)
    assert first == day_rows(whole) and len(first["cleaned_turns"]) > 250 and first["function_calls"]
    # A re-run (every answer now from the cache) writes the same turns and decisions.
    assert materialize_day(
        DAY, landing_root, streamed, model_server, run_config={"ops": {"turns_through_gemini": {"config": tiny}}}
    ).success
    again = day_rows(streamed)
    assert again["cleaned_turns"] == first["cleaned_turns"] and again["function_calls"] == first["function_calls"]
    assert not any(staging_root(streamed).iterdir()), "a committed run leaves no staging behind"
