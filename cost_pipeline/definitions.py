"""The one `Definitions` object: assets, jobs and the resources of the chosen deployment."""

import dagster as dg

from cost_pipeline.assets import ingest, turns
from cost_pipeline.config import DB_ENV, DEFAULT_DB, DEFAULT_LANDING, LANDING_ENV, env_or_default, gemini_api_key
from cost_pipeline.llm.client import GeminiResource
from cost_pipeline.resources import LandingResource
from cost_pipeline.storage.io_manager import DuckDBPartitionIOManager

all_assets = dg.load_assets_from_modules([ingest, turns])

daily_pipeline_job = dg.define_asset_job(
    "daily_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset of one day's partition, from landing files to costs.",
)


def local_resources() -> dict:
    """The embedded default: a DuckDB file and a landing folder on this machine."""
    database = env_or_default(DB_ENV, DEFAULT_DB)
    return {
        "io_manager": DuckDBPartitionIOManager(database=database),
        "landing": LandingResource(root=env_or_default(LANDING_ENV, DEFAULT_LANDING)),
        "gemini": GeminiResource(api_key=gemini_api_key(), cache_database=database),
    }


defs = dg.Definitions(
    assets=all_assets,
    jobs=[daily_pipeline_job],
    resources=local_resources(),
)
