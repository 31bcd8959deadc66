"""A day's raw turns for the Gemini stage: exported once, sorted by conversation, read back in chunks.

Why export. DuckDB lets one process write its file or several read it: a read held open
for a whole Gemini day would block every other run's commits for hours. So one short
read-only query streams the day, sorted by evaluation, conversation and turn index, into
a Parquet file in the step's staging folder (record batch by record batch, DuckDB
spilling its sort to disk beyond `SORT_MEMORY`), and the file lock is released before
the first call. `conversation_chunks` then reads it back a record batch at a time and
yields whole conversations, so memory holds a chunk, never the day. No Dagster here.
"""

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.tables import PARTITION_COLUMN, table_exists

TURN_FIELDS = ["turn_id", "evaluation_id", "conversation_id", "turn_index", "speaker", "text", "created_at"]
SORT_MEMORY = "256MB"
EXPORT_BATCH_ROWS = 65_536


def export_day_turns(
    database: str | Path, day: date | str, path: Path, timeout_s: float = 120.0, table: str = "raw_turns"
) -> int:
    """Write the day's turns, in conversation order, to `path`; returns how many. A day never ingested is an error."""
    day = date.fromisoformat(day) if isinstance(day, str) else day
    with connect(database, read_only=True, timeout_s=timeout_s) as connection:
        if not table_exists(connection, "main", table):
            raise LookupError(f"table {table} does not exist yet: materialize raw_turns for {day} first")
        connection.execute(f"SET memory_limit = '{SORT_MEMORY}'")
        # A relation streams record batches straight from DuckDB (a DB-API result's Arrow output copies every row).
        reader = connection.sql(
            f"SELECT {', '.join(TURN_FIELDS)} FROM {table} WHERE {PARTITION_COLUMN} = $day "
            "ORDER BY evaluation_id, conversation_id, turn_index",
            params={"day": day},
        ).to_arrow_reader(EXPORT_BATCH_ROWS)
        rows = 0
        with pq.ParquetWriter(path, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows


def conversation_chunks(path: Path, chunk_turns: int = 2048) -> Iterator[list[list[dict]]]:
    """Whole conversations, in file order, about `chunk_turns` turns a chunk (a longer conversation is one chunk)."""
    chunk: list[list[dict]] = []
    in_chunk = 0
    conversation: list[dict] = []
    key = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_turns):
        for turn in batch.to_pylist():
            turn_key = (turn["evaluation_id"], turn["conversation_id"])
            if turn_key != key and conversation:
                chunk.append(conversation)
                in_chunk += len(conversation)
                conversation = []
                if in_chunk >= chunk_turns:
                    yield chunk
                    chunk, in_chunk = [], 0
            key = turn_key
            conversation.append(turn)
    if conversation:
        chunk.append(conversation)
    if chunk:
        yield chunk
