"""The DuckDB IO manager: one atomic write per partition, shared by a step's outputs.

Guarantee. The required outputs of one step that use this IO manager form one batch
(for the turns stage: cleaned turns, function calls and call usage). Dagster hands them
over one `handle_output` at a time; we hold each frame in memory and, when the last one
arrives, replace every table's partition in a single DuckDB transaction (see
`storage.tables.replace_partitions`). So a reader sees all of a step's tables for a day
from the old run or all from the new run, never half a partition, never a mix. If the
step raises before its last output, nothing is written at all; if the commit fails,
DuckDB rolls back and the previous contents stay whole. Optional outputs (which a step
may never emit) are committed on their own, so a batch can never wait forever.

Dagster logs an output's materialization when its `handle_output` returns, so the
events of a batch's earlier outputs appear before the commit; if the commit then fails
the step fails, the run is marked failed, and the tables still hold the previous run's
rows. Every row carries the `run_id` that wrote it, which lets a check prove the tables
of a partition agree.

A step may hand over a `StagedTable` (rows it wrote to Parquet chunk by chunk while it
ran; `storage.staging`) instead of a frame: it joins the same batch and transaction, is
inserted straight from its files, and its staging folder is deleted once the
transaction has committed or rolled back.

Why not the stock `dagster-duckdb` IO manager: it deletes and inserts in separate
auto-committed statements (a crash between them empties the partition), inserts by
column position, cannot add a column (dagster issue 13098), and fails on the file lock
when runs overlap (issues 16248, 19068). Connections here wait out another process's
lock with backoff (`storage.connect`), loads open the file read-only, and partition keys
reach SQL only as parameters.
"""

import re
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.staging import StagedTable
from cost_pipeline.storage.tables import TableWrite, read_slice, replace_partitions

COLUMN_SCHEMA_KEY = "dagster/column_schema"


class DuckDBPartitionIOManager(dg.ConfigurableIOManagerFactory):
    """Stores each asset as a DuckDB table, one day's partition replaced atomically."""

    database: str = Field(description="Path of the DuckDB file (created if absent).")
    schema_name: str = Field(default="main", description="DuckDB schema for assets without a key prefix.")
    lock_timeout_s: float = Field(
        default=120.0, description="How long to wait for another process to release the file."
    )

    staged_commit_memory: str = Field(
        default="100MB", description="DuckDB memory_limit while committing staged (large) outputs; it spills beyond.")

    def create_io_manager(self, context: dg.InitResourceContext) -> "PartitionBatchIOManager":
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", self.staged_commit_memory):
            raise ValueError(f"staged_commit_memory must be a size like 100MB or 1GiB, got {self.staged_commit_memory!r}")
        return PartitionBatchIOManager(Path(self.database), self.schema_name, self.lock_timeout_s,
                                       self.staged_commit_memory)


class PartitionBatchIOManager(dg.IOManager):
    """Holds a step's outputs until the batch is complete, then commits them together."""

    def __init__(self, database: Path, schema_name: str, lock_timeout_s: float, staged_commit_memory: str = "100MB"):
        self.database = database
        self.schema_name = schema_name
        self.lock_timeout_s = lock_timeout_s
        self.staged_commit_memory = staged_commit_memory
        self._pending: dict[tuple, dict[str, TableWrite]] = {}

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | StagedTable) -> None:
        if not isinstance(obj, (pd.DataFrame, StagedTable)):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a pandas DataFrame or a StagedTable, "
                            f"got {type(obj).__name__}")
        write = self._table_write(context, obj)
        context.add_output_metadata(
            {"dagster/row_count": len(obj), "dagster/table_name": f"{write.schema}.{write.table}"}
        )
        batch = _batch_output_names(context)
        key = (context.run_id, context.step_key, context.step_context.previous_attempt_count)
        pending = self._pending.setdefault(key, {})
        pending[context.name] = write
        if not batch <= set(pending):
            context.log.debug(f"holding {context.name} until {sorted(batch - set(pending))} arrive")
            return
        writes = [pending[name] for name in sorted(batch)]
        del self._pending[key]
        try:
            with connect(self.database, timeout_s=self.lock_timeout_s, on_wait=context.log.info) as connection:
                if any(isinstance(write.frame, StagedTable) for write in writes):
                    # Staged days can be far larger than memory: under a limit DuckDB spills instead of growing
                    # (a 800k-row insert: +133 MB at 100MB, +394 MB without).
                    connection.execute(f"SET memory_limit = '{self.staged_commit_memory}'")
                replace_partitions(connection, writes)
        finally:  # committed or rolled back, staged rows are never read again
            for write in writes:
                if isinstance(write.frame, StagedTable):
                    write.frame.release()
        context.log.info(
            "committed "
            + ", ".join(f"{w.table} ({len(w.frame)} rows)" for w in writes)
            + f" for partition {writes[0].partition or 'all'} in one transaction"
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        if not self.database.exists():
            raise FileNotFoundError(f"DuckDB file {self.database} does not exist yet: materialize upstream assets first")
        schema, table = self._table_name(context.asset_key)
        partitions = (
            [date.fromisoformat(key) for key in context.asset_partition_keys] if context.has_asset_partitions else None
        )
        with connect(self.database, read_only=True, timeout_s=self.lock_timeout_s, on_wait=context.log.info) as connection:
            return read_slice(connection, table, partitions, schema)

    def _table_write(self, context: dg.OutputContext, frame: pd.DataFrame) -> TableWrite:
        schema, table = self._table_name(context.asset_key)
        partition = None
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) != 1:
                raise ValueError(
                    f"{table}: a run writes one partition at a time, got {len(keys)}; "
                    "backfill ranges as one run per partition"
                )
            partition = date.fromisoformat(keys[0])
        return TableWrite(
            table=table,
            frame=frame,
            partition=partition,
            run_id=context.run_id,
            declared_types=_declared_types(context.definition_metadata),
            schema=schema,
        )

    def _table_name(self, asset_key: dg.AssetKey) -> tuple[str, str]:
        path = asset_key.path
        return (path[-2] if len(path) > 1 else self.schema_name), path[-1]


def _batch_output_names(context: dg.OutputContext) -> set[str]:
    """The required, selected outputs of this step that share this output's IO manager."""
    if not context.op_def.output_def_named(context.name).is_required:
        return {context.name}
    manager_key = context.op_def.output_def_named(context.name).io_manager_key
    selected = context.step_context.selected_output_names
    return {
        output.name
        for output in context.op_def.output_defs
        if output.io_manager_key == manager_key and output.is_required and output.name in selected
    }


def _declared_types(metadata: dict) -> dict[str, str]:
    schema = metadata.get(COLUMN_SCHEMA_KEY)
    if isinstance(schema, dg.TableSchemaMetadataValue):
        schema = schema.schema
    if not isinstance(schema, dg.TableSchema):
        return {}
    return column_types(schema)


def column_types(schema: dg.TableSchema) -> dict[str, str]:
    """Column -> DuckDB type, as a table's declared schema says (what staged chunks are typed by)."""
    return {column.name: column.type for column in schema.columns}
