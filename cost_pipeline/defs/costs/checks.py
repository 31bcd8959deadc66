"""Asset checks: the numbers that money decisions rest on are proved, partition by partition.

Blocking checks stop a wrong number from propagating: a rollup that does not reconcile
to the cent, calls without usage, impossible costs, or a partition whose tables come
from different runs keep the downstream assets from materializing on top of them.
Daily checks are partitioned like their assets, so the UI shows a result per day and
can re-run a check for any one day. Partitioned checks are a Dagster preview feature;
we accept that knowingly and silence only its preview notice.
"""

import warnings
from typing import Any

import dagster as dg

from cost_pipeline.defs.costs.rollups import COST_KINDS, GROUP_KEYS, TOKEN_KINDS
from cost_pipeline.defs.partitions import daily_partitions
from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.reports.markdown import markdown_table, percent
from cost_pipeline.reports.report import incomplete_note

warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

BATCH_TABLES = ("cleaned_turns", "function_calls", "llm_calls")
RECONCILED = ["calls", "cache_hits", "failures", *TOKEN_KINDS, *COST_KINDS]


@dg.asset_check(
    asset="daily_cost_rollup",
    partitions_def=daily_partitions,
    blocking=True,
    description="Every rollup row equals the sum of its calls, to the last decimal place.",
)
def rollup_reconciles_with_calls(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse
) -> dg.AssetCheckResult:
    sums = ", ".join(
        f"count(*) FILTER (WHERE {cond}) AS {name}" if cond else f"sum({name}) AS {name}"
        for name, cond in [
            ("calls", "true"),
            ("cache_hits", "cache_hit"),
            ("failures", "status = 'failed'"),
            *((n, None) for n in [*TOKEN_KINDS, *COST_KINDS]),
        ]
    )
    differs = " OR ".join(f"c.{n} IS DISTINCT FROM r.{n}" for n in RECONCILED)
    keys = ", ".join(GROUP_KEYS)
    mismatched = warehouse.query(
        f"""
        WITH c AS (SELECT {keys}, {sums} FROM llm_calls WHERE partition_date = ? GROUP BY ALL),
             r AS (SELECT * FROM daily_cost_rollup WHERE partition_date = ? AND calls > 0)
        SELECT {", ".join(f"coalesce(c.{k}, r.{k}) AS {k}" for k in GROUP_KEYS)}, c.total_cost_usd AS calls_cost,
               r.total_cost_usd AS rollup_cost
        FROM c FULL OUTER JOIN r USING ({keys}) WHERE c.calls IS NULL OR r.calls IS NULL OR {differs}""",
        [context.partition_key, context.partition_key],
    )
    return dg.AssetCheckResult(
        passed=mismatched.empty,
        description=None
        if mismatched.empty
        else f"{len(mismatched)} rollup group(s) differ from the sum of their calls (e.g. "
        f"{_group(mismatched.iloc[0])}: calls ${mismatched.iloc[0]['calls_cost']} vs rollup "
        f"${mismatched.iloc[0]['rollup_cost']})",
        metadata={
            "mismatched_groups": len(mismatched),
            "mismatches": dg.MetadataValue.md(markdown_table(mismatched)) if len(mismatched) else "",
        },
    )


@dg.asset_check(
    asset="daily_cost_rollup",
    partitions_def=daily_partitions,
    blocking=True,
    description="The rollup's spend_usd equals the sum of llm_attempts.cost_usd for the day, exactly, "
    "group by group, with the same billed attempts and tokens.",
)
def spend_matches_ledger(context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse) -> dg.AssetCheckResult:
    keys = ", ".join(GROUP_KEYS)
    compared = ["billed_attempts", "spend_usd", *(f"spend_{k}" for k in TOKEN_KINDS)]
    mismatched = warehouse.query(
        f"""
        WITH l AS (SELECT {keys}, count(*) FILTER (WHERE billed) AS billed_attempts,
                          coalesce(sum(cost_usd), 0) AS spend_usd,
                          {", ".join(f"coalesce(sum({k}) FILTER (WHERE billed), 0) AS spend_{k}" for k in TOKEN_KINDS)}
                   FROM llm_attempts WHERE partition_date = $day GROUP BY ALL),
             r AS (SELECT * FROM daily_cost_rollup WHERE partition_date = $day AND attempts > 0)
        SELECT {", ".join(f"coalesce(l.{k}, r.{k}) AS {k}" for k in GROUP_KEYS)},
               l.spend_usd AS ledger_usd, r.spend_usd AS rollup_usd
        FROM l FULL OUTER JOIN r USING ({keys})
        WHERE {" OR ".join(f"l.{n} IS DISTINCT FROM r.{n}" for n in compared)}""",
        {"day": context.partition_key},
    )
    totals = warehouse.query(
        """
        SELECT (SELECT coalesce(sum(cost_usd), 0) FROM llm_attempts WHERE partition_date = $day) AS ledger_usd,
               (SELECT coalesce(sum(spend_usd), 0) FROM daily_cost_rollup WHERE partition_date = $day) AS rollup_usd
        """,
        {"day": context.partition_key},
    ).iloc[0]
    passed = mismatched.empty and totals["ledger_usd"] == totals["rollup_usd"]
    return dg.AssetCheckResult(
        passed=bool(passed),
        description=None
        if passed
        else f"spend_usd {totals['rollup_usd']} differs from the ledger's {totals['ledger_usd']} "
        f"in {len(mismatched)} group(s)",
        metadata={
            "ledger_spend": f"${totals['ledger_usd']}",  # exact: this check compares to the last digit
            "rollup_spend": f"${totals['rollup_usd']}",
            "mismatched_groups": len(mismatched),
            "mismatches": dg.MetadataValue.md(markdown_table(mismatched)) if len(mismatched) else "",
        },
    )


@dg.asset_check(
    asset="llm_calls",
    partitions_def=daily_partitions,
    blocking=True,
    description="Every answered call has usage (reported, estimated, from the cache, or unknown for an attempt "
    "cut off in transit, counted in the rollup); warns when too many are estimated.",
)
def calls_have_usage(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> dg.AssetCheckResult:
    counts = warehouse.query(
        """
        SELECT count(*) AS calls,
               count(*) FILTER (WHERE status = 'ok' AND coalesce(usage_source, '')
                                NOT IN ('reported', 'estimated', 'cache', 'unknown')) AS without_usage,
               count(*) FILTER (WHERE usage_source = 'estimated') AS estimated
        FROM llm_calls WHERE partition_date = ?""",
        [context.partition_key],
    ).iloc[0]
    calls, without, estimated = int(counts["calls"]), int(counts["without_usage"]), int(counts["estimated"])
    share = estimated / calls if calls else 0.0
    metadata = {
        "calls": calls,
        "without_usage": without,
        "estimated": estimated,
        "estimated_pct": percent(estimated, calls),
    }
    if without:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=f"{without} of {calls} answered calls carry no usage: their cost is unknown",
        )
    if share > costs.estimated_share_warn:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"{share:.1%} of calls have estimated usage (warn above {costs.estimated_share_warn:.0%})",
        )
    return dg.AssetCheckResult(passed=True, metadata=metadata)


@dg.asset_check(
    asset="llm_calls",
    partitions_def=daily_partitions,
    blocking=True,
    description="No negative costs, and no null cost on a call whose model has a price.",
)
def costs_are_valid(context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse) -> dg.AssetCheckResult:
    negative = " OR ".join(f"{kind} < 0" for kind in COST_KINDS)
    null = " OR ".join(f"{kind} IS NULL" for kind in COST_KINDS)
    bad = warehouse.query(
        f"""
        SELECT count(*) FILTER (WHERE {negative}) AS negative,
               count(*) FILTER (WHERE price_status = 'ok' AND ({null})) AS null_costs
        FROM llm_calls WHERE partition_date = ?""",
        [context.partition_key],
    ).iloc[0]
    metadata = {"negative_cost_calls": int(bad["negative"]), "null_cost_calls": int(bad["null_costs"])}
    passed = not (metadata["negative_cost_calls"] or metadata["null_cost_calls"])
    return dg.AssetCheckResult(
        passed=passed,
        metadata=metadata,
        description=None
        if passed
        else f"{metadata['negative_cost_calls']} call(s) with a negative cost and "
        f"{metadata['null_cost_calls']} priced call(s) with a null cost",
    )


@dg.asset_check(
    asset="llm_calls",
    partitions_def=daily_partitions,
    description="Every call's model has a price (warns on price_status = 'missing').",
)
def prices_are_known(context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse) -> dg.AssetCheckResult:
    missing = warehouse.query(
        """
        SELECT model, count(*) AS calls FROM llm_calls
        WHERE partition_date = ? AND price_status = 'missing' GROUP BY model ORDER BY model""",
        [context.partition_key],
    )
    calls = int(missing["calls"].sum()) if len(missing) else 0
    return dg.AssetCheckResult(
        passed=missing.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if missing.empty
        else f"{calls} call(s) of {', '.join(missing['model'])} have no price: add one under [prices] in costs.toml",
        metadata={"missing_price_calls": calls, "models": ", ".join(missing["model"])},
    )


@dg.asset_check(
    asset="llm_calls",
    partitions_def=daily_partitions,
    blocking=True,
    description="The partition's cleaned turns, function calls and calls were all written by one run.",
)
def batch_from_one_run(context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse) -> dg.AssetCheckResult:
    union = " UNION ALL ".join(
        f"SELECT '{t}' AS table_name, run_id FROM {t} WHERE partition_date = $day" for t in BATCH_TABLES
    )
    runs = warehouse.query(
        f"SELECT DISTINCT table_name, run_id FROM ({union}) ORDER BY ALL", {"day": context.partition_key}
    )
    distinct = runs["run_id"].nunique()
    return dg.AssetCheckResult(
        passed=distinct <= 1,
        description=None if distinct <= 1 else f"the day's tables come from {distinct} different runs: re-run the day",
        metadata={"distinct_runs": distinct, "runs": dg.MetadataValue.md(markdown_table(runs)) if distinct > 1 else ""},
    )


@dg.asset_check(
    asset="raw_turns",
    partitions_def=daily_partitions,
    description="Warns when more of the day's landed lines are quarantined than `quarantine_share_warn`.",
)
def quarantine_share(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> dg.AssetCheckResult:
    counts = warehouse.query(
        """
        SELECT (SELECT count(*) FROM raw_turns WHERE partition_date = $day) AS kept,
               (SELECT count(*) FROM quarantined_turns WHERE partition_date = $day) AS quarantined""",
        {"day": context.partition_key},
    ).iloc[0]
    kept, quarantined = int(counts["kept"]), int(counts["quarantined"])
    share = quarantined / (kept + quarantined) if kept + quarantined else 0.0
    reasons = warehouse.query(
        """SELECT reason_code, count(*) AS lines FROM quarantined_turns WHERE partition_date = ?
                                 GROUP BY 1 ORDER BY 2 DESC, 1""",
        [context.partition_key],
    )
    passed = share <= costs.quarantine_share_warn
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if passed
        else f"{share:.1%} of landed lines quarantined ({quarantined} of {kept + quarantined}; warn above "
        f"{costs.quarantine_share_warn * 100:g}%): "
        + ", ".join(f"{r.reason_code} {r.lines}" for r in reasons.itertuples()),
        metadata={
            "quarantined_pct": percent(quarantined, kept + quarantined),
            "quarantined_lines": quarantined,
            "landed_lines": kept + quarantined,
            "reasons": dg.MetadataValue.md(markdown_table(reasons)) if len(reasons) else "",
        },
    )


@dg.asset_check(
    asset="cleaned_turns",
    partitions_def=daily_partitions,
    description="Warns when more of the day's turns failed cleaning than `failed_turn_share_warn`.",
)
def failed_turn_share(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBWarehouse, costs: CostSettings
) -> dg.AssetCheckResult:
    counts = warehouse.query(
        """SELECT count(*) AS turns, count(*) FILTER (WHERE status <> 'ok') AS failed
                                FROM cleaned_turns WHERE partition_date = ?""",
        [context.partition_key],
    ).iloc[0]
    turns, failed = int(counts["turns"]), int(counts["failed"])
    share = failed / turns if turns else 0.0
    errors = warehouse.query(
        """SELECT error, count(*) AS turns FROM cleaned_turns WHERE partition_date = ? AND status <> 'ok'
                                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5""",
        [context.partition_key],
    )
    passed = share <= costs.failed_turn_share_warn
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if passed
        else f"{share:.1%} of turns failed cleaning ({failed} of {turns}; "
        f"warn above {costs.failed_turn_share_warn * 100:g}%); "
        f"most common: {errors.iloc[0]['error']!r}",
        metadata={
            "failed_turn_pct": percent(failed, turns),
            "failed_turns": failed,
            "turns": turns,
            "errors": dg.MetadataValue.md(markdown_table(errors)) if len(errors) else "",
        },
    )


def _group(row) -> str:
    return "/".join(str(row[key]) for key in GROUP_KEYS)


@dg.asset_check(
    asset="evaluation_costs",
    description="Each evaluation's spend within its budget: warn at the warn share, error above 100%, "
    "and never pass on a total that leaves calls out.",
)
def budgets_held(warehouse: DuckDBWarehouse, costs: CostSettings) -> dg.AssetCheckResult:
    totals = warehouse.query(
        "SELECT evaluation_id, spend_usd, budget_usd, budget_used_share, complete, unpriced_calls, "
        "billing_unknown_attempts FROM evaluation_costs"
    )
    incomplete = totals[~totals["complete"].astype(bool)]
    if len(totals) and len(incomplete):
        note = incomplete_note(
            int(incomplete["unpriced_calls"].sum()), int(incomplete["billing_unknown_attempts"].sum())
        )
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"cannot hold budgets on incomplete totals: {', '.join(incomplete['evaluation_id'])} {note}",
            metadata={"evaluations": len(totals), "incomplete": ", ".join(incomplete["evaluation_id"])},
        )
    budgeted = totals[totals["budget_used_share"].notna()]
    over = budgeted[budgeted["budget_used_share"] > 1]
    near = budgeted[(budgeted["budget_used_share"] >= costs.budget_warn_share) & (budgeted["budget_used_share"] <= 1)]
    metadata: dict[str, Any] = {
        "evaluations": len(totals),
        "over_budget": len(over),
        "near_budget": len(near),
        "max_budget_used_pct": percent(budgeted["budget_used_share"].max(), 1) if len(budgeted) else 0.0,
        "over": ", ".join(over["evaluation_id"]),
        "near": ", ".join(near["evaluation_id"]),
    }
    if len(over):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=f"over budget: {metadata['over']} (max {metadata['max_budget_used_pct']:.1f}% used)",
        )
    return dg.AssetCheckResult(
        passed=near.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=None if near.empty else f"near budget: {metadata['near']}",
    )
