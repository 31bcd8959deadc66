"""Each table's columns, declared once: name, DuckDB type and meaning, from which the DDL, the staged files'
types and the asset pages' column schemas all come.

Tables share many columns (ids, statuses, token and cost kinds); a column declared without
a description takes the shared wording in `COMMON`, so one meaning reads the same in every
table and a table says only what is particular to it.
"""

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    description: str | None = None
    """None: the shared wording in `COMMON`."""

    @property
    def meaning(self) -> str:
        return self.description if self.description is not None else COMMON.get(self.name, "")


def sql_types(columns: Iterable[Column]) -> dict[str, str]:
    """Column -> DuckDB type, as the table declares it (what staged chunks are typed by)."""
    return {column.name: column.sql_type for column in columns}


def create_table_sql(table: str, columns: Iterable[Column]) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c.name} {c.sql_type}' for c in columns)})"


COMMON = {
    "evaluation_id": "The evaluation the transcript belongs to.",
    "conversation_id": "The conversation within its evaluation.",
    "turn_id": "The turn: given in the landing file, or derived from evaluation, conversation and index.",
    "turn_index": "Position of the turn in its conversation, from 0.",
    "speaker": "User or Assistant.",
    "created_at": "When the turn was spoken, UTC.",
    "text": "The turn's text as landed.",
    "raw_text": "The turn's text as landed, before cleaning.",
    "source_file": "The landing file the line came from.",
    "line_number": "The line in its landing file, from 1.",
    "cleaning_model": "The model that cleaned the turn.",
    "confidence": "The cleaning model's own confidence in its cleaned text, 0 to 1.",
    "model": "The model as requested.",
    "endpoint": "Who answered: local-server, a base URL, or Google's API.",
    "processing": "standard (one request at a time) or batch (a Batch API job's answer): the price list it is "
    "billed on.",
    "stage": "clean (every turn) or function (the function-calling decision of a user turn).",
    "status": "ok, failed (the error says why), or skipped (error `budget`: a spend limit stopped the call).",
    "error": "Why the call or turn failed; null when it did not.",
    "cache_hit": "Answered from the response cache: billed nothing.",
    "called_at": "When the call started, UTC.",
    "latency_ms": "Wall time of the HTTP attempt, in milliseconds.",
    "calls": "Logical calls (a call's retries and rejected answers are its attempts).",
    "cache_hits": "Calls answered from the response cache.",
    "failures": "Calls that failed after every attempt.",
    "estimated_usage_calls": "Calls whose response carried no usage: their tokens are estimated.",
    "missing_price_calls": "Calls on a model without a price: their costs are null, never 0.",
    "input_tokens": "Prompt tokens, cached ones included.",
    "cached_tokens": "Prompt tokens served from Gemini's context cache (billed at the cache-read rate).",
    "output_tokens": "Candidate tokens.",
    "thinking_tokens": "Thinking tokens (billed as output).",
    "tool_prompt_tokens": "Tool-use prompt tokens (billed as input).",
    "total_tokens": "All tokens of the calls, as the API counts them.",
    "input_cost_usd": "Uncached prompt tokens, tool-use prompt included.",
    "cached_input_cost_usd": "Cached prompt tokens at the cache-read rate.",
    "output_cost_usd": "Candidates and thinking tokens.",
    "total_cost_usd": "Cost of the data: what the calls behind these rows were billed (a cache hit costs 0).",
    "saved_cost_usd": "What cache hits avoided paying: their saved tokens priced like a real call.",
    "latency_p50_ms": "Median latency of answered API calls (cache hits excluded).",
    "latency_p95_ms": "95th-percentile latency of answered API calls (cache hits excluded).",
    "mean_tokens_per_second": "Mean output speed of answered API calls.",
    "billed_attempts": "Attempts the provider billed (every 200 that carried usage).",
    "price_source": "Where the price came from: genai-prices and its version, or the override file.",
    "first_day": "The first day with data.",
    "last_day": "The last day with data.",
    "days": "Days with data.",
    "turns": "Turns cleaned over all days.",
    "invoice_tokens": "Tokens on the provider's invoice line.",
    "ledger_tokens": "Tokens the ledger holds for the same line.",
    "invoice_usd": "Dollars on the provider's invoice line.",
    "ledger_usd": "Dollars the ledger holds for the same line.",
    "within_tolerance": "Whether ledger and invoice agree within the configured tolerance.",
}
