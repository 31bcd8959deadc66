"""The IO manager inside real Dagster runs: a step's outputs commit together or not at all."""

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.partitions import daily_partitions

DAY = "2026-11-01"


def make_batch_asset(fail_after: int | None = None):
    """A three-output step like the turns stage; optionally dies after yielding `fail_after` outputs."""

    @dg.multi_asset(
        outs={name: dg.AssetOut() for name in ("first", "second", "third")},
        partitions_def=daily_partitions,
    )
    def batch(context: dg.AssetExecutionContext):
        size = int(context.run.tags.get("size", "3"))
        for position, name in enumerate(("first", "second", "third")):
            if fail_after is not None and position == fail_after:
                raise RuntimeError("injected crash before the batch completed")
            yield dg.Output(pd.DataFrame({"n": range(size), "name": name}), output_name=name)

    return batch


def run(database, asset, size: int, raise_on_error=True):
    return dg.materialize(
        [asset],
        partition_key=DAY,
        resources={"io_manager": DuckDBPartitionIOManager(database=str(database))},
        tags={"size": str(size)},
        raise_on_error=raise_on_error,
    )


def table_state(database) -> dict:
    with duckdb.connect(str(database), read_only=True) as connection:
        return {
            table: connection.execute(f"SELECT count(*), min(run_id), max(run_id) FROM {table}").fetchone()
            for table in ("first", "second", "third")
        }


def test_a_steps_outputs_land_together_with_one_run_id(database):
    result = run(database, make_batch_asset(), size=4)
    state = table_state(database)
    assert {rows for rows, _, _ in state.values()} == {4}
    assert {run_id for _, run_id, last in state.values() if run_id == last} == {result.run_id}


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_a_step_that_dies_mid_batch_leaves_every_table_as_it_was(database, fail_after):
    first = run(database, make_batch_asset(), size=3)
    failed = run(database, make_batch_asset(fail_after=fail_after), size=9, raise_on_error=False)
    assert not failed.success
    assert table_state(database) == {name: (3, first.run_id, first.run_id) for name in ("first", "second", "third")}


def test_downstream_loads_its_partition_read_only(database):
    batch = make_batch_asset()

    @dg.asset(partitions_def=daily_partitions, deps=[])
    def doubled(first: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"n2": first["n"] * 2})

    dg.materialize(
        [batch, doubled],
        partition_key=DAY,
        resources={"io_manager": DuckDBPartitionIOManager(database=str(database))},
        tags={"size": "5"},
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT list(n2 ORDER BY n2) FROM doubled").fetchone()[0] == [0, 2, 4, 6, 8]


def test_an_optional_output_commits_on_its_own(database):
    @dg.multi_asset(
        outs={"always": dg.AssetOut(), "sometimes": dg.AssetOut(is_required=False)},
        partitions_def=daily_partitions,
    )
    def partial():
        yield dg.Output(pd.DataFrame({"n": [1]}), output_name="always")

    dg.materialize(
        [partial], partition_key=DAY, resources={"io_manager": DuckDBPartitionIOManager(database=str(database))}
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM always").fetchone() == (1,)


def test_loading_before_anything_was_written_is_a_clear_error(database):
    @dg.asset(partitions_def=daily_partitions)
    def needs_upstream(first: pd.DataFrame) -> pd.DataFrame:
        return first

    with pytest.raises(FileNotFoundError, match="materialize upstream assets first"):
        dg.materialize(
            [needs_upstream, *make_batch_asset().to_source_assets()],
            partition_key=DAY,
            resources={"io_manager": DuckDBPartitionIOManager(database=str(database))},
            selection=[needs_upstream],
        )
