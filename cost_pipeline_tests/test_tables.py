"""Partition replacement on a real DuckDB file: one transaction, by name, schema-checked."""

from datetime import date

import duckdb
import pandas as pd
import pytest

from cost_pipeline.storage import tables
from cost_pipeline.storage.tables import SchemaMismatch, TableWrite, read_slice, replace_partitions

DAY1, DAY2 = date(2026, 11, 1), date(2026, 11, 2)


def frame(n: int, start: int = 0, **extra) -> pd.DataFrame:
    data = {"id": [f"t{i}" for i in range(start, start + n)], "tokens": list(range(start, start + n))}
    return pd.DataFrame({**data, **extra})


def write(connection, table, data, day, run="run-1", declared=None):
    replace_partitions(connection, [TableWrite(table, data, day, run, declared or {})])


def rows(connection, table, day=None):
    return read_slice(connection, table, None if day is None else [day]).drop(columns="run_id")


@pytest.fixture
def connection(database):
    with duckdb.connect(str(database)) as con:
        yield con


def test_replacing_a_partition_twice_leaves_exactly_the_new_rows(connection):
    write(connection, "t", frame(5), DAY1)
    write(connection, "t", frame(3, start=100), DAY2)
    write(connection, "t", frame(4, start=10), DAY1, run="run-2")
    write(connection, "t", frame(4, start=10), DAY1, run="run-3")
    day1 = read_slice(connection, "t", [DAY1])
    assert day1["id"].tolist() == ["t10", "t11", "t12", "t13"]
    assert set(day1["run_id"]) == {"run-3"}
    assert len(rows(connection, "t", DAY2)) == 3


def test_failure_between_delete_and_insert_keeps_the_previous_partition(connection, monkeypatch):
    write(connection, "t", frame(5), DAY1)
    before = rows(connection, "t")

    def explode(*args, **kwargs):
        raise RuntimeError("injected: died after DELETE, before INSERT")

    monkeypatch.setattr(tables, "_insert_frame", explode)
    with pytest.raises(RuntimeError, match="injected"):
        write(connection, "t", frame(2, start=50), DAY1, run="run-2")
    pd.testing.assert_frame_equal(rows(connection, "t"), before)


def test_a_batch_is_all_or_nothing_across_tables(connection):
    write(connection, "a", frame(3), DAY1)
    write(connection, "b", frame(3), DAY1)
    bad = pd.DataFrame({"id": ["x"], "tokens": ["not a number"]})
    with pytest.raises(duckdb.ConversionException):
        replace_partitions(
            connection,
            [
                TableWrite("a", frame(7, start=20), DAY1, "run-2"),
                TableWrite("b", bad, DAY1, "run-2", {"id": "VARCHAR", "tokens": "BIGINT"}),
            ],
        )
    assert rows(connection, "a")["id"].tolist() == ["t0", "t1", "t2"]
    assert set(read_slice(connection, "b", None)["run_id"]) == {"run-1"}


def test_columns_are_matched_by_name_not_position(connection):
    write(connection, "t", frame(2), DAY1)
    reordered = frame(2, start=5)[["tokens", "id"]]
    write(connection, "t", reordered, DAY2)
    assert rows(connection, "t", DAY2)[["id", "tokens"]].values.tolist() == [["t5", 5], ["t6", 6]]


def test_a_new_column_is_added_and_old_rows_read_null(connection):
    write(connection, "t", frame(2), DAY1)
    write(connection, "t", frame(2, start=10, model=["m1", "m2"]), DAY2)
    everything = rows(connection, "t").sort_values("id")
    assert everything["model"].tolist() == [None, None, "m1", "m2"]
    assert list(everything.columns) == ["partition_date", "id", "tokens", "model"]


def test_a_removed_column_is_refused_and_nothing_changes(connection):
    write(connection, "t", frame(2, model=["a", "b"]), DAY1)
    with pytest.raises(SchemaMismatch, match="lacks column.*model"):
        write(connection, "t", frame(3), DAY1)
    assert rows(connection, "t")["model"].tolist() == ["a", "b"]


def test_a_retyped_column_is_refused(connection):
    write(connection, "t", frame(2), DAY1)
    with pytest.raises(SchemaMismatch, match="'tokens' is BIGINT in the table but VARCHAR in the frame.*ALTER TABLE"):
        write(connection, "t", pd.DataFrame({"id": ["x"], "tokens": ["many"]}), DAY1)
    assert len(rows(connection, "t")) == 2


def test_an_all_null_column_takes_the_table_type(connection):
    write(connection, "t", frame(2, note=["n1", "n2"]), DAY1)
    write(connection, "t", frame(1, start=9, note=[None]).astype({"note": "float64"}), DAY2)
    assert rows(connection, "t", DAY2)["note"].tolist() == [None]


def test_declared_types_are_used_and_canonicalised(connection):
    declared = {"id": "TEXT", "tokens": "INT", "cost": "DECIMAL(18,9)", "at": "TIMESTAMPTZ"}
    data = frame(1, cost=["0.000000075"], at=[pd.Timestamp("2026-11-01T10:00:00Z")])
    write(connection, "t", data, DAY1, declared=declared)
    write(connection, "t", data, DAY1, declared=declared)
    types = dict(
        connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='t'"
        ).fetchall()
    )
    assert (
        types["cost"] == "DECIMAL(18,9)" and types["tokens"] == "INTEGER" and types["at"] == "TIMESTAMP WITH TIME ZONE"
    )
    assert str(connection.execute("SELECT cost FROM t").fetchone()[0]) == "7.5E-8"


def test_declared_schema_must_match_the_frame(connection):
    with pytest.raises(SchemaMismatch, match=r"undeclared: \['tokens'\]"):
        write(connection, "t", frame(1), DAY1, declared={"id": "VARCHAR"})


def test_stamped_columns_cannot_come_from_the_frame(connection):
    with pytest.raises(SchemaMismatch, match="stamped"):
        write(connection, "t", frame(1, run_id=["mine"]), DAY1)


def test_data_with_sql_in_it_is_just_data_and_names_are_only_names(connection):
    nasty = pd.DataFrame({"id": ["x'); DROP TABLE t; --"], "tokens": [1]})
    write(connection, "t", nasty, DAY1)
    assert rows(connection, "t")["id"].tolist() == ["x'); DROP TABLE t; --"]
    # Names are quoted, never spliced: this is a table with an odd name, and t is still there.
    write(connection, 't"; DROP TABLE t; --', frame(1), DAY1)
    assert rows(connection, 't"; DROP TABLE t; --')["id"].tolist() == ["t0"]
    assert rows(connection, "t")["id"].tolist() == ["x'); DROP TABLE t; --"]
    with pytest.raises(ValueError, match="cannot name a DuckDB table or column"):
        write(connection, "", frame(1), DAY1)


def test_whole_table_replacement_when_unpartitioned(connection):
    write(connection, "t", frame(3), None)
    write(connection, "t", frame(1, start=7), None)
    assert rows(connection, "t")["id"].tolist() == ["t7"]


def test_a_commit_that_fails_raises_its_own_error_and_leaves_the_old_rows(connection, monkeypatch):
    # A failed COMMIT has already rolled back; rolling back again raised "no transaction is active", hiding the cause.
    connection.execute(
        "CREATE TABLE keyed (id VARCHAR PRIMARY KEY, tokens BIGINT, partition_date DATE, run_id VARCHAR)"
    )
    other = connection.cursor()
    insert = tables._insert_frame

    def insert_then_commit_a_conflicting_row(con, table_write, columns):
        insert(con, table_write, columns)
        other.execute("INSERT INTO keyed VALUES ('t0', 7, ?, 'other-run')", [DAY2])

    monkeypatch.setattr(tables, "_insert_frame", insert_then_commit_a_conflicting_row)
    with pytest.raises(duckdb.TransactionException, match="Failed to commit.*duplicate key"):
        write(connection, "keyed", frame(2), DAY1)
    assert connection.execute("SELECT id, run_id FROM keyed").fetchall() == [("t0", "other-run")]
