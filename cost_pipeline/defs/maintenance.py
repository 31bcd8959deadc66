"""Weekly upkeep of the store: on the lake, small files merged, old snapshots expired, unneeded files deleted.

DuckLake writes a Parquet file per commit and keeps every snapshot for time travel until
told otherwise; left alone, a table that a checkpoint appends to every few seconds becomes
thousands of small files and reads slow down. A DuckDB file needs none of this (it is
checkpointed, which returns freed blocks).
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.reports.markdown import markdown_table
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.lake import describe, files_per_table, is_lake, maintain, stale_snapshots

MAX_FILES_AFTER = 16
"""A table with more live files than this after merging was not merged."""


class MaintenanceConfig(dg.Config):
    keep_snapshots_days: int = Field(
        default=7, ge=0, description="Snapshots younger than this are kept: how far back time travel reaches."
    )


@dg.asset(
    group_name="maintenance",
    kinds={"ducklake"},
    check_specs=[
        dg.AssetCheckSpec("files_merged", asset="store_maintenance", description="No table is left in small files."),
        dg.AssetCheckSpec(
            "old_snapshots_expired", asset="store_maintenance", description="No snapshot older than the kept age."
        ),
    ],
)
def store_maintenance(
    context: dg.AssetExecutionContext, config: MaintenanceConfig, warehouse: DuckDBWarehouse
) -> dg.MaterializeResult:
    """Merges each lake table's small files, expires snapshots older than `keep_snapshots_days` and deletes the
    files no snapshot needs, holding the lake's writer lock (runs wait seconds); checkpoints a DuckDB file."""
    database = warehouse.database
    with connect(database, timeout_s=warehouse.lock_timeout_s, on_wait=context.log.info) as connection:
        if not is_lake(database):
            connection.execute("CHECKPOINT")
            return dg.MaterializeResult(
                metadata={"store": describe(database), "done": "checkpointed; a DuckDB file has no files to merge"},
                check_results=[
                    dg.AssetCheckResult(check_name=name, passed=True, metadata={"store": "a DuckDB file"})
                    for name in ("files_merged", "old_snapshots_expired")
                ],
            )
        figures = maintain(connection, config.keep_snapshots_days)
        files = files_per_table(connection)
        stale = stale_snapshots(connection, config.keep_snapshots_days)
    unmerged = {table: count for table, count in files.items() if count > MAX_FILES_AFTER}
    context.log.info(
        f"{describe(database)}: {figures['files_before']:,} data files -> {figures['files_after']:,}, "
        f"{figures['snapshots_before']:,} snapshots -> {figures['snapshots_after']:,}"
    )
    return dg.MaterializeResult(
        metadata={
            **{name: dg.MetadataValue.int(value) for name, value in figures.items()},
            "files_per_table": dg.MetadataValue.md(
                markdown_table(pd.DataFrame({"table": list(files), "data files": list(files.values())}), limit=200)
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="files_merged",
                passed=not unmerged,
                metadata={"tables_over": dg.MetadataValue.json(unmerged), "max_files": MAX_FILES_AFTER},
                description=None
                if not unmerged
                else "still in many files: " + ", ".join(f"{t} ({n:,})" for t, n in unmerged.items()),
            ),
            dg.AssetCheckResult(
                check_name="old_snapshots_expired",
                passed=stale == 0,
                metadata={"stale_snapshots": stale, "keep_days": config.keep_snapshots_days},
                description=None if not stale else f"{stale:,} snapshots older than {config.keep_snapshots_days} days",
            ),
        ],
    )


store_maintenance_job = dg.define_asset_job(
    "store_maintenance_job",
    selection=dg.AssetSelection.assets("store_maintenance"),
    description="The store's weekly upkeep (store_maintenance), with its checks.",
)
store_maintenance_schedule = dg.ScheduleDefinition(
    job=store_maintenance_job,
    cron_schedule="0 4 * * 0",
    execution_timezone="UTC",
    description="Sundays at 04:00 UTC: merge the lake's small files and expire snapshots older than a week.",
)
