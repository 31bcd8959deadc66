"""The response cache: an identical request is never paid for twice, across runs.

Entries live in the DuckDB table `llm_response_cache`, by request hash (model, system
instruction, tools, contents, generation config). It is appended to, never updated: a
checkpoint writes its new entries without reading the table (no PRIMARY KEY, whose index
would load whole at every write), so the rare request answered twice (two runs of a day
at once) has two rows, either of which answers it. A run loads only
the entries its next turns can use (chunk by chunk), serves hits from memory, keeps at
most `max_entries` of them (the oldest go first), and writes
its new entries in short transactions while it runs (the Gemini step checkpoints every
few seconds) and once more when its calls are done, before its outputs are committed:
a paid answer is remembered even if the run later fails or is killed, except those of
the last few seconds before a kill.

What a chunk loads. A function decision's request depends on its turn's text alone, so it
is filed under the text (`text_hash`). A cleaning request also carries the conversation's
earlier turns, so it is filed under the text *and* the raw turns of its context window
(`context_hash`): a text that recurs all day ("Happy to help! Anything else?", one turn in
ten of the demo data) has a cleaning answer per conversation, and loading them by text alone
made each chunk load every one written so far, so a chunk's load grew with the day (and with
the table's history). Cleaning answers written before `context_hash` existed are not loaded
by chunks; a re-run pays for those cleanings once more and files them by context.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cost_pipeline.gemini.stages import CLEAN
from cost_pipeline.gemini.usage import CACHE, TOTAL_FIELDS, Usage
from cost_pipeline.storage.connect import STEP_MEMORY, connect
from cost_pipeline.storage.lake import store_exists
from cost_pipeline.storage.tables import drop_primary_key, table_exists

TABLE = "llm_response_cache"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    request_hash VARCHAR NOT NULL,
    text_hash VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    result_json VARCHAR NOT NULL,
    input_tokens BIGINT, output_tokens BIGINT, thinking_tokens BIGINT, cached_tokens BIGINT,
    tool_prompt_tokens BIGINT, total_tokens BIGINT, usage_source VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    context_hash VARCHAR
)
"""
USAGE_FIELDS = TOTAL_FIELDS


def text_hash(text: str) -> str:
    """The key of a turn's text in the cache: answers to the same text are found again, whatever the request."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    result: dict
    usage: Usage
    """What the original call was billed, which is what a hit saves."""


class ResponseCache:
    """In-memory view of the cache for one run, loaded by turn text and written as it grows."""

    def __init__(self, database: str | Path, enabled: bool = True, max_entries: int = 20_000):
        self.database = str(database)
        self.enabled = enabled
        self.max_entries = max_entries
        # Oldest first; an OrderedDict drops its oldest in O(1), where a dict's first key costs a scan over the
        # slots its evictions left empty.
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._new: list[dict] = []
        self.journal: Callable[[dict], None] | None = None
        """Hears each new entry as it is made (the run's spool, which makes it durable before the checkpoint)."""

    def read(self, text_hashes: list[str], context_hashes: list[str] | None = None) -> list[tuple[str, CachedResponse]]:
        """Stored entries, without touching memory (safe from a worker thread).

        With `context_hashes`: the cleaning answers filed under these contexts and the other stages' answers filed
        under these texts (a chunk's load). Without: every answer filed under these texts (a batch day's one load).
        """
        if not self.enabled or not (text_hashes or context_hashes) or not store_exists(self.database):
            return []
        columns = f"request_hash, result_json, {', '.join(USAGE_FIELDS)}, usage_source"
        # Not read-only: the checkpoint thread may be writing the same file from this process, and DuckDB refuses
        # two connections of one process to one file with different configurations.
        with connect(self.database, memory_limit=STEP_MEMORY) as connection:
            if not table_exists(connection, "main", TABLE):
                return []
            _add_context_column(connection)
            if context_hashes is None:
                rows = connection.execute(
                    f"SELECT {columns} FROM {TABLE} WHERE text_hash IN (SELECT unnest(?::VARCHAR[]))",
                    [sorted(set(text_hashes))],
                ).fetchall()
            else:
                rows = connection.execute(
                    f"SELECT {columns} FROM {TABLE} WHERE context_hash IN (SELECT unnest(?::VARCHAR[])) UNION ALL "
                    f"SELECT {columns} FROM {TABLE} WHERE stage <> ? AND text_hash IN (SELECT unnest(?::VARCHAR[]))",
                    [sorted(set(context_hashes)), CLEAN, sorted(set(text_hashes))],
                ).fetchall()
        return [
            (
                request_hash,
                CachedResponse(
                    json.loads(result_json),
                    Usage(**dict(zip(USAGE_FIELDS, (int(c or 0) for c in counts))), source=source),
                ),
            )
            for request_hash, result_json, *counts, source in rows
        ]

    def remember(self, entries: list[tuple[str, CachedResponse]]) -> int:
        """Keep read entries in memory (from the thread that calls `get` and `put`); returns how many."""
        for request_hash, response in entries:
            self._remember(request_hash, response)
        return len(entries)

    def _remember(self, request_hash: str, response: CachedResponse) -> None:
        """Keep an entry in memory, forgetting the oldest beyond `max_entries` (they stay in the table)."""
        entries = self._entries
        entries[request_hash] = response
        entries.move_to_end(request_hash)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def get(self, request_hash: str) -> CachedResponse | None:
        return self._entries.get(request_hash) if self.enabled else None

    def put(
        self,
        request_hash: str,
        text_hash: str,
        stage: str,
        model: str,
        result: dict,
        usage: Usage,
        context_hash: str | None = None,
    ) -> None:
        """Remember a paid answer and queue it for the table, filed under its turn's text and (cleaning) context.

        Seven parameters: the columns of the cache row it writes, each named where it is called.
        """
        if not self.enabled or usage.source == CACHE:
            return
        self._remember(request_hash, CachedResponse(result, usage))
        entry = {
            "request_hash": request_hash,
            "text_hash": text_hash,
            "stage": stage,
            "model": model,
            "result_json": json.dumps(result, sort_keys=True),
            **{name: getattr(usage, name) for name in USAGE_FIELDS},
            "usage_source": usage.source,
            "created_at": datetime.now(timezone.utc),
            "context_hash": context_hash,
        }
        self._new.append(entry)
        if self.journal is not None:
            self.journal(entry)

    def take_new(self) -> list[dict]:
        """The entries added since the last take, handed over once (call it from the event loop's thread)."""
        entries, self._new = self._new, []
        return entries

    def write_missing(self, entries: list[dict], timeout_s: float = 120.0) -> int:
        """Write the entries whose request is not in the table yet (a recovered spool's answers, some of which a
        checkpoint may have written before the run died); returns how many."""
        if not entries:
            return 0
        with connect(self.database, timeout_s=timeout_s, memory_limit=STEP_MEMORY) as connection:
            known = set()
            if table_exists(connection, "main", TABLE):
                hashes = [entry["request_hash"] for entry in entries]
                known = {
                    row[0]
                    for row in connection.execute(
                        f"SELECT DISTINCT request_hash FROM {TABLE} WHERE request_hash IN (SELECT unnest(?))",
                        [hashes],
                    ).fetchall()
                }
        fresh = list({entry["request_hash"]: entry for entry in entries if entry["request_hash"] not in known}.values())
        return self.write(fresh, timeout_s)

    def write(self, entries: list[dict], timeout_s: float = 120.0) -> int:
        """Write entries in one short transaction (safe from a worker thread); returns how many."""
        if not entries:
            return 0
        frame = pd.DataFrame(entries)
        with connect(self.database, timeout_s=timeout_s, memory_limit=STEP_MEMORY) as connection:
            connection.execute(DDL)
            _add_context_column(connection)
            drop_primary_key(connection, TABLE)  # a cache from before the key was dropped
            connection.register("new_entries", frame)
            connection.execute(f"INSERT INTO {TABLE} BY NAME SELECT * FROM new_entries")
        return len(entries)


def _add_context_column(connection) -> None:
    """A cache table from before `context_hash` gains it (null: such cleaning answers are not loaded by context)."""
    present = connection.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
        "AND column_name = 'context_hash'",
        [TABLE],
    ).fetchall()[0][0]
    if not present:
        connection.execute(f"ALTER TABLE {TABLE} ADD COLUMN context_hash VARCHAR")
