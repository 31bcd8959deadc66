"""The Gemini step's three tables, declared once (`storage/columns.py`): what staging writes, the IO manager
creates, and the asset pages describe."""

from cost_pipeline.gemini.usage import MODALITY_FIELDS, SAVED_FIELDS
from cost_pipeline.money.pricing import MONEY_SQL_TYPE
from cost_pipeline.storage.columns import Column, sql_types

_ID_COLUMNS = [
    Column("turn_id", "VARCHAR"),
    Column("evaluation_id", "VARCHAR"),
    Column("conversation_id", "VARCHAR"),
    Column("turn_index", "INTEGER"),
]
_OUTCOME_COLUMNS = [
    Column("processing_ms", "INTEGER", "Wall time for this turn's call, queueing and retries included."),
    Column(
        "status",
        "VARCHAR",
        "ok, failed with the error, or skipped (error `budget`: a spend limit stopped it).",
    ),
    Column("error", "VARCHAR"),
    Column("call_id", "VARCHAR", "The llm_calls row that produced this one."),
]
CLEANED_TURNS = [
    *_ID_COLUMNS,
    Column("speaker", "VARCHAR"),
    Column("created_at", "TIMESTAMPTZ"),
    Column("raw_text", "VARCHAR"),
    Column("cleaned_text", "VARCHAR", "Null when cleaning failed."),
    Column("cleaning_model", "VARCHAR"),
    Column("confidence", "DOUBLE"),
    Column("changes", "VARCHAR", "JSON list of what cleaning changed."),
    *_OUTCOME_COLUMNS,
    Column("cleaning_cost_usd", MONEY_SQL_TYPE, "What the cleaning call was billed."),
    Column("function_cost_usd", MONEY_SQL_TYPE, "What the function decision was billed (0 without one)."),
    Column("total_cost_usd", MONEY_SQL_TYPE),
]
FUNCTION_CALLS = [
    *_ID_COLUMNS,
    Column("function_name", "VARCHAR", "The tool Gemini called; null for no call."),
    Column("arguments", "VARCHAR", "The call's arguments as JSON."),
    Column("model", "VARCHAR"),
    *_OUTCOME_COLUMNS,
]
LLM_CALLS = [
    Column("call_id", "VARCHAR", "Stable per turn and stage."),
    Column("evaluation_id", "VARCHAR"),
    Column("conversation_id", "VARCHAR"),
    Column("turn_id", "VARCHAR"),
    Column("stage", "VARCHAR"),
    Column("model", "VARCHAR"),
    Column("model_version", "VARCHAR", "As served: the last answer's modelVersion."),
    Column(
        "served_tier",
        "VARCHAR",
        "The traffic type Vertex AI served the billed attempts at (tiers joined by + when they differ, then unpriced); "
        "null for the standard tier.",
    ),
    Column("endpoint", "VARCHAR"),
    Column("input_tokens", "BIGINT", "promptTokenCount, cached tokens included, over every billed attempt."),
    Column("output_tokens", "BIGINT", "candidatesTokenCount."),
    Column("thinking_tokens", "BIGINT", "thoughtsTokenCount."),
    Column("cached_tokens", "BIGINT", "cachedContentTokenCount: the cached part of input_tokens."),
    Column("tool_prompt_tokens", "BIGINT", "toolUsePromptTokenCount."),
    Column("total_tokens", "BIGINT"),
    *(
        Column(
            name,
            "BIGINT",
            "The audio, image or video part of the kind it names (priced apart by genai-prices); text is the rest.",
        )
        for name in MODALITY_FIELDS
    ),
    *(Column(name, "BIGINT", "Tokens a cache hit avoided paying for.") for name in SAVED_FIELDS),
    Column(
        "usage_source",
        "VARCHAR",
        "reported, estimated (usage missing), cache, none (nothing billed) or unknown (a cut-off body).",
    ),
    Column("processing", "VARCHAR"),
    Column("latency_ms", "DOUBLE", "The answering attempt's HTTP time."),
    Column("tokens_per_second", "DOUBLE", "(output + thinking) tokens / latency."),
    Column("attempts", "INTEGER", "HTTP attempts in this run; each is a row of llm_attempts."),
    Column("billed_attempts", "INTEGER", "Attempts billed (accepted or rejected 200s with usage)."),
    Column("rejected_attempts", "INTEGER", "Billed answers we could not use, then retried."),
    Column("billing_unknown_attempts", "INTEGER", "Cut-off bodies: billed, usage never seen."),
    Column("cache_hit", "BOOLEAN"),
    Column("status", "VARCHAR"),
    Column("error", "VARCHAR"),
    Column("request_hash", "VARCHAR", "The response-cache key."),
    Column("called_at", "TIMESTAMPTZ"),
    Column(
        "input_cost_usd",
        MONEY_SQL_TYPE,
        "Uncached prompt tokens, tool-use prompt included. "
        "Costs are this run's attempts for the call; a cache hit costs 0.",
    ),
    Column("cached_input_cost_usd", MONEY_SQL_TYPE),
    Column("output_cost_usd", MONEY_SQL_TYPE),
    Column("total_cost_usd", MONEY_SQL_TYPE, "Null when the model has no price."),
    Column("saved_cost_usd", MONEY_SQL_TYPE, "What a cache hit avoided paying."),
    Column("price_source", "VARCHAR", "genai-prices and its version, or the override file."),
    Column("price_status", "VARCHAR", "ok, or missing when no price is known."),
]


CLEANED, FUNCTIONS, CALLS = "cleaned_turns", "function_calls", "llm_calls"
TABLES = {CLEANED: CLEANED_TURNS, FUNCTIONS: FUNCTION_CALLS, CALLS: LLM_CALLS}
COLUMN_TYPES = {name: sql_types(columns) for name, columns in TABLES.items()}
"""Each table's declared column types, in order: what staging writes (gemini_step/staged_day.py)."""
