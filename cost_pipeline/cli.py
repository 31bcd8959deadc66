"""`cost-pipeline`: generate landing data, serve the local model, run a demo day end to end.

The demo runs the same job the schedule runs, on a persistent Dagster instance
(`DAGSTER_HOME`, default `.dagster_home/`), so the run and its metadata are there when
the UI opens afterwards.
"""

import argparse
import os
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from cost_pipeline.config import COSTS_ENV, DB_ENV, DEFAULT_COSTS, DEFAULT_DB, DEFAULT_LANDING, LANDING_ENV, START_ENV, resolved
from cost_pipeline.llm.local_server import config_arguments, config_from, serve
from cost_pipeline.costs.report import DIMENSIONS
from cost_pipeline.synthetic import generate

DEFAULT_DAGSTER_HOME = ".dagster_home"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cost-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write synthetic transcripts into the landing folder")
    gen.add_argument("--start", type=date.fromisoformat, default=_yesterday(), help="first day (YYYY-MM-DD)")
    gen.add_argument("--days", type=_positive, default=1)
    gen.add_argument("--turns-per-day", type=_positive, default=2000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--landing", default=resolved(LANDING_ENV, DEFAULT_LANDING), help="landing root folder")

    demo = commands.add_parser("demo", help="generate a day and materialize the whole graph for it")
    demo.add_argument("--day", type=date.fromisoformat, default=_yesterday(), help="the demo day (YYYY-MM-DD)")
    demo.add_argument("--turns", type=_positive, default=2000)
    demo.add_argument("--seed", type=int, default=7)

    model = commands.add_parser("serve-model", help="serve the Gemini-compatible local model on loopback")
    model.add_argument("--port", type=int, default=8765)
    config_arguments(model)

    report = commands.add_parser("report", help="print spend and cost of the data from daily_cost_rollup "
                                                "(read-only, safe while Dagster writes)")
    report.add_argument("--start", type=date.fromisoformat, required=True)
    report.add_argument("--end", type=date.fromisoformat, required=True)
    report.add_argument("--by", type=_dimensions, default="day",
                        help=f"one of {', '.join(DIMENSIONS)}, or a comma-separated combination (e.g. day,evaluation,model)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--chart", help="also write a PNG of daily spend by model to this path")
    report.add_argument("--database", default=resolved(DB_ENV, DEFAULT_DB))

    board = commands.add_parser("dashboard", help="write the cost dashboard (one self-contained HTML page) for a range")
    board.add_argument("--start", type=date.fromisoformat, help="first day (default: 60 days before --end)")
    board.add_argument("--end", type=date.fromisoformat, help="last day (default: the latest day with a rollup)")
    board.add_argument("--out", default=None, help="the HTML file (default: dashboard.html beside the DuckDB file)")
    board.add_argument("--database", default=resolved(DB_ENV, DEFAULT_DB))

    args = parser.parse_args(argv)
    if args.command == "dashboard":
        return run_dashboard(args)
    if args.command == "report":
        return run_report(args)
    if args.command == "serve-model":
        serve(config_from(args), args.port)
        return 0
    if args.command == "generate":
        for day in generate(args.landing, args.start, args.days, args.turns_per_day, args.seed):
            print(f"{day.day}: {day.good_lines} turns, {day.malformed_lines} malformed lines, "
                  f"{day.conversations} conversations in {day.files} files under {Path(args.landing) / str(day.day)}")
        return 0
    return run_demo(args.day, args.turns, args.seed)


def run_demo(day: date, turns: int, seed: int) -> int:
    """Generate `day`, run the daily job for it, and say where to look."""
    landing = resolved(LANDING_ENV, DEFAULT_LANDING)
    database = resolved(DB_ENV, DEFAULT_DB)
    os.environ.setdefault("DAGSTER_HOME", str(Path(DEFAULT_DAGSTER_HOME).resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    start_note = _start_partitions_at(day)

    import dagster as dg  # Dagster's import is slow; `generate` does not need it.

    from cost_pipeline.definitions import defs
    from cost_pipeline.costs.report import cost_report, render, table_counts

    (summary,) = generate(landing, day, 1, turns, seed)
    print(f"generated {summary.good_lines} turns and {summary.malformed_lines} malformed lines for {day} in {landing}")
    quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            partition_key=day.isoformat(), instance=instance, raise_on_error=False, run_config=quiet)
        if result.success:
            totals = defs.resolve_job_def("evaluation_costs_job").execute_in_process(
                instance=instance, raise_on_error=False, run_config=quiet)
        # The local server was the provider and left its invoice in the billing folder: reconcile today's bill.
        billing_day = datetime.now(timezone.utc).date().isoformat()
        reconciled = defs.resolve_job_def("billing_reconciliation_job").execute_in_process(
            partition_key=billing_day, instance=instance, raise_on_error=False, run_config=quiet) if result.success else None
    if not result.success or not totals.success:
        print(f"run {(totals if result.success else result).run_id} failed; see the logs above", file=sys.stderr)
        return 1
    print(f"\nrun {result.run_id} materialized partition {day} into {Path(database).resolve()}:")
    for table, rows in table_counts(database, day).items():
        print(f"  {table:<24} {rows:>8} rows")
    print(f"\nWhat {day} cost, by evaluation (cost-pipeline report --start {day} --end {day} --by evaluation):\n")
    print(render(cost_report(database, day, day, "evaluation"), "table"))
    print("\nspend_usd: every billed attempt of every run of the day (the invoice's number); "
          "total_cost_usd: the cost of the data as it stands (a cache hit costs 0).")
    print(reconciliation_summary(database, billing_day, reconciled))
    from cost_pipeline.costs.dashboard import default_path

    print(f"\nThe cost dashboard (one HTML page, works offline): {default_path(database).as_uri()}")
    if start_note:
        print(start_note)
    print(
        "\nWhere to look:\n"
        f"  UI:      DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev   (or: make ui)"
        " then open http://127.0.0.1:3000\n"
        f"  DuckDB:  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{database}', read_only=True)"
        ".sql('SELECT * FROM raw_turns LIMIT 5'))\""
    )
    return 0


def _start_partitions_at(day: date, dotenv: Path = Path(".env")) -> str | None:
    """Begin the partitions at the demo day, here and in `.env` (which `dagster dev` reads), unless already set.

    Without it the asset pages count every day since the default start as missing; with
    it a new user sees the demo day as a full graph. Returns a sentence saying so.
    """
    if os.environ.get(START_ENV):
        return None
    os.environ[START_ENV] = day.isoformat()
    lines = dotenv.read_text().splitlines() if dotenv.exists() else []
    if any(line.strip().startswith(f"{START_ENV}=") for line in lines):
        return None
    dotenv.write_text("\n".join([*lines, f"{START_ENV}={day.isoformat()}"]) + "\n")
    return (f"\nPartitions now start at {day}: {START_ENV}={day} was added to {dotenv.resolve()}, which `dagster dev` "
            "reads (set it to the first day of your own data).")


def reconciliation_summary(database: str, billing_day: str, result) -> str:
    """One paragraph: the ledger against the provider's invoice for `billing_day`."""
    from cost_pipeline.storage.connect import connect

    if result is None or not result.success or not result.asset_materializations_for_node("billing_reconciliation"):
        return f"\nNo billing export for {billing_day} was reconciled (drop Cloud Billing CSVs into the billing folder)."
    with connect(database, read_only=True) as connection:
        invoice, ledger, off = connection.execute(
            "SELECT sum(invoice_usd), sum(ledger_usd), count(*) FILTER (WHERE NOT within_tolerance) "
            "FROM billing_reconciliation WHERE partition_date = ?", [billing_day]).fetchall()[0]
    verdict = "matches, line by line" if off == 0 else f"differs on {off} line(s): see billing_reconciliation"
    return (f"\nThe provider's invoice for {billing_day} (the local server's billing export): ${invoice:.6f}; "
            f"the ledger: ${ledger:.6f}; {verdict}.")


def run_report(args: argparse.Namespace) -> int:
    from cost_pipeline.costs.report import cost_report, daily_cost_by_model, render, write_chart

    if args.end < args.start:
        print(f"--end {args.end} is before --start {args.start}", file=sys.stderr)
        return 2
    if not Path(args.database).exists():
        print(f"no DuckDB file at {args.database}: run the pipeline first (make demo)", file=sys.stderr)
        return 1
    report = cost_report(args.database, args.start, args.end, args.by)
    if report.empty:
        print(f"no cost data between {args.start} and {args.end} in {args.database}")
        return 0
    print(render(report, args.format))
    if args.chart:
        write_chart(daily_cost_by_model(args.database, args.start, args.end), args.chart)
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from cost_pipeline.costs import dashboard
    from cost_pipeline.resources import CostSettings

    if not Path(args.database).exists():
        print(f"no DuckDB file at {args.database}: run the pipeline first (make demo)", file=sys.stderr)
        return 1
    end = args.end or dashboard.latest_day(args.database)
    start = args.start or end - timedelta(days=dashboard.DEFAULT_DAYS - 1)
    if end < start:
        print(f"--end {end} is before --start {start}", file=sys.stderr)
        return 2
    costs_file = resolved(COSTS_ENV, DEFAULT_COSTS)
    budgets = CostSettings(config_file=costs_file if Path(costs_file).is_file() else None).budgets()
    out = Path(args.out) if args.out else dashboard.default_path(args.database)
    try:
        path, _ = dashboard.write(args.database, out, start, end, budgets)
    except LookupError as missing:
        print(missing, file=sys.stderr)
        return 1
    print(f"dashboard for {start} to {end} written to {path.resolve()} (open it in a browser; it works offline)")
    return 0


def _yesterday() -> date:
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def _dimensions(value: str) -> str:
    from cost_pipeline.costs.report import dimensions

    try:
        return ",".join(dimensions(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


if __name__ == "__main__":
    sys.exit(main())
