"""The one `Definitions` object: assets, jobs and the resources of the chosen deployment."""

import dagster as dg

from cost_pipeline.assets import ingest
from cost_pipeline.config import DB_ENV, DEFAULT_DB, DEFAULT_LANDING, LANDING_ENV, env_or_default
from cost_pipeline.resources import LandingResource
from cost_pipeline.storage.io_manager import DuckDBPartitionIOManager

all_assets = dg.load_assets_from_modules([ingest])

daily_pipeline_job = dg.define_asset_job(
    "daily_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset of one day's partition, from landing files to costs.",
)


def local_resources() -> dict:
    """The embedded default: a DuckDB file and a landing folder on this machine."""
    return {
        "io_manager": DuckDBPartitionIOManager(database=env_or_default(DB_ENV, DEFAULT_DB)),
        "landing": LandingResource(root=env_or_default(LANDING_ENV, DEFAULT_LANDING)),
    }


defs = dg.Definitions(
    assets=all_assets,
    jobs=[daily_pipeline_job],
    resources=local_resources(),
)
