"""cleaned_turns, function_calls and llm_calls: one step per day through Gemini, committed as one batch.

The three tables are outputs of one step and the IO manager commits them in a single
transaction, so a day's turns, decisions and the calls that paid for them always come
from the same run. New response-cache entries are written first, so a run that fails
after paying for answers does not pay for them again; while the day runs, answers and
attempts are checkpointed every few seconds (`costs/checkpoints.py`), so a killed run's
re-run pays only for the calls it had not made.
"""

import asyncio

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from cost_pipeline.costs.checkpoints import Checkpoints
from cost_pipeline.costs.ledger import AttemptSpool, load_spools, spool_folder
from cost_pipeline.llm.cache import ResponseCache
from cost_pipeline.llm.client import FAILED, GeminiResource
from cost_pipeline.llm.processing import DayResult, call_id, long_lived_objects_frozen, process_day, text_hash
from cost_pipeline.markdown import markdown_table
from cost_pipeline.llm.usage import SAVED_FIELDS, TOKEN_FIELDS
from cost_pipeline.partitions import daily_partitions
from cost_pipeline.costs.pricing import MISSING, MONEY_SQL_TYPE, ZERO, price_calls
from cost_pipeline.resources import CostSettings

_ID_COLUMNS = [
    dg.TableColumn("turn_id", "VARCHAR"),
    dg.TableColumn("evaluation_id", "VARCHAR"),
    dg.TableColumn("conversation_id", "VARCHAR"),
    dg.TableColumn("turn_index", "INTEGER"),
]
_OUTCOME_COLUMNS = [
    dg.TableColumn("processing_ms", "INTEGER", description="Wall time for this turn's call, queueing and retries included."),
    dg.TableColumn("status", "VARCHAR", description="ok, or failed with the error."),
    dg.TableColumn("error", "VARCHAR"),
    dg.TableColumn("call_id", "VARCHAR", description="The llm_calls row that produced this one."),
]
CLEANED_TURNS_SCHEMA = dg.TableSchema(columns=[
    *_ID_COLUMNS,
    dg.TableColumn("speaker", "VARCHAR"),
    dg.TableColumn("created_at", "TIMESTAMPTZ"),
    dg.TableColumn("raw_text", "VARCHAR"),
    dg.TableColumn("cleaned_text", "VARCHAR", description="Null when cleaning failed."),
    dg.TableColumn("cleaning_model", "VARCHAR"),
    dg.TableColumn("confidence", "DOUBLE"),
    dg.TableColumn("changes", "VARCHAR", description="JSON list of what cleaning changed."),
    *_OUTCOME_COLUMNS,
    dg.TableColumn("cleaning_cost_usd", MONEY_SQL_TYPE, description="What the cleaning call was billed."),
    dg.TableColumn("function_cost_usd", MONEY_SQL_TYPE, description="What the function decision was billed (0 without one)."),
    dg.TableColumn("total_cost_usd", MONEY_SQL_TYPE),
])
FUNCTION_CALLS_SCHEMA = dg.TableSchema(columns=[
    *_ID_COLUMNS,
    dg.TableColumn("function_name", "VARCHAR", description="The tool Gemini called; null for no call."),
    dg.TableColumn("arguments", "VARCHAR", description="The call's arguments as JSON."),
    dg.TableColumn("model", "VARCHAR"),
    *_OUTCOME_COLUMNS,
])
_TOKEN_COLUMNS = list(TOKEN_FIELDS)
_SAVED_COLUMNS = list(SAVED_FIELDS)
LLM_CALLS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("call_id", "VARCHAR", description="Stable per turn and stage."),
    dg.TableColumn("evaluation_id", "VARCHAR"),
    dg.TableColumn("conversation_id", "VARCHAR"),
    dg.TableColumn("turn_id", "VARCHAR"),
    dg.TableColumn("stage", "VARCHAR", description="clean or function."),
    dg.TableColumn("model", "VARCHAR", description="As requested."),
    dg.TableColumn("model_version", "VARCHAR", description="As served: the last answer's modelVersion."),
    dg.TableColumn("endpoint", "VARCHAR", description="Who answered: local-server, a base URL, or Google's API."),
    dg.TableColumn("input_tokens", "BIGINT", description="promptTokenCount, cached tokens included, over every billed attempt."),
    dg.TableColumn("output_tokens", "BIGINT", description="candidatesTokenCount."),
    dg.TableColumn("thinking_tokens", "BIGINT", description="thoughtsTokenCount."),
    dg.TableColumn("cached_tokens", "BIGINT", description="cachedContentTokenCount: the cached part of input_tokens."),
    dg.TableColumn("tool_prompt_tokens", "BIGINT", description="toolUsePromptTokenCount."),
    dg.TableColumn("total_tokens", "BIGINT"),
    *(dg.TableColumn(name, "BIGINT", description="The audio part of the kind above (priced apart by genai-prices).")
      for name in ("input_audio_tokens", "cached_audio_tokens", "output_audio_tokens")),
    *(dg.TableColumn(name, "BIGINT", description="Tokens a cache hit avoided paying for.") for name in _SAVED_COLUMNS),
    dg.TableColumn("usage_source", "VARCHAR",
                   description="reported, estimated (usage missing), cache, none (nothing billed) or unknown (a cut-off body)."),
    dg.TableColumn("latency_ms", "DOUBLE", description="The answering attempt's HTTP time."),
    dg.TableColumn("tokens_per_second", "DOUBLE", description="(output + thinking) tokens / latency."),
    dg.TableColumn("attempts", "INTEGER", description="HTTP attempts in this run; each is a row of llm_attempts."),
    dg.TableColumn("billed_attempts", "INTEGER", description="Attempts billed (accepted or rejected 200s with usage)."),
    dg.TableColumn("rejected_attempts", "INTEGER", description="Billed answers we could not use, then retried."),
    dg.TableColumn("billing_unknown_attempts", "INTEGER", description="Cut-off bodies: billed, usage never seen."),
    dg.TableColumn("cache_hit", "BOOLEAN"),
    dg.TableColumn("status", "VARCHAR"),
    dg.TableColumn("error", "VARCHAR"),
    dg.TableColumn("request_hash", "VARCHAR", description="The response-cache key."),
    dg.TableColumn("called_at", "TIMESTAMPTZ"),
    dg.TableColumn("input_cost_usd", MONEY_SQL_TYPE, description="Uncached prompt tokens, tool-use prompt included. "
                   "Costs are this run's attempts for the call; a cache hit costs 0."),
    dg.TableColumn("cached_input_cost_usd", MONEY_SQL_TYPE, description="Cached prompt tokens at the cache-read rate."),
    dg.TableColumn("output_cost_usd", MONEY_SQL_TYPE, description="Candidates and thinking tokens."),
    dg.TableColumn("total_cost_usd", MONEY_SQL_TYPE, description="Null when the model has no price."),
    dg.TableColumn("saved_cost_usd", MONEY_SQL_TYPE, description="What a cache hit avoided paying."),
    dg.TableColumn("price_source", "VARCHAR", description="genai-prices and its version, or the override file."),
    dg.TableColumn("price_status", "VARCHAR", description="ok, or missing when no price is known."),
])


LLM_ATTEMPTS = dg.AssetKey("llm_attempts")


class GeminiStageConfig(dg.Config):
    max_failure_share: float = Field(
        default=0.05, description="Fail the run, writing nothing, when more calls than this share fail."
    )
    progress_every: int = Field(default=500, description="Log progress every N turns.")
    checkpoint_every_s: float = Field(
        default=5.0, description="Write paid answers and attempts this often while the day runs, so a killed run's "
                                 "re-run pays only for the calls it had not made.")


def _out(description: str, schema: dg.TableSchema) -> dg.AssetOut:
    return dg.AssetOut(description=description, metadata={"dagster/column_schema": schema}, kinds={"gemini", "duckdb"})


@dg.multi_asset(
    outs={
        "cleaned_turns": _out("Every raw turn with its Gemini-cleaned text, or the error that stopped it.", CLEANED_TURNS_SCHEMA),
        "function_calls": _out("Gemini's function-calling decision for each cleaned user turn.", FUNCTION_CALLS_SCHEMA),
        "llm_calls": _out("One row per Gemini call: tokens by kind, latency, attempts, cache use, status.", LLM_CALLS_SCHEMA),
    },
    partitions_def=daily_partitions,
    group_name="gemini",
    # No `duckdb` pool slot: the step spends its time waiting on Gemini and holds the file
    # only for its short checkpoint and commit transactions, which wait out the lock, so
    # the days of a backfill call Gemini side by side.
)
def turns_through_gemini(context: dg.AssetExecutionContext, config: GeminiStageConfig, gemini: GeminiResource,
                         costs: CostSettings, raw_turns: pd.DataFrame):
    """Clean the day's turns and decide function calls with Gemini, accounting for every call."""
    database, book = gemini.database(), costs.price_book()
    load_spools(database, book, log=context.log.warning)
    cache = ResponseCache(database, gemini.cache_enabled)
    loaded = cache.load([text_hash(text) for text in raw_turns["text"]])
    spool = AttemptSpool(spool_folder(database), context.run.run_id)
    checkpoints = Checkpoints(database, cache, spool, book, context.log.warning, config.checkpoint_every_s)
    try:
        with long_lived_objects_frozen():
            result, stats, latencies = asyncio.run(
                _run_day(raw_turns, gemini, cache, spool, checkpoints, context, config.progress_every))
    finally:
        # Paid for, whatever happens next: attempts to the ledger first (money), then answers to the cache.
        ledger_rows, written = checkpoints.finish()
    calls = _frame(price_calls(result.calls.frame(), book), LLM_CALLS_SCHEMA, ["turn_id", "stage"])
    cleaned = _frame(_with_turn_costs(result.cleaned.frame(), calls), CLEANED_TURNS_SCHEMA, ["conversation_id", "turn_index"])
    functions = _frame(result.functions.frame(), FUNCTION_CALLS_SCHEMA, ["conversation_id", "turn_index"])
    context.log_event(dg.AssetMaterialization(
        asset_key=LLM_ATTEMPTS, partition=context.partition_key,
        description=f"{ledger_rows} attempts appended by run {context.run.run_id}",
        metadata={"attempts_appended": ledger_rows, "rejected_attempts": int(stats["rejected"]),
                  "endpoint": gemini.endpoint_id()}))
    missing = sorted(calls.loc[calls["price_status"] == MISSING, "model"].unique())
    if missing:
        context.log.warning(f"no price for model(s) {', '.join(missing)}: their calls carry price_status 'missing' and null costs")

    failed = int((calls["status"] == FAILED).sum())
    if stats["estimated"]:
        context.log.warning(f"{stats['estimated']} responses carried no usage metadata; their usage is estimated")
    if len(calls) and failed / len(calls) > config.max_failure_share:
        raise dg.Failure(
            description=f"{failed} of {len(calls)} Gemini calls failed, over the limit of {config.max_failure_share:.0%}; "
            "nothing was written for this partition (its billed attempts are in llm_attempts)",
            metadata={"failed_calls": failed, "calls": len(calls),
                      "first_errors": dg.MetadataValue.md(_error_table(calls))},
        )
    context.add_output_metadata(_cleaned_metadata(cleaned), output_name="cleaned_turns")
    context.add_output_metadata(_function_metadata(functions), output_name="function_calls")
    context.add_output_metadata(
        {**_call_metadata(calls, stats, latencies, result, cache_loaded=loaded, cache_written=written,
                        checkpoints=checkpoints.count),
         "endpoint": gemini.endpoint_id()}, output_name="llm_calls"
    )
    return cleaned, functions, calls


async def _run_day(turns: pd.DataFrame, gemini: GeminiResource, cache: ResponseCache, spool: AttemptSpool,
                   checkpoints: Checkpoints, context: dg.AssetExecutionContext, progress_every: int):
    session = gemini.session(cache, spool, context.run.run_id, context.partition_key)
    periodic = asyncio.create_task(checkpoints.run_periodically())
    try:
        result = await process_day(turns, session, context.log.info, progress_every)
    finally:
        checkpoints.stop()
        await periodic
        await session.aclose()
    return result, session.stats, session.latencies_ms


def _frame(rows: pd.DataFrame, schema: dg.TableSchema, order: list[str]) -> pd.DataFrame:
    """The schema's columns in its order (absent ones empty), sorted so re-runs write identical rows."""
    return rows.reindex(columns=[c.name for c in schema.columns]).sort_values(order, ignore_index=True)


def _with_turn_costs(cleaned: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """Each turn's cleaning and function costs, as the original system stored them per turn."""
    cost = dict(zip(calls["call_id"], calls["total_cost_usd"]))
    cleaning = [cost.get(i) for i in cleaned.get("call_id", [])]
    function = [cost.get(call_id(turn, "function"), ZERO) for turn in cleaned.get("turn_id", [])]
    total = [None if c is None or f is None else c + f for c, f in zip(cleaning, function)]
    return cleaned.assign(cleaning_cost_usd=cleaning, function_cost_usd=function, total_cost_usd=total)


def _cleaned_metadata(cleaned: pd.DataFrame) -> dict:
    ok = cleaned[cleaned["status"] != FAILED]
    return {
        "rows": len(cleaned),
        "failed": int((cleaned["status"] == FAILED).sum()),
        "mean_confidence": float(ok["confidence"].mean()) if len(ok) else 0.0,
        "changed_turns": int((ok["cleaned_text"] != ok["raw_text"]).sum()),
    }


def _function_metadata(functions: pd.DataFrame) -> dict:
    counts = functions["function_name"].fillna("(no call)").value_counts().rename_axis("function").reset_index(name="decisions")
    table = markdown_table(counts)
    return {
        "rows": len(functions),
        "with_call": int(functions["function_name"].notna().sum()),
        "failed": int((functions["status"] == FAILED).sum()),
        "by_function": dg.MetadataValue.md(table),
    }


def _call_metadata(calls: pd.DataFrame, stats, latencies: list[float], result: DayResult, cache_loaded: int,
                   cache_written: int, checkpoints: int) -> dict:
    turns = len(result.cleaned)
    metadata = {
        "calls": len(calls),
        "api_calls": int(stats["api_calls"]),
        "cache_hits": int(calls["cache_hit"].sum()),
        "retries": int(stats["retries"]),
        "failures": int((calls["status"] == FAILED).sum()),
        "rejected_attempts": int(calls["rejected_attempts"].sum()),
        "billing_unknown_attempts": int(calls["billing_unknown_attempts"].sum()),
        "estimated_usage_calls": int((calls["usage_source"] == "estimated").sum()),
        **{name: int(calls[name].sum()) for name in _TOKEN_COLUMNS},
        "saved_tokens": int(calls[_SAVED_COLUMNS].sum().sum()),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else 0.0,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else 0.0,
        "turns_per_second": turns / result.elapsed_s if result.elapsed_s else 0.0,
        "elapsed_s": result.elapsed_s,
        "cache_entries_loaded": cache_loaded,
        "cache_entries_written": cache_written,
        "checkpoints": checkpoints,
    }
    if metadata["failures"]:
        metadata["first_errors"] = dg.MetadataValue.md(_error_table(calls))
    return metadata


def _error_table(calls: pd.DataFrame, limit: int = 10) -> str:
    return markdown_table(calls.loc[calls["status"] == FAILED, ["turn_id", "stage", "error"]], limit)
