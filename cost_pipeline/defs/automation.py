"""Jobs, the daily schedule, the sensors (a landing folder that arrives late, batch jobs that finish) and the
totals' automation."""

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
from google.genai import errors as genai_errors

from cost_pipeline.config import SCHEDULE_HOUR, SCHEDULE_HOUR_ENV, SCHEDULE_TIMEZONE, SCHEDULE_TIMEZONE_ENV
from cost_pipeline.defs.gemini.resource import GeminiResource
from cost_pipeline.defs.partitions import daily_partitions
from cost_pipeline.defs.resources import LandingResource
from cost_pipeline.gemini.batch import jobs as batch_jobs

DAILY_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.assets(
    "evaluation_costs", "cost_dashboard", "billing_reconciliation", "store_maintenance"
)
"""Every daily asset: totals over all days, the invoice reconciliation and the store's upkeep run on their own
triggers, never in the daily job."""
daily_pipeline_job = dg.define_asset_job(
    "daily_pipeline",
    selection=DAILY_SELECTION,
    description="One day's partition of every daily asset: landing files to cost rollup, with their checks.",
)
evaluation_costs_job = dg.define_asset_job(
    "evaluation_costs_job",
    selection=dg.AssetSelection.assets("evaluation_costs", "cost_dashboard"),
    description="Totals per evaluation over all days, with the budget check, and the cost dashboard.",
)


# evaluation_costs declares an eager automation condition; this sensor evaluates it, on
# by default, so totals follow every rollup a schedule, backfill or person materializes.
evaluation_costs_automation = dg.AutomationConditionSensorDefinition(
    "evaluation_costs_automation",
    target=dg.AssetSelection.assets("evaluation_costs", "cost_dashboard"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes evaluation_costs and the cost dashboard after any daily_cost_rollup partition changes.",
)


@dg.schedule(
    job=daily_pipeline_job,
    cron_schedule=f"0 {SCHEDULE_HOUR} * * *",
    execution_timezone=SCHEDULE_TIMEZONE,
    description=f"Yesterday's partition, every day at {SCHEDULE_HOUR:02d}:00 {SCHEDULE_TIMEZONE} "
    f"({SCHEDULE_HOUR_ENV}, {SCHEDULE_TIMEZONE_ENV}).",
)
def daily_pipeline_schedule(
    context: dg.ScheduleEvaluationContext, landing: LandingResource
) -> dg.RunRequest | dg.SkipReason:
    """Yesterday, as a date in the schedule's timezone, is the partition to run; skipped until its files land."""
    tick = context.scheduled_execution_time.astimezone(ZoneInfo(SCHEDULE_TIMEZONE))
    day = (tick.date() - timedelta(days=1)).isoformat()
    missing = landing.missing(day)
    if missing:
        return dg.SkipReason(f"{missing}; the late_landing_sensor runs the day when its files arrive.")
    return dg.RunRequest(run_key=day, partition_key=day, tags={"trigger": "daily_schedule"})


@dg.sensor(
    job=daily_pipeline_job,
    minimum_interval_seconds=300,
    description="Runs a day whose landing folder appeared, or changed, after its last raw_turns materialization.",
)
def late_landing_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
    known = set(daily_partitions.get_partition_keys(current_time=datetime.now(ZoneInfo("UTC"))))
    requests = []
    for folder in sorted(Path(landing.root).glob("????-??-??")):
        files = list(folder.glob("*.jsonl"))
        if folder.name not in known or not files:
            continue
        landed_at = max(path.stat().st_mtime for path in files)
        materialized_at = _materialized_at(context.instance, folder.name)
        if materialized_at is None or landed_at > materialized_at:
            requests.append(
                dg.RunRequest(
                    run_key=f"{folder.name}@{landed_at:.0f}",
                    partition_key=folder.name,
                    tags={"trigger": "late_landing_sensor"},
                )
            )
    return dg.SensorResult(run_requests=requests)


def _materialized_at(instance: dg.DagsterInstance, day: str) -> float | None:
    """When raw_turns was last materialized for `day`, as a Unix time."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_turns"), asset_partitions=[day]), limit=1
    ).records
    return records[0].timestamp if records else None


@dg.sensor(
    job=daily_pipeline_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Runs a day again once the Batch API jobs its last run left pending have finished: the run "
    "collects them (nothing is submitted twice).",
)
def batch_jobs_sensor(context: dg.SensorEvaluationContext, gemini: GeminiResource) -> dg.SensorResult | dg.SkipReason:
    waiting = batch_jobs.pending(gemini.cache.database_file())
    if not waiting:
        return dg.SkipReason("no Batch API job is pending")
    if gemini.endpoint.needs_local_server():
        return dg.SkipReason(
            f"{len(waiting)} job(s) of the auto-started local server ended with its run: run their "
            "day again (or point GOOGLE_GEMINI_BASE_URL at a server that outlives runs)"
        )
    finished: dict[str, list[str]] = {}
    with gemini.settings().genai_client() as client:  # one HTTP client per tick, closed with it
        for name, day in waiting:
            try:
                done = client.batches.get(name=name).done
            except genai_errors.ClientError as err:  # gone (expired): the day's run marks it failed and asks again
                if err.code != 404:
                    raise
                done = True
            if done:
                finished.setdefault(day, []).append(name)
    if not finished:
        return dg.SkipReason(f"{len(waiting)} Batch API job(s) still running")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=day, run_key=f"batch:{','.join(sorted(names))}", tags={"trigger": "batch_jobs_sensor"}
            )
            for day, names in sorted(finished.items())
        ]
    )
