"""The lake against the DuckDB file: a partition replace, a checkpoint into a big ledger, and the weekly upkeep.

Starts a throwaway PostgreSQL (Debian's packages) for the lake's catalog, with its data in a
local folder, and measures, each on the lake and on a DuckDB file side by side:

1. replacing a `raw_turns` partition of `--rows` rows (default 1,000,000) in one transaction
   (`replace_partitions`), alternately for `--rounds` rounds: the median seconds and the
   lake / file ratio;
2. one checkpoint of `--batch` attempts and cache entries into a ledger and a cache of
   `--ledger-rows` rows each (default 3,000,000; `ledger_growth.py`'s tables and checkpoint);
3. Parquet data files per table before and after `store_maintenance`'s work (`lake.maintain`)
   once `--checkpoints` checkpoints have each added their small files.

    python bench/lake_store.py [--rows 1000000] [--ledger-rows 3000000] [--rounds 3]
"""

import argparse
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

from ledger_growth import build, checkpoint, last_day, spooled_batch  # noqa: E402
from partition_write import turns_frame  # noqa: E402
from results import record  # noqa: E402

from cost_pipeline.ingest.tables import RAW_TURNS  # noqa: E402
from cost_pipeline.storage import lake  # noqa: E402
from cost_pipeline.storage.columns import sql_types  # noqa: E402
from cost_pipeline.storage.connect import connect  # noqa: E402
from cost_pipeline.storage.local_postgres import free_port, running_postgres  # noqa: E402
from cost_pipeline.storage.tables import TableWrite, replace_partitions  # noqa: E402


def replace_seconds(stores: dict[str, str], rows: int, rounds: int) -> dict[str, float]:
    """Median seconds of replacing one `rows`-row partition on each store, the stores alternating round by round."""
    write = TableWrite("raw_turns", turns_frame(rows), date(2026, 11, 1), "bench-run", sql_types(RAW_TURNS))
    times: dict[str, list[float]] = {name: [] for name in stores}
    for name, store in stores.items():
        with connect(store) as connection:
            replace_partitions(connection, [write])  # the partition exists: every round replaces it
    for number in range(rounds):
        for name, store in stores.items() if number % 2 == 0 else reversed(stores.items()):
            with connect(store) as connection:
                started = time.perf_counter()
                replace_partitions(connection, [write])
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def small_checkpoint(store: str, batch: int, day: str) -> None:
    """One checkpoint's appends (ledger, then cache), as a running day makes them every second on the lake."""
    from cost_pipeline.money.ledger import load_spools
    from cost_pipeline.money.pricing import PriceBook

    spool, cache = spooled_batch(store, batch, day)
    load_spools(store, PriceBook(), only=spool.path)
    cache.write(cache.take_new())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ledger-rows", type=int, default=3_000_000)
    parser.add_argument("--batch", type=int, default=500, help="attempts (and cache entries) per checkpoint")
    parser.add_argument("--checkpoints", type=int, default=40, help="checkpoints before the upkeep")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_postgres(free_port()) as postgres:
        os.environ[lake.LAKE_DATA_ENV] = str(Path(folder) / "lake-data")
        os.environ[lake.SCRATCH_ENV] = str(Path(folder) / "scratch")
        lake_store = lake.LAKE_PREFIX + postgres.replace("dbname=postgres", "dbname=lake")
        stores = {"file": str(Path(folder) / "store.duckdb"), "lake": lake_store}
        replaced = replace_seconds(stores, args.rows, args.rounds)
        print(f"replace a {args.rows:,}-row raw_turns partition, median of {args.rounds} alternating rounds:")
        for name, seconds in replaced.items():
            print(f"  {name:<5} {seconds:6.2f} s  {args.rows / seconds:>12,.0f} rows/s")
        ratio = replaced["lake"] / replaced["file"]
        print(f"  lake / file time: {ratio:.2f}")

        day = last_day(args.ledger_rows)
        checkpoints = {}
        for name, store in stores.items():
            build(store, args.ledger_rows)
            checkpoints[name] = checkpoint(store, args.batch, day, args.ledger_rows)
        print(f"one checkpoint of {args.batch} attempts and cache entries into {args.ledger_rows:,}-row tables:")
        for name, figures in checkpoints.items():
            print(f"  {name:<5} ledger {figures['ledger_s']:.3f} s, cache {figures['cache_s']:.3f} s")

        for _ in range(args.checkpoints):
            small_checkpoint(stores["lake"], args.batch, day)
        with connect(stores["lake"]) as connection:
            before = lake.files_per_table(connection)
            figures = lake.maintain(connection, keep_snapshots_days=0)
            after = lake.files_per_table(connection)
        print(f"lake data files after {args.checkpoints} more checkpoints, before and after the upkeep:")
        for table in sorted(before):
            print(f"  {table:<22} {before[table]:>5} -> {after.get(table, 0)}")
        print(f"  snapshots {figures['snapshots_before']:,} -> {figures['snapshots_after']:,}")
    record(
        "lake_store.py",
        f"DuckLake (PostgreSQL catalog, local data folder) vs the DuckDB file: replace a {args.rows:,}-row partition; "
        f"a checkpoint into a {args.ledger_rows:,}-row ledger; files per table after the upkeep",
        f"replace lake / file **{ratio:.2f}** ({replaced['lake']:.2f} s vs {replaced['file']:.2f} s); checkpoint "
        f"ledger {checkpoints['lake']['ledger_s']:.2f} s vs {checkpoints['file']['ledger_s']:.2f} s; ledger files "
        f"{before.get('llm_attempts', 0)} -> {after.get('llm_attempts', 0)}",
        "-",
    )


if __name__ == "__main__":
    main()
