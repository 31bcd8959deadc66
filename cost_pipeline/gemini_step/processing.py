"""A day of turns through Gemini: cleaning in conversation order, function decisions, one row per call.

Conversations arrive as a stream of chunks (a day is never one list in memory). Each
conversation is one asyncio task that cleans its turns in order, holding its earlier
cleaned turns as context; at most `window` conversations are in flight, and the
session's semaphore and rate limiters bound the calls. A user turn's function decision
starts as soon as the turn is clean and does not hold up the next turn. When a
conversation ends, its rows go to the sink together: every turn a cleaned row (`ok`, or
`failed` with the error), every user turn's decision, every call a usage row. Before a
chunk's conversations start, the response cache loads the entries for its texts. So
memory holds the window, not the day. Cancelled (a terminated run), the day cancels its
conversations and they their function decisions, and each waits for them: every attempt in
flight records how it ended before the caller closes the client. No Dagster here: the
asset wires it in.
"""

import asyncio
import gc
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal

from cost_pipeline.gemini.cache import text_hash
from cost_pipeline.gemini.call_ids import call_id
from cost_pipeline.gemini.client import OK, CallOutcome, CallTag, GeminiSession
from cost_pipeline.gemini.prompts import cleaning_request, function_request
from cost_pipeline.gemini.usage import SAVED_FIELDS

CALL_PHASE_GC_THRESHOLDS = (100_000, 50, 1_000)


Conversation = list[dict]
RowSink = Callable[[list[dict], list[dict], list[dict]], None]
"""Takes a finished conversation's (cleaned, function, call) rows."""


def file_turns(conversation: Conversation, context_turns: int) -> None:
    """Give each turn the keys its cached answers are filed under (`gemini/cache.py`): `text_hash` (its text) and
    `context_hash` (its text and the raw turns of its cleaning context window, in order)."""
    raw: list[list[str]] = []
    for turn in conversation:
        turn["text_hash"] = text_hash(turn["text"])
        raw.append([turn["speaker"], turn["text"]])
        turn["context_hash"] = hashlib.sha256(json.dumps(raw[-(context_turns + 1) :]).encode()).hexdigest()


@contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector off the objects that already exist while calls run.

    A Dagster step process holds many long-lived objects (definitions, modules, frames),
    and a day's calls allocate millions of short-lived ones: with the default thresholds
    every full collection rescans them thousands of times. Freezing what exists and
    collecting less often raised the stage from 0.77 to over 0.9 of a bare SDK loop's
    calls/s (bench/gemini_overhead.py); thresholds are restored afterwards.
    """
    # Young garbage only: a full collection walks every object of the step process (~0.4 s), and older
    # garbage that gets frozen is freed by the first full collection after the unfreeze below.
    gc.collect(1)
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(*CALL_PHASE_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def process_day(
    chunks: Iterable[list[Conversation]],
    session: GeminiSession,
    sink: RowSink,
    tracker: "Progress",
    window: int = 256,
) -> float:
    """Clean every turn and decide functions for user turns, chunk by chunk; returns the seconds it took.

    Each conversation's turns must be in order and a conversation whole within one chunk.
    """
    ticking = asyncio.create_task(tracker.periodically())
    slots = asyncio.Semaphore(window)
    running: set[asyncio.Task] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        slots.release()
        if not task.cancelled() and (error := task.exception()) is not None:
            failures.append(error)

    try:
        for chunk in chunks:
            texts, contexts = [], []
            for conversation in chunk:
                file_turns(conversation, session.settings.models.context_turns)
                for turn in conversation:
                    contexts.append(turn["context_hash"])
                    if turn["speaker"] == "User":  # only user turns get a function decision
                        texts.append(turn["text_hash"])
            # Read in a worker thread, kept in this one: the loop's calls use the cache's memory meanwhile.
            session.stats["cache_entries_loaded"] += session.cache.remember(
                await asyncio.to_thread(session.cache.read, texts, contexts)
            )
            for conversation in chunk:
                await slots.acquire()
                if failures:
                    break
                task = asyncio.create_task(_conversation(conversation, session, sink, tracker))
                running.add(task)
                task.add_done_callback(finished)
            if failures:
                break
        if running:
            await asyncio.wait(set(running))
    finally:
        ticking.cancel()
        # Cancelled (the run was terminated): no call outlives the day. Each records how its attempt in flight ended
        # before the caller closes the client; closed under it, a billed answer would be recorded as a read error.
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    if failures:
        raise failures[0]
    return tracker.elapsed()


async def _conversation(turns: Conversation, session: GeminiSession, sink: RowSink, tracker: "Progress") -> None:
    settings = session.settings.models
    context: list[tuple[str, str]] = []
    cleaned_rows: list[dict] = []
    decisions = []
    call_rows: list[dict] = []
    try:
        for turn in turns:
            raw_hash = turn["text_hash"]
            started = time.perf_counter()
            request = cleaning_request(
                settings.clean_model,
                turn["speaker"],
                turn["text"],
                settings.window(context),
                settings.thinking_budget,
            )
            tag = call_tag(turn, "clean")
            outcome = await session.call(request, raw_hash, tag, context_hash=turn["context_hash"])
            cleaned = outcome.cleaned_text
            cleaned_rows.append(cleaned_row(turn, outcome, cleaned, _ms_since(started), tag.call_id))
            call_rows.append(call_row(turn, outcome, "clean", session.endpoint_id, tag.call_id))
            context.append((turn["speaker"], cleaned or turn["text"]))
            if turn["speaker"] == "User" and cleaned:
                decisions.append(asyncio.create_task(_decide(turn, cleaned, raw_hash, session)))
            tracker.turn_done()
        decided = await asyncio.gather(*decisions)
    except BaseException:  # cancelled mid-conversation: its decisions in flight end (and are recorded) with it
        for decision in decisions:
            decision.cancel()
        await asyncio.gather(*decisions, return_exceptions=True)
        raise
    function_rows = []
    for decision_row, decision_call_row in decided:
        function_rows.append(decision_row)
        call_rows.append(decision_call_row)
    sink(cleaned_rows, function_rows, call_rows)


async def _decide(turn: dict, cleaned: str, raw_hash: str, session: GeminiSession) -> tuple[dict, dict]:
    started = time.perf_counter()
    models = session.settings.models
    request = function_request(models.function_model, cleaned, models.thinking_budget)
    tag = call_tag(turn, "function")
    outcome = await session.call(request, raw_hash, tag)
    return (
        function_row(turn, outcome, _ms_since(started), tag.call_id),
        call_row(turn, outcome, "function", session.endpoint_id, tag.call_id),
    )


def function_row(turn: dict, outcome: CallOutcome, processing_ms: int, the_call_id: str) -> dict:
    """A user turn's function decision as `function_calls` stores it."""
    answer = outcome.result or {}
    return {
        **_ids(turn),
        "function_name": answer.get("function_name"),
        "arguments": json.dumps(answer["arguments"], sort_keys=True) if answer.get("arguments") is not None else None,
        "model": outcome.model,
        "processing_ms": processing_ms,
        "status": outcome.status,
        "error": outcome.error,
        "call_id": the_call_id,
    }


def call_tag(turn: dict, stage: str) -> CallTag:
    return CallTag(call_id(turn["turn_id"], stage), turn["evaluation_id"], turn["turn_id"])


def _ids(turn: dict) -> dict:
    return {key: turn[key] for key in ("turn_id", "evaluation_id", "conversation_id", "turn_index")}


def cleaned_row(turn: dict, outcome: CallOutcome, cleaned: str | None, processing_ms: int, clean_call_id: str) -> dict:
    answer = outcome.result or {}
    return {
        **_ids(turn),
        "speaker": turn["speaker"],
        "created_at": turn["created_at"],
        "raw_text": turn["text"],
        "cleaned_text": cleaned,
        "cleaning_model": outcome.model,
        "confidence": answer.get("confidence"),
        "changes": json.dumps(answer.get("changes")) if outcome.status == OK else None,
        "processing_ms": processing_ms,
        "status": outcome.status,
        "error": outcome.error,
        "call_id": clean_call_id,
    }


def call_row(turn: dict, outcome: CallOutcome, stage: str, endpoint: str, the_call_id: str) -> dict:
    usage, saved = outcome.usage, outcome.saved if outcome.cache_hit else None
    generated = usage.output_tokens + usage.thinking_tokens
    return {
        "call_id": the_call_id,
        "evaluation_id": turn["evaluation_id"],
        "conversation_id": turn["conversation_id"],
        "turn_id": turn["turn_id"],
        "stage": stage,
        "model": outcome.model,
        "model_version": outcome.model_version,
        "served_tier": outcome.served_tier,
        "endpoint": endpoint,
        **usage.counts(),
        **(saved.as_saved() if saved else _NOTHING_SAVED),
        "usage_source": usage.source,
        "latency_ms": round(outcome.latency_ms, 3) if outcome.latency_ms is not None else None,
        "tokens_per_second": round(generated / (outcome.latency_ms / 1000), 3)
        if outcome.latency_ms and generated
        else None,
        "attempts": outcome.attempts,
        "billed_attempts": outcome.billed_attempts,
        "rejected_attempts": outcome.rejected_attempts,
        "billing_unknown_attempts": outcome.billing_unknown_attempts,
        "cache_hit": outcome.cache_hit,
        "status": outcome.status,
        "error": outcome.error,
        "request_hash": outcome.request_hash,
        "called_at": datetime.fromtimestamp(outcome.started_at, timezone.utc),
        "processing": outcome.processing,
    }


_NOTHING_SAVED = dict.fromkeys(SAVED_FIELDS, 0)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class Progress:
    """Says how the day goes, every `every` turns and every `every_s` seconds, in counts that add up.

    One line: turns done of the day with throughput and an ETA; the calls so far as the sum
    of cache hits, calls Gemini answered, calls that failed and calls in flight; the HTTP
    attempts behind them (retries included); and what the checkpointed attempts were
    billed so far (`spent`, a running figure; the ledger is the record).
    """

    def __init__(
        self,
        session: GeminiSession,
        log: Callable[[str], None],
        every: int,
        total: int,
        spent: Callable[[], Decimal] | None = None,
        every_s: float = 30.0,
    ):
        self.session, self.log, self.every, self.total = session, log, max(1, every), total
        self.spent, self.every_s = spent, every_s
        self.done = 0
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def turn_done(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            self.log(self.line())

    async def periodically(self) -> None:
        """Log a line every `every_s` seconds until cancelled: a slow day still says how it goes."""
        while True:
            await asyncio.sleep(self.every_s)
            self.log(self.line())

    def line(self) -> str:
        stats, elapsed = self.session.stats, self.elapsed()
        hits, finished, failed, skipped = (
            stats["cache_hits"],
            stats["api_finished"],
            stats["failures"],
            stats["skipped"],
        )
        in_flight = stats["calls"] - hits - finished - skipped
        rate = self.done / elapsed if elapsed else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate and self.total > self.done else ""
        spent = f"; billed so far ${self.spent():.6f} (as of the last checkpoint)" if self.spent else ""
        return (
            f"{self.done}/{self.total} turns{share} in {_duration(elapsed)}, {rate:.1f} turns/s{eta}; "
            f"{stats['calls']} calls = {hits} from the cache + {finished - failed} answered by Gemini + "
            f"{failed} failed {f'+ {skipped} skipped (budget) ' if skipped else ''}+ {in_flight} in flight, "
            f"{stats['calls'] / elapsed if elapsed else 0:.1f} calls/s; "
            f"{stats['api_calls']} HTTP attempts ({stats['retries']} retries){spent}"
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    )
