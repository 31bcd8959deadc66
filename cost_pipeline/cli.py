"""`cost-pipeline`: generate landing data, run and backfill days, report and chart their cost, serve the local model.

`run`, `backfill` and `demo` launch the jobs the schedule runs on the project's Dagster
instance (`DAGSTER_HOME`, else `.dagster_home/` in the working directory) through its code
location, as the UI does (`cost_pipeline/launch.py`), so every run is on the UI's Overview
timeline and in its job's history. Variables in `.env` in the working directory apply, as
they do for the `dagster` commands.
"""

import argparse
import os
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from cost_pipeline.config import (
    COSTS_ENV,
    DEFAULT_COSTS,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_LANDING,
    LANDING_ENV,
    START_ENV,
    partitions_start,
    resolved,
    store,
)
from cost_pipeline.gemini.local_endpoint import config_arguments, config_from
from cost_pipeline.ingest.landing import LANDED
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.model_server.server import serve
from cost_pipeline.reports.report import DIMENSIONS
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.lake import describe, store_exists


def main(argv: list[str] | None = None) -> int:
    _read_dotenv()
    parser = argparse.ArgumentParser(prog="cost-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write synthetic transcripts into the landing folder")
    gen.add_argument("--start", type=_day, default=_yesterday(), help="first day (YYYY-MM-DD)")
    gen.add_argument("--days", type=_positive, default=1)
    gen.add_argument("--turns-per-day", type=_positive, default=2000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--landing", default=resolved(LANDING_ENV, DEFAULT_LANDING), help="landing root folder")

    demo = commands.add_parser("demo", help="generate a day and materialize the whole graph for it")
    demo.add_argument("--day", type=_day, default=_yesterday(), help="the demo day (YYYY-MM-DD)")
    demo.add_argument("--turns", type=_positive, default=2000)
    demo.add_argument("--seed", type=int, default=7)

    run = commands.add_parser(
        "run", help="run the daily pipeline for one day on the project's instance and wait for it"
    )
    run.add_argument("--day", type=_day, default=_yesterday(), help="the day (YYYY-MM-DD; default yesterday, UTC)")
    _totals_argument(run)

    backfill = commands.add_parser(
        "backfill",
        help="backfill the daily pipeline over a range of days (a Dagster "
        "backfill; a day that never landed is written empty)",
    )
    _range_arguments(backfill)
    _totals_argument(backfill)

    forecast = commands.add_parser(
        "forecast", help="estimate what running days will cost, before any call (no API call without a key)"
    )
    _range_arguments(forecast)
    forecast.add_argument("--format", choices=["table", "json"], default="table")
    forecast.add_argument("--database", default=store())
    forecast.add_argument("--landing", default=resolved(LANDING_ENV, DEFAULT_LANDING), help="landing root folder")

    model = commands.add_parser("serve-model", help="serve the Gemini-compatible local model on loopback")
    model.add_argument("--port", type=int, default=8765)
    config_arguments(model)

    report = commands.add_parser(
        "report", help="print spend and cost of the data from daily_cost_rollup (read-only, safe while Dagster writes)"
    )
    report.add_argument("--start", type=_day, required=True)
    report.add_argument("--end", type=_day, required=True)
    report.add_argument(
        "--by",
        type=_dimensions,
        default="day",
        help=f"one of {', '.join(DIMENSIONS)}, or a comma-separated combination (e.g. day,evaluation,model)",
    )
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--chart", help="also write a PNG of daily spend by model to this path")
    report.add_argument("--database", default=store())
    report.add_argument(
        "--what-if",
        type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
        metavar="MODEL[,MODEL]",
        help="re-price the range's billed tokens on these models, beside the actual spend",
    )
    report.add_argument(
        "--processing",
        choices=["standard", "batch", "flex", "priority"],
        default=None,
        help="with --what-if (or alone: the models actually used), the processing mode or service tier to price at",
    )

    board = commands.add_parser("dashboard", help="write the cost dashboard (one self-contained HTML page) for a range")
    board.add_argument("--start", type=_day, help="first day (default: 60 days before --end)")
    board.add_argument("--end", type=_day, help="last day (default: the latest day with a rollup)")
    board.add_argument("--out", default=None, help="the HTML file (default: dashboard.html beside the DuckDB file)")
    board.add_argument("--database", default=store())
    board.add_argument(
        "--serve",
        action="store_true",
        help="then serve the page on loopback until interrupted (what the asset page links; make ui runs it)",
    )
    board.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT, help="with --serve")

    sql = commands.add_parser("sql", help="run a read-only SQL query on the store (the DuckDB file or the lake)")
    sql.add_argument("query", help="for example: SELECT * FROM raw_turns LIMIT 5")
    sql.add_argument("--database", default=store())

    args = parser.parse_args(argv)
    if args.command == "sql":
        with connect(args.database, read_only=True) as connection:
            connection.sql(args.query).show(max_width=200)
        return 0
    if args.command in ("run", "backfill"):
        days = [args.day] if args.command == "run" else _days(args.first, args.last)
        if not days:
            print(f"--to {args.last} is before --from {args.first}", file=sys.stderr)
            return 2
        return run_days(days, backfill=args.command == "backfill", totals=args.totals)
    if args.command == "dashboard":
        return run_dashboard(args)
    if args.command == "forecast":
        return run_forecast(args)
    if args.command == "report":
        return run_report(args)
    if args.command == "serve-model":
        serve(config_from(args), args.port)
        return 0
    if args.command == "generate":
        if refusal := _before_partitions(args.start):
            print(refusal, file=sys.stderr)
            return 2
        for day in generate(args.landing, args.start, args.days, args.turns_per_day, args.seed):
            print(
                f"{day.day}: {day.good_lines} turns, {day.malformed_lines} malformed lines, "
                f"{day.conversations} conversations in {day.files} files under {Path(args.landing) / str(day.day)}"
            )
        return 0
    if refusal := _before_partitions(args.day):
        print(refusal, file=sys.stderr)
        return 2
    return run_demo(args.day, args.turns, args.seed)


def run_days(days: list[date], backfill: bool, totals: bool) -> int:
    """Run `days` (one run, or a Dagster backfill) on the project's instance, then the totals; 1 if a run failed."""
    from cost_pipeline.launch import Launcher, LaunchError, project_instance

    if not backfill and (refusal := _never_landed(days[0])):
        print(refusal, file=sys.stderr)
        return 1
    forecast = _print_forecast(days)
    try:
        with (
            project_instance() as instance,
            Launcher(instance, annotate=landing_note, progress=_spent_so_far) as launcher,
        ):
            runs = launcher.launch(
                "daily_pipeline",
                [day.isoformat() for day in days],
                backfill=backfill,
                partition_tags=_forecast_tags(forecast),
            )
            if totals and any(run.succeeded for run in runs):
                runs += launcher.launch("evaluation_costs_job")
            home = instance.root_directory
    except LaunchError as error:
        print(error, file=sys.stderr)
        return 2
    failed = [run for run in runs if not run.succeeded]
    skipped = [run for run in runs if run.note]
    print(
        f"{len(runs) - len(failed)} of {len(runs)} run(s) succeeded"
        f"{f' ({len(skipped)} day(s) skipped: never landed, written empty)' if skipped else ''}; "
        f"they are in the UI that reads {home} (make ui)"
    )
    print("\nSpend against forecast (the ledger's billed attempts of each day's run):")
    print(_spend_against_forecast([run for run in runs if run.partition], forecast))
    if pending := _batch_jobs_pending(days):
        print(pending)
    return 1 if failed else 0


def _never_landed(day: date) -> str | None:
    """Why `day` cannot run yet (its landing files are missing) and what to do, or None when it has landed.

    Refused before any run is launched, so a missing day never turns the graph red; a backfill
    writes such a day empty instead, and the schedule skips it.
    """
    from cost_pipeline.dagster_private import running_sensors
    from cost_pipeline.defs.resources import LandingResource
    from cost_pipeline.launch import project_instance

    if day < date.fromisoformat(partitions_start()):  # not a partition at all: the launcher says so
        return None
    missing = LandingResource(root=resolved(LANDING_ENV, DEFAULT_LANDING)).missing(day.isoformat())
    if missing is None:
        return None
    with project_instance() as instance:
        watching = "late_landing_sensor" in running_sensors(instance)
    if watching:
        return f"{missing}. Nothing was launched: late_landing_sensor is on and runs the day when its files arrive."
    return (
        f"{missing}. Nothing was launched: drop the day's files there and run it again, or turn on "
        "late_landing_sensor (it is stopped; Automation in the UI) to run the day when they arrive."
    )


def _batch_jobs_pending(days: list[date]) -> str | None:
    """A line naming the days whose Batch API jobs outlasted their run's wait (the run succeeded, the day is not
    written yet), and what collects them."""
    from cost_pipeline.gemini.batch import jobs as batch_jobs

    asked = {day.isoformat() for day in days}
    waiting = sorted({day for _, day in batch_jobs.pending(store()) if day in asked})
    if not waiting:
        return None
    return (
        f"Batch API jobs still pending for {', '.join(waiting)}: those days are written when the jobs are "
        "collected, by batch_jobs_sensor or by running the day again (nothing is submitted twice)"
    )


def _print_forecast(days: list[date]):
    """The days' forecast, printed before anything is launched; None when it cannot be made (no API call without a
    key)."""
    from cost_pipeline.money.forecast import render_table

    try:
        forecast = _forecast(store(), resolved(LANDING_ENV, DEFAULT_LANDING), days)
    except Exception as error:  # a forecast informs a run; it never stops one (budgets are the hard stop)
        from cost_pipeline.gemini.client import known_secrets, redact

        print(
            f"Forecast unavailable ({type(error).__name__}: {redact(str(error), known_secrets())}); "
            "launching without it\n",
            file=sys.stderr,
        )
        return None
    print("Forecast, before any call:\n" + render_table(forecast) + "\n")
    return forecast


def _forecast_tags(forecast) -> dict[str, dict[str, str]]:
    """Each landed day's forecast as tags of its run (the Gemini step sets the run's spend beside it)."""
    from cost_pipeline.money.forecast import FORECAST_TAG

    if forecast is None:
        return {}
    return {
        day.day.isoformat(): {
            FORECAST_TAG: day.as_dict()["forecast_usd"],
            f"{FORECAST_TAG}_range": f"{day.as_dict()['low_usd']}-{day.as_dict()['high_usd']}",
        }
        for day in forecast.days
        if day.landed
    }


def _spent_so_far(run_ids: list[str]) -> dict[str, str]:
    """What each running day has been billed, as of its last checkpoint to the ledger (a busy file waits 2 s)."""
    from cost_pipeline.money.ledger import spend_by_run

    spent = spend_by_run(store(), run_ids, lock_timeout_s=2.0)
    return {run_id: f"{spend.attempts} attempts billed {spend.text()}" for run_id, spend in spent.items()}


def _spend_against_forecast(runs, forecast) -> str:
    """The closing table: each day's run billed (the ledger) against its forecast, and the total."""
    from cost_pipeline.money.ledger import spend_by_run
    from cost_pipeline.reports.spend_vs_forecast import DayOutcome, render

    spent = spend_by_run(store(), [run.run_id for run in runs])
    return render([DayOutcome(run.partition, run.status, spent.get(run.run_id)) for run in runs], forecast)


def landing_note(instance, run_id: str) -> str | None:
    """'skipped: ...' when the run's raw_turns says the day never landed (a backfill writes such a day empty)."""
    import dagster as dg

    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        materialization = record.event_log_entry.asset_materialization
        if materialization and materialization.asset_key == dg.AssetKey("raw_turns"):
            landing = materialization.metadata.get("landing")
            if landing is not None and landing.value != LANDED:
                return f"skipped, written empty: {landing.value}"
    return None


def run_demo(day: date, turns: int, seed: int) -> int:
    """Generate `day`, run the daily job for it through the project's instance, and say where to look."""
    from cost_pipeline.launch import Launcher, project_instance

    landing = resolved(LANDING_ENV, DEFAULT_LANDING)
    database = store()

    from cost_pipeline.reports.report import cost_report, render, table_counts

    (summary,) = generate(landing, day, 1, turns, seed)
    print(f"generated {summary.good_lines} turns and {summary.malformed_lines} malformed lines for {day} in {landing}")
    # The local server is the provider and leaves its invoice in the billing folder: today's bill is reconciled.
    billing_day = datetime.now(timezone.utc).date().isoformat()
    with project_instance() as instance, Launcher(instance) as launcher:
        (result,) = launcher.launch("daily_pipeline", [day.isoformat()])
        later = (
            [launcher.launch("evaluation_costs_job"), launcher.launch("billing_reconciliation_job", [billing_day])]
            if result.succeeded
            else []
        )
        home = instance.root_directory
    failed = [run for run in [result, *(run for runs in later for run in runs)] if not run.succeeded]
    if failed:
        print(f"run {failed[0].run_id} ({failed[0].job_name}) failed: {failed[0].reason}", file=sys.stderr)
        return 1
    print(f"\nrun {result.run_id} materialized partition {day} into {describe(database)}:")
    for table, rows in table_counts(database, day).items():
        print(f"  {table:<24} {rows:>8} rows")
    print(f"\nWhat {day} cost, by evaluation (cost-pipeline report --start {day} --end {day} --by evaluation):\n")
    print(render(cost_report(database, day, day, "evaluation"), "table"))
    print(
        "\nspend_usd: every billed attempt of every run of the day (the invoice's number); "
        "total_cost_usd: the cost of the data as it stands (a cache hit costs 0)."
    )
    print(reconciliation_summary(database, billing_day))
    from cost_pipeline.reports.dashboard import default_path

    print(f"\nThe cost dashboard (one HTML page, works offline): {default_path(database).as_uri()}")
    print(
        "\nWhere to look:\n"
        f"  UI:      make ui   (or: DAGSTER_HOME={home} .venv/bin/dagster dev) then open http://127.0.0.1:3000;"
        " the runs are on the Overview timeline\n"
        f"  SQL:     .venv/bin/cost-pipeline sql 'SELECT * FROM raw_turns LIMIT 5'   ({describe(database)})"
    )
    return 0


def _before_partitions(first: date) -> str | None:
    """Why days from `first` could never run (they precede the first daily partition), or None.

    The partitions' start is read from the environment by every process when it loads the
    definitions, and no command rewrites it: a UI started earlier keeps the same partitions
    as the CLI, so a day written here runs in both.
    """
    start = partitions_start()
    if first >= date.fromisoformat(start):
        return None
    return (
        f"{first} is before the first daily partition, {start} ({START_ENV}): nothing was written. Set "
        f"{START_ENV}={first} in .env (or the environment), then restart `make ui` so it partitions from there too."
    )


def reconciliation_summary(database: str, billing_day: str) -> str:
    """One paragraph: the ledger against the provider's invoice for `billing_day`."""
    from cost_pipeline.storage.connect import connect

    with connect(database, read_only=True) as connection:
        invoice, ledger, off = (
            connection.execute(
                "SELECT sum(invoice_usd), sum(ledger_usd), count(*) FILTER (WHERE NOT within_tolerance) "
                "FROM billing_reconciliation WHERE partition_date = ?",
                [billing_day],
            ).fetchall()[0]
            if "billing_reconciliation" in _tables(connection)
            else (None, None, 0)
        )
    if invoice is None:
        return (
            f"\nNo billing export for {billing_day} was reconciled (drop Cloud Billing CSVs into the billing folder)."
        )
    verdict = "matches, line by line" if off == 0 else f"differs on {off} line(s): see billing_reconciliation"
    return (
        f"\nThe provider's invoice for {billing_day} (the local server's billing export): ${invoice:.6f}; "
        f"the ledger: ${ledger:.6f}; {verdict}."
    )


def run_report(args: argparse.Namespace) -> int:
    from cost_pipeline.reports.report import cost_report, daily_cost_by_model, render, write_chart

    if args.end < args.start:
        print(f"--end {args.end} is before --start {args.start}", file=sys.stderr)
        return 2
    if not store_exists(args.database):
        print(f"no {describe(args.database)}: run the pipeline first (make demo)", file=sys.stderr)
        return 1
    if args.what_if is not None or args.processing is not None:
        from cost_pipeline.money import what_if

        scenarios, unknown = what_if.what_if(
            args.database,
            args.start,
            args.end,
            args.what_if or [],
            args.processing or "standard",
            _cost_settings().price_book(),
        )
        print(what_if.render(scenarios, unknown, args.start, args.end))
        return 0
    report = cost_report(args.database, args.start, args.end, args.by)
    if report.empty:
        print(f"no cost data between {args.start} and {args.end} in the {describe(args.database)}")
        return 0
    print(render(report, args.format))
    if args.chart:
        write_chart(daily_cost_by_model(args.database, args.start, args.end), args.chart)
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    """Write the dashboard for a range (default: the last 60 days with data); with --serve, then serve it."""
    from cost_pipeline.reports import dashboard

    out = Path(args.out) if args.out else dashboard.default_path(args.database)
    if store_exists(args.database):
        end = args.end or dashboard.latest_day(args.database)
        start = args.start or end - timedelta(days=dashboard.DEFAULT_DAYS - 1)
        if end < start:
            print(f"--end {end} is before --start {start}", file=sys.stderr)
            return 2
        try:
            path, data = dashboard.write(args.database, out, start, end, _cost_settings().budgets())
            print(f"dashboard of {dashboard.title_range(data)} written to {path.resolve()} (it works offline)")
        except LookupError as missing:
            if not args.serve:
                print(missing, file=sys.stderr)
                return 1
    elif not args.serve:
        print(f"no {describe(args.database)}: run the pipeline first (make demo)", file=sys.stderr)
        return 1
    if args.serve:
        from cost_pipeline.reports.dashboard_server import serve as serve_page

        server = serve_page(out, port=args.port)
        print(f"serving the dashboard at {server.url} (the cost_dashboard asset rewrites it; Ctrl-C stops)", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            server.close()
    return 0


def _tables(connection) -> set[str]:
    return {name for (name,) in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def _read_dotenv(path: Path = Path(".env")) -> None:
    """Apply `.env` in the working directory as the `dagster` commands do; the real environment wins."""
    if path.is_file():
        from dotenv import dotenv_values

        for name, value in dotenv_values(path).items():
            if value is not None and name not in os.environ:
                os.environ[name] = value


def run_forecast(args: argparse.Namespace) -> int:
    """Print the forecast of a range of days as a table or JSON; 2 on a bad range."""
    import json

    from cost_pipeline.money.forecast import render_table

    days = _days(args.first, args.last)
    if not days:
        print(f"--to {args.last} is before --from {args.first}", file=sys.stderr)
        return 2
    forecast = _forecast(args.database, args.landing, days)
    print(json.dumps(forecast.as_dict(), indent=2) if args.format == "json" else render_table(forecast))
    return 0


def _cost_settings():
    """The `costs` resource as runs get it: COST_PIPELINE_COSTS, else ./costs.toml when there is one."""
    from cost_pipeline.defs.resources import CostSettings

    costs_file = resolved(COSTS_ENV, DEFAULT_COSTS)
    return CostSettings(config_file=costs_file if Path(costs_file).is_file() else None)


def _forecast(database: str, landing: str, days: list[date]):
    """The days' forecast with the endpoint and models a run would use now; tokens counted by the API with a key."""
    from cost_pipeline.gemini.settings import settings_from_environment
    from cost_pipeline.money.forecast import ForecastSettings, forecast_days

    gemini = settings_from_environment()
    return forecast_days(
        database,
        landing,
        days,
        ForecastSettings.of(gemini),
        _cost_settings().price_book(),
        count=_token_counter(gemini) if gemini.endpoint.resolved_api_key() else None,
    )


def _token_counter(gemini):
    """countTokens through the real client, with a key set (free: it generates nothing and is not billed)."""
    client = gemini.genai_client()
    return lambda model, text: client.models.count_tokens(model=model, contents=text).total_tokens


def _range_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="first", type=_day, required=True, help="first day (YYYY-MM-DD)")
    parser.add_argument("--to", dest="last", type=_day, required=True, help="last day, included")


def _totals_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--totals",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then refresh the all-time totals (evaluation_costs), as the automation sensor would",
    )


def _yesterday() -> date:
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def _dimensions(value: str) -> str:
    from cost_pipeline.reports.report import dimensions

    try:
        return ",".join(dimensions(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


if __name__ == "__main__":
    sys.exit(main())
