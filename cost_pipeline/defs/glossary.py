"""What each column means, once: the asset pages' column descriptions where a schema gives none.

Tables share many columns (ids, statuses, token and cost kinds); describing them here
keeps one wording everywhere. `described` fills only the gaps, so an asset's own
description of a column always wins.
"""

import dagster as dg

GLOSSARY = {
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


def described(schema: dg.TableSchema) -> dg.TableSchema:
    """`schema` with every column that has no description given the glossary's (others untouched)."""
    return dg.TableSchema(
        columns=[
            column
            if column.description or column.name not in GLOSSARY
            else dg.TableColumn(
                column.name,
                column.type,
                description=GLOSSARY[column.name],
                constraints=column.constraints,
                tags=column.tags,
            )
            for column in schema.columns
        ],
        constraints=schema.constraints,
    )


def with_column_descriptions(spec: dg.AssetSpec) -> dg.AssetSpec:
    schema = spec.metadata.get("dagster/column_schema")
    schema = getattr(schema, "schema", schema)
    if not isinstance(schema, dg.TableSchema):
        return spec
    return spec.replace_attributes(metadata={**spec.metadata, "dagster/column_schema": described(schema)})
