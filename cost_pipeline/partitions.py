"""Daily partitions (one partition is one landing folder, `<landing>/<YYYY-MM-DD>/`) and the DuckDB writer pool."""

import dagster as dg

PARTITIONS_START = "2025-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# Steps that write the DuckDB file; an instance can cap how many run at once
# (deploy/prod/dagster.yaml: concurrency.pools.default_limit).
DUCKDB_POOL = "duckdb"
