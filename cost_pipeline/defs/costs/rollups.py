"""daily_cost_rollup and evaluation_costs: what each evaluation and model cost, day by day and in total.

Two numbers, side by side, named plainly:
- **cost of the data** (`total_cost_usd`): what the calls behind the day's current rows
  were billed in the run that wrote them; a cache hit costs 0 and records what it saved
  (`saved_cost_usd`). A re-run served from the cache makes this fall, correctly.
- **spend** (`spend_usd`): every billed attempt of every run of that day, from the
  append-only ledger `llm_attempts`: re-runs, backfills, failed and killed runs
  included. This is the number the invoice is compared with, and the one budgets use.

Both aggregate in DuckDB SQL, where DECIMAL sums are exact and a million calls take
well under a second, and return small frames whose money is `Decimal`. A sum that
leaves something out says so in the same row: `missing_price_calls` and
`unpriced_attempts` (no price known), `billing_unknown_attempts` (a body cut off in
transit: billed for usage we never saw).
"""

from datetime import timedelta
from decimal import Decimal

import dagster as dg
import pandas as pd

from cost_pipeline.config import DASHBOARD_URL_ENV, DEFAULT_DASHBOARD_URL, SCHEDULE_HOUR, SCHEDULE_TIMEZONE, resolved
from cost_pipeline.defs.io_manager import LISTED_COLUMNS_KEY
from cost_pipeline.defs.partitions import DUCKDB_POOL, daily_partitions
from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.defs.table_schema import table_schema
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.money import ledger
from cost_pipeline.money.ledger import COLUMNS as LEDGER_COLUMNS
from cost_pipeline.money.ledger import ensure_ledger, load_spools
from cost_pipeline.money.pricing import MONEY_PLACES
from cost_pipeline.reports import dashboard
from cost_pipeline.reports.markdown import markdown_table, money, money_sum, percent
from cost_pipeline.reports.report import incomplete_note, rollup_completeness
from cost_pipeline.storage.columns import Column

TOTAL_MONEY = "DECIMAL(38,12)"
TOKEN_KINDS = [
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "thinking_tokens",
    "tool_prompt_tokens",
    "total_tokens",
]
COST_KINDS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "total_cost_usd", "saved_cost_usd"]
SPEND_TOKEN_KINDS = [f"spend_{kind}" for kind in TOKEN_KINDS]
SPEND_COUNTS = [
    "attempts",
    "billed_attempts",
    "rejected_attempts",
    "billing_unknown_attempts",
    "unpriced_attempts",
    "spend_runs",
]
GROUP_KEYS = ["evaluation_id", "model", "stage"]

CALLS_SQL = f"""
SELECT evaluation_id, model, stage,
       count(*) AS calls,
       count(*) FILTER (WHERE cache_hit) AS cache_hits,
       count(*) FILTER (WHERE status = 'failed') AS failures,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_usage_calls,
       count(*) FILTER (WHERE price_status = 'missing') AS missing_price_calls,
       {", ".join(f"sum({kind})::BIGINT AS {kind}" for kind in TOKEN_KINDS)},
       {", ".join(f"sum({kind})::{TOTAL_MONEY} AS {kind}" for kind in COST_KINDS)},
       quantile_cont(latency_ms, 0.5) FILTER (WHERE NOT cache_hit AND status = 'ok') AS latency_p50_ms,
       quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT cache_hit AND status = 'ok') AS latency_p95_ms,
       avg(tokens_per_second) AS mean_tokens_per_second
FROM llm_calls WHERE partition_date = $day GROUP BY ALL
"""
SPEND_SQL = f"""
SELECT evaluation_id, model, stage,
       count(*) AS attempts,
       count(*) FILTER (WHERE billed) AS billed_attempts,
       count(*) FILTER (WHERE outcome = 'rejected') AS rejected_attempts,
       count(*) FILTER (WHERE billed IS NULL) AS billing_unknown_attempts,
       count(*) FILTER (WHERE billed AND price_status = 'missing') AS unpriced_attempts,
       count(DISTINCT run_id) AS spend_runs,
       {", ".join(f"coalesce(sum({kind}) FILTER (WHERE billed), 0)::BIGINT AS spend_{kind}" for kind in TOKEN_KINDS)},
       coalesce(sum(cost_usd), 0)::{TOTAL_MONEY} AS spend_usd,
       coalesce(sum(cost_usd) FILTER (WHERE processing = 'batch'), 0)::{TOTAL_MONEY} AS batch_spend_usd,
       coalesce(sum(total_tokens) FILTER (WHERE billed AND served_tier = 'PROVISIONED_THROUGHPUT'), 0)::BIGINT
           AS provisioned_tokens
FROM llm_attempts WHERE partition_date = $day GROUP BY ALL
"""
COUNTED = ["calls", "cache_hits", "failures", "estimated_usage_calls", "missing_price_calls", *TOKEN_KINDS]
ROLLUP_SQL = f"""
WITH c AS ({CALLS_SQL}), s AS ({SPEND_SQL})
SELECT {", ".join(f"coalesce(c.{k}, s.{k}) AS {k}" for k in GROUP_KEYS)},
       {", ".join(f"coalesce(c.{n}, 0)::BIGINT AS {n}" for n in COUNTED)},
       {", ".join(f"(CASE WHEN c.calls IS NULL THEN 0 ELSE c.{n} END)::{TOTAL_MONEY} AS {n}" for n in COST_KINDS)},
       c.latency_p50_ms, c.latency_p95_ms, c.mean_tokens_per_second,
       {", ".join(f"coalesce(s.{n}, 0)::BIGINT AS {n}" for n in [*SPEND_COUNTS, *SPEND_TOKEN_KINDS])},
       coalesce(s.spend_usd, 0)::{TOTAL_MONEY} AS spend_usd,
       coalesce(s.batch_spend_usd, 0)::{TOTAL_MONEY} AS batch_spend_usd,
       coalesce(s.provisioned_tokens, 0)::BIGINT AS provisioned_tokens
FROM c FULL OUTER JOIN s ON c.evaluation_id = s.evaluation_id AND c.model = s.model AND c.stage = s.stage
ORDER BY ALL
"""

ROLLUP_COLUMNS = [
    Column("evaluation_id", "VARCHAR"),
    Column("model", "VARCHAR"),
    Column("stage", "VARCHAR"),
    *(
        Column(name, "BIGINT")
        for name in [
            "calls",
            "cache_hits",
            "failures",
            "estimated_usage_calls",
            "missing_price_calls",
            *TOKEN_KINDS,
        ]
    ),
    *(
        Column(
            name,
            TOTAL_MONEY,
            "Cost of the data: the calls behind today's rows." if name == "total_cost_usd" else None,
        )
        for name in COST_KINDS
    ),
    Column("latency_p50_ms", "DOUBLE", "Over answered API calls (cache hits excluded)."),
    Column("latency_p95_ms", "DOUBLE"),
    Column("mean_tokens_per_second", "DOUBLE"),
    Column("attempts", "BIGINT", "Ledger attempts of every run of this day."),
    Column("billed_attempts", "BIGINT"),
    Column("rejected_attempts", "BIGINT", "Billed answers that were rejected."),
    Column("billing_unknown_attempts", "BIGINT", "Billed for usage never seen: spend_usd leaves them out."),
    Column("unpriced_attempts", "BIGINT", "Billed on a model without a price: spend_usd leaves them out."),
    Column("spend_runs", "BIGINT", "Runs whose attempts make up the spend."),
    *(Column(name, "BIGINT", "Billed tokens over every run.") for name in SPEND_TOKEN_KINDS),
    Column("spend_usd", TOTAL_MONEY, "Spend: every billed attempt of every run of this day (llm_attempts)."),
    Column(
        "batch_spend_usd",
        TOTAL_MONEY,
        "The part of spend_usd billed through the Batch API (at the batch price); the rest is standard processing.",
    ),
    Column(
        "provisioned_tokens",
        "BIGINT",
        "Billed tokens served from provisioned throughput (Vertex AI): prepaid, $0 marginal, so in no spend figure.",
    ),
]

EVALUATION_SQL = f"""
WITH spend AS (
    SELECT evaluation_id, min(partition_date) AS first_day, max(partition_date) AS last_day,
           count(DISTINCT partition_date) AS days, sum(calls)::BIGINT AS calls, sum(cache_hits)::BIGINT AS cache_hits,
           sum(total_tokens)::BIGINT AS total_tokens,
           sum(total_cost_usd)::{TOTAL_MONEY} AS total_cost_usd, sum(saved_cost_usd)::{TOTAL_MONEY} AS saved_cost_usd,
           sum(spend_usd)::{TOTAL_MONEY} AS spend_usd,
           (sum(missing_price_calls) + sum(unpriced_attempts))::BIGINT AS unpriced_calls,
           sum(billing_unknown_attempts)::BIGINT AS billing_unknown_attempts
    FROM daily_cost_rollup GROUP BY evaluation_id
), turns AS (
    SELECT evaluation_id, count(*) AS turns FROM cleaned_turns GROUP BY evaluation_id
)
SELECT spend.*, coalesce(turns.turns, 0)::BIGINT AS turns
FROM spend LEFT JOIN turns USING (evaluation_id)
ORDER BY spend_usd DESC NULLS FIRST, evaluation_id
"""

EVALUATION_COLUMNS = [
    Column("evaluation_id", "VARCHAR"),
    Column("first_day", "DATE"),
    Column("last_day", "DATE"),
    Column("days", "BIGINT"),
    Column("calls", "BIGINT"),
    Column("cache_hits", "BIGINT"),
    Column("total_tokens", "BIGINT"),
    Column("total_cost_usd", TOTAL_MONEY, "Cost of the data as it stands."),
    Column("saved_cost_usd", TOTAL_MONEY),
    Column("spend_usd", TOTAL_MONEY, "Every billed attempt of every run: money out."),
    Column("unpriced_calls", "BIGINT", "Calls and attempts without a price, left out of the sums."),
    Column("billing_unknown_attempts", "BIGINT", "Attempts billed for usage never seen, left out."),
    Column("turns", "BIGINT"),
    Column("complete", "BOOLEAN", "False when a sum above leaves something out."),
    Column("cost_per_turn_usd", TOTAL_MONEY, "Spend per turn."),
    Column("budget_usd", TOTAL_MONEY, "From the cost settings; null without a budget."),
    Column("budget_used_share", "DECIMAL(18,6)", "spend_usd / budget_usd."),
]


llm_attempts = dg.AssetSpec(
    "llm_attempts",
    description="The spend ledger: one row per HTTP attempt that left the process, from every run, append-only "
    "(cost_pipeline/money/ledger.py). Appended by turns_through_gemini; never replaced by a re-run.",
    partitions_def=daily_partitions,
    group_name="costs",
    kinds={"duckdb"},
    deps=["raw_turns"],
    metadata={
        "dagster/column_schema": table_schema(LEDGER_COLUMNS),
        # No function defines it, so its code is named here: the ledger module that writes every row.
        "dagster/code_references": dg.CodeReferencesMetadataValue(
            code_references=[dg.LocalFileCodeReference(file_path=ledger.__file__, line_number=1, label="ledger.py")]
        ),
    },
)


FRESHNESS_MARGIN_HOURS = 2


@dg.asset(
    partitions_def=daily_partitions,
    deps=["llm_calls", llm_attempts],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    # Listed at the end of the metadata, not as dagster/column_schema above it: the page opens on money.
    metadata={LISTED_COLUMNS_KEY: table_schema(ROLLUP_COLUMNS)},
    tags={"domain": "costs"},
    pool=DUCKDB_POOL,
    # Yesterday's rollup lands after the daily schedule's hour; later than this margin is stale.
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron=f"0 {(SCHEDULE_HOUR + FRESHNESS_MARGIN_HOURS) % 24} * * *",
        lower_bound_delta=timedelta(hours=FRESHNESS_MARGIN_HOURS),
        timezone=SCHEDULE_TIMEZONE,
    ),
)
def daily_cost_rollup(
    context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> pd.DataFrame:
    """One row per day x evaluation x model x stage: cost of the data and spend, tokens and cost by kind, latency."""
    # Attempts of a run that died before loading its spool belong in this day's spend.
    load_spools(warehouse.database, costs.price_book(), log=context.log.warning)
    ensure_ledger(warehouse.database)
    rollup = warehouse.query(ROLLUP_SQL, {"day": context.partition_key})
    context.add_output_metadata(rollup_metadata(rollup))
    return rollup


@dg.asset(
    deps=[
        dg.AssetDep("daily_cost_rollup", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("cleaned_turns", partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    metadata={LISTED_COLUMNS_KEY: table_schema(EVALUATION_COLUMNS)},
    # Eager, except that it does not wait for every day since the partitions' start to
    # exist: totals over the days that do exist are what a person wants.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    pool=DUCKDB_POOL,
)
def evaluation_costs(
    context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> pd.DataFrame:
    """Per evaluation over all days: spend and cost of the data, spend per turn, first and last day, budget used."""
    totals = with_budgets(warehouse.query(EVALUATION_SQL), costs.budgets())
    context.add_output_metadata(evaluation_metadata(totals))
    return totals


@dg.asset(
    deps=[dg.AssetDep("daily_cost_rollup", partition_mapping=dg.AllPartitionMapping())],
    group_name="costs",
    kinds={"html"},
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
)
def cost_dashboard(
    context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> dg.MaterializeResult:
    """The cost dashboard of the last 60 days with data: one HTML page, linked from this asset's metadata.

    The link is the page served over http (`make ui` serves it; `COST_PIPELINE_DASHBOARD_URL` moves it): a
    browser will not follow a file:// link from the UI's http page.
    """
    end = dashboard.latest_day(warehouse.database)
    start = end - timedelta(days=dashboard.DEFAULT_DAYS - 1)
    path, data = dashboard.write(
        warehouse.database, dashboard.default_path(warehouse.database), start, end, costs.budgets()
    )
    shown = dashboard.figures(data)
    url = resolved(DASHBOARD_URL_ENV, DEFAULT_DASHBOARD_URL)
    return dg.MaterializeResult(
        metadata={
            "spend": shown["spend"],
            "data_cost": shown["data_cost"],
            "range": dashboard.title_range(data),
            "totals": shown["completeness"],
            "dashboard": dg.MetadataValue.url(url),
            "open": dg.MetadataValue.md(
                f"[Open the dashboard]({url}), served by `make ui` (or `cost-pipeline dashboard --serve`)"
            ),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def with_budgets(totals: pd.DataFrame, budgets: dict[str, Decimal]) -> pd.DataFrame:
    """Completeness, spend per turn, budget and the share of it used, all in exact Decimals."""
    default = budgets.get("default")
    budget = [budgets.get(evaluation, default) for evaluation in totals["evaluation_id"]]
    complete = [
        not (unpriced or unknown)
        for unpriced, unknown in zip(totals["unpriced_calls"], totals["billing_unknown_attempts"])
    ]
    per_turn = [
        (cost / turns).quantize(MONEY_PLACES) if cost is not None and turns else None
        for cost, turns in zip(totals["spend_usd"], totals["turns"])
    ]
    share = [
        (cost / limit).quantize(Decimal("0.000001")) if cost is not None and limit else None
        for cost, limit in zip(totals["spend_usd"], budget)
    ]
    return totals.assign(complete=complete, cost_per_turn_usd=per_turn, budget_usd=budget, budget_used_share=share)


def rollup_metadata(rollup: pd.DataFrame) -> dict:
    """Money first, each figure once as people read it (the table holds the exact Decimals), then the day by
    evaluation x model, then counts and rates (in percent, plottable)."""
    calls = int(rollup["calls"].sum())
    return {
        "spend": money(money_sum(rollup["spend_usd"])),
        "data_cost": money(money_sum(rollup["total_cost_usd"])),
        "saved": money(money_sum(rollup["saved_cost_usd"])),
        "totals": rollup_completeness(rollup),
        **_provisioned(rollup),
        "by_evaluation_and_model": dg.MetadataValue.md(evaluation_by_model_table(rollup)),
        "total_tokens": int(rollup["total_tokens"].sum()),
        "calls": calls,
        "billed_attempts": int(rollup["billed_attempts"].sum()),
        "rejected_attempts": int(rollup["rejected_attempts"].sum()),
        "cache_hit_pct": percent(rollup["cache_hits"].sum(), calls),
        "missing_price_calls": int(rollup["missing_price_calls"].sum()),
        "unpriced_attempts": int(rollup["unpriced_attempts"].sum()),
        "billing_unknown_attempts": int(rollup["billing_unknown_attempts"].sum()),
    }


def _provisioned(rollup: pd.DataFrame) -> dict:
    """Tokens served from provisioned throughput, said apart: prepaid capacity, so $0 in every spend figure."""
    tokens = int(rollup["provisioned_tokens"].sum()) if "provisioned_tokens" in rollup else 0
    return {"provisioned": f"served on provisioned throughput: {tokens:,} tokens ($0 marginal)"} if tokens else {}


def evaluation_by_model_table(rollup: pd.DataFrame) -> str:
    """Spend (and cost of the data) of the day by evaluation x model, biggest first, with totals."""
    grouped = rollup.groupby(["evaluation_id", "model"], as_index=False).agg(
        calls=("calls", "sum"), spend=("spend_usd", money_sum), data_cost=("total_cost_usd", money_sum)
    )
    grouped = grouped.sort_values(["spend", "evaluation_id", "model"], ascending=[False, True, True])
    total = pd.DataFrame(
        [
            {
                "evaluation_id": "**all**",
                "model": "",
                "calls": grouped["calls"].sum(),
                "spend": money_sum(grouped["spend"]),
                "data_cost": money_sum(grouped["data_cost"]),
            }
        ]
    )
    table = pd.concat([grouped, total], ignore_index=True)
    table = table.assign(spend=table["spend"].map(money), data_cost=table["data_cost"].map(money))
    return markdown_table(table.rename(columns={"evaluation_id": "evaluation", "data_cost": "cost of the data"}), 40)


def evaluation_metadata(totals: pd.DataFrame) -> dict:
    """Money first, once each and formatted; then one row per evaluation, narrow enough to read whole in the UI."""
    shares = [s for s in totals["budget_used_share"] if s is not None]
    summary = pd.DataFrame(
        {
            "evaluation": totals["evaluation_id"],
            "days": totals["days"],
            "turns": totals["turns"].map(lambda v: f"{v:,}"),
            "spend": totals["spend_usd"].map(money),
            "per turn": totals["cost_per_turn_usd"].map(lambda v: money(v, 8)),
            "budget": totals["budget_usd"].map(lambda v: money(v, 2)),
            "used": totals["budget_used_share"].map(lambda v: "" if v is None else f"{v:.1%}"),
            "complete": totals["complete"].map(lambda v: "yes" if v else "NO"),
        }
    )
    unpriced, unknown = int(totals["unpriced_calls"].sum()), int(totals["billing_unknown_attempts"].sum())
    return {
        "spend": money(money_sum(totals["spend_usd"])),
        "data_cost": money(money_sum(totals["total_cost_usd"])),
        "summary": dg.MetadataValue.md(markdown_table(summary, len(summary))),
        "totals": incomplete_note(unpriced, unknown) or "complete",
        "evaluations": len(totals),
        "all_under_budget": bool(shares) and all(share <= 1 for share in shares) and all(totals["complete"]),
        "max_budget_used_pct": float(round(100 * max(shares), 2)) if shares else 0.0,
    }
