"""Rows per second of a partition write through our IO path vs raw DuckDB `INSERT ... FROM df`.

Writes a raw_turns-shaped frame of N rows (default 1,000,000) into a fresh DuckDB file:
first a plain `INSERT INTO t SELECT * FROM frame` (the floor), then `replace_partitions`
creating the partition, then replacing it (delete + insert in one transaction, as every
re-run does). Prints seconds and rows/s for each.

    python bench/partition_write.py [--rows 1000000]
"""

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from cost_pipeline.assets.ingest import RAW_TURNS_SCHEMA
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.tables import TableWrite, replace_partitions


def turns_frame(rows: int) -> pd.DataFrame:
    """A raw_turns-shaped frame: ids, indexes, a realistic text column and UTC timestamps."""
    rng = np.random.default_rng(0)
    index = np.arange(rows)
    texts = np.array([f"um can you uh schedule a meeting with person {i} on friday at noon" for i in range(1000)])
    return pd.DataFrame(
        {
            "turn_id": pd.Series(index).map("turn-{:09d}".format),
            "evaluation_id": np.array([f"eval-{i}" for i in range(5)])[index % 5],
            "conversation_id": pd.Series(index // 8).map("conv-{:07d}".format),
            "turn_index": (index % 8).astype("int32"),
            "speaker": np.where(index % 2 == 0, "User", "Assistant"),
            "text": texts[rng.integers(0, 1000, rows)],
            "created_at": pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(index, unit="ms"),
            "source_file": "eval.jsonl",
            "line_number": (index + 1).astype("int32"),
        }
    )


def timed(label: str, rows: int, action) -> float:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"{label:<46} {seconds:7.2f} s  {rows / seconds:>12,.0f} rows/s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    frame = turns_frame(args.rows)
    declared = {column.name: column.type for column in RAW_TURNS_SCHEMA.columns}
    write = TableWrite("raw_turns", frame, date(2026, 11, 1), "bench-run", declared)
    with tempfile.TemporaryDirectory() as folder:
        raw_db, ours_db = Path(folder) / "raw.duckdb", Path(folder) / "ours.duckdb"
        print(f"partition write of {args.rows:,} raw_turns rows (duckdb {duckdb.__version__})")
        with duckdb.connect(str(raw_db)) as connection:
            connection.register("frame", frame)
            connection.execute("CREATE TABLE t AS SELECT * FROM frame LIMIT 0")
            raw = timed("raw DuckDB INSERT INTO t SELECT * FROM df", args.rows,
                        lambda: connection.execute("INSERT INTO t SELECT * FROM frame"))
        with connect(ours_db) as connection:
            timed("replace_partitions, new table", args.rows, lambda: replace_partitions(connection, [write]))
            ours = timed("replace_partitions, replacing the partition", args.rows,
                         lambda: replace_partitions(connection, [write]))
        print(f"replace / raw insert time ratio: {ours / raw:.2f}")


if __name__ == "__main__":
    main()
