"""Which rows of a table a partition is: the SQL that stamps, selects and replaces them.

A Dagster partitions definition has one or more dimensions; each becomes a `Dimension`
here, kept one of two ways:
- stamped (the default): the IO manager writes the partition into its own column, typed
  `DATE` (time windows of a day or longer: daily, weekly, monthly, any `fmt`), `TIMESTAMPTZ`
  (shorter windows: hourly, minutes) or `VARCHAR` (static and dynamic keys). One dimension:
  `partition_date`, `partition_start` or `partition_key`; several: `partition_<dimension>`;
- by expression: the asset's `partition_expr` metadata names SQL over its own columns (as
  the stock dagster-duckdb IO manager reads it); the frame carries the partition itself.
A time window is selected as `start <= value < end` (several windows in one range), keys
with `IN`, dimensions joined by `AND`. Pure logic with no Dagster import; values reach SQL
only as parameters, names only quoted.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

DATE, TIMESTAMP, KEY = "DATE", "TIMESTAMP WITH TIME ZONE", "VARCHAR"
"""Stamped column types, spelt as DuckDB's catalog spells them."""
RUN_ID_COLUMN = "run_id"


def quote(identifier: str) -> str:
    """Any name a DuckDB table or column may have, as a quoted SQL identifier."""
    if not isinstance(identifier, str) or not identifier or "\x00" in identifier:
        raise ValueError(f"{identifier!r} cannot name a DuckDB table or column (empty, not text, or with a NUL)")
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class TimeRange:
    """The half-open window `[start, end)` of one or more consecutive time partitions (aware datetimes)."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Dimension:
    """One partition dimension of a table, and which of its partitions are meant.

    Exactly one of `column` (a stamped column, typed `column_type`) and `expr` (the
    asset's `partition_expr`) is set; exactly one of `window` and `keys` says what is selected.
    """

    column: str | None = None
    column_type: str = KEY
    expr: str | None = None
    window: TimeRange | None = None
    keys: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.column is None) == (self.expr is None):
            raise ValueError("a partition dimension is kept either in a stamped column or by a partition_expr")
        if self.window is not None and self.keys:
            raise ValueError("a partition dimension selects a time window or keys, not both")

    def stamp(self):
        """The value written into the stamped column for the one partition this dimension selects."""
        if self.window is not None:
            return self.window.start.date() if self.column_type == DATE else self.window.start
        if len(self.keys) != 1:
            raise ValueError(f"{self.column}: a write stamps one partition, got {len(self.keys)} keys")
        return self.keys[0]

    def predicate(self) -> tuple[str, list]:
        """SQL selecting the rows of the chosen partitions, and its parameters."""
        if self.window is not None:
            if self.column is not None:
                target, cast = quote(self.column), self.column_type
                bounds = (
                    [self.window.start.date(), self.window.end.date()]
                    if self.column_type == DATE
                    else [self.window.start, self.window.end]
                )
            else:
                # As the stock IO manager compares: the window's wall-clock times in the partitions' time zone.
                target, cast = f"({self.expr})", "TIMESTAMP"
                bounds = [self.window.start.replace(tzinfo=None), self.window.end.replace(tzinfo=None)]
            return f"{target} >= CAST(? AS {cast}) AND {target} < CAST(? AS {cast})", bounds
        if self.column is not None:
            target, cast = quote(self.column), self.column_type
        else:  # Dagster's keys are text; so is the expression, compared as text
            target, cast = f"CAST(({self.expr}) AS VARCHAR)", KEY
        if len(self.keys) == 1:
            return f"{target} = CAST(? AS {cast})", [self.keys[0]]
        return f"list_contains(CAST(? AS {cast}[]), {target})", [list(self.keys)]

    def order_by(self) -> str:
        return quote(self.column) if self.column is not None else f"({self.expr})"


@dataclass(frozen=True)
class TableSlice:
    """The rows of a table that some partitions are: every dimension's predicate, joined by AND."""

    dimensions: tuple[Dimension, ...]

    def where(self) -> tuple[str, list]:
        sql, params = [], []
        for dimension in self.dimensions:
            predicate, values = dimension.predicate()
            sql.append(f"({predicate})")
            params.extend(values)
        return " AND ".join(sql), params

    def stamped(self) -> list[tuple[str, str, object]]:
        """(column, type, value) of each stamped dimension, for a write of one partition."""
        return [(d.column, d.column_type, d.stamp()) for d in self.dimensions if d.column is not None]

    def stamped_columns(self) -> list[str]:
        return [d.column for d in self.dimensions if d.column is not None]

    def by_expression(self) -> bool:
        return any(d.expr is not None for d in self.dimensions)

    def order_by(self) -> str:
        return ", ".join(d.order_by() for d in self.dimensions)


def stamped_column(dimension: str | None, is_time: bool, day_or_longer: bool) -> tuple[str, str]:
    """The default column (and its type) that keeps a dimension: see the module docstring."""
    sql_type = (DATE if day_or_longer else TIMESTAMP) if is_time else KEY
    if dimension is not None:
        return f"partition_{dimension}", sql_type
    if is_time:
        return ("partition_date", DATE) if day_or_longer else ("partition_start", TIMESTAMP)
    return "partition_key", KEY


def day_slice(day: date) -> TableSlice:
    """One day stamped in `partition_date`: the slice of every daily table of this project."""
    from datetime import time, timedelta, timezone

    start = datetime.combine(day, time(), tzinfo=timezone.utc)
    return TableSlice(
        (Dimension(column="partition_date", column_type=DATE, window=TimeRange(start, start + timedelta(days=1))),)
    )


def days_slice(days: Sequence[date]) -> TableSlice:
    """Several days in one query (a backfill's range), however far apart."""
    return TableSlice((Dimension(column="partition_date", column_type=DATE, keys=tuple(d.isoformat() for d in days)),))
