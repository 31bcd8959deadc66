"""Daily partitions (one partition is one landing folder, `<landing>/<YYYY-MM-DD>/`) and the DuckDB writer pool."""

import dagster as dg

from cost_pipeline.config import partitions_start

PARTITIONS_START = partitions_start()

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# Billing days (UTC) for reconciliation: today included, since an export can cover the day so far.
billing_days = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC", end_offset=1)

# Steps that write the DuckDB file; an instance can cap how many run at once
# (deploy/prod/dagster.yaml: concurrency.pools.default_limit).
DUCKDB_POOL = "duckdb"
