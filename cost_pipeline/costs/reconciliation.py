"""billing_reconciliation: the ledger against the provider's invoice, day by day, model by model, kind by kind.

Partitioned by billing day (the UTC day of `sent_at`, which is how the invoice dates
usage), not by data day: a backfill of old data is billed on the day it ran. The asset
reads every export file in the billing folder (`COST_PIPELINE_BILLING`, default
`data/billing`), keeps the lines of its day, and compares them with the ledger's billed
attempts of that day. Exports arrive a day or more after the usage, so:
- it is not part of the daily job, and the daily schedule never waits for it;
- `billing_export_sensor` runs it for each day an export file covers, again when a file changes;
- a day with no export line is skipped (no materialization, a log line), never failed.
Standard and Batch API usage are separate lines (the invoice's batch SKUs against the ledger's
`processing = 'batch'` attempts), so a batch answer priced at the standard rate cannot hide
behind a total. The `ledger_matches_invoice` check fails when any line differs by more than the
tolerance in `costs.toml` (`[billing]`, default 0 tokens and $0.000001) and names the
largest gaps; attempts whose billing is unknown (bodies cut off in transit) are counted
beside it, as they are the usual explanation of an invoice above the ledger.
"""

from datetime import date, datetime, timezone
from decimal import Decimal

import dagster as dg
import pandas as pd

from cost_pipeline.costs.billing import KINDS, LOCAL_SOURCE, PROVIDER_SOURCE, compare, read_export
from cost_pipeline.costs.ledger import ensure_ledger
from cost_pipeline.costs.rollups import TOTAL_MONEY
from cost_pipeline.markdown import markdown_table
from cost_pipeline.partitions import DUCKDB_POOL, billing_days
from cost_pipeline.resources import BillingExports, CostSettings
from cost_pipeline.storage.warehouse import DuckDBWarehouse

LEDGER_BY_KIND_SQL = f"""
SELECT CASE WHEN endpoint = '{LOCAL_SOURCE}' THEN '{LOCAL_SOURCE}' ELSE '{PROVIDER_SOURCE}' END AS source,
       coalesce(model_version, model) AS model, processing,
       sum(input_tokens - cached_tokens + tool_prompt_tokens) AS input_tokens, sum(input_cost_usd) AS input_usd,
       sum(cached_tokens) AS cached_input_tokens, sum(cached_input_cost_usd) AS cached_input_usd,
       sum(output_tokens + thinking_tokens) AS output_tokens, sum(output_cost_usd) AS output_usd
FROM llm_attempts WHERE billed AND sent_at::DATE = $day GROUP BY ALL
"""
UNKNOWN_SQL = "SELECT count(*) AS unknown FROM llm_attempts WHERE billed IS NULL AND sent_at::DATE = $day"

RECONCILIATION_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("source", "VARCHAR", description="provider (an invoice from Google), or local-server (the shipped "
                   "server's own invoice, compared only with the attempts it answered)."),
    dg.TableColumn("billing_day", "DATE", description="UTC day the usage was billed."),
    dg.TableColumn("model", "VARCHAR", description="As the invoice names it (served model)."),
    dg.TableColumn("kind", "VARCHAR", description="input (uncached, tool prompt included), cached_input, output (thinking included)."),
    dg.TableColumn("processing", "VARCHAR", description="standard, or batch (Batch API SKUs, priced at the batch rate)."),
    dg.TableColumn("invoice_tokens", "BIGINT"),
    dg.TableColumn("ledger_tokens", "BIGINT"),
    dg.TableColumn("invoice_usd", TOTAL_MONEY),
    dg.TableColumn("ledger_usd", TOTAL_MONEY),
    dg.TableColumn("token_gap", "BIGINT", description="invoice - ledger."),
    dg.TableColumn("usd_gap", TOTAL_MONEY, description="invoice - ledger."),
    dg.TableColumn("within_tolerance", "BOOLEAN"),
])


@dg.asset(
    partitions_def=billing_days,
    # Attempts of any data day can be billed on this day (a backfill of old data is billed when it runs).
    deps=[dg.AssetDep("llm_attempts", partition_mapping=dg.AllPartitionMapping())],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    metadata={"dagster/column_schema": RECONCILIATION_SCHEMA},
    output_required=False,
    pool=DUCKDB_POOL,
)
def billing_reconciliation(context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings,
                           billing: BillingExports):
    """The day's Cloud Billing export lines against the ledger's billed attempts, by model and token kind."""
    day = date.fromisoformat(context.partition_key)
    invoice = [row for path in billing.files() for row in read_export(path, costs.sku_overrides()) if row["day"] == day]
    if not invoice:
        context.log.info(f"no billing export line for {day} in {billing.folder} yet: skipped, not failed")
        return
    ensure_ledger(warehouse.database)
    # Only the sources this day's invoices cover: a Google invoice is never held against local-server attempts.
    sources = {row["source"] for row in invoice}
    ledger = [line for line in ledger_lines(warehouse, day) if line["source"] in sources]
    unknown = int(warehouse.query(UNKNOWN_SQL, {"day": day}).iloc[0]["unknown"])
    token_tolerance, usd_tolerance = costs.billing_tolerance()
    lines = pd.DataFrame(compare(invoice, ledger, token_tolerance, usd_tolerance))
    yield dg.Output(lines, metadata=reconciliation_metadata(lines, unknown))


@dg.asset_check(asset="billing_reconciliation", partitions_def=billing_days,
                description="Every invoice line (day x model x token kind) equals the ledger's billed attempts "
                            "within the tolerance; names the largest gaps.")
def ledger_matches_invoice(context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse,
                           costs: CostSettings) -> dg.AssetCheckResult:
    lines = warehouse.query("SELECT * EXCLUDE (partition_date, run_id) FROM billing_reconciliation WHERE partition_date = $day",
                            {"day": context.partition_key})
    unknown = int(warehouse.query(UNKNOWN_SQL, {"day": context.partition_key}).iloc[0]["unknown"])
    return reconciliation_check(lines, unknown, *costs.billing_tolerance())


def ledger_lines(warehouse: DuckDBWarehouse, day: date) -> list[dict]:
    frame = warehouse.query(LEDGER_BY_KIND_SQL, {"day": day})
    return [{"source": row["source"], "day": day, "model": row["model"], "kind": kind, "processing": row["processing"],
             "tokens": int(row[f"{kind}_tokens"] or 0),
             "cost_usd": row[f"{kind}_usd"] or Decimal(0)}
            for row in frame.to_dict("records") for kind in KINDS]


def reconciliation_check(lines: pd.DataFrame, unknown: int, token_tolerance: int, usd_tolerance: Decimal) -> dg.AssetCheckResult:
    off = lines[~lines["within_tolerance"].astype(bool)]
    largest = off.assign(size=off["usd_gap"].map(abs)).sort_values("size", ascending=False).drop(columns="size")
    description = None
    if len(off):
        worst = largest.iloc[0]
        description = (f"{len(off)} invoice line(s) differ from the ledger beyond {token_tolerance} tokens / ${usd_tolerance}; "
                       f"largest: {worst['model']} {worst['kind']} ({worst['processing']}) on {worst['billing_day']}: "
                       f"{worst['token_gap']:+,} tokens, ${worst['usd_gap']:+.6f}")
        if unknown:
            description += f"; {unknown} attempt(s) were billed for usage we never saw (bodies cut off in transit)"
    return dg.AssetCheckResult(
        passed=bool(off.empty), severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"lines": len(lines), "lines_off": len(off), "billing_unknown_attempts": unknown,
                  "largest_gaps": dg.MetadataValue.md(markdown_table(largest.head(10)) if len(off) else "none")})


def reconciliation_metadata(lines: pd.DataFrame, unknown: int) -> dict:
    return {
        "invoice_usd": float(sum(lines["invoice_usd"], Decimal(0))),
        "ledger_usd": float(sum(lines["ledger_usd"], Decimal(0))),
        "usd_gap": float(sum(lines["usd_gap"], Decimal(0))),
        "token_gap": int(lines["token_gap"].sum()),
        "lines": len(lines),
        "billing_unknown_attempts": unknown,
        "lines_by_kind": dg.MetadataValue.md(markdown_table(lines, 30)),
    }


billing_reconciliation_job = dg.define_asset_job(
    "billing_reconciliation_job", selection=dg.AssetSelection.assets("billing_reconciliation"),
    partitions_def=billing_days,
    description="One billing day of the ledger against the provider's export.")


@dg.sensor(job=billing_reconciliation_job, minimum_interval_seconds=600,
           description="Reconciles each day a billing export covers, when its file appears or changes.")
def billing_export_sensor(context: dg.SensorEvaluationContext, billing: BillingExports, costs: CostSettings) -> dg.SensorResult:
    known = set(billing_days.get_partition_keys(current_time=datetime.now(timezone.utc)))
    requests = []
    for path in billing.files():
        changed = path.stat().st_mtime
        for day in sorted({str(row["day"]) for row in read_export(path, costs.sku_overrides())} & known):
            requests.append(dg.RunRequest(run_key=f"{day}@{path.name}@{changed:.0f}", partition_key=day,
                                          tags={"trigger": "billing_export_sensor"}))
    return dg.SensorResult(run_requests=requests)
