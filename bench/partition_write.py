"""Rows per second of a partition write through our IO path vs raw DuckDB `INSERT ... FROM df`.

Writes a raw_turns-shaped frame of N rows (default 1,000,000) into a fresh DuckDB file:
a plain `INSERT INTO t SELECT * FROM frame` into an empty table (the floor), and
`replace_partitions` replacing the partition (delete + insert in one transaction, as every
re-run does), alternately for `--rounds` rounds so both see the same machine. Prints the
median seconds and rows/s of each and their throughput ratio (goal: ours >= 0.9 of raw).

    python bench/partition_write.py [--rows 1000000] [--rounds 3]
"""

import argparse
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

import duckdb
import numpy as np
import pandas as pd
from results import record  # noqa: E402

from cost_pipeline.ingest.tables import RAW_TURNS
from cost_pipeline.storage.columns import sql_types
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


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    frame = turns_frame(args.rows)
    declared = sql_types(RAW_TURNS)
    write = TableWrite("raw_turns", frame, date(2026, 11, 1), "bench-run", declared)
    raw_times, same_columns_times, ours_times = [], [], []
    # The fair floor too: a bare insert of the same 11 columns the table holds (the partition and run_id stamped).
    stamped = frame.assign(partition_date=date(2026, 11, 1), run_id="bench-run")
    with tempfile.TemporaryDirectory() as folder:
        raw_db, ours_db = Path(folder) / "raw.duckdb", Path(folder) / "ours.duckdb"
        print(
            f"partition write of {args.rows:,} raw_turns rows (duckdb {duckdb.__version__}), median of {args.rounds} "
            "alternating rounds"
        )
        with duckdb.connect(str(raw_db)) as raw, connect(ours_db) as ours:
            raw.register("frame", frame)
            raw.register("stamped", stamped)
            replace_partitions(ours, [write])  # the partition exists: every round replaces it
            for _ in range(args.rounds):
                raw.execute("CREATE OR REPLACE TABLE t AS SELECT * FROM frame LIMIT 0")
                raw_times.append(timed(lambda: raw.execute("INSERT INTO t SELECT * FROM frame")))
                raw.execute("CREATE OR REPLACE TABLE s AS SELECT * FROM stamped LIMIT 0")
                same_columns_times.append(timed(lambda: raw.execute("INSERT INTO s SELECT * FROM stamped")))
                ours_times.append(timed(lambda: replace_partitions(ours, [write])))
    raw_s, ours_s = statistics.median(raw_times), statistics.median(ours_times)
    same_s = statistics.median(same_columns_times)
    print(f"{'raw DuckDB INSERT INTO t SELECT * FROM df':<46} {raw_s:7.2f} s  {args.rows / raw_s:>12,.0f} rows/s")
    print(f"{'same, df with the 2 stamped columns added':<46} {same_s:7.2f} s  {args.rows / same_s:>12,.0f} rows/s")
    print(f"{'replace_partitions, replacing the partition':<46} {ours_s:7.2f} s  {args.rows / ours_s:>12,.0f} rows/s")
    print(
        f"throughput ratio replace / raw insert: {raw_s / ours_s:.2f} (goal >= 0.9); "
        f"replace / raw insert of the same 11 columns: {same_s / ours_s:.2f}"
    )
    record(
        "partition_write.py",
        f"partition write: replace a {args.rows:,}-row `raw_turns` partition in one transaction vs a bare "
        f"`INSERT ... SELECT` of the frame (median of {args.rounds})",
        f"{args.rows / ours_s / 1e6:.2f} M rows/s vs {args.rows / raw_s / 1e6:.2f} M rows/s: **{raw_s / ours_s:.2f}**",
        "0.9",
    )


if __name__ == "__main__":
    main()
