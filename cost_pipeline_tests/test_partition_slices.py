"""Which rows a partition is, checked by running the SQL against a real (in-memory) DuckDB table."""

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import pytest

from cost_pipeline.storage.partition_slices import (
    DATE,
    KEY,
    TIMESTAMP,
    Dimension,
    TableSlice,
    TimeRange,
    day_slice,
    days_slice,
    quote,
    stamped_column,
)


@pytest.fixture
def table():
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute("""CREATE TABLE t AS SELECT * FROM (VALUES
        (DATE '2024-01-01', TIMESTAMPTZ '2024-01-01 05:00:00+00', 'red', TIMESTAMP '2024-01-01 23:30:00', 1),
        (DATE '2024-01-02', TIMESTAMPTZ '2024-01-01 06:00:00+00', 'blue', TIMESTAMP '2024-01-02 00:30:00', 2),
        (DATE '2024-01-03', TIMESTAMPTZ '2024-01-01 07:00:00+00', 'red', TIMESTAMP '2024-01-03 10:00:00', 3))
        AS v(partition_date, partition_start, partition_key, local_time, n)""")
    return connection


def selected(connection, table_slice: TableSlice) -> list[int]:
    where, params = table_slice.where()
    return [row[0] for row in connection.execute(f"SELECT n FROM t WHERE {where} ORDER BY n", params).fetchall()]


def test_a_day_and_a_set_of_days_select_their_rows(table):
    assert selected(table, day_slice(date(2024, 1, 2))) == [2]
    assert selected(table, days_slice([date(2024, 1, 1), date(2024, 1, 3)])) == [1, 3]


def test_a_time_window_selects_start_inclusive_end_exclusive(table):
    start = datetime(2024, 1, 1, 6, tzinfo=timezone.utc)
    hours = Dimension(
        column="partition_start", column_type=TIMESTAMP, window=TimeRange(start, start + timedelta(hours=1))
    )
    assert selected(table, TableSlice((hours,))) == [2]
    assert hours.stamp() == start


def test_a_partition_expr_window_compares_wall_clock_times_in_the_partitions_zone(table):
    tz = ZoneInfo("America/New_York")
    day = Dimension(
        expr="local_time", window=TimeRange(datetime(2024, 1, 1, tzinfo=tz), datetime(2024, 1, 2, tzinfo=tz))
    )
    assert selected(table, TableSlice((day,))) == [1]


def test_keys_and_dimensions_combine(table):
    red = Dimension(column="partition_key", keys=("red",))
    both = Dimension(expr="partition_key", keys=("red", "blue"))
    first_two = (
        day_slice(date(2024, 1, 1)).dimensions[0],
        Dimension(column="partition_date", column_type=DATE, keys=("2024-01-01", "2024-01-02")),
    )
    assert selected(table, TableSlice((red,))) == [1, 3]
    assert selected(table, TableSlice((both,))) == [1, 2, 3]
    assert selected(table, TableSlice((red, first_two[1]))) == [1]


def test_values_are_parameters_and_names_are_quoted(table):
    hostile = Dimension(column="partition_key", keys=("red' OR 1=1 --",))
    assert selected(table, TableSlice((hostile,))) == []
    assert quote('a "b"') == '"a ""b"""'
    with pytest.raises(ValueError):
        quote("")


def test_a_dimension_is_kept_one_way_and_a_write_stamps_one_partition():
    with pytest.raises(ValueError, match="either"):
        Dimension(column="c", expr="c", keys=("a",))
    with pytest.raises(ValueError, match="one partition"):
        Dimension(column="partition_key", keys=("a", "b")).stamp()


@pytest.mark.parametrize(
    "dimension,is_time,daily,expected",
    [
        (None, True, True, ("partition_date", DATE)),
        (None, True, False, ("partition_start", TIMESTAMP)),
        (None, False, False, ("partition_key", KEY)),
        ("time", True, True, ("partition_time", DATE)),
        ("color", False, False, ("partition_color", KEY)),
    ],
)
def test_default_stamped_columns(dimension, is_time, daily, expected):
    assert stamped_column(dimension, is_time, daily) == expected
