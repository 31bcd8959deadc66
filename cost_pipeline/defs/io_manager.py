"""The DuckDB IO manager: a drop-in for dagster-duckdb-pandas that replaces each partition atomically.

Contract (details below and in `storage.tables`, `storage.partition_slices`):
1. Stores: each asset (or op output) as table `schema.table`: schema from `schema` metadata,
   then the manager's `schema`, then the key prefix, then `main`; table = last key part (op: output name).
2. Partitions: every kind Dagster has. A dimension is stamped in its own column (`partition_date`,
   `partition_start`, `partition_key`, or `partition_<dimension>` when several) unless the asset's
   `partition_expr` names SQL over its own columns; every row carries the `run_id` that wrote it.
3. Loads: one query for any range of partitions; the frame as written (stamped columns left out
   unless named in the input's `columns` metadata); no partitions, or a self-dependent asset's
   first run, give an empty frame with the table's columns. DECIMALs come back as `Decimal`.
4. Atomic: a step's required outputs commit in one transaction (old partition or new, never a mix).
5. Refused, with a message naming what to do: non-DataFrame outputs, stamped columns in the frame,
   rows outside their `partition_expr` partition, dropped columns, type changes that lose values.
"""

import re
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.lake import catalog_name, describe, store_exists
from cost_pipeline.storage.partition_slices import DATE, RUN_ID_COLUMN, Dimension, TableSlice, TimeRange, stamped_column
from cost_pipeline.storage.staging import StagedTable
from cost_pipeline.storage.tables import (
    TableWrite,
    empty_frame,
    read_slice,
    replace_partitions,
    row_counts,
    table_exists,
)

COLUMN_SCHEMA_KEY = "dagster/column_schema"
LISTED_COLUMNS_KEY = "columns"
"""A schema under this key types the table as `dagster/column_schema` does, but the UI lists it with the
metadata (at its end) instead of in a Columns section above all metadata: for assets whose page opens on money."""
STORAGE_KIND = "duckdb"


class DuckDBPartitionIOManager(dg.ConfigurableIOManagerFactory):
    """Stores each asset or op output as a DuckDB table; each partition is replaced atomically."""

    database: str = Field(description="Path of the DuckDB file (created if absent).")
    schema_: str | None = Field(
        default=None,
        alias="schema",
        description="DuckDB schema for every table, unless an output's `schema` metadata names another; "
        "when unset, an asset key's prefix, else `main`.",
    )
    lock_timeout_s: float = Field(
        default=120.0, description="How long to wait for another process to release the file."
    )

    staged_commit_memory: str = Field(
        default="100MB", description="DuckDB memory_limit while committing staged (large) outputs; it spills beyond."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> "PartitionBatchIOManager":
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", self.staged_commit_memory):
            raise ValueError(
                f"staged_commit_memory must be a size like 100MB or 1GiB, got {self.staged_commit_memory!r}"
            )
        return PartitionBatchIOManager(self.database, self.schema_, self.lock_timeout_s, self.staged_commit_memory)


class PartitionBatchIOManager(dg.IOManager):
    """Holds a step's outputs until the batch is complete, then commits them together.

    The required outputs of one step that use this IO manager form one batch (for the
    turns stage: cleaned turns, function calls and call usage). Dagster hands them over
    one `handle_output` at a time; each is held and, when the last arrives, every table's
    partition is replaced in a single DuckDB transaction (`storage.tables`). If the step
    raises before its last output nothing is written; if the commit fails DuckDB rolls
    back and the previous contents stay whole. Optional outputs commit on their own, so a
    batch never waits forever. Dagster logs an output's materialization when its
    `handle_output` returns, so a batch's earlier outputs report their row counts as the
    commit will leave them (counted before it) and their events precede the commit.

    A step may hand over a `StagedTable` (Parquet chunks written while it ran) instead of
    a frame: it joins the same transaction, is inserted straight from its files, and its
    staging folder is deleted once the transaction has committed or rolled back.

    Why not the stock `dagster-duckdb` IO manager: it deletes and inserts in separate
    auto-committed statements (a crash between them empties the partition), inserts by
    column position, cannot add a column (dagster issue 13098), and fails on the file lock
    when runs overlap (issues 16248, 19068). Connections here wait out another process's
    lock with backoff (`storage.connect`), loads open the file read-only, and partition
    keys reach SQL only as parameters.
    """

    def __init__(self, database: str, schema: str | None, lock_timeout_s: float, staged_commit_memory: str = "100MB"):
        self.database = database
        self.schema = schema
        self.lock_timeout_s = lock_timeout_s
        self.staged_commit_memory = staged_commit_memory
        self._pending: dict[tuple, dict[str, TableWrite]] = {}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None and context.dagster_type.is_nothing:
            return
        if not isinstance(obj, (pd.DataFrame, StagedTable)):
            raise TypeError(
                f"{_output_name(context)} returned {type(obj).__name__}; the DuckDB IO manager stores "
                "pandas DataFrames (annotate the output `-> pd.DataFrame`, or give it another IO manager)"
            )
        write = self._table_write(context, obj)
        batch = _batch_output_names(context)
        key = (context.run_id, context.step_key, context.step_context.previous_attempt_count)
        pending = self._pending.setdefault(key, {})
        pending[context.name] = write
        if not batch <= set(pending):
            context.log.debug(f"holding {context.name} until {sorted(batch - set(pending))} arrive")
            with connect(self.database, timeout_s=self.lock_timeout_s, on_wait=context.log.info) as connection:
                table_rows, slice_rows = row_counts(connection, write)
            # What the commit will leave: a partition replaced among the table's rows, or the whole table.
            predicted = len(obj) if write.slice is None else table_rows - (slice_rows or 0) + len(obj)
            context.add_output_metadata(self._metadata(write, predicted))
            return
        # Only this batch's outputs: the step may hold others (an optional output's, another batch's) meanwhile.
        writes = [pending.pop(name) for name in sorted(batch)]
        if not pending:
            del self._pending[key]
        try:
            with connect(self.database, timeout_s=self.lock_timeout_s, on_wait=context.log.info) as connection:
                if any(isinstance(write.frame, StagedTable) for write in writes):
                    # Staged days can be far larger than memory: under a limit DuckDB spills instead of growing
                    # (a 800k-row insert: +133 MB at 100MB, +394 MB without).
                    connection.execute(f"SET memory_limit = '{self.staged_commit_memory}'")
                replace_partitions(connection, writes)
                table_rows, _ = row_counts(connection, write)
        finally:  # committed or rolled back, staged rows are never read again
            for each in writes:
                if isinstance(each.frame, StagedTable):
                    each.frame.release()
        context.add_output_metadata(self._metadata(write, table_rows))
        context.log.info(
            "committed "
            + ", ".join(f"{w.table} ({len(w.frame)} rows)" for w in writes)
            + f" for partition {context.partition_key if context.has_partition_key else 'all'} in one transaction"
            + f" to {describe(self.database)}"
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        load_type = context.dagster_type.typing_type
        if load_type is not Any and not (isinstance(load_type, type) and issubclass(load_type, pd.DataFrame)):
            raise TypeError(
                f"input {context.name!r} is typed {load_type}; the DuckDB IO manager loads pandas DataFrames"
            )
        upstream = context.upstream_output
        if upstream is None:
            raise TypeError(f"input {context.name!r} reads no upstream output: the DuckDB IO manager loads assets")
        schema, table = self._table_name(upstream)
        columns = (context.definition_metadata or {}).get("columns")
        table_slice = (
            _partition_slice(context, (upstream.definition_metadata or {}).get("partition_expr"))
            if context.has_asset_partitions
            else None
        )
        leave_out = [*(table_slice.stamped_columns() if table_slice else []), RUN_ID_COLUMN]
        if context.has_asset_partitions and not context.asset_partition_keys:
            return self._empty(context, schema, table, leave_out, columns)
        exists = store_exists(self.database)
        if exists:
            with connect(
                self.database, read_only=True, timeout_s=self.lock_timeout_s, on_wait=context.log.info
            ) as connection:
                if table_exists(connection, schema, table):
                    return read_slice(connection, table, table_slice, schema, columns, leave_out)
        if _self_dependent(context):
            return self._empty(context, schema, table, leave_out, columns)
        if not exists:
            raise FileNotFoundError(
                f"DuckDB file {self.database} does not exist yet: materialize upstream assets first"
            )
        raise LookupError(f"table {schema}.{table} does not exist yet: materialize {_output_name(upstream)} first")

    def _empty(self, context: dg.InputContext, schema: str, table: str, leave_out: list[str], columns) -> pd.DataFrame:
        """No rows, with the table's columns, else the declared ones: what a first partition reads of itself."""
        if columns is None:
            upstream = context.upstream_output
            declared = _declared_types((upstream.definition_metadata if upstream else None) or {})
            columns = list(declared) or None
        if store_exists(self.database):
            with connect(self.database, read_only=True, timeout_s=self.lock_timeout_s) as connection:
                if table_exists(connection, schema, table):
                    return empty_frame(connection, schema, table, leave_out, columns)
        return empty_frame(None, schema, table, leave_out, columns)

    def _table_write(self, context: dg.OutputContext, frame: pd.DataFrame | StagedTable) -> TableWrite:
        schema, table = self._table_name(context)
        table_slice = None
        if context.has_asset_partitions:
            table_slice = _partition_slice(context, (context.definition_metadata or {}).get("partition_expr"))
            if table_slice.stamped_columns() and len(context.asset_partition_keys) != 1:
                raise ValueError(
                    f"{schema}.{table}: this run writes {len(context.asset_partition_keys)} partitions at "
                    "once, but the "
                    f"partition is stamped ({', '.join(table_slice.stamped_columns())}), so rows cannot say which is "
                    "theirs: backfill one run per partition, or keep the partition in a column named by "
                    "`partition_expr`"
                )
        return TableWrite(
            table=table,
            frame=frame,
            partition=table_slice,
            run_id=context.run_id,
            declared_types=_declared_types(context.definition_metadata or {}),
            schema=schema,
        )

    def _table_name(self, context: dg.OutputContext) -> tuple[str, str]:
        """(schema, table): schema metadata, then this manager's schema, then the key prefix, then `main`."""
        metadata = context.definition_metadata or {}
        if context.has_asset_key:
            path = context.asset_key.path
            table, prefix = path[-1], (path[-2] if len(path) > 1 else None)
        else:
            table, prefix = metadata.get("table") or context.name, None
        return metadata.get("schema") or self.schema or prefix or "main", table

    def _metadata(self, write: TableWrite, table_rows: int) -> dict:
        name = f"{catalog_name(self.database)}.{write.schema}.{write.table}"
        metadata = {
            "dagster/row_count": table_rows,
            "dagster/table_name": name,
            "dagster/relation_identifier": name,
            "dagster/storage_kind": STORAGE_KIND,
        }
        if write.slice is not None:
            metadata["dagster/partition_row_count"] = len(write.frame)
        return metadata


def _output_name(context: dg.OutputContext) -> str:
    if context.has_asset_key:
        return f"asset {context.asset_key.to_user_string()}"
    return f"output {context.name!r} of op {context.op_def.name!r}"


def _partition_slice(context: dg.OutputContext | dg.InputContext, partition_expr) -> TableSlice:
    """The partitions this output writes or this input reads, one `Dimension` per partitions dimension.

    With no partitions (an input mapped to none, like a first day's yesterday) the slice
    selects nothing but still names the stamped columns.
    """
    definition = context.asset_partitions_def
    chosen = bool(context.asset_partition_keys)
    if isinstance(definition, dg.MultiPartitionsDefinition):
        if partition_expr is not None and not isinstance(partition_expr, dict):
            raise ValueError(
                f"partition_expr of a multi-partitioned asset maps each dimension "
                f"({[d.name for d in definition.partitions_defs]}) to SQL; got {partition_expr!r}"
            )
        # Each dimension's keys among the chosen partitions (a load may span several key ranges).
        chosen_keys = [
            definition.get_partition_key_from_str(key).keys_by_dimension for key in context.asset_partition_keys
        ]
        return TableSlice(
            tuple(
                _dimension(
                    dimension.partitions_def,
                    dimension.name,
                    (partition_expr or {}).get(dimension.name),
                    sorted({keys[dimension.name] for keys in chosen_keys}),
                )
                for dimension in definition.partitions_defs
            )
        )
    if isinstance(partition_expr, dict):
        raise ValueError(
            f"partition_expr is a mapping, but the partitions are not multi-dimensional: {partition_expr!r}"
        )
    if isinstance(definition, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window if chosen else None
        return TableSlice(
            (
                _time_dimension(
                    definition, None, partition_expr, TimeRange(window.start, window.end) if window else None
                ),
            )
        )
    return TableSlice((_key_dimension(None, partition_expr, tuple(context.asset_partition_keys)),))


def _dimension(definition: dg.PartitionsDefinition, name: str, expr: str | None, keys: list[str]) -> Dimension:
    """One dimension of a multi-partitioned asset, selecting exactly `keys` (none: an empty selection)."""
    if isinstance(definition, dg.TimeWindowPartitionsDefinition):
        windows = [definition.time_window_for_partition_key(key) for key in keys]
        if expr is not None or len(windows) <= 1:
            span = TimeRange(min(w.start for w in windows), max(w.end for w in windows)) if windows else None
            return _time_dimension(definition, name, expr, span)
        stamped = _time_dimension(definition, name, None, None)
        # Stamped window starts, as keys: exact even when the chosen days are not one run of days.
        starts = tuple(
            w.start.date().isoformat() if stamped.column_type == DATE else w.start.isoformat() for w in windows
        )
        return Dimension(column=stamped.column, column_type=stamped.column_type, keys=starts)
    return _key_dimension(name, expr, tuple(keys))


def _time_dimension(
    definition: dg.TimeWindowPartitionsDefinition, name: str | None, expr: str | None, window: TimeRange | None
) -> Dimension:
    if expr is not None:
        return Dimension(expr=expr, window=window)
    column, sql_type = stamped_column(name, is_time=True, day_or_longer=_day_or_longer(definition.cron_schedule))
    return Dimension(column=column, column_type=sql_type, window=window)


def _day_or_longer(cron: str) -> bool:
    """Whether a cron fires at most once a day (a fixed minute and hour, or @daily/@weekly/@monthly/@yearly)."""
    if cron.startswith("@"):
        return cron not in ("@hourly",)
    minute, hour = cron.split()[:2]
    return minute.isdigit() and hour.isdigit()


def _key_dimension(name: str | None, expr: str | None, keys: tuple[str, ...]) -> Dimension:
    if expr is not None:
        return Dimension(expr=expr, keys=keys)
    column, sql_type = stamped_column(name, is_time=False, day_or_longer=False)
    return Dimension(column=column, column_type=sql_type, keys=keys)


def _self_dependent(context: dg.InputContext) -> bool:
    """Whether this input reads an asset its own step writes (an earlier partition of itself)."""
    if not context.has_asset_key:
        return False
    step = context.step_context
    assets = step.job_def.asset_layer.get_assets_def_for_node(step.node_handle)
    return assets is not None and context.asset_key in assets.keys


COMMIT_TOGETHER = "cost_pipeline/commit_together"
"""Output metadata naming the outputs (comma-separated) that commit in one transaction even when optional."""


def _batch_output_names(context: dg.OutputContext) -> set[str]:
    """The required, selected outputs of this step that share this output's IO manager.

    An optional output commits on its own (a step may never emit it, and a batch must never
    wait forever), unless its metadata names its group under `COMMIT_TOGETHER`: a step that
    emits one of them emits them all, and one that emits none writes nothing.
    """
    this = context.op_def.output_def_named(context.name)
    together = (context.definition_metadata or {}).get(COMMIT_TOGETHER)
    if together:
        return set(str(together).split(",")) & set(context.step_context.selected_output_names)
    if not this.is_required:
        return {context.name}
    selected = context.step_context.selected_output_names
    return {
        output.name
        for output in context.op_def.output_defs
        if output.io_manager_key == this.io_manager_key and output.is_required and output.name in selected
    }


def _declared_types(metadata: Mapping) -> dict[str, str]:
    schema = metadata.get(COLUMN_SCHEMA_KEY) or metadata.get(LISTED_COLUMNS_KEY)
    if isinstance(schema, dg.TableSchemaMetadataValue):
        schema = schema.schema
    if not isinstance(schema, dg.TableSchema):
        return {}
    return {column.name: column.type for column in schema.columns}
