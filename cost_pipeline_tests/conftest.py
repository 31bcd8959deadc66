"""Shared fixtures: a temp landing folder and DuckDB file, and a way to materialize a day."""

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from cost_pipeline.definitions import all_assets
from cost_pipeline.resources import LandingResource
from cost_pipeline.storage.io_manager import DuckDBPartitionIOManager


@pytest.fixture
def landing_root(tmp_path: Path) -> Path:
    root = tmp_path / "landing"
    root.mkdir()
    return root


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


def local_resources(landing_root: Path, database: Path) -> dict:
    return {
        "io_manager": DuckDBPartitionIOManager(database=str(database)),
        "landing": LandingResource(root=str(landing_root)),
    }


def materialize_day(day: date | str, landing_root: Path, database: Path, **kwargs) -> dg.ExecuteInProcessResult:
    """A real Dagster materialization of every asset for one partition."""
    return dg.materialize(
        all_assets,
        partition_key=str(day),
        resources=local_resources(landing_root, database),
        **kwargs,
    )
