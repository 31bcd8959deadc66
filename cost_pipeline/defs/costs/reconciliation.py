"""billing_reconciliation: the ledger against a real Cloud Billing export, line by line, for one billing day.

Partitioned by billing day, not by data day: a backfill of old data is billed on the day it
ran. The asset reads every export file in the billing folder (`COST_PIPELINE_BILLING`,
default `data/billing`: BigQuery export CSVs or console downloads, `money/billing_export.py`),
keeps the lines of its day (a UTC day for BigQuery lines, a Pacific day for the console's,
and the ledger cut the same way), and compares our projects' Gemini token lines with the
ledger's billed attempts (`money/invoice_match.py`); other projects, other services and
other Gemini spend are reported in its metadata, never compared. Exports arrive a day or
more after the usage, so:
- it is not part of the daily job, and the daily schedule never waits for it;
- `billing_export_sensor` runs it for each day an export file covers, again when a file changes;
- a day with no export line is skipped (no materialization, a log line), never failed.
`ledger_matches_invoice` fails when a line differs beyond the tolerance (`[billing]` in
costs.toml) and names the largest gaps, with the attempts whose billing is unknown (the usual
explanation of an invoice above the ledger); it warns, comparing nothing, when the export
cannot tell our projects from others'.
"""

from datetime import date, datetime, timezone
from decimal import Decimal

import dagster as dg
import pandas as pd

from cost_pipeline.defs.costs.rollups import TOTAL_MONEY
from cost_pipeline.defs.partitions import DUCKDB_POOL, billing_days
from cost_pipeline.defs.resources import BillingExports, CostSettings
from cost_pipeline.defs.table_schema import table_schema
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.usage import MODALITY_FIELDS
from cost_pipeline.money.billing_export import day_bounds, read_export
from cost_pipeline.money.invoice_match import DayMatch, Tolerance, day_lines, ledger_lines, match_day
from cost_pipeline.money.ledger import ensure_ledger
from cost_pipeline.money.skus import LONG_CONTEXT_TOKENS
from cost_pipeline.reports.markdown import markdown_table, money
from cost_pipeline.storage.columns import Column
from cost_pipeline.storage.connect import connect, one_row

_SUMMED = (
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "thinking_tokens",
    "tool_prompt_tokens",
    *MODALITY_FIELDS,
    "input_cost_usd",
    "cached_input_cost_usd",
    "output_cost_usd",
)
LEDGER_GROUPS_SQL = f"""
SELECT coalesce(model_version, model) AS model,
       CASE served_tier WHEN 'ON_DEMAND_FLEX' THEN 'flex' WHEN 'ON_DEMAND_PRIORITY' THEN 'priority'
                        ELSE coalesce(processing, 'standard') END AS tier,
       input_tokens + tool_prompt_tokens > {LONG_CONTEXT_TOKENS} AS long_context,
       {", ".join(f"sum({name}) AS {name}" for name in _SUMMED)}
FROM llm_attempts
-- Provisioned throughput is prepaid: the export has no per-token line for it.
WHERE billed AND sent_at >= $start AND sent_at < $end AND served_tier IS DISTINCT FROM 'PROVISIONED_THROUGHPUT'
GROUP BY ALL
"""
UNKNOWN_SQL = (
    "SELECT count(*) AS unknown FROM llm_attempts WHERE billed IS NULL AND sent_at >= $start AND sent_at < $end"
)

RECONCILIATION_COLUMNS = [
    Column(
        "billing_day",
        "DATE",
        "The day billed: a UTC day (BigQuery export lines) or a Pacific "
        "day (the console's download), as day_zone says; the ledger is cut the same way.",
    ),
    Column("day_zone", "VARCHAR", "UTC, or America/Los_Angeles for a console download's line."),
    Column("model", "VARCHAR", "As the invoice names it (the served model's family)."),
    Column(
        "kind",
        "VARCHAR",
        "input (uncached, tool prompt included), cached_input, output (thinking included).",
    ),
    Column("modality", "VARCHAR", "text, audio, image or video."),
    Column("tier", "VARCHAR", "standard, batch (the Batch API), flex or priority."),
    Column("context", "VARCHAR", "short, or long (a prompt over 200k tokens)."),
    Column("invoice_tokens", "BIGINT"),
    Column("ledger_tokens", "BIGINT"),
    Column("token_gap", "BIGINT", "invoice - ledger."),
    Column(
        "invoice_usd",
        TOTAL_MONEY,
        "Gross (before credits), converted with the export's own "
        "currency_conversion_rate; null when its currency could not be converted (note says why).",
    ),
    Column("ledger_usd", TOTAL_MONEY),
    Column("usd_gap", TOTAL_MONEY, "invoice - ledger, in dollars."),
    Column(
        "credits_usd",
        TOTAL_MONEY,
        "Credits on the invoice lines (free tier, promotions): shown, not compared.",
    ),
    Column("currency", "VARCHAR", "The export's currency."),
    Column("within_tolerance", "BOOLEAN"),
    Column("skus", "VARCHAR", "The SKU descriptions summed into the line."),
    Column("note", "VARCHAR", "Why the invoice's cost is unknown (a currency without a rate)."),
]


@dg.asset(
    partitions_def=billing_days,
    # Attempts of any data day can be billed on this day (a backfill of old data is billed when it runs).
    deps=[dg.AssetDep("llm_attempts", partition_mapping=dg.AllPartitionMapping())],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    metadata={"dagster/column_schema": table_schema(RECONCILIATION_COLUMNS)},
    output_required=False,
    pool=DUCKDB_POOL,
)
def billing_reconciliation(
    context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings, billing: BillingExports
):
    """The day's Cloud Billing export lines against the ledger's billed attempts, line by line."""
    day = date.fromisoformat(context.partition_key)
    exported, warnings = day_lines(read_billing(billing, costs), day)
    if not exported:
        context.log.info(f"no billing export line for {day} in {billing.folder} yet: skipped, not failed")
        return
    ensure_ledger(warehouse.database)
    drop_earlier_grain(warehouse.database, context.log.info)
    bounds = dict(zip(("start", "end"), day_bounds(day, exported[0].zone)))
    groups = warehouse.query(LEDGER_GROUPS_SQL, bounds).to_dict("records")
    match = match_day(
        day,
        exported,
        ledger_lines(groups, costs.price_book(), day),
        costs.billing_projects(),
        costs.billing_tolerance(),
    )
    match.warnings[:0] = warnings
    for warning in [*match.warnings, *filter(None, [match.refused])]:
        context.log.warning(warning)
    unknown = int(warehouse.query(UNKNOWN_SQL, bounds).iloc[0]["unknown"])
    lines = pd.DataFrame(match.lines, columns=[column.name for column in RECONCILIATION_COLUMNS])
    yield dg.Output(lines, metadata=reconciliation_metadata(match, lines, unknown))


def drop_earlier_grain(database: str, log) -> None:
    """A `billing_reconciliation` of the earlier grain (by `source`, without modality and tier) goes: it is derived
    from export files that are still there, and each day is rebuilt at its next reconciliation."""
    with connect(database) as connection:
        (earlier,) = one_row(
            connection,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'main' "
            "AND table_name = 'billing_reconciliation' AND column_name = 'source'",
        )
        if earlier:
            connection.execute("DROP TABLE billing_reconciliation")
            log("dropped billing_reconciliation of the earlier grain (source x kind): days are rebuilt as reconciled")


def read_billing(billing: BillingExports, costs: CostSettings) -> list:
    """Every line of every export file in the billing folder."""
    overrides, rates = costs.sku_overrides(), costs.currency_rates()
    return [line for path in billing.files() for line in read_export(path, overrides, rates)]


@dg.asset_check(
    asset="billing_reconciliation",
    partitions_def=billing_days,
    description="Every invoice token line of our projects (model x kind x modality x tier x context) "
    "equals the ledger's billed attempts within the tolerance; names the largest gaps.",
)
def ledger_matches_invoice(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings, billing: BillingExports
) -> dg.AssetCheckResult:
    day = date.fromisoformat(context.partition_key)
    exported, _ = day_lines(read_billing(billing, costs), day)
    zone = exported[0].zone if exported else "UTC"
    bounds = dict(zip(("start", "end"), day_bounds(day, zone)))
    lines = warehouse.query(
        "SELECT * EXCLUDE (partition_date, run_id) FROM billing_reconciliation WHERE partition_date = $day",
        {"day": context.partition_key},
    )
    unknown = int(warehouse.query(UNKNOWN_SQL, bounds).iloc[0]["unknown"])
    refused = match_day(day, exported, [], costs.billing_projects(), costs.billing_tolerance()).refused
    return reconciliation_check(lines, unknown, costs.billing_tolerance(), refused)


def reconciliation_check(
    lines: pd.DataFrame, unknown: int, tolerance: Tolerance, refused: str | None = None
) -> dg.AssetCheckResult:
    if refused:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description=refused, metadata={"lines": 0}
        )
    off = lines[~lines["within_tolerance"].astype(bool)]
    size = off["usd_gap"].map(lambda gap: abs(gap) if gap is not None and not pd.isna(gap) else Decimal("Infinity"))
    largest = off.assign(size=size, tokens=off["token_gap"].abs()).sort_values(["size", "tokens"], ascending=False)
    largest = largest.drop(columns=["size", "tokens"])
    description = None
    if len(off):
        worst = largest.iloc[0]
        gap = "unknown" if worst["usd_gap"] is None or pd.isna(worst["usd_gap"]) else f"${worst['usd_gap']:+.6f}"
        description = (
            f"{len(off)} invoice line(s) differ from the ledger beyond {tolerance.describe()}; largest: "
            f"{worst['model']} {worst['kind']} {worst['modality']} ({worst['tier']}, {worst['context']}) "
            f"on {worst['billing_day']}: {worst['token_gap']:+,} tokens, {gap}"
            + (f" ({worst['note']})" if worst["note"] else "")
        )
        if unknown:
            description += f"; {unknown} attempt(s) were billed for usage we never saw (billing unknown)"
    return dg.AssetCheckResult(
        passed=bool(off.empty),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "lines": len(lines),
            "lines_off": len(off),
            "billing_unknown_attempts": unknown,
            "largest_gaps": dg.MetadataValue.md(markdown_table(largest.head(10)) if len(off) else "none"),
        },
    )


def reconciliation_metadata(match: DayMatch, lines: pd.DataFrame, unknown: int) -> dict:
    def total(column: str) -> str:
        return money(sum((v for v in lines[column] if v is not None and not pd.isna(v)), Decimal(0)))

    other = pd.DataFrame(match.other_spend + match.unknown_skus)
    not_ours = pd.DataFrame(match.not_ours)
    return {
        "invoice": total("invoice_usd"),
        "ledger": total("ledger_usd"),
        "gap": total("usd_gap"),
        "credits": total("credits_usd"),
        "token_gap": int(lines["token_gap"].sum()) if len(lines) else 0,
        "lines": len(lines),
        "billing_unknown_attempts": unknown,
        "day_zone": match.zone,
        "projects_compared": ", ".join(match.projects) or "none",
        "projects_excluded": ", ".join(
            sorted({row["project"] for row in match.not_ours if row["project"] not in match.projects})
        )
        or "none",
        "other_spend": money(
            sum((row["cost_usd"] for row in match.other_spend if row["cost_usd"] is not None), Decimal(0))
        ),
        "other_spend_without_usd": sum(row["cost_usd"] is None for row in match.other_spend),
        "unknown_skus": len(match.unknown_skus),
        "lines_by_kind": dg.MetadataValue.md(markdown_table(lines, 30)),
        "other_spend_in_our_projects": dg.MetadataValue.md(markdown_table(other, 30) if len(other) else "none"),
        "not_ours": dg.MetadataValue.md(markdown_table(not_ours, 30) if len(not_ours) else "none"),
        **({"warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in match.warnings))} if match.warnings else {}),
    }


billing_reconciliation_job = dg.define_asset_job(
    "billing_reconciliation_job",
    selection=dg.AssetSelection.assets("billing_reconciliation"),
    description="One billing day of the ledger against the provider's export.",
)


@dg.sensor(
    job=billing_reconciliation_job,
    minimum_interval_seconds=600,
    description="Reconciles each day a billing export covers, when its file appears or changes.",
)
def billing_export_sensor(
    context: dg.SensorEvaluationContext, billing: BillingExports, costs: CostSettings
) -> dg.SensorResult:
    known = set(billing_days.get_partition_keys(current_time=datetime.now(timezone.utc)))
    requests = []
    for path in billing.files():
        changed = path.stat().st_mtime
        days = {str(line.day) for line in read_export(path, costs.sku_overrides(), costs.currency_rates())}
        for day in sorted(days & known):
            requests.append(
                dg.RunRequest(
                    run_key=f"{day}@{path.name}@{changed:.0f}",
                    partition_key=day,
                    tags={"trigger": "billing_export_sensor"},
                )
            )
    return dg.SensorResult(run_requests=requests)
