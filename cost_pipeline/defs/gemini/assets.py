"""cleaned_turns, function_calls and llm_calls: one step per day through Gemini, committed as one batch.

The three tables are outputs of one step and the IO manager commits them in a single
transaction, so a day's turns, decisions and the calls that paid for them always come
from the same run. The day streams: its raw turns are exported once to Parquet and read
back a chunk of conversations at a time (`storage/day_turns.py`), at most
`conversations_in_flight` conversations run at once, and each finished chunk of rows is
priced and staged as Parquet (`gemini_step/staged_day.py`); the commit inserts the staged rows,
so memory holds the window, not the day. New response-cache entries are written first,
so a run that fails after paying for answers does not pay for them again; while the day
runs, answers and attempts are checkpointed every few seconds (`gemini_step/checkpoints.py`),
so a killed run's re-run pays only for the calls it had not made, and its staging is
removed by the next run, never read. Checkpoints and staging are written by the step's
writer process (`gemini_step/writer_process.py`), so the event loop keeps its GIL for the calls.
"""

import asyncio
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from cost_pipeline.defs.gemini.resource import GeminiResource
from cost_pipeline.defs.io_manager import COMMIT_TOGETHER
from cost_pipeline.defs.partitions import daily_partitions
from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.defs.table_schema import table_schema
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.batch.jobs import mark_collected
from cost_pipeline.gemini.batch.stage import BatchStage, JobsPending
from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini.client import FAILED
from cost_pipeline.gemini.settings import BATCH
from cost_pipeline.gemini.spend_limit import SpendGuard
from cost_pipeline.gemini.usage import SAVED_FIELDS, TOKEN_FIELDS
from cost_pipeline.gemini_step.batch_day import batch_day
from cost_pipeline.gemini_step.budget_turns import spending_turn, turn_scope
from cost_pipeline.gemini_step.checkpoints import Checkpoints
from cost_pipeline.gemini_step.loop_thread import run_in_own_thread, thread_schedule
from cost_pipeline.gemini_step.process_memory import peak_rss_mb
from cost_pipeline.gemini_step.processing import Progress, long_lived_objects_frozen, process_day
from cost_pipeline.gemini_step.staged_day import StagedDay
from cost_pipeline.gemini_step.tables import TABLES
from cost_pipeline.gemini_step.writer_process import WriterProcess
from cost_pipeline.money.budgets import Budget, Limits
from cost_pipeline.money.forecast import FORECAST_TAG, Calibration, CallEstimator, ForecastSettings, calibrate
from cost_pipeline.money.ledger import AttemptSpool, attempt_cost, load_spools, spent_so_far, spool_folder
from cost_pipeline.money.pricing import MISSING, PriceBook
from cost_pipeline.reports.markdown import markdown_table, money, percent, rounded
from cost_pipeline.storage.arrow_memory import use_system_allocator
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.day_turns import conversation_chunks, export_day_turns
from cost_pipeline.storage.lake import is_lake, store_exists
from cost_pipeline.storage.staging import StagedTable, StagingArea, query_staged, staging_name, staging_root

_TOKEN_COLUMNS = list(TOKEN_FIELDS)
_SAVED_COLUMNS = list(SAVED_FIELDS)
LLM_ATTEMPTS = dg.AssetKey("llm_attempts")
FILE_CHECKPOINT_S, LAKE_CHECKPOINT_S = 5.0, 1.0
"""How often a running day's paid answers and attempts reach the store when `checkpoint_every_s` is unset."""


class GeminiStageConfig(dg.Config):
    max_failure_share: float = Field(
        default=0.05, description="Fail the run, writing nothing, when more calls than this share fail."
    )
    progress_every: int = Field(default=500, description="Log progress every N turns.")
    progress_every_s: float = Field(default=30.0, gt=0, description="Log progress every this many seconds, too.")
    checkpoint_every_s: float | None = Field(
        default=None,
        description="Write paid answers and attempts to the store this often while the day runs (a killed run's "
        "spool gives its re-run the rest); unset: 5 s on a DuckDB file, 1 s on the lake, where a pod's disk, "
        "and the spool on it, dies with the pod.",
    )
    conversations_in_flight: int = Field(
        default=512, description="Conversations running at once: bounds memory; keep it well above max_concurrency."
    )
    chunk_turns: int = Field(
        default=2048, description="Turns read (and cache entries loaded) per chunk of conversations."
    )
    staged_chunk_rows: int = Field(default=4096, description="Rows priced and staged to Parquet per chunk.")


def _out(description: str, table: str) -> dg.AssetOut:
    # Not required, so that a batch-mode step whose jobs are still pending ends without writing the day (see
    # _through_gemini); committed together all the same, so a reader sees the old day or the new day, never a mix.
    return dg.AssetOut(
        description=description,
        kinds={"gemini", "duckdb"},
        is_required=False,
        metadata={
            "dagster/column_schema": table_schema(TABLES[table]),
            COMMIT_TOGETHER: "cleaned_turns,function_calls,llm_calls",
        },
    )


@dg.multi_asset(
    outs={
        "cleaned_turns": _out(
            "Every raw turn with its Gemini-cleaned text, or the error that stopped it.", "cleaned_turns"
        ),
        "function_calls": _out("Gemini's function-calling decision for each cleaned user turn.", "function_calls"),
        "llm_calls": _out(
            "One row per Gemini call: tokens by kind, latency, attempts, cache use, status.", "llm_calls"
        ),
    },
    partitions_def=daily_partitions,
    group_name="gemini",
    # raw_turns is read by the step itself, in chunks (storage/day_turns.py), never loaded whole as an input.
    deps=[dg.AssetKey("raw_turns")],
    # No `duckdb` pool slot: the step spends its time waiting on Gemini and holds the file
    # only for its short checkpoint and commit transactions, which wait out the lock, so
    # the days of a backfill call Gemini side by side.
)
def turns_through_gemini(
    context: dg.AssetExecutionContext,
    config: GeminiStageConfig,
    gemini: GeminiResource,
    costs: CostSettings,
    warehouse: DuckDBWarehouse,
):
    """Clean the day's turns and decide function calls with Gemini, accounting for every call."""
    use_system_allocator()
    try:
        labels = costs.labels()
    except ValueError as problem:
        raise dg.Failure(description=str(problem)) from None
    database, book = gemini.cache.database_file(), costs.price_book()
    load_spools(database, book, log=context.log.warning)
    area = StagingArea(staging_root(warehouse.database), staging_name(context.run.run_id, "turns_through_gemini"))
    try:
        yield from _through_gemini(_Step(context, config, gemini, book, costs.limits(), area, labels), warehouse)
    except BaseException:
        area.discard()
        raise


@dataclass(frozen=True)
class _Step:
    """What the step runs with: its context and config, the Gemini resource, prices, spend limits, staging area."""

    context: dg.AssetExecutionContext
    config: GeminiStageConfig
    gemini: GeminiResource
    book: PriceBook
    limits: Limits
    area: StagingArea
    labels: dict[str, str]
    """`costs.toml` `[labels]`: sent with every Vertex AI request besides the pipeline's own."""


def _through_gemini(step: _Step, warehouse: DuckDBWarehouse):
    context, config, area = step.context, step.config, step.area
    database = step.gemini.cache.database_file()
    turns_file = area.folder / "day_turns.parquet"
    total = export_day_turns(warehouse.database, context.partition_key, turns_file, warehouse.lock_timeout_s)
    # A day within one staged chunk is staged once, at its end, and runs for seconds: a writer process would cost its
    # start (a second of imports, waited for at the end) and save nothing.
    writer = WriterProcess.start(database, step.book, context.log.warning) if total > config.staged_chunk_rows else None
    try:
        yield from _calls_and_staging(step, turns_file, total, writer)
    finally:
        if writer is not None:
            writer.close()


def _calls_and_staging(step: _Step, turns_file: Path, total: int, writer: WriterProcess | None):
    context, config, gemini, book, limits, area = (
        step.context,
        step.config,
        step.gemini,
        step.book,
        step.limits,
        step.area,
    )
    database = gemini.cache.database_file()
    cache = ResponseCache(database, gemini.cache.enabled)
    spool = AttemptSpool(spool_folder(database), context.run.run_id)
    cache.journal = spool.answer  # each paid answer durable as it arrives, not at the next checkpoint
    day = StagedDay(area, book, config.staged_chunk_rows, writer)
    budget = None
    # Runs that spend against one shared limit (a day's, an evaluation's) take turns for their calls, so each reads a
    # ledger that holds every attempt of the runs before it (gemini_step/budget_turns.py).
    scope = turn_scope(limits, context.partition_key) if limits and gemini.processing.mode != BATCH else None
    deferred: list[str] = []  # batch jobs collected but whose checkpoint was deferred: marked after the last write
    with spending_turn(database, scope, context.run.run_id, context.log.info) as waited:
        if waited:
            context.log.info(f"waited {waited:.1f} s for the turn to spend against the shared limits")
        if scope:  # the runs before this turn are all in the ledger (a killed one's spool is loaded now)
            load_spools(database, book, log=context.log.warning)
        every_s = config.checkpoint_every_s or (LAKE_CHECKPOINT_S if is_lake(database) else FILE_CHECKPOINT_S)
        checkpoints = Checkpoints(database, cache, spool, book, context.log.warning, every_s, writer)
        parts = _DayParts(context, config, gemini, step.labels, cache, spool, checkpoints, day)
        chunks = conversation_chunks(turns_file, config.chunk_turns)
        try:
            if gemini.processing.mode == BATCH:
                if limits:
                    raise dg.Failure(
                        description="Spend limits ([limits] in costs.toml) are checked before every "
                        "attempt in standard processing; batch mode does not check them yet, "
                        "so it does not run with them: remove [limits] or use standard "
                        "processing."
                    )
                elapsed, stats = run_in_own_thread(_run_batch_day(parts, chunks, area.folder, deferred))
            else:
                with long_lived_objects_frozen():
                    spend = None
                    if limits:
                        budget, estimator = _budget(context, gemini, book, limits)
                        spend = SpendGuard(budget, estimator.high, lambda attempt: attempt_cost(attempt, book))
                    elapsed, stats = run_in_own_thread(_run_day(parts, chunks, total, spend))
        except JobsPending as pending:
            # Ends cleanly: no output, so the day keeps its rows; the jobs are recorded and the batch_jobs_sensor
            # (or any later run of the day) collects them without submitting anything again.
            turns_file.unlink()
            area.discard()
            context.log.info(
                f"{pending}; the next run of the day collects them (nothing is submitted again) and writes the day"
            )
            return
        finally:
            # Paid for, whatever happens next: attempts to the ledger first (money), then answers to the cache.
            ledger_rows, written = checkpoints.finish()
            mark_collected(database, deferred)
    turns_file.unlink()
    cleaned, functions, calls = day.close()
    if writer is not None:
        writer.close()  # its work is done: its memory goes before the commit
    memory_metadata = _memory_metadata(writer)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=LLM_ATTEMPTS,
            partition=context.partition_key,
            description=f"{ledger_rows} attempts appended by run {context.run.run_id}",
            metadata={
                "attempts_appended": ledger_rows,
                "rejected_attempts": int(stats["rejected"]),
                "endpoint": gemini.endpoint.endpoint_id(),
            },
        )
    )
    summary = _call_summary(calls)
    if summary["missing_price_models"]:
        context.log.warning(
            f"no price for model(s) {summary['missing_price_models']}: their calls carry price_status "
            "'missing' and null costs"
        )
    if stats["estimated"]:
        context.log.warning(f"{stats['estimated']} responses carried no usage metadata; their usage is estimated")
    for requested, served, calls_served in summary["rerouted"]:
        context.log.warning(
            f"{requested} was answered by {served} on {calls_served:,} calls (an alias, or a retired "
            f"model routed to its successor): they are priced at {served}'s rates"
        )
    failed = summary["failures"]
    if summary["calls"] and failed / summary["calls"] > config.max_failure_share:
        raise dg.Failure(
            description=f"{failed} of {summary['calls']} Gemini calls failed, over the limit of "
            f"{config.max_failure_share:.0%}; nothing was written for this partition (its billed attempts are in "
            "llm_attempts)",
            metadata={
                "failed_calls": failed,
                "calls": summary["calls"],
                "first_errors": dg.MetadataValue.md(_error_table(calls)),
            },
        )
    budget_metadata = {"budget": budget.exhausted or "held", "skipped_calls": int(stats["skipped"])} if budget else {}
    forecast_metadata = _forecast_metadata(context, checkpoints.spent)
    # Every figure first: an error computing one must not come after an output was handed to the IO manager.
    metadata = (
        _cleaned_metadata(cleaned),
        _function_metadata(functions),
        {
            **_call_metadata(calls, summary, stats, total, elapsed),
            "cache_entries_written": written,
            "checkpoints": checkpoints.count,
            "endpoint": gemini.endpoint.endpoint_id(),
            **budget_metadata,
            **forecast_metadata,
            **memory_metadata,
        },
    )
    yield dg.Output(cleaned, "cleaned_turns", metadata=metadata[0])
    yield dg.Output(functions, "function_calls", metadata=metadata[1])
    yield dg.Output(calls, "llm_calls", metadata=metadata[2])
    if budget is not None and budget.exhausted:
        # The day's rows are committed (skipped turns included) and every paid attempt is in the ledger: the run
        # fails so that the limit is seen; a re-run after raising it completes the skipped turns from where they are.
        raise dg.Failure(
            description=budget.failure(),
            metadata={"skipped_calls": int(stats["skipped"]), "run_spent": money(budget.run_spent)},
        )


def _memory_metadata(writer: WriterProcess | None) -> dict:
    """Peak RSS of this step's process so far and of its writer process (each its own peak, `process_memory.py`)."""
    metadata = {}
    if (step_mb := peak_rss_mb()) is not None:
        metadata["step_peak_rss_mb"] = rounded(step_mb)
    if writer is not None and writer.peak_rss_mb is not None:
        metadata["writer_peak_rss_mb"] = rounded(writer.peak_rss_mb)
    return metadata


def _forecast_metadata(context: dg.AssetExecutionContext, spent: Decimal) -> dict:
    """The day's forecast (from the run's tag, when `cost-pipeline run` or `backfill` launched it) beside what this run
    was billed, so the UI plots how far forecasts land from spend."""
    forecast = context.run.tags.get(FORECAST_TAG)
    if forecast is None:
        return {}
    forecast_usd = Decimal(forecast)
    low, _, high = context.run.tags.get(f"{FORECAST_TAG}_range", "").partition("-")
    metadata: dict[str, str | float] = {
        "forecast": money(forecast_usd),
        "forecast_range": f"{money(Decimal(low))} to {money(Decimal(high))}" if low and high else "",
    }
    if spent:
        metadata["spend_vs_forecast_pct"] = percent(spent, forecast_usd)
    return metadata


def _budget(
    context: dg.AssetExecutionContext, gemini: GeminiResource, book: PriceBook, limits: Limits
) -> tuple[Budget, CallEstimator]:
    """The run's budget: the ledger's spend so far, and each attempt's high forecast calibrated on the ledger."""
    now = datetime.now(timezone.utc)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    database = gemini.cache.database_file()
    budget = Budget(
        limits,
        spent_so_far(database, context.partition_key, month_start),
        context.partition_key,
        month_start.strftime("%Y-%m"),
    )
    settings = ForecastSettings.of(gemini.settings())
    with connect(database, read_only=True) if store_exists(database) else nullcontext() as connection:
        calibration = (
            calibrate(connection, settings, leave_out=[date.fromisoformat(context.partition_key)])
            if connection
            else Calibration()
        )
    context.log.info(
        f"spend limits {limits}; already spent on {context.partition_key}: ${budget.day_spent:.6f}; "
        f"each attempt reserves its high forecast, calibrated on {calibration.describe()}"
    )
    return budget, CallEstimator(calibration, book, tier=settings.tier)


@dataclass(frozen=True)
class _DayParts:
    """What a day's calls run with: the run's context and settings, the session's cache and spool, and where the
    checkpoints and the staged rows go."""

    context: dg.AssetExecutionContext
    config: GeminiStageConfig
    gemini: GeminiResource
    labels: dict[str, str]
    cache: ResponseCache
    spool: AttemptSpool
    checkpoints: Checkpoints
    day: StagedDay


async def _run_batch_day(parts: _DayParts, chunks, work_folder: Path, deferred: list[str]):
    """The day through batch jobs (`gemini_step/batch_day.py`); answers and attempts checkpointed as each job is
    collected."""
    context, gemini, checkpoints = parts.context, parts.gemini, parts.checkpoints
    session = gemini.session(parts.cache, parts.spool, context.run.run_id, context.partition_key)
    session.labels = parts.labels
    stage = BatchStage(
        session,
        context.log.info,
        flush=checkpoints.checkpoint,
        work_folder=work_folder,
        deferred=deferred,
        warn=context.log.warning,
    )
    periodic = asyncio.create_task(checkpoints.run_periodically())
    started = time.perf_counter()
    try:
        turns = await batch_day(chunks, session, stage, parts.day)
        context.log.info(f"{turns} turns through batch jobs in {time.perf_counter() - started:.1f} s")
    finally:
        checkpoints.stop()
        await periodic
        await session.aclose()
    return time.perf_counter() - started, defaultdict(float, session.stats)


async def _run_day(parts: _DayParts, chunks, total: int, spend: SpendGuard | None):
    """The day's calls, one conversation at a time per slot, checkpointed as they go; `spend` holds the limits."""
    context, config, checkpoints = parts.context, parts.config, parts.checkpoints
    session = parts.gemini.session(parts.cache, parts.spool, context.run.run_id, context.partition_key)
    session.spend, session.labels = spend, parts.labels
    periodic = asyncio.create_task(checkpoints.run_periodically())
    schedule = thread_schedule()  # this thread is the loop's own
    try:
        progress = Progress(
            session, context.log.info, config.progress_every, total, lambda: checkpoints.spent, config.progress_every_s
        )
        elapsed = await process_day(chunks, session, parts.day, progress, config.conversations_in_flight)
    finally:
        checkpoints.stop()
        await periodic
        await session.aclose()
    stats: defaultdict[str, float] = defaultdict(float, session.stats)
    if schedule and (now := thread_schedule()):
        stats["event_loop_cpu_s"], stats["event_loop_waited_s"] = now[0] - schedule[0], now[1] - schedule[1]
    return elapsed, stats


def _cleaned_metadata(cleaned: StagedTable) -> dict:
    ((rows, failed, mean_confidence, changed),) = query_staged(
        f"""
        SELECT count(*), count(*) FILTER (WHERE status = '{FAILED}'),
               coalesce(avg(confidence) FILTER (WHERE status != '{FAILED}'), 0),
               count(*) FILTER (WHERE status != '{FAILED}' AND cleaned_text != raw_text)
        FROM cleaned""",
        cleaned=cleaned,
    )
    return {"rows": rows, "failed": failed, "mean_confidence": rounded(mean_confidence, 3), "changed_turns": changed}


def _function_metadata(functions: StagedTable) -> dict:
    ((rows, with_call, failed),) = query_staged(
        f"SELECT count(*), count(function_name), count(*) FILTER (WHERE status = '{FAILED}') FROM functions",
        functions=functions,
    )
    counts = pd.DataFrame(
        query_staged(
            "SELECT coalesce(function_name, '(no call)') AS function, count(*) AS decisions FROM functions "
            "GROUP BY ALL ORDER BY decisions DESC, function",
            functions=functions,
        ),
        columns=["function", "decisions"],
    )
    return {
        "rows": rows,
        "with_call": with_call,
        "failed": failed,
        "by_function": dg.MetadataValue.md(markdown_table(counts)),
    }


_SUMMED = [*_TOKEN_COLUMNS, "rejected_attempts", "billing_unknown_attempts"]


def _call_summary(calls: StagedTable) -> dict:
    """The day's calls in one pass over the staged rows: counts, token sums, latency percentiles, unpriced models."""
    names = [
        "calls",
        "cache_hits",
        "failures",
        "estimated_usage_calls",
        *_SUMMED,
        "saved_tokens",
        "latency_p50_ms",
        "latency_p95_ms",
        "missing_price_models",
        "cost",
        "saved",
        "models",
    ]
    (values,) = query_staged(
        f"""
        SELECT count(*), count(*) FILTER (WHERE cache_hit), count(*) FILTER (WHERE status = '{FAILED}'),
               count(*) FILTER (WHERE usage_source = 'estimated'),
               {", ".join(f"coalesce(sum({name}), 0)::BIGINT" for name in _SUMMED)},
               coalesce(sum({" + ".join(_SAVED_COLUMNS)}), 0)::BIGINT,
               coalesce(quantile_cont(latency_ms, 0.5) FILTER (WHERE NOT cache_hit AND status = 'ok'), 0),
               coalesce(quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT cache_hit AND status = 'ok'), 0),
               coalesce(string_agg(DISTINCT model, ', ' ORDER BY model) FILTER (WHERE price_status = '{MISSING}'), ''),
               sum(total_cost_usd)::VARCHAR, coalesce(sum(saved_cost_usd), 0)::VARCHAR,
               coalesce(string_agg(DISTINCT model, ', ' ORDER BY model), '')
        FROM calls""",
        calls=calls,
    )
    summary = dict(zip(names, values))
    summary["cost"] = None if summary["cost"] is None else Decimal(summary["cost"])
    summary["saved"] = Decimal(summary["saved"])
    summary["rerouted"] = query_staged(
        "SELECT model, model_version, count(*) FROM calls WHERE model_version <> model GROUP BY ALL ORDER BY ALL",
        calls=calls,
    )
    return summary


def _call_metadata(calls: StagedTable, summary: dict, stats, turns: int, elapsed_s: float) -> dict:
    metadata = {
        "cost": money(summary["cost"]),
        "saved": money(summary["saved"]),
        "models": summary["models"],
        "calls": summary["calls"],
        "api_calls": int(stats["api_calls"]),
        "cache_hits": summary["cache_hits"],
        "retries": int(stats["retries"]),
        "failures": summary["failures"],
        "rejected_attempts": summary["rejected_attempts"],
        "billing_unknown_attempts": summary["billing_unknown_attempts"],
        "estimated_usage_calls": summary["estimated_usage_calls"],
        **{name: summary[name] for name in _TOKEN_COLUMNS},
        "saved_tokens": summary["saved_tokens"],
        "cache_hit_pct": percent(summary["cache_hits"], summary["calls"]),
        "latency_p50_ms": rounded(summary["latency_p50_ms"]),
        "latency_p95_ms": rounded(summary["latency_p95_ms"]),
        "turns_per_second": rounded(turns / elapsed_s if elapsed_s else 0.0),
        "elapsed_s": rounded(elapsed_s),
        # On a core, and runnable but waiting for one: near elapsed_s, the day was bound by its own Python, not Gemini.
        **{name: rounded(stats[name]) for name in ("event_loop_cpu_s", "event_loop_waited_s") if name in stats},
        "cache_entries_loaded": int(stats["cache_entries_loaded"]),
    }
    if metadata["failures"]:
        metadata["first_errors"] = dg.MetadataValue.md(_error_table(calls))
    if summary["rerouted"]:
        metadata["served_by_another_model"] = dg.MetadataValue.md(
            markdown_table(pd.DataFrame(summary["rerouted"], columns=["requested", "served (priced)", "calls"]))
        )
    return metadata


def _error_table(calls: StagedTable, limit: int = 10) -> str:
    rows = query_staged(
        f"SELECT turn_id, stage, error FROM calls WHERE status = '{FAILED}' ORDER BY turn_id, stage LIMIT {limit}",
        calls=calls,
    )
    return markdown_table(pd.DataFrame(rows, columns=["turn_id", "stage", "error"]), limit)
