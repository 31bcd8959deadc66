"""The one `Definitions` object: assets, checks, jobs, schedule, sensor and the local resources."""

from pathlib import Path

import dagster as dg

from cost_pipeline.config import (
    BILLING_ENV,
    CLEAN_MODEL_ENV,
    CONCURRENCY_ENV,
    COSTS_ENV,
    DB_ENV,
    DEFAULT_BILLING,
    DEFAULT_COSTS,
    DEFAULT_DB,
    DEFAULT_LANDING,
    FUNCTION_MODEL_ENV,
    LANDING_ENV,
    PROCESSING_ENV,
    RPM_ENV,
    THINKING_BUDGET_ENV,
    TPM_ENV,
    env_int_or_default,
    env_or_default,
    gemini_api_key,
)
from cost_pipeline.defs.automation import (
    batch_jobs_sensor,
    daily_pipeline_job,
    daily_pipeline_schedule,
    evaluation_costs_automation,
    evaluation_costs_job,
    late_landing_sensor,
)
from cost_pipeline.defs.costs import checks, reconciliation, rollups
from cost_pipeline.defs.gemini import assets as turns
from cost_pipeline.defs.glossary import with_column_descriptions
from cost_pipeline.defs.ingest import assets as ingest
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.resources import BillingExports, CostSettings, LandingResource
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.client import DEFAULT_MODEL, GeminiResource

OWNERS = ["team:cost-pipeline"]
# Each asset page links to the code that defines it, names who owns it, and describes every column.
all_assets = dg.with_source_code_references(
    dg.map_asset_specs(
        lambda spec: with_column_descriptions(spec.replace_attributes(owners=OWNERS)),
        [
            *(
                asset
                for asset in dg.load_assets_from_modules([ingest, turns, rollups, reconciliation])
                if isinstance(asset, dg.AssetsDefinition)
            ),
            rollups.llm_attempts,
        ],
    )
)
all_checks = dg.load_asset_checks_from_modules([checks, reconciliation])


def local_resources() -> dict:
    """The embedded default: one DuckDB file, a landing folder and cost settings on this machine."""
    database = env_or_default(DB_ENV, DEFAULT_DB)
    return {
        "io_manager": DuckDBPartitionIOManager(database=database),
        "warehouse": DuckDBWarehouse(database=database),
        "landing": LandingResource(root=env_or_default(LANDING_ENV, DEFAULT_LANDING)),
        # Models, thinking and limits from the environment, so the schedule, sensor and backfills use them too.
        "gemini": GeminiResource(
            api_key=gemini_api_key(),
            cache_database=database,
            clean_model=env_or_default(CLEAN_MODEL_ENV, DEFAULT_MODEL),
            function_model=env_or_default(FUNCTION_MODEL_ENV, DEFAULT_MODEL),
            thinking_budget=env_int_or_default(THINKING_BUDGET_ENV, None),
            requests_per_minute=env_int_or_default(RPM_ENV, None),
            tokens_per_minute=env_int_or_default(TPM_ENV, None),
            max_concurrency=env_int_or_default(CONCURRENCY_ENV, 32),
            processing=env_or_default(PROCESSING_ENV, "standard"),
        ),
        "billing": BillingExports(folder=env_or_default(BILLING_ENV, DEFAULT_BILLING)),
        "costs": CostSettings(
            config_file=env_or_default(COSTS_ENV, DEFAULT_COSTS if Path(DEFAULT_COSTS).is_file() else None)
        ),
    }


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[daily_pipeline_job, evaluation_costs_job, reconciliation.billing_reconciliation_job],
    schedules=[daily_pipeline_schedule],
    sensors=[late_landing_sensor, evaluation_costs_automation, reconciliation.billing_export_sensor, batch_jobs_sensor],
    resources=local_resources(),
    # The daily graph is a chain, so a process per step buys no parallelism and costs
    # seconds of start-up per step (a 14-day backfill: 217 s -> 53 s); runs of
    # different days give the parallelism.
    executor=dg.in_process_executor,
)
