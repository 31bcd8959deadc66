"""Replacing table partitions in DuckDB: one transaction, by column name, schema-checked.

`replace_partitions` takes any number of table writes and applies them in a single
transaction: create or evolve each table, delete each slice, insert each frame, commit.
Any exception rolls all of it back, so a reader sees either every table's old slice or
every table's new slice. Columns are matched by name, a new nullable column is added to
the table, and a removed or retyped column is refused with a `SchemaMismatch` instead of
being written into the wrong place.

A write's rows are a pandas frame or a `StagedTable` (Parquet chunks a step wrote while
it ran, see `storage.staging`); both are inserted with the same one `INSERT ... SELECT`,
so a day staged on disk never passes through memory at commit.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import duckdb
import pandas as pd

from cost_pipeline.storage.staging import StagedTable, parquet_source

PARTITION_COLUMN = "partition_date"
RUN_ID_COLUMN = "run_id"
STAMPED_COLUMNS = (PARTITION_COLUMN, RUN_ID_COLUMN)
_FRAME_VIEW = "__cost_pipeline_frame"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchemaMismatch(ValueError):
    """A frame does not fit its table in a way that would lose or corrupt data."""


@dataclass(frozen=True)
class TableWrite:
    """The rows that replace one table's slice.

    `partition` names the slice (a day); `None` replaces the whole table. `declared_types`
    maps column to DuckDB type when the asset declares its schema; other columns take
    the type DuckDB infers from the frame.
    """

    table: str
    frame: pd.DataFrame | StagedTable
    partition: date | None
    run_id: str
    declared_types: Mapping[str, str] = field(default_factory=dict)
    schema: str = "main"


def quote(identifier: str) -> str:
    """A SQL identifier, refused unless it is a plain name (names never carry data)."""
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"{identifier!r} is not a valid table or column name")
    return f'"{identifier}"'


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


def replace_partitions(connection: duckdb.DuckDBPyConnection, writes: Sequence[TableWrite]) -> None:
    """Apply every write in one transaction; on any error nothing changes."""
    connection.begin()
    try:
        target_columns = [_prepare_table(connection, write) for write in writes]
        for write, columns in zip(writes, target_columns):
            _delete_slice(connection, write)
            _insert_frame(connection, write, columns)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        _unregister_frame(connection)


def read_slice(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    partitions: Sequence[date] | None,
    schema: str = "main",
) -> pd.DataFrame:
    """Rows of `table` for the given days (all rows for `None`), ordered by day; DECIMALs as `Decimal`."""
    types = _existing_types(connection, schema, table)
    if not types:
        raise LookupError(f"table {schema}.{table} does not exist yet: materialize it first")
    money = [name for name, sql_type in types.items() if sql_type.startswith("DECIMAL")]
    # DuckDB would hand DECIMALs to pandas as float64; as text they convert to exact Decimals.
    columns = ", ".join(f"CAST({quote(n)} AS VARCHAR) AS {quote(n)}" if n in money else quote(n) for n in types)
    sql = f"SELECT {columns} FROM {qualified(schema, table)}"
    if partitions is None:
        frame = connection.execute(sql).df()
    else:
        frame = connection.execute(
            f"{sql} WHERE {quote(PARTITION_COLUMN)} IN (SELECT unnest(?::DATE[])) ORDER BY {quote(PARTITION_COLUMN)}",
            [list(partitions)],
        ).df()
    for name in money:
        frame[name] = frame[name].map(lambda value: None if value is None else Decimal(value))
    return frame


def table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(_existing_types(connection, schema, table))


def _prepare_table(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> list[tuple[str, str]]:
    """Create or evolve the table for this frame; return the (column, type) list to insert."""
    wanted = _frame_types(connection, write)
    existing = _existing_types(connection, write.schema, write.table)
    table = qualified(write.schema, write.table)
    if not existing:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(write.schema)}")
        columns = ", ".join(f"{quote(name)} {sql_type}" for name, sql_type in wanted)
        connection.execute(f"CREATE TABLE {table} ({columns})")
        return wanted

    wanted_names = {name for name, _ in wanted}
    removed = [name for name in existing if name not in wanted_names]
    if removed:
        raise SchemaMismatch(
            f"{write.schema}.{write.table}: the frame lacks column(s) {', '.join(removed)} that the table has; "
            "removing a column needs an explicit migration"
        )
    columns = []
    for name, sql_type in wanted:
        if name not in existing:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)} {sql_type}")
        elif existing[name] != sql_type:
            if name in write.declared_types or _has_values(connection, name):
                raise SchemaMismatch(
                    f"{write.schema}.{write.table}.{name} is {existing[name]} in the table "
                    f"but {sql_type} in the frame; retyping a column needs an explicit migration"
                )
            sql_type = existing[name]
        columns.append((name, sql_type))
    return columns


def _frame_types(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> list[tuple[str, str]]:
    """Stamped columns first, then the frame's own columns with declared or inferred types."""
    names = _source_columns(write)
    stamped = [name for name in STAMPED_COLUMNS if name in names]
    if stamped:
        raise SchemaMismatch(f"{write.table}: columns {stamped} are stamped by the IO manager; drop them from the frame")
    if write.declared_types:
        extra = sorted(set(names) - set(write.declared_types))
        missing = sorted(set(write.declared_types) - set(names))
        if extra or missing:
            raise SchemaMismatch(
                f"{write.table}: frame columns differ from the declared schema "
                f"(undeclared: {extra or 'none'}; absent: {missing or 'none'})"
            )
    _bind_source(connection, write)
    inferred = {row[0]: row[1] for row in connection.execute(f"DESCRIBE SELECT * FROM {_FRAME_VIEW}").fetchall()}
    frame_columns = []
    for name in names:
        quote(name)
        declared = write.declared_types.get(name)
        frame_columns.append((name, _canonical_type(connection, declared) if declared else inferred[name]))
    return [(PARTITION_COLUMN, "DATE"), *frame_columns, (RUN_ID_COLUMN, "VARCHAR")]


def _source_columns(write: TableWrite) -> list[str]:
    return list(write.frame.columns) if isinstance(write.frame, StagedTable) else list(map(str, write.frame.columns))


def _bind_source(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> None:
    """Name the write's rows `_FRAME_VIEW`: a registered frame, or a view over its staged Parquet files."""
    _unregister_frame(connection)
    if isinstance(write.frame, StagedTable):
        connection.execute(f"CREATE TEMP VIEW {_FRAME_VIEW} AS SELECT * FROM {parquet_source(write.frame)}")
    else:
        connection.register(_FRAME_VIEW, write.frame)


def _canonical_type(connection: duckdb.DuckDBPyConnection, sql_type: str) -> str:
    """DuckDB's own spelling of a type (TIMESTAMPTZ -> TIMESTAMP WITH TIME ZONE), as the catalog reports it."""
    return connection.execute(f"SELECT typeof(CAST(NULL AS {sql_type}))").fetchone()[0]


def _has_values(connection: duckdb.DuckDBPyConnection, column: str) -> bool:
    """Whether a frame column holds any non-null value (an all-null column has no real type)."""
    return connection.execute(f"SELECT count({quote(column)}) FROM {_FRAME_VIEW}").fetchone()[0] > 0


def _existing_types(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    rows = connection.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return dict(rows)


def _delete_slice(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> None:
    table = qualified(write.schema, write.table)
    if write.partition is None:
        connection.execute(f"DELETE FROM {table}")
    else:
        connection.execute(f"DELETE FROM {table} WHERE {quote(PARTITION_COLUMN)} = ?", [write.partition])


def _insert_frame(connection: duckdb.DuckDBPyConnection, write: TableWrite, columns: list[tuple[str, str]]) -> None:
    _bind_source(connection, write)
    names = ", ".join(quote(name) for name, _ in columns)
    values = ", ".join(
        "?::DATE" if name == PARTITION_COLUMN else "?::VARCHAR" if name == RUN_ID_COLUMN else f"CAST({quote(name)} AS {sql_type})"
        for name, sql_type in columns
    )
    connection.execute(
        f"INSERT INTO {qualified(write.schema, write.table)} ({names}) SELECT {values} FROM {_FRAME_VIEW}",
        [write.partition, write.run_id],
    )


def _unregister_frame(connection: duckdb.DuckDBPyConnection) -> None:
    try:
        connection.unregister(_FRAME_VIEW)
    except duckdb.Error:
        pass
    connection.execute(f"DROP VIEW IF EXISTS {_FRAME_VIEW}")
