"""The one `Definitions` object: assets, checks, jobs, schedule, sensor and the local resources."""

import dagster as dg

from cost_pipeline.defs.automation import (
    batch_jobs_sensor,
    daily_pipeline_job,
    daily_pipeline_schedule,
    evaluation_costs_automation,
    evaluation_costs_job,
    late_landing_sensor,
)
from cost_pipeline.defs.costs import checks, reconciliation, rollups
from cost_pipeline.defs.environment import local_resources
from cost_pipeline.defs.gemini import assets as turns
from cost_pipeline.defs.ingest import assets as ingest
from cost_pipeline.defs.maintenance import store_maintenance, store_maintenance_job, store_maintenance_schedule

OWNERS = ["team:cost-pipeline"]
# Each asset page links to the code that defines it and names who owns it.
all_assets = dg.with_source_code_references(
    dg.map_asset_specs(
        lambda spec: spec.replace_attributes(owners=OWNERS),
        [
            *(
                asset
                for asset in dg.load_assets_from_modules([ingest, turns, rollups, reconciliation])
                if isinstance(asset, dg.AssetsDefinition)
            ),
            rollups.llm_attempts,
            store_maintenance,
        ],
    )
)
all_checks = dg.load_asset_checks_from_modules([checks, reconciliation])


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[daily_pipeline_job, evaluation_costs_job, reconciliation.billing_reconciliation_job, store_maintenance_job],
    schedules=[daily_pipeline_schedule, store_maintenance_schedule],
    sensors=[late_landing_sensor, evaluation_costs_automation, reconciliation.billing_export_sensor, batch_jobs_sensor],
    resources=local_resources(),
    # The daily graph is a chain, so a process per step buys no parallelism and costs
    # seconds of start-up per step; runs of different days give the parallelism.
    executor=dg.in_process_executor,
)
