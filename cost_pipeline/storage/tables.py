"""Replacing table partitions in DuckDB: one transaction, by column name, types widened only where no value is lost.

`replace_partitions` takes any number of table writes and applies them in a single
transaction: create or evolve each table, delete each slice, insert each frame, commit.
Any exception rolls all of it back, so a reader sees either every table's old slice or
every table's new slice. Columns are matched by name (any name DuckDB allows, quoted);
a new column is added to the table; a column whose type changed is widened when every
value survives (see `_reconcile`) and otherwise refused with a `SchemaMismatch` that
names the column, both types and the migration to run. A removed column is refused.

A write's slice is a `TableSlice` (`storage.partition_slices`): stamped partition columns
and `run_id` are written as constants; a slice kept by `partition_expr` is checked to hold
every row written, so a re-run can always find (and replace) what it wrote.

A write's rows are a pandas frame or a `StagedTable` (Parquet chunks a step wrote while
it ran, see `storage.staging`); both are inserted with the same one `INSERT ... SELECT`,
so a day staged on disk never passes through memory at commit.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import duckdb
import pandas as pd

from cost_pipeline.storage.connect import one_row
from cost_pipeline.storage.partition_slices import RUN_ID_COLUMN, TableSlice, day_slice, days_slice, quote
from cost_pipeline.storage.staging import StagedTable, parquet_source

PARTITION_COLUMN = "partition_date"
"""The stamped column of a daily partition: every table of this project has it."""
_FRAME_VIEW = "__cost_pipeline_frame"


class SchemaMismatch(ValueError):
    """A frame does not fit its table in a way that would lose or corrupt data."""


@dataclass(frozen=True)
class TableWrite:
    """The rows that replace one table's slice.

    `partition` names the slice: a day (stamped `partition_date`), any `TableSlice`, or
    `None` to replace the whole table. `declared_types` maps column to DuckDB type when
    the asset declares its schema; other columns take the type DuckDB infers from the frame.
    """

    table: str
    frame: pd.DataFrame | StagedTable
    partition: date | TableSlice | None
    run_id: str
    declared_types: Mapping[str, str] = field(default_factory=dict)
    schema: str = "main"

    @property
    def slice(self) -> TableSlice | None:
        return day_slice(self.partition) if isinstance(self.partition, date) else self.partition

    def stamped_columns(self) -> list[str]:
        return [*(self.slice.stamped_columns() if self.slice else []), RUN_ID_COLUMN]


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


def replace_partitions(connection: duckdb.DuckDBPyConnection, writes: Sequence[TableWrite]) -> None:
    """Apply every write in one transaction; on any error nothing changes."""
    connection.begin()
    try:
        target_columns = [_prepare_table(connection, write) for write in writes]
        for write, columns in zip(writes, target_columns):
            _check_rows_in_slice(connection, write)
            _delete_slice(connection, write)
            _insert_frame(connection, write, columns)
        connection.commit()
    except BaseException:
        try:
            connection.rollback()
        except duckdb.TransactionException:
            pass  # a failed COMMIT has rolled back already; the error that matters is the one being raised
        raise
    finally:
        _unregister_frame(connection)


def read_slice(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    partitions: Sequence[date] | TableSlice | None,
    schema: str = "main",
    columns: Sequence[str] | None = None,
    leave_out: Sequence[str] = (),
) -> pd.DataFrame:
    """Rows of `table` in a slice (all rows for `None`) in one query; DECIMALs as `Decimal`.

    `columns` picks columns (in that order); otherwise every column but `leave_out` (the
    IO manager's stamped ones, so a load returns the frame as written). Several
    partitions come ordered by partition, each in the order it was written.
    """
    types = _existing_types(connection, schema, table)
    if not types:
        raise LookupError(f"table {schema}.{table} does not exist yet: materialize it first")
    if columns is not None:
        unknown = [name for name in columns if name not in types]
        if unknown:
            raise KeyError(f"{schema}.{table} has no column(s) {unknown}; it has {list(types)}")
        types = {name: types[name] for name in columns}
    else:
        types = {name: sql_type for name, sql_type in types.items() if name not in leave_out}
    money = [name for name, sql_type in types.items() if sql_type.startswith("DECIMAL")]
    # DuckDB would hand DECIMALs to pandas as float64; as text they convert to exact Decimals.
    selected = ", ".join(f"CAST({quote(n)} AS VARCHAR) AS {quote(n)}" if n in money else quote(n) for n in types)
    sql = f"SELECT {selected} FROM {qualified(schema, table)}"
    if isinstance(partitions, Sequence):
        partitions = days_slice(partitions)
    if partitions is None:
        frame = connection.execute(sql).df()
    else:
        where, params = partitions.where()
        frame = connection.execute(f"{sql} WHERE {where} ORDER BY {partitions.order_by()}, rowid", params).df()
    for name in money:
        frame[name] = frame[name].map(lambda value: None if value is None else Decimal(value))
    return frame


def empty_frame(
    connection: duckdb.DuckDBPyConnection | None,
    schema: str,
    table: str,
    leave_out: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A frame with the table's columns (those of `columns` if given) and no rows; none when there is no table."""
    existing = list(_existing_types(connection, schema, table)) if connection is not None else []
    names = list(columns) if columns is not None else [name for name in existing if name not in leave_out]
    return pd.DataFrame(columns=names)


def row_counts(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> tuple[int, int | None]:
    """(rows of the table, rows of the write's slice): what the table holds now."""
    table = qualified(write.schema, write.table)
    if not _existing_types(connection, write.schema, write.table):
        return 0, 0 if write.slice else None
    (total,) = one_row(connection, f"SELECT count(*) FROM {table}")
    if write.slice is None:
        return total, None
    where, params = write.slice.where()
    return total, one_row(connection, f"SELECT count(*) FROM {table} WHERE {where}", params)[0]


def table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(_existing_types(connection, schema, table))


def drop_primary_key(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Rebuild `table` (in schema main) without its PRIMARY KEY, in one transaction; True if it had one.

    Why: a DuckDB PRIMARY KEY is an ART index that every writing connection loads whole, so
    it costs memory and time in proportion to every row ever written (see
    bench/ledger_growth.py). DuckDB cannot drop a constraint, so the table is copied (its
    columns, types and rows as they are) and swapped in atomically. Call it outside a
    transaction; a table without one is left alone at the cost of one catalog query.
    """
    keyed = connection.execute(
        "SELECT count(*) FROM duckdb_constraints() WHERE schema_name = 'main' AND table_name = ? "
        "AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchall()[0][0]  # fetched to the end: the connection is free
    if not keyed:
        return False
    rebuilt = quote(f"{table}__without_key")
    connection.begin()
    connection.execute(f"CREATE TABLE {rebuilt} AS SELECT * FROM {quote(table)}")
    connection.execute(f"DROP TABLE {quote(table)}")
    connection.execute(f"ALTER TABLE {rebuilt} RENAME TO {quote(table)}")
    connection.commit()
    return True


def _prepare_table(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> list[tuple[str, str]]:
    """Create or evolve the table for this frame; return the (column, type) list to insert."""
    wanted = _frame_types(connection, write)
    existing = _existing_types(connection, write.schema, write.table)
    table = qualified(write.schema, write.table)
    if not existing:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(write.schema)}")
        definition = ", ".join(f"{quote(name)} {sql_type}" for name, sql_type in wanted)
        connection.execute(f"CREATE TABLE {table} ({definition})")
        return wanted

    wanted_names = {name for name, _ in wanted}
    removed = [name for name in existing if name not in wanted_names]
    if removed:
        raise SchemaMismatch(
            f"{write.schema}.{write.table}: the frame lacks column(s) {', '.join(removed)} that the table has; "
            f"removing a column needs an explicit migration (ALTER TABLE {table} DROP COLUMN ...), or keep "
            "the column in the frame with nulls"
        )
    columns = []
    for name, sql_type in wanted:
        if name not in existing:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)} {sql_type}")
        elif existing[name] != sql_type:
            sql_type = _reconcile(connection, write, name, existing[name], sql_type)
        columns.append((name, sql_type))
    return columns


_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_FLOATS = ("FLOAT", "DOUBLE")
_TIMESTAMPS = ("TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP", "TIMESTAMP_NS")
"""Each family from narrowest to widest; unsigned integers and DECIMALs are widened only by equal type."""


def _wider(table_type: str, frame_type: str) -> str | None:
    """The type both could move to within one family (numbers or naive timestamps), or None."""
    numbers = _INTEGERS + _FLOATS
    if table_type in numbers and frame_type in numbers:
        if table_type in _INTEGERS and frame_type in _INTEGERS:
            return max(table_type, frame_type, key=_INTEGERS.index)
        return "DOUBLE"
    if table_type in _TIMESTAMPS and frame_type in _TIMESTAMPS:
        return max(table_type, frame_type, key=_TIMESTAMPS.index)
    return None


def _reconcile(
    connection: duckdb.DuckDBPyConnection, write: TableWrite, name: str, table_type: str, frame_type: str
) -> str:
    """The type the column is inserted as when table and frame disagree; widens the table when that loses nothing.

    In order: a frame column with no values takes the table's type; a table column with
    no values (say created from an all-null first frame, typed "NULL") takes the frame's;
    frame values that survive a round trip through the table's type are cast into it (the
    integers pandas turned to floats for a null, nanosecond times on whole microseconds);
    otherwise the table widens within the family when its own values survive (INTEGER to
    BIGINT, integer to DOUBLE, TIMESTAMP to TIMESTAMP_NS). Anything else is refused.
    """
    table = qualified(write.schema, write.table)
    frame_value = f"CAST({quote(name)} AS {frame_type})"
    if not _has_values(connection, _FRAME_VIEW, frame_value):
        return table_type
    column = quote(name)
    if not _has_values(connection, table, column):
        connection.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {frame_type}")
        return frame_type
    wider = _wider(table_type, frame_type)
    if wider is not None:
        if _survive(connection, _FRAME_VIEW, frame_value, frame_type, table_type):
            return table_type
        if _survive(connection, table, column, table_type, wider) and _survive(
            connection, _FRAME_VIEW, frame_value, frame_type, wider
        ):
            connection.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {wider}")
            return wider
    raise SchemaMismatch(
        f"{write.schema}.{write.table}: column {name!r} is {table_type} in the table but {frame_type} in the frame, "
        "and no type holds both without changing some value. Migrate the table first, e.g. "
        f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {frame_type}; or cast the frame's column to {table_type}"
    )


def _has_values(connection: duckdb.DuckDBPyConnection, source: str, value: str) -> bool:
    """Whether `value` (a column or expression of `source`) is non-null in any row."""
    return one_row(connection, f"SELECT count({value}) FROM {source}")[0] > 0


def _survive(connection: duckdb.DuckDBPyConnection, source: str, value: str, from_type: str, to_type: str) -> bool:
    """Whether every value of `value` comes back unchanged after a trip through `to_type`."""
    trip = f"CAST(TRY_CAST(v AS {to_type}) AS {from_type})"
    (lost,) = one_row(
        connection,
        f"SELECT count(*) FROM (SELECT {value} AS v FROM {source}) "
        f"WHERE v IS NOT NULL AND ({trip} IS NULL OR {trip} <> v)",
    )
    return lost == 0


def _frame_types(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> list[tuple[str, str]]:
    """Stamped partition columns first, then the frame's own columns with declared or inferred types, then run_id."""
    names = _source_columns(write)
    if not names:
        raise SchemaMismatch(
            f"{write.schema}.{write.table}: the frame has no columns; a DuckDB table needs one at least"
        )
    for name in names:
        quote(name)
    stamped = [name for name in write.stamped_columns() if name in names]
    if stamped:
        raise SchemaMismatch(
            f"{write.table}: columns {stamped} are stamped by the IO manager; drop them from the frame "
            "(or keep the partition in your own column and name it in `partition_expr`)"
        )
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
        declared = write.declared_types.get(name)
        frame_columns.append((name, _canonical_type(connection, declared) if declared else inferred[name]))
    stamps = [(name, sql_type) for name, sql_type, _ in write.slice.stamped()] if write.slice else []
    return [*stamps, *frame_columns, (RUN_ID_COLUMN, "VARCHAR")]


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
    return one_row(connection, f"SELECT typeof(CAST(NULL AS {sql_type}))")[0]


def _existing_types(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    rows = connection.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return dict(rows)


def _delete_slice(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> None:
    table = qualified(write.schema, write.table)
    if write.slice is None:
        connection.execute(f"DELETE FROM {table}")
    else:
        where, params = write.slice.where()
        connection.execute(f"DELETE FROM {table} WHERE {where}", params)


def _check_rows_in_slice(connection: duckdb.DuckDBPyConnection, write: TableWrite) -> None:
    """Refuse rows that a `partition_expr` places outside the partition written: no re-run could replace them."""
    if write.slice is None or not write.slice.by_expression():
        return
    _bind_source(connection, write)
    expressions = [d for d in write.slice.dimensions if d.expr is not None]
    where, params = TableSlice(tuple(expressions)).where()
    (outside,) = one_row(connection, f"SELECT count(*) FROM {_FRAME_VIEW} WHERE ({where}) IS NOT TRUE", params)
    if outside:
        raise SchemaMismatch(
            f"{write.schema}.{write.table}: {outside} of {len(write.frame)} rows fall outside the partition written by "
            f"its partition_expr ({', '.join(str(d.expr) for d in expressions)}); a re-run could never replace them"
        )


def _insert_frame(connection: duckdb.DuckDBPyConnection, write: TableWrite, columns: list[tuple[str, str]]) -> None:
    _bind_source(connection, write)
    stamps = {name: value for name, _, value in write.slice.stamped()} if write.slice else {}
    stamps[RUN_ID_COLUMN] = write.run_id
    names = ", ".join(quote(name) for name, _ in columns)
    values = ", ".join(
        f"CAST(? AS {sql_type})" if name in stamps else f"CAST({quote(name)} AS {sql_type})"
        for name, sql_type in columns
    )
    connection.execute(
        f"INSERT INTO {qualified(write.schema, write.table)} ({names}) SELECT {values} FROM {_FRAME_VIEW}",
        [stamps[name] for name, _ in columns if name in stamps],
    )


def _unregister_frame(connection: duckdb.DuckDBPyConnection) -> None:
    try:
        connection.unregister(_FRAME_VIEW)
    except duckdb.Error:
        pass
    connection.execute(f"DROP VIEW IF EXISTS {_FRAME_VIEW}")
