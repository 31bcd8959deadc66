"""Rollup time for 30 days of 1M calls each: `daily_cost_rollup` per day, then `evaluation_costs`.

Builds an `llm_calls` table of DAYS x CALLS rows (default 30 x 1,000,000) directly in
DuckDB (shaped like the real one: five evaluations, two models, two stages, Decimal
costs), then materializes `daily_cost_rollup` for every day and `evaluation_costs` once,
as real Dagster runs on that file, and prints the times.

    python bench/rollup.py [--days 30] [--calls 1000000]
"""

import argparse
import os
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

import dagster as dg
import duckdb
from results import record  # noqa: E402

from cost_pipeline.defs.costs import rollups
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.defs.warehouse import DuckDBWarehouse

START = date(2026, 10, 1)


def build_calls(database: Path, days: int, calls: int) -> None:
    with duckdb.connect(str(database)) as connection:
        connection.execute(f"""
            CREATE TABLE llm_calls AS
            SELECT DATE '{START}' + (i // {calls})::INTEGER AS partition_date,
                   'eval-' || (i % 5) AS evaluation_id,
                   CASE WHEN i % 7 = 0 THEN 'gemini-2.5-flash' ELSE 'gemini-2.5-flash-lite' END AS model,
                   CASE WHEN i % 3 = 0 THEN 'function' ELSE 'clean' END AS stage,
                   i % 4 = 0 AS cache_hit, CASE WHEN i % 997 = 0 THEN 'failed' ELSE 'ok' END AS status,
                   CASE WHEN i % 4 = 0 THEN 'cache' ELSE 'reported' END AS usage_source, 'ok' AS price_status,
                   (200 + i % 700)::BIGINT AS input_tokens, (i % 300)::BIGINT AS cached_tokens,
                   (20 + i % 90)::BIGINT AS output_tokens, 0::BIGINT AS thinking_tokens,
                   0::BIGINT AS tool_prompt_tokens,
                   (220 + i % 700 + i % 90)::BIGINT AS total_tokens,
                   ((200 + i % 700 - i % 300) * 0.0000001)::DECIMAL(20,12) AS input_cost_usd,
                   ((i % 300) * 0.00000001)::DECIMAL(20,12) AS cached_input_cost_usd,
                   ((20 + i % 90) * 0.0000004)::DECIMAL(20,12) AS output_cost_usd,
                   ((200 + i % 700 - i % 300) * 0.0000001 + (i % 300) * 0.00000001
                    + (20 + i % 90) * 0.0000004)::DECIMAL(20,12) AS total_cost_usd,
                   0::DECIMAL(20,12) AS saved_cost_usd,
                   (5 + i % 50)::DOUBLE AS latency_ms, (1000 + i % 500)::DOUBLE AS tokens_per_second
            FROM range({days * calls}) t(i)""")
        connection.execute(
            "CREATE TABLE cleaned_turns AS SELECT partition_date, evaluation_id FROM llm_calls WHERE stage = 'clean'"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "rollup.duckdb"
        started = time.perf_counter()
        build_calls(database, args.days, args.calls)
        print(f"built llm_calls: {args.days} days x {args.calls:,} calls in {time.perf_counter() - started:.1f} s")
        resources = {
            "io_manager": DuckDBPartitionIOManager(database=str(database)),
            "warehouse": DuckDBWarehouse(database=str(database)),
            "costs": CostSettings(),
        }
        assets = dg.load_assets_from_modules([rollups])
        per_day = []
        for offset in range(args.days):
            day = (START + timedelta(days=offset)).isoformat()
            started = time.perf_counter()
            dg.materialize(assets, partition_key=day, resources=resources, selection=["daily_cost_rollup"])
            per_day.append(time.perf_counter() - started)
        started = time.perf_counter()
        dg.materialize(assets, resources=resources, selection=["evaluation_costs"])
        totals_s = time.perf_counter() - started
    per_day.sort()
    print(
        f"daily_cost_rollup, {args.days} runs of {args.calls:,} calls each: total {sum(per_day):.1f} s, "
        f"median {per_day[len(per_day) // 2]:.2f} s, max {per_day[-1]:.2f} s per day (Dagster run included)"
    )
    print(f"evaluation_costs over {args.days} days: {totals_s:.2f} s")
    record(
        "rollup.py",
        f"rollup: {args.days} days x {args.calls:,} calls",
        f"`daily_cost_rollup` **{per_day[len(per_day) // 2]:.2f} s** median per day (max {per_day[-1]:.2f} s); "
        f"`evaluation_costs` {totals_s:.2f} s",
        "-",
    )


if __name__ == "__main__":
    main()
