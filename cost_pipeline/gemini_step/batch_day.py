"""A day of turns through the Batch API: one cleaning stage, then one function stage, each a few jobs.

The trade-off: in standard mode a turn is cleaned with its conversation's earlier *cleaned*
turns as context, which makes every turn position wait for the one before it (a day would
be as many batch jobs, each up to 24 hours, as its longest conversation has turns). In batch
mode each turn is cleaned with the earlier *raw* turns as context, so every cleaning request
of the day is known at once and goes in one stage; then the cleaned user turns' function
decisions go in a second. Raw context carries the speaker's fillers and stutters; the turn
to clean is the same, and the instruction says the context is context only.

The rows are those of standard mode (`processing.py` builds them), so the day's tables have
one shape whatever the mode. The day's requests are held in memory (inlined requests), not a
window of it: batch days are bounded by the job size the API accepts, not by RAM.
"""

from collections.abc import Iterable

from cost_pipeline.gemini.batch.stage import BatchCall, BatchStage
from cost_pipeline.gemini.client import GeminiSession
from cost_pipeline.gemini.prompts import cleaning_request, function_request
from cost_pipeline.gemini_step.processing import (
    Conversation,
    RowSink,
    call_row,
    call_tag,
    cleaned_row,
    file_turns,
    function_row,
)


async def batch_day(
    chunks: Iterable[list[Conversation]], session: GeminiSession, stage: BatchStage, sink: RowSink
) -> int:
    """Clean every turn and decide functions for the cleaned user turns through batch jobs; returns the turns.

    Raises `JobsPending` (nothing is written) when a stage's jobs outlast the step's wait.
    """
    settings = session.settings.models
    conversations = [conversation for chunk in chunks for conversation in chunk]
    clean_calls = []
    for conversation in conversations:
        context: list[tuple[str, str]] = []
        file_turns(conversation, settings.context_turns)
        for turn in conversation:
            request = cleaning_request(
                settings.clean_model, turn["speaker"], turn["text"], settings.window(context), settings.thinking_budget
            )
            clean_calls.append(BatchCall(request, call_tag(turn, "clean"), turn["text_hash"], turn["context_hash"]))
            context.append((turn["speaker"], turn["text"]))
    session.stats["cache_entries_loaded"] += session.cache.remember(
        session.cache.read(sorted({call.text_hash for call in clean_calls}))
    )
    cleaned = await stage.run("clean", clean_calls)

    function_calls = []
    for conversation in conversations:
        for turn in conversation:
            outcome = cleaned[call_tag(turn, "clean").call_id]
            if turn["speaker"] == "User" and (text := outcome.cleaned_text) is not None:
                request = function_request(settings.function_model, text, settings.thinking_budget)
                function_calls.append(BatchCall(request, call_tag(turn, "function"), turn["text_hash"]))
    decided = await stage.run("function", function_calls)

    turns = 0
    for conversation in conversations:
        cleaned_rows, function_rows, call_rows = [], [], []
        for turn in conversation:
            turns += 1
            tag = call_tag(turn, "clean")
            outcome = cleaned[tag.call_id]
            text = outcome.cleaned_text
            cleaned_rows.append(cleaned_row(turn, outcome, text, _ms(outcome), tag.call_id))
            call_rows.append(call_row(turn, outcome, "clean", session.endpoint_id, tag.call_id))
            function_tag = call_tag(turn, "function")
            if function_tag.call_id in decided:
                decision = decided[function_tag.call_id]
                function_rows.append(function_row(turn, decision, _ms(decision), function_tag.call_id))
                call_rows.append(call_row(turn, decision, "function", session.endpoint_id, function_tag.call_id))
        sink(cleaned_rows, function_rows, call_rows)
    return turns


def _ms(outcome) -> int:
    return round(outcome.latency_ms or 0)
