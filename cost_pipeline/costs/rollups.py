"""daily_cost_rollup and evaluation_costs: what each evaluation and model cost, day by day and in total.

Both aggregate in DuckDB SQL over the stored calls, where DECIMAL sums are exact and a
million calls take well under a second, and return small frames whose money is
`Decimal`. `evaluation_costs` replaces the original system's admin cost endpoint.
"""

from decimal import Decimal

import dagster as dg
import pandas as pd

from cost_pipeline.markdown import markdown_table
from cost_pipeline.partitions import DUCKDB_POOL, daily_partitions
from cost_pipeline.costs.pricing import MONEY_PLACES
from cost_pipeline.resources import CostSettings
from cost_pipeline.storage.warehouse import DuckDBWarehouse

TOTAL_MONEY = "DECIMAL(38,12)"
TOKEN_KINDS = ["input_tokens", "cached_tokens", "output_tokens", "thinking_tokens", "tool_prompt_tokens", "total_tokens"]
COST_KINDS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "total_cost_usd", "saved_cost_usd"]
GROUP_KEYS = ["evaluation_id", "model", "stage"]

ROLLUP_SQL = f"""
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
FROM llm_calls
WHERE partition_date = ?
GROUP BY ALL
ORDER BY ALL
"""

ROLLUP_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("evaluation_id", "VARCHAR"),
    dg.TableColumn("model", "VARCHAR"),
    dg.TableColumn("stage", "VARCHAR"),
    *(dg.TableColumn(name, "BIGINT") for name in
      ["calls", "cache_hits", "failures", "estimated_usage_calls", "missing_price_calls", *TOKEN_KINDS]),
    *(dg.TableColumn(name, TOTAL_MONEY) for name in COST_KINDS),
    dg.TableColumn("latency_p50_ms", "DOUBLE", description="Over answered API calls (cache hits excluded)."),
    dg.TableColumn("latency_p95_ms", "DOUBLE"),
    dg.TableColumn("mean_tokens_per_second", "DOUBLE"),
])

EVALUATION_SQL = f"""
WITH spend AS (
    SELECT evaluation_id, min(partition_date) AS first_day, max(partition_date) AS last_day,
           count(DISTINCT partition_date) AS days, sum(calls)::BIGINT AS calls, sum(cache_hits)::BIGINT AS cache_hits,
           sum(total_tokens)::BIGINT AS total_tokens,
           sum(total_cost_usd)::{TOTAL_MONEY} AS total_cost_usd, sum(saved_cost_usd)::{TOTAL_MONEY} AS saved_cost_usd
    FROM daily_cost_rollup GROUP BY evaluation_id
), turns AS (
    SELECT evaluation_id, count(*) AS turns FROM cleaned_turns GROUP BY evaluation_id
)
SELECT spend.*, coalesce(turns.turns, 0)::BIGINT AS turns
FROM spend LEFT JOIN turns USING (evaluation_id)
ORDER BY total_cost_usd DESC NULLS FIRST, evaluation_id
"""

EVALUATION_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("evaluation_id", "VARCHAR"),
    dg.TableColumn("first_day", "DATE"),
    dg.TableColumn("last_day", "DATE"),
    dg.TableColumn("days", "BIGINT"),
    dg.TableColumn("calls", "BIGINT"),
    dg.TableColumn("cache_hits", "BIGINT"),
    dg.TableColumn("total_tokens", "BIGINT"),
    dg.TableColumn("total_cost_usd", TOTAL_MONEY),
    dg.TableColumn("saved_cost_usd", TOTAL_MONEY),
    dg.TableColumn("turns", "BIGINT"),
    dg.TableColumn("cost_per_turn_usd", TOTAL_MONEY),
    dg.TableColumn("budget_usd", TOTAL_MONEY, description="From the cost settings; null without a budget."),
    dg.TableColumn("budget_used_share", "DECIMAL(18,6)", description="total_cost_usd / budget_usd."),
])


@dg.asset(
    partitions_def=daily_partitions,
    deps=["llm_calls"],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    metadata={"dagster/column_schema": ROLLUP_SCHEMA},
    pool=DUCKDB_POOL,
)
def daily_cost_rollup(context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse) -> pd.DataFrame:
    """One row per day x evaluation x model x stage: calls, tokens and cost by kind, savings, latency."""
    rollup = warehouse.query(ROLLUP_SQL, [context.partition_key])
    context.add_output_metadata(rollup_metadata(rollup))
    return rollup


@dg.asset(
    deps=[dg.AssetDep("daily_cost_rollup", partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep("cleaned_turns", partition_mapping=dg.AllPartitionMapping())],
    group_name="costs",
    kinds={"duckdb", "pandas"},
    metadata={"dagster/column_schema": EVALUATION_SCHEMA},
    # Eager, except that it does not wait for every day since the partitions' start to
    # exist: totals over the days that do exist are what a person wants.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    pool=DUCKDB_POOL,
)
def evaluation_costs(context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings) -> pd.DataFrame:
    """Per evaluation over all days: total cost, cost per turn, first and last day, budget used."""
    totals = with_budgets(warehouse.query(EVALUATION_SQL), costs.budgets())
    context.add_output_metadata(evaluation_metadata(totals))
    return totals


def with_budgets(totals: pd.DataFrame, budgets: dict[str, Decimal]) -> pd.DataFrame:
    """Cost per turn, budget and the share of it used, all in exact Decimals."""
    default = budgets.get("default")
    budget = [budgets.get(evaluation, default) for evaluation in totals["evaluation_id"]]
    per_turn = [(cost / turns).quantize(MONEY_PLACES) if cost is not None and turns else None
                for cost, turns in zip(totals["total_cost_usd"], totals["turns"])]
    share = [(cost / limit).quantize(Decimal("0.000001")) if cost is not None and limit else None
             for cost, limit in zip(totals["total_cost_usd"], budget)]
    return totals.assign(cost_per_turn_usd=per_turn, budget_usd=budget, budget_used_share=share)


def rollup_metadata(rollup: pd.DataFrame) -> dict:
    calls = int(rollup["calls"].sum())
    by_evaluation = rollup.groupby("evaluation_id")["total_cost_usd"].agg(lambda costs: sum(c for c in costs if c is not None))
    top = by_evaluation.sort_values(ascending=False).map(lambda cost: f"{cost:.6f}").rename_axis("evaluation")
    return {
        "total_cost_usd": float(_sum(rollup["total_cost_usd"])),
        "saved_cost_usd": float(_sum(rollup["saved_cost_usd"])),
        "total_tokens": int(rollup["total_tokens"].sum()),
        "calls": calls,
        "cache_hit_rate": float(rollup["cache_hits"].sum() / calls) if calls else 0.0,
        "missing_price_calls": int(rollup["missing_price_calls"].sum()),
        "top_evaluations": dg.MetadataValue.md(markdown_table(top.reset_index(name="cost_usd"), 10)),
    }


def evaluation_metadata(totals: pd.DataFrame) -> dict:
    costs = [c for c in totals["total_cost_usd"] if c is not None]
    shares = [s for s in totals["budget_used_share"] if s is not None]
    summary = pd.DataFrame({
        "evaluation": totals["evaluation_id"], "days": totals["days"], "turns": totals["turns"],
        "cost_usd": totals["total_cost_usd"].map(_fmt), "per_turn_usd": totals["cost_per_turn_usd"].map(lambda v: _fmt(v, 8)),
        "budget_usd": totals["budget_usd"].map(lambda v: _fmt(v, 2)),
        "used": totals["budget_used_share"].map(lambda v: "" if v is None else f"{v:.1%}"),
    })
    return {
        "evaluations": len(totals),
        "total_cost_usd": float(sum(costs)) if costs else 0.0,
        "average_cost_usd": float(sum(costs) / len(costs)) if costs else 0.0,
        "min_cost_usd": float(min(costs)) if costs else 0.0,
        "max_cost_usd": float(max(costs)) if costs else 0.0,
        "all_under_budget": bool(shares) and all(share <= 1 for share in shares),
        "summary": dg.MetadataValue.md(markdown_table(summary, len(summary))),
    }


def _sum(values) -> Decimal:
    return sum((v for v in values if v is not None), Decimal(0))


def _fmt(value, places: int = 6) -> str:
    return "" if value is None else f"{value:.{places}f}"
