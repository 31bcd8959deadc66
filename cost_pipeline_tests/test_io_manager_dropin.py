"""The IO manager as a drop-in for dagster-duckdb-pandas: the stock suite's behaviours, pandas drift, atomicity.

Each case is one that dagster-duckdb-pandas's own tests (release 0.29.27) check of the stock
manager, written again here against ours, plus the drift a pandas frame goes through from
day to day and, for every partition kind, a failure between delete and insert.
"""

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.storage import tables


def io(database, **config):
    return {"io_manager": DuckDBPartitionIOManager(database=str(database), **config)}


def select(database, sql):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql).df()


def column_types(database, schema, table):
    with duckdb.connect(str(database), read_only=True) as connection:
        return dict(
            connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = ?",
                [schema, table],
            ).fetchall()
        )


def value_asset(name, partitions_def, frame_of, metadata=None, **kwargs):
    """An asset writing `frame_of(partition_key, value)`, the value taken from the run's tags."""

    @dg.asset(name=name, partitions_def=partitions_def, key_prefix=["my_schema"], metadata=metadata or {}, **kwargs)
    def _asset(context: dg.AssetExecutionContext) -> pd.DataFrame:
        key = context.partition_key
        return frame_of(
            key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else key, context.run.tags["value"]
        )

    return _asset


def write(database, asset, key, value, instance=None, **config):
    return dg.materialize(
        [asset], partition_key=key, resources=io(database, **config), tags={"value": value}, instance=instance
    )


# -- the stock suite's cases --------------------------------------------------------------------------------------


@dg.op(out=dg.Out(metadata={"schema": "a_df"}))
def a_df() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})


@dg.op(out=dg.Out(metadata={"schema": "add_one"}))
def add_one(df: pd.DataFrame) -> pd.DataFrame:
    return df + 1


@dg.graph
def add_one_to_dataframe():
    add_one(a_df())


def test_op_outputs_are_tables_named_after_the_output_and_reruns_replace_them(database):
    job = add_one_to_dataframe.to_job(resource_defs=io(database))
    for _ in range(2):
        assert job.execute_in_process().success
        assert select(database, "SELECT a FROM a_df.result")["a"].tolist() == [1, 2, 3]
        assert select(database, "SELECT a FROM add_one.result")["a"].tolist() == [2, 3, 4]


@dg.asset(key_prefix=["my_schema"])
def b_df() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})


@dg.asset(key_prefix=["my_schema"])
def b_plus_one(b_df: pd.DataFrame) -> pd.DataFrame:
    assert list(b_df.columns) == ["a", "b"], "a load returns the frame as the asset wrote it"
    return b_df + 1


@dg.asset(key_prefix=["my_schema"], ins={"b_df": dg.AssetIn("b_df", metadata={"columns": ["a"]})})
def b_plus_one_columns(b_df: pd.DataFrame) -> pd.DataFrame:
    return b_df + 1


def test_assets_land_in_their_key_prefix_schema_and_reruns_replace_them(database):
    for _ in range(2):
        assert dg.materialize([b_df, b_plus_one], resources=io(database)).success
        assert select(database, "SELECT a FROM my_schema.b_df")["a"].tolist() == [1, 2, 3]
        assert select(database, "SELECT a FROM my_schema.b_plus_one")["a"].tolist() == [2, 3, 4]


def test_the_managers_schema_and_schema_metadata_place_tables(database):
    @dg.asset
    def my_df() -> pd.DataFrame:
        return pd.DataFrame({"a": [1, 2, 3]})

    @dg.asset(metadata={"schema": "elsewhere"})
    def my_df_plus_one(my_df: pd.DataFrame) -> pd.DataFrame:
        return my_df + 1

    for _ in range(2):
        assert dg.materialize([my_df, my_df_plus_one], resources=io(database, schema="custom_schema")).success
    assert select(database, "SELECT a FROM custom_schema.my_df")["a"].tolist() == [1, 2, 3]
    assert select(database, "SELECT a FROM elsewhere.my_df_plus_one")["a"].tolist() == [2, 3, 4]


def test_an_inputs_columns_metadata_loads_only_those_columns(database):
    for _ in range(2):
        assert dg.materialize([b_df, b_plus_one_columns], resources=io(database)).success
    out = select(database, "SELECT * EXCLUDE (run_id) FROM my_schema.b_plus_one_columns")
    assert out["a"].tolist() == [2, 3, 4] and out.shape[1] == 1


def test_an_unsupported_output_type_fails_with_a_message_naming_it(database):
    @dg.op
    def non_supported_type() -> int:
        return 1

    @dg.graph
    def not_supported():
        non_supported_type()

    with pytest.raises(Exception, match="returned int; the DuckDB IO manager stores pandas DataFrames"):
        not_supported.to_job(resource_defs=io(database)).execute_in_process()


def daily_frame(key, value):
    partition = pd.Timestamp(key)
    return pd.DataFrame({"time": [partition] * 3, "a": [value] * 3, "b": [4, 5, 6]})


@pytest.mark.parametrize("metadata", [{"partition_expr": "time"}, {}], ids=["partition_expr", "stamped"])
def test_daily_partitions_replace_only_their_own_day(database, metadata):
    asset = value_asset(
        "daily_partitioned", dg.DailyPartitionsDefinition(start_date="2022-01-01"), daily_frame, metadata
    )
    write(database, asset, "2022-01-01", "1")
    write(database, asset, "2022-01-02", "2")
    assert sorted(select(database, "SELECT a FROM my_schema.daily_partitioned")["a"]) == ["1"] * 3 + ["2"] * 3
    write(database, asset, "2022-01-01", "3")
    assert sorted(select(database, "SELECT a FROM my_schema.daily_partitioned")["a"]) == ["2"] * 3 + ["3"] * 3
    if not metadata:
        assert column_types(database, "my_schema", "daily_partitioned")["partition_date"] == "DATE"


def static_frame(key, value):
    return pd.DataFrame({"color": [key] * 3, "a": [value] * 3, "b": [4, 5, 6]})


@pytest.mark.parametrize("metadata", [{"partition_expr": "color"}, {}], ids=["partition_expr", "stamped"])
def test_static_partitions_replace_only_their_own_key(database, metadata):
    asset = value_asset(
        "static_partitioned", dg.StaticPartitionsDefinition(["red", "yellow", "blue"]), static_frame, metadata
    )
    write(database, asset, "red", "1")
    write(database, asset, "blue", "2")
    write(database, asset, "red", "3")
    assert sorted(select(database, "SELECT a FROM my_schema.static_partitioned")["a"]) == ["2"] * 3 + ["3"] * 3
    if not metadata:
        assert select(database, "SELECT DISTINCT partition_key FROM my_schema.static_partitioned ORDER BY 1")[
            "partition_key"
        ].tolist() == ["blue", "red"]


MULTI = dg.MultiPartitionsDefinition(
    {
        "time": dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        "color": dg.StaticPartitionsDefinition(["red", "yellow", "blue"]),
    }
)


def multi_frame(keys, value):
    return pd.DataFrame({"color": [keys["color"]] * 3, "time": [keys["time"]] * 3, "a": [value] * 3})


@pytest.mark.parametrize(
    "metadata",
    [{"partition_expr": {"time": "CAST(time as TIMESTAMP)", "color": "color"}}, {}],
    ids=["partition_expr", "stamped"],
)
def test_multi_partitions_replace_only_their_own_pair_and_a_downstream_reads_one_dimension(database, metadata):
    asset = value_asset("multi_partitioned", MULTI, multi_frame, metadata)

    @dg.asset(
        ins={
            "multi_partitioned": dg.AssetIn(
                key=["my_schema", "multi_partitioned"],
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="time"),
            )
        },
        partitions_def=dg.DailyPartitionsDefinition(start_date="2022-01-01"),
    )
    def downstream_of_multi(context: dg.AssetExecutionContext, multi_partitioned: pd.DataFrame) -> pd.DataFrame:
        assert sorted(multi_partitioned["color"].unique()) == ["blue", "red"]
        assert set(multi_partitioned["time"]) == {context.partition_key}
        return multi_partitioned.assign(n=1)

    with dg.instance_for_test() as instance:
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-01", "color": "red"}), "1", instance)
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-01", "color": "blue"}), "2", instance)
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-02", "color": "red"}), "3", instance)
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-01", "color": "red"}), "4", instance)
        assert (
            sorted(select(database, "SELECT a FROM my_schema.multi_partitioned")["a"])
            == ["2"] * 3 + ["3"] * 3 + ["4"] * 3
        )
        result = dg.materialize(
            [asset.to_source_asset(), downstream_of_multi],
            partition_key="2022-01-01",
            resources=io(database),
            instance=instance,
        )
    assert result.success
    assert len(select(database, "SELECT * FROM downstream_of_multi")) == 6
    if not metadata:
        types = column_types(database, "my_schema", "multi_partitioned")
        assert (types["partition_time"], types["partition_color"]) == ("DATE", "VARCHAR")


@pytest.mark.parametrize("metadata", [{"partition_expr": "fruit"}, {}], ids=["partition_expr", "stamped"])
def test_dynamic_partitions_replace_only_their_own_key(database, metadata):
    fruits = dg.DynamicPartitionsDefinition(name="fruits")
    asset = value_asset(
        "dynamic_partitioned", fruits, lambda key, value: pd.DataFrame({"fruit": [key] * 3, "a": [value] * 3}), metadata
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("fruits", ["apple", "orange"])
        write(database, asset, "apple", "1", instance)
        write(database, asset, "orange", "2", instance)
        write(database, asset, "apple", "3", instance)
    assert sorted(select(database, "SELECT a FROM my_schema.dynamic_partitioned")["a"]) == ["2"] * 3 + ["3"] * 3


@pytest.mark.parametrize(
    "metadata", [{"partition_expr": "strptime(key, '%Y-%m-%d')"}, {}], ids=["partition_expr", "stamped"]
)
def test_a_self_dependent_asset_bootstraps_from_nothing_and_then_reads_yesterday(database, metadata):
    seen = {}

    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2023-01-01"),
        key_prefix=["my_schema"],
        metadata=metadata,
        ins={
            "me": dg.AssetIn(
                key=["my_schema", "me"], partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
            )
        },
    )
    def me(context: dg.AssetExecutionContext, me: pd.DataFrame) -> pd.DataFrame:
        seen[context.partition_key] = me
        return pd.DataFrame({"key": [context.partition_key] * 3, "a": [context.run.tags["value"]] * 3})

    write(database, me, "2023-01-01", "1")
    assert seen["2023-01-01"].empty
    write(database, me, "2023-01-03", "3")  # yesterday was never written: an empty frame with the table's columns
    assert seen["2023-01-03"].empty and list(seen["2023-01-03"].columns) == ["key", "a"]
    write(database, me, "2023-01-02", "2")
    assert seen["2023-01-02"]["key"].tolist() == ["2023-01-01"] * 3
    assert list(seen["2023-01-02"].columns) == ["key", "a"]


def test_a_self_dependent_asset_with_no_database_file_yet_loads_its_declared_columns(database):
    schema = dg.TableSchema([dg.TableColumn("key", "VARCHAR"), dg.TableColumn("a", "BIGINT")])

    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2023-01-01"),
        metadata={"dagster/column_schema": schema},
        ins={
            "me2": dg.AssetIn(
                key="me2", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
            )
        },
    )
    def me2(context: dg.AssetExecutionContext, me2: pd.DataFrame) -> pd.DataFrame:
        assert me2.empty and list(me2.columns) == ["key", "a"]
        return pd.DataFrame({"key": [context.partition_key], "a": [1]})

    assert write(database, me2, "2023-01-05", "x").success


def test_a_downstream_reads_a_range_of_partitions_in_one_query_in_partition_order(database):
    daily = dg.DailyPartitionsDefinition(start_date="2022-01-01")
    asset = value_asset("days", daily, lambda key, value: pd.DataFrame({"day": [key] * 2, "n": [1, 2]}))
    for day in ("2022-01-03", "2022-01-01", "2022-01-02"):
        write(database, asset, day, "v")

    @dg.asset(ins={"days": dg.AssetIn(key=["my_schema", "days"])})
    def everything(days: pd.DataFrame) -> pd.DataFrame:
        assert days["day"].tolist() == ["2022-01-01"] * 2 + ["2022-01-02"] * 2 + ["2022-01-03"] * 2
        assert days["n"].tolist() == [1, 2] * 3
        return days

    with dg.instance_for_test() as instance:
        assert dg.materialize([asset.to_source_asset(), everything], resources=io(database), instance=instance).success


@pytest.mark.parametrize(
    "definition,key,column,sql_type",
    [
        (
            dg.HourlyPartitionsDefinition(start_date="2022-01-01-00:00"),
            "2022-01-01-05:00",
            "partition_start",
            "TIMESTAMP WITH TIME ZONE",
        ),
        (dg.DailyPartitionsDefinition(start_date="20220101", fmt="%Y%m%d"), "20220102", "partition_date", "DATE"),
        (dg.WeeklyPartitionsDefinition(start_date="2022-01-02"), "2022-01-09", "partition_date", "DATE"),
        (dg.MonthlyPartitionsDefinition(start_date="2022-01-01"), "2022-02-01", "partition_date", "DATE"),
    ],
    ids=["hourly", "daily-custom-fmt", "weekly", "monthly"],
)
def test_every_time_window_kind_is_stamped_with_its_window_start(database, definition, key, column, sql_type):
    asset = value_asset("windows", definition, lambda k, value: pd.DataFrame({"a": [value] * 2}))
    write(database, asset, key, "1")
    write(database, asset, key, "2")
    assert column_types(database, "my_schema", "windows")[column] == sql_type
    rows = select(database, f"SELECT a, {column} AS start FROM my_schema.windows")
    start = definition.time_window_for_partition_key(key).start
    assert rows["a"].tolist() == ["2", "2"]
    assert {pd.Timestamp(value) for value in rows["start"]} == {
        pd.Timestamp(start.date()) if sql_type == "DATE" else pd.Timestamp(start)
    }


# -- what the IO manager adds: metadata, drift, refusals, atomicity
# -----------------------------------------------------


def test_materializations_carry_the_standard_table_metadata(database):
    asset = value_asset(
        "days",
        dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        lambda key, value: pd.DataFrame({"n": range(int(value))}),
    )
    write(database, asset, "2022-01-01", "3")
    result = write(database, asset, "2022-01-02", "5")
    metadata = result.asset_materializations_for_node("my_schema__days")[0].metadata
    assert metadata["dagster/partition_row_count"].value == 5
    assert metadata["dagster/row_count"].value == 8
    assert metadata["dagster/table_name"].value == f"{database.stem}.my_schema.days"
    assert metadata["dagster/relation_identifier"].value == f"{database.stem}.my_schema.days"
    assert metadata["dagster/storage_kind"].value == "duckdb"


def test_the_earlier_outputs_of_a_batch_report_the_row_counts_the_commit_leaves(database):
    @dg.multi_asset(
        outs={"x": dg.AssetOut(), "y": dg.AssetOut()}, partitions_def=dg.StaticPartitionsDefinition(["p", "q"])
    )
    def pair(context: dg.AssetExecutionContext):
        size = 2 if context.partition_key == "p" else 3
        yield dg.Output(pd.DataFrame({"n": range(size)}), output_name="x")
        yield dg.Output(pd.DataFrame({"n": range(size + 1)}), output_name="y")

    dg.materialize([pair], partition_key="p", resources=io(database))
    dg.materialize([pair], partition_key="p", resources=io(database))
    result = dg.materialize([pair], partition_key="q", resources=io(database))
    counts = {
        m.asset_key.path[-1]: (m.metadata["dagster/row_count"].value, m.metadata["dagster/partition_row_count"].value)
        for m in result.asset_materializations_for_node("pair")
    }
    assert counts == {"x": (5, 3), "y": (7, 4)}


def test_an_integer_column_that_gets_a_null_stays_integer_and_keeps_every_value(database):
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["a", "b"]),
        lambda key, value: pd.DataFrame({"n": [2**40, 7]}) if key == "a" else pd.DataFrame({"n": [2**40 + 1, None]}),
    )
    write(database, asset, "a", "")
    write(database, asset, "b", "")  # pandas made it float64 because of the null
    assert column_types(database, "my_schema", "drift")["n"] == "BIGINT"
    assert sorted(select(database, "SELECT n FROM my_schema.drift WHERE n IS NOT NULL")["n"]) == [7, 2**40, 2**40 + 1]


def test_a_column_that_gets_fractions_widens_to_double_when_its_integers_fit(database):
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["a", "b"]),
        lambda key, value: (
            pd.DataFrame({"n": pd.Series([1, 2], dtype="int32")}) if key == "a" else pd.DataFrame({"n": [2.5, None]})
        ),
    )
    write(database, asset, "a", "")
    write(database, asset, "b", "")
    assert column_types(database, "my_schema", "drift")["n"] == "DOUBLE"
    assert sorted(select(database, "SELECT n FROM my_schema.drift WHERE n IS NOT NULL")["n"]) == [1.0, 2.0, 2.5]


def test_integer_widens_to_bigint(database):
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["a", "b"]),
        lambda key, value: pd.DataFrame(
            {"n": pd.Series([1], dtype="int32")} if key == "a" else {"n": pd.Series([2**40], dtype="int64")}
        ),
    )
    write(database, asset, "a", "")
    write(database, asset, "b", "")
    assert column_types(database, "my_schema", "drift")["n"] == "BIGINT"
    assert sorted(select(database, "SELECT n FROM my_schema.drift")["n"]) == [1, 2**40]


def test_an_all_null_first_column_takes_the_first_real_type(database):
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["a", "b"]),
        lambda key, value: pd.DataFrame({"id": [1], "note": [None]} if key == "a" else {"id": [2], "note": ["hello"]}),
    )
    write(database, asset, "a", "")
    write(database, asset, "b", "")
    assert column_types(database, "my_schema", "drift")["note"] == "VARCHAR"
    assert select(database, "SELECT note FROM my_schema.drift ORDER BY id")["note"].tolist() == [None, "hello"]


def test_nanosecond_and_microsecond_timestamps_meet_without_losing_a_digit(database):
    whole = pd.Timestamp("2022-01-01 10:00:00.123456")
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["us", "ns", "ns-fine"]),
        lambda key, value: pd.DataFrame(
            {"at": pd.Series([whole]).astype("datetime64[us]")}
            if key == "us"
            else {"at": pd.Series([whole]).astype("datetime64[ns]")}
            if key == "ns"
            else {"at": pd.Series([whole + pd.Timedelta(nanoseconds=789)]).astype("datetime64[ns]")}
        ),
    )
    write(database, asset, "us", "")
    write(database, asset, "ns", "")  # whole microseconds: cast into the table's TIMESTAMP
    assert column_types(database, "my_schema", "drift")["at"] == "TIMESTAMP"
    write(database, asset, "ns-fine", "")  # nanoseconds that matter: the table widens to TIMESTAMP_NS
    assert column_types(database, "my_schema", "drift")["at"] == "TIMESTAMP_NS"
    stored = select(database, 'SELECT epoch_ns("at") AS ns FROM my_schema.drift ORDER BY ns')["ns"].tolist()
    assert stored == [whole.value, whole.value, whole.value + 789]


def test_a_type_change_that_loses_values_is_refused_naming_column_types_and_migration(database):
    asset = value_asset(
        "drift",
        dg.StaticPartitionsDefinition(["a", "b"]),
        lambda key, value: pd.DataFrame({"n": [1]} if key == "a" else {"n": ["one"]}),
    )
    write(database, asset, "a", "")
    with pytest.raises(
        Exception,
        match=r"""'n' is BIGINT in the table but VARCHAR in the frame.*"""
        r"""ALTER TABLE "my_schema"."drift" ALTER COLUMN "n" TYPE VARCHAR""",
    ):
        write(database, asset, "b", "")
    assert select(database, "SELECT n FROM my_schema.drift")["n"].tolist() == [1]


def test_a_frame_with_no_columns_gets_a_clear_error(database):
    @dg.asset
    def nothing() -> pd.DataFrame:
        return pd.DataFrame()

    with pytest.raises(Exception, match="the frame has no columns"):
        dg.materialize([nothing], resources=io(database))


def test_any_column_name_duckdb_allows_round_trips(database):
    frame = pd.DataFrame({"first name": ["Ada"], 'say "hi"': [1], "ünï côdé": [2.5], "select": [True]})

    @dg.asset
    def odd_names() -> pd.DataFrame:
        return frame

    @dg.asset
    def reads_odd_names(odd_names: pd.DataFrame) -> pd.DataFrame:
        pd.testing.assert_frame_equal(odd_names, frame)
        return odd_names

    for _ in range(2):
        assert dg.materialize([odd_names, reads_odd_names], resources=io(database)).success


def test_rows_outside_their_partition_expr_are_refused(database):
    asset = value_asset(
        "daily_partitioned",
        dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        lambda key, value: daily_frame("2022-01-05", value),
        {"partition_expr": "time"},
    )
    with pytest.raises(Exception, match="3 of 3 rows fall outside the partition"):
        write(database, asset, "2022-01-01", "1")


def test_a_load_returns_the_frame_as_written(database):
    written = pd.DataFrame(
        {
            "id": ["a", "b"],
            "n": [1, 2],
            "x": [0.5, None],
            "at": pd.to_datetime(["2022-01-01 10:00", "2022-01-02 11:00"], utc=True),
        }
    )
    asset = value_asset("exact", dg.DailyPartitionsDefinition(start_date="2022-01-01"), lambda key, value: written)

    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        ins={"exact": dg.AssetIn(key=["my_schema", "exact"])},
    )
    def reader(exact: pd.DataFrame) -> pd.DataFrame:
        pd.testing.assert_frame_equal(exact, written, check_dtype=False)
        assert str(exact["at"].dtype).startswith("datetime64") and list(exact.columns) == list(written.columns)
        return exact

    write(database, asset, "2022-01-01", "")
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [asset.to_source_asset(), reader], partition_key="2022-01-01", resources=io(database), instance=instance
        ).success


def test_stamped_columns_come_back_when_an_input_asks_for_them(database):
    asset = value_asset(
        "days", dg.DailyPartitionsDefinition(start_date="2022-01-01"), lambda key, value: pd.DataFrame({"n": [1]})
    )
    write(database, asset, "2022-01-01", "")

    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        ins={"days": dg.AssetIn(key=["my_schema", "days"], metadata={"columns": ["partition_date", "n"]})},
    )
    def with_day(days: pd.DataFrame) -> pd.DataFrame:
        assert list(days.columns) == ["partition_date", "n"]
        return days.drop(columns="partition_date")

    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [asset.to_source_asset(), with_day], partition_key="2022-01-01", resources=io(database), instance=instance
        ).success


KINDS = {
    "daily": (dg.DailyPartitionsDefinition(start_date="2022-01-01"), "2022-01-02", {}),
    "daily-expr": (dg.DailyPartitionsDefinition(start_date="2022-01-01"), "2022-01-02", {"partition_expr": "day"}),
    "hourly": (dg.HourlyPartitionsDefinition(start_date="2022-01-01-00:00"), "2022-01-01-03:00", {}),
    "static": (dg.StaticPartitionsDefinition(["a", "b"]), "b", {}),
    "static-expr": (dg.StaticPartitionsDefinition(["a", "b"]), "b", {"partition_expr": "key"}),
    "dynamic": (dg.DynamicPartitionsDefinition(name="kinds"), "b", {}),
    "multi": (MULTI, dg.MultiPartitionKey({"time": "2022-01-02", "color": "red"}), {}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_between_delete_and_insert_leaves_the_old_partition_for_every_kind(database, kind, monkeypatch):
    definition, key, metadata = KINDS[kind]

    def frame_of(partition, value):
        day = partition if isinstance(partition, str) and partition[:1].isdigit() else "2022-01-02"
        return pd.DataFrame(
            {
                "day": [pd.Timestamp(day[:10])] * 2,
                "key": [partition if isinstance(partition, str) else "m"] * 2,
                "value": [value] * 2,
            }
        )

    asset = value_asset("kinds", definition, frame_of, metadata)
    with dg.instance_for_test() as instance:
        if isinstance(definition, dg.DynamicPartitionsDefinition):
            instance.add_dynamic_partitions("kinds", ["a", "b"])
        assert write(database, asset, key, "old", instance).success

        def insert_dies(connection, write, columns):
            raise RuntimeError("killed between delete and insert")

        monkeypatch.setattr(tables, "_insert_frame", insert_dies)
        with pytest.raises(Exception, match="killed between delete and insert"):
            write(database, asset, key, "new", instance)
    assert select(database, "SELECT value FROM my_schema.kinds")["value"].tolist() == ["old", "old"]


def test_a_stamped_range_write_is_refused_with_the_way_out(database):
    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def ranged(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"n": [1]})

    with pytest.raises(Exception, match="writes 3 partitions at once.*partition_expr"):
        dg.materialize(
            [ranged],
            resources=io(database),
            tags={
                "dagster/asset_partition_range_start": "2022-01-01",
                "dagster/asset_partition_range_end": "2022-01-03",
            },
        )


def test_a_range_write_by_partition_expr_replaces_exactly_that_range(database):
    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2022-01-01"),
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata={"partition_expr": "day"},
    )
    def ranged(context: dg.AssetExecutionContext) -> pd.DataFrame:
        window = context.partition_time_window
        days = pd.date_range(window.start, window.end, freq="D", inclusive="left").tz_localize(None)
        return pd.DataFrame({"day": days, "v": context.run.tags["value"]})

    def run(start, end, value):
        return dg.materialize(
            [ranged],
            resources=io(database),
            tags={
                "value": value,
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )

    run("2022-01-01", "2022-01-04", "first")
    run("2022-01-02", "2022-01-03", "second")
    rows = select(database, "SELECT strftime(day, '%d') AS d, v FROM main.ranged ORDER BY day")
    assert list(zip(rows["d"], rows["v"])) == [("01", "first"), ("02", "second"), ("03", "second"), ("04", "first")]


@pytest.mark.parametrize(
    "metadata",
    [{"partition_expr": {"time": "CAST(time as TIMESTAMP)", "color": "color"}}, {}],
    ids=["partition_expr", "stamped"],
)
def test_a_load_of_every_multi_partition_spans_many_key_ranges_in_one_query(database, metadata):
    asset = value_asset("multi_partitioned", MULTI, multi_frame, metadata)

    @dg.asset(ins={"multi_partitioned": dg.AssetIn(key=["my_schema", "multi_partitioned"])})
    def everything(multi_partitioned: pd.DataFrame) -> pd.DataFrame:
        assert sorted(zip(multi_partitioned["time"], multi_partitioned["color"], multi_partitioned["a"])) == sorted(
            [("2022-01-01", "red", "1")] * 3 + [("2022-01-01", "blue", "2")] * 3 + [("2022-01-02", "yellow", "3")] * 3
        )
        return multi_partitioned

    with dg.instance_for_test() as instance:
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-01", "color": "red"}), "1", instance)
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-01", "color": "blue"}), "2", instance)
        write(database, asset, dg.MultiPartitionKey({"time": "2022-01-02", "color": "yellow"}), "3", instance)
        assert dg.materialize([asset.to_source_asset(), everything], resources=io(database), instance=instance).success


def test_a_step_with_an_optional_output_between_its_required_ones_commits_them_all(database):
    @dg.multi_asset(outs={"a": dg.AssetOut(), "o": dg.AssetOut(is_required=False), "b": dg.AssetOut()})
    def mixed():
        yield dg.Output(pd.DataFrame({"n": [1]}), output_name="a")
        yield dg.Output(pd.DataFrame({"n": [2]}), output_name="o")
        yield dg.Output(pd.DataFrame({"n": [3]}), output_name="b")

    for _ in range(2):  # the second run replaces every table: its earlier outputs must not count the old rows
        result = dg.materialize([mixed], resources=io(database))
        assert [select(database, f"SELECT n FROM main.{t}")["n"].tolist() for t in "aob"] == [[1], [2], [3]]
        counts = {
            m.asset_key.path[-1]: m.metadata["dagster/row_count"].value
            for m in result.asset_materializations_for_node("mixed")
        }
        assert counts == {"a": 1, "o": 1, "b": 1}
