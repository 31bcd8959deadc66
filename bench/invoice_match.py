"""Does our spend match the provider's bill when answers are rejected? The share of the invoice we account for.

For each share of rejected answers (every kind the server knows, mixed: off-format
JSON, MAX_TOKENS, SAFETY, blocked prompts, undeclared tools, arguments off schema,
MALFORMED_FUNCTION_CALL), one day runs through the whole daily graph against the
shipped server, which keeps its own billing record. Printed per share:
- invoice: the server's billing export, summed;
- ledger: `sum(llm_attempts.cost_usd)`; rollup: `sum(daily_cost_rollup.spend_usd)`;
- missing: the share of the invoice neither accounts for (goal 0);
- before: what accounting only the accepted answers' usage (the pipeline before the
  ledger) would have missed, computed on the same run.

    python bench/invoice_match.py [--turns 2000] [--shares 0,0.1,0.3]
"""

import argparse
import json
import os
import tempfile
import urllib.request
from datetime import date
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

import dagster as dg
import duckdb
from results import record  # noqa: E402

from cost_pipeline.definitions import all_assets, all_checks
from cost_pipeline.defs.gemini.resource import GeminiResource
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.resources import BillingExports, CostSettings, LandingResource
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.billing_export import read_export

DAY = date(2026, 11, 1)


def rejection_rates(share: float) -> dict:
    """Rates per kind so that a cleaning call and a function call each meet `share` rejections."""
    both, clean_only, function_only = (
        ("rate_max_tokens", "rate_safety", "rate_blocked_prompt"),
        ("rate_off_format",),
        ("rate_undeclared_tool", "rate_bad_arguments", "rate_malformed_function_call"),
    )
    return {**{k: share / 6 for k in both + function_only}, **{k: share / 2 for k in clean_only}}


def measure(share: float, turns: int, folder: Path) -> dict:
    with running_local_server(ServerConfig(**rejection_rates(share), seed=7)) as url:
        generate(folder / "landing", DAY, 1, turns, seed=7)
        database = str(folder / "bench.duckdb")
        resources = {
            "io_manager": DuckDBPartitionIOManager(database=database),
            "warehouse": DuckDBWarehouse(database=database),
            "landing": LandingResource(root=str(folder / "landing")),
            "costs": CostSettings(),
            "billing": BillingExports(folder=str(folder / "billing")),
            "gemini": GeminiResource(
                endpoint={"base_url": url},
                cache={"database": database},
                limits={"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000},
            ),
        }
        result = dg.materialize(
            [*all_assets, *all_checks],
            partition_key=str(DAY),
            resources=resources,
            selection=dg.AssetSelection.all()
            - dg.AssetSelection.assets("evaluation_costs", "cost_dashboard", "billing_reconciliation"),
            run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}},
        )
        assert result.success
        export = folder / "export.csv"
        with urllib.request.urlopen(f"{url}/admin/billing/export") as response:
            export.write_bytes(response.read())
    invoice = sum((line.cost_usd for line in read_export(export)), Decimal(0))
    with duckdb.connect(database, read_only=True) as connection:
        ledger, accepted, rejected, attempts = connection.execute(
            "SELECT sum(cost_usd), sum(cost_usd) FILTER (WHERE outcome = 'accepted'), count(*) FILTER (WHERE "
            "outcome = 'rejected'),"
            " count(*) FROM llm_attempts"
        ).fetchone()
        rollup = connection.execute("SELECT sum(spend_usd) FROM daily_cost_rollup").fetchone()[0]
    return {
        "share": share,
        "attempts": attempts,
        "rejected": rejected,
        "invoice_usd": str(invoice),
        "ledger_usd": str(ledger),
        "rollup_spend_usd": str(rollup),
        "missing_share": float((invoice - min(ledger, rollup)) / invoice),
        "missing_share_before": float((invoice - accepted) / invoice),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--shares", default="0,0.1,0.3")
    args = parser.parse_args(argv)
    figures = []
    for share in (float(s) for s in args.shares.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            figure = measure(share, args.turns, Path(folder))
        figures.append(figure)
        print(
            f"{share:>4.0%} rejected answers, {args.turns:,} turns: {figure['attempts']:,} attempts "
            f"({figure['rejected']:,} rejected); "
            f"invoice ${Decimal(figure['invoice_usd']):.6f}, ledger ${Decimal(figure['ledger_usd']):.6f}, "
            f"rollup spend ${Decimal(figure['rollup_spend_usd']):.6f}; missing {figure['missing_share']:.3%} "
            f"(accepted answers only, as before the ledger: {figure['missing_share_before']:.1%})"
        )
    shares = ", ".join(f"{float(s):.0%}" for s in args.shares.split(","))
    worst = max(figure["missing_share"] for figure in figures)
    record(
        "invoice_match.py",
        f"invoice match: {args.turns:,}-turn day at {shares} rejected answers",
        f"ledger = rollup spend = the server's export at every share: **{worst:.3%}** of the invoice missing",
        "0%",
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
