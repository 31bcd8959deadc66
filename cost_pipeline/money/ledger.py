"""The spend ledger: every HTTP attempt that left the process, from every run, kept for good.

`llm_attempts` is append-only. Re-runs, backfills and failed runs add to it and never
replace or delete a row, so the spend of a day survives whatever later runs make of
its data. Each attempt has one row, by `attempt_id`: a load inserts only the attempts its
data day does not hold yet, so loading the same attempt twice (a retried load, a recovery
after a crash mid-load) records it once. That check reads only the rows of the data days
being loaded (DuckDB skips the others by their zone maps), not every row ever written, so
a checkpoint costs the same in the ledger's first week and its third year (there is no
PRIMARY KEY: its index would load whole at every checkpoint, see bench/ledger_growth.py).

Durable as it happens: a run does not hold attempts in memory until it commits. Each
attempt is written to a spool file as two JSON lines, `sent` before the request leaves
and `done` when it ends, each line handed to the kernel as it is written (so `kill -9`
of the run loses none) and fsynced at least every `FSYNC_EVERY_S` and at close (so a
machine crash loses at most that window). The spool is loaded into DuckDB in one short
transaction when the step ends, whether it succeeded or failed, and then deleted. A
spool whose writer died (its `flock` is free) is loaded by the next run's Gemini step or
rollup: an attempt with a `sent` line and no `done` line was in flight when the process
died, and is recorded as an `error` whose billing is unknown.

Each row is priced when it is loaded, with the same price book as `llm_calls`, at the
price in force on its `sent_at`, for the model that served it (`model_version`).
"""

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd

from cost_pipeline.gemini.attempts import ERROR, Attempt
from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini.usage import MODALITY_FIELDS, TOKEN_FIELDS, UNKNOWN
from cost_pipeline.money.pricing import MONEY_SQL_TYPE, STANDARD, PriceBook, Tier, token_counts
from cost_pipeline.storage.columns import Column, create_table_sql
from cost_pipeline.storage.connect import STEP_MEMORY, connect, one_row
from cost_pipeline.storage.lake import local_folder, store_exists
from cost_pipeline.storage.tables import drop_primary_key

TABLE = "llm_attempts"
FSYNC_EVERY_S = 1.0
INTERRUPTED = "process ended while the attempt was in flight: billing unknown"
ANSWER = "answer"
"""A spool line holding a paid answer's response-cache entry."""

COLUMNS = [
    Column("attempt_id", "VARCHAR NOT NULL", "Unique per HTTP attempt."),
    Column("call_id", "VARCHAR", "The llm_calls row (turn x stage) this attempt was for."),
    Column("run_id", "VARCHAR", "The Dagster run that sent it."),
    Column("partition_date", "DATE", "The data day, not the day it was sent."),
    Column("evaluation_id", "VARCHAR"),
    Column("turn_id", "VARCHAR"),
    Column("stage", "VARCHAR"),
    Column("model", "VARCHAR"),
    Column("model_version", "VARCHAR", "As served (the response's modelVersion); null without an answer."),
    Column("endpoint", "VARCHAR"),
    Column("processing", "VARCHAR"),
    Column(
        "served_tier",
        "VARCHAR",
        "The traffic type Vertex AI served the answer at, as sent (ON_DEMAND_FLEX, PROVISIONED_THROUGHPUT, ...); "
        "null when the API does not say.",
    ),
    Column("labels", "JSON", "The request's labels on Vertex AI, which Cloud Billing carries into the export."),
    Column("request_hash", "VARCHAR", "The response-cache key of the logical request."),
    Column("response_id", "VARCHAR", "The response's responseId."),
    Column("attempt", "INTEGER", "1..n within the call."),
    Column(
        "sent_at", "TIMESTAMPTZ", "When the request left, UTC (a Batch API answer: when its job finished, as billed)."
    ),
    Column("latency_ms", "DOUBLE"),
    Column("http_status", "INTEGER", "Null for a timeout, transport failure or interruption."),
    Column("outcome", "VARCHAR", "accepted, rejected (a billed answer we could not use) or error."),
    Column("reason", "VARCHAR", "Finish reason, block reason, parse error, or error type."),
    Column("billed", "BOOLEAN", "True for a 200 with usage; false for 429/5xx/4xx/timeouts; null when unknown."),
    *(Column(name, "BIGINT", "Null when the response carried none.") for name in TOKEN_FIELDS),
    Column("usage_source", "VARCHAR", "reported, estimated (a 200 without usage), none (not billed) or unknown."),
    Column("input_cost_usd", MONEY_SQL_TYPE),
    Column("cached_input_cost_usd", MONEY_SQL_TYPE),
    Column("output_cost_usd", MONEY_SQL_TYPE),
    Column("cost_usd", MONEY_SQL_TYPE, "The sum of the three; 0 when not billed; null when unknown or unpriced."),
    Column("price_source", "VARCHAR"),
    Column("price_status", "VARCHAR", "ok, missing (no price), or unknown (billing unknown)."),
    Column("recorded_at", "TIMESTAMPTZ", "When the row reached the ledger."),
    Column("recovered", "BOOLEAN", "Loaded from the spool of a run that died."),
]
DDL = create_table_sql(TABLE, COLUMNS)
# A ledger written before a column existed gains it (null: the attempt predates it; `processing` null is standard).
MIGRATIONS = [
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS processing VARCHAR",
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS served_tier VARCHAR",
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS labels JSON",
    *(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} BIGINT" for name in MODALITY_FIELDS),
]
COST_KINDS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "cost_usd"]
COLUMN_NAMES = [column.name for column in COLUMNS]
_SELECT_EXACT = ", ".join(
    f"CAST({name} AS {MONEY_SQL_TYPE}) AS {name}" if name in COST_KINDS else name for name in COLUMN_NAMES
)


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every spool line: json.dumps with options builds a new one per call."""


def spool_folder(database: str | Path) -> Path:
    """Where a database's spool files live: beside a DuckDB file, so they move with it (`local_folder`)."""
    return local_folder(database, ".attempts")


class AttemptSpool:
    """One process's append-only attempt log; an `AttemptSink` for the Gemini session."""

    def __init__(self, folder: Path, run_id: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.run_id = folder, run_id
        self._inflight: dict[str, dict] = {}
        self._open()

    def _open(self) -> None:
        name = f"{self.run_id or 'norun'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        opening = self.folder / f"{name}.opening"
        self._file = opening.open("a", buffering=1, encoding="utf-8")
        # Held while the file is written: a free lock means it is finished (or its writer is gone) and can be
        # loaded. It is taken before the file gets the name loaders look for, so no loader sees it unlocked.
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = opening.rename(self.folder / f"{name}.jsonl")
        self._synced_at = time.monotonic()
        self._written = False

    def rotate(self) -> Path:
        """Finish the current file and start another; returns the finished one, ready to load.

        Attempts still in flight move to the new file: the finished one says `carried` for
        each (so its load skips them) and the new one starts with their `sent` lines, so an
        attempt is always loaded from the file that holds its `done` line.
        """
        finished, old, inflight = self.path, self._file, list(self._inflight.values())
        self._open()
        for line in inflight:
            self._write(line)
        # The new file holds the in-flight attempts durably before the old one lets go of them:
        # a kill in between leaves them in both, and a loaded outcome replaces an interrupted row.
        os.fsync(self._file.fileno())
        for line in inflight:
            old.write(json.dumps({"event": "carried", "attempt_id": line["attempt_id"]}) + "\n")
        _finish(old)
        return finished

    @property
    def written(self) -> bool:
        """Whether anything was written to the current file: a rotation of an empty file is pointless."""
        return self._written

    def sent(self, attempt: Attempt) -> None:
        line = attempt.sent_line()
        self._inflight[attempt.attempt_id] = line
        self._write(line)

    def done(self, attempt: Attempt) -> None:
        self._inflight.pop(attempt.attempt_id, None)
        self._write(attempt.done_line())

    def answer(self, entry: dict) -> None:
        """A paid answer's response-cache entry (`ResponseCache.journal`): durable with the attempt that bought it,
        so a re-run after a kill finds it even when no checkpoint wrote it (`load_spools`)."""
        self._write({"event": ANSWER, **entry, "created_at": entry["created_at"].isoformat()})

    def _write(self, line: dict) -> None:
        self._written = True
        self._file.write(_COMPACT_JSON.encode(line) + "\n")
        if time.monotonic() - self._synced_at > FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced_at = time.monotonic()

    def close(self) -> None:
        _finish(self._file)


def _finish(handle) -> None:
    """Flush, fsync, unlock and close a spool file (its lock is what tells loaders it is done)."""
    if handle.closed:
        return
    handle.flush()
    os.fsync(handle.fileno())
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def answer_entries(lines: list[str]) -> list[dict]:
    """The response-cache entries a spool's `answer` lines carry; a torn last line is skipped."""
    entries = []
    for text in lines:
        if f'"event":"{ANSWER}"' not in text:
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            continue
        entry.pop("event")
        entries.append({**entry, "created_at": datetime.fromisoformat(entry["created_at"])})
    return entries


def attempt_rows(lines: list[str]) -> list[dict]:
    """A spool's lines merged into one row per attempt; a torn last line (a kill mid-write) is skipped."""
    rows: dict[str, dict] = {}
    for text in lines:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        event = line.pop("event", None)
        if event == "sent":
            rows.setdefault(line["attempt_id"], {}).update(line)
        elif event == "done" and line.get("attempt_id") in rows:
            rows[line["attempt_id"]].update(line)
        elif event == "carried":
            rows.pop(line.get("attempt_id"), None)
    for row in rows.values():
        if "outcome" not in row:
            row.update(outcome=ERROR, reason=INTERRUPTED, billed=None, usage_source=UNKNOWN)
    return list(rows.values())


def priced_frame(rows: list[dict], book: PriceBook, recovered: bool) -> pd.DataFrame:
    """Ledger rows with exact costs: billed attempts priced, unbilled at 0, unknown billing null."""
    frame = pd.DataFrame(rows).reindex(columns=COLUMN_NAMES)
    frame["labels"] = [_COMPACT_JSON.encode(v) if isinstance(v, dict) else None for v in frame["labels"]]
    frame["sent_at"] = pd.to_datetime(frame["sent_at"], unit="s", utc=True).dt.floor("us")
    costs: dict[str, list] = {name: [] for name in [*COST_KINDS, "price_source", "price_status"]}
    zero = Decimal(0)
    cost: tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None, str | None, str]
    for row in frame.itertuples(index=False):
        if row.billed is None or pd.isna(row.billed):
            cost = (None, None, None, None, None, UNKNOWN)
        elif not row.billed:
            cost = (zero, zero, zero, zero, None, "ok")
        else:
            served = row.model_version if isinstance(row.model_version, str) else None
            processing = row.processing if isinstance(row.processing, str) else STANDARD
            tier = Tier(processing, row.served_tier if isinstance(row.served_tier, str) else None)
            priced = book.cost(row.model, token_counts(row), row.sent_at.to_pydatetime(), served, tier)
            cost = (
                priced.input_cost,
                priced.cached_input_cost,
                priced.output_cost,
                priced.total_cost,
                priced.price_source,
                priced.price_status,
            )
        for name, value in zip(costs, cost):
            costs[name].append(value)
    # Money travels as text, so no Decimal is ever inferred as a float on its way in.
    frame = frame.assign(
        **{
            name: [None if v is None else str(v) for v in values] if name in COST_KINDS else values
            for name, values in costs.items()
        }
    )
    frame["recorded_at"] = datetime.now(timezone.utc)
    frame["recovered"] = recovered
    frame["billed"] = frame["billed"].astype("boolean")
    return frame


def ensure_ledger(database: str | Path, lock_timeout_s: float = 120.0) -> None:
    """Create `llm_attempts` if this database has never recorded an attempt, so readers can rely on it."""
    with connect(database, timeout_s=lock_timeout_s) as connection:
        _migrate(connection)


def _migrate(connection) -> None:
    connection.execute(DDL)
    for migration in MIGRATIONS:
        connection.execute(migration)
    drop_primary_key(connection, TABLE)  # a ledger from before the key was dropped


def _insert(database: str | Path, frame: pd.DataFrame, log, lock_timeout_s: float) -> int:
    """Insert the attempts this ledger does not hold yet, in one transaction; returns how many."""
    days = sorted({str(day) for day in frame["partition_date"].dropna()})
    # The data days of these attempts, as constants: DuckDB reads only their row groups.
    of_days = f"partition_date IN ({', '.join('?::DATE' for _ in days)})" if days else "false"
    if frame["partition_date"].isna().any():
        of_days = f"({of_days} OR partition_date IS NULL)"
    with connect(database, timeout_s=lock_timeout_s, on_wait=log, memory_limit=STEP_MEMORY) as connection:
        _migrate(connection)
        connection.register("new_attempts", frame)
        connection.begin()
        # An attempt recorded as interrupted (its outcome was in a file not yet loaded) gives way to its outcome.
        connection.execute(
            f"DELETE FROM {TABLE} WHERE {of_days} AND reason = ? AND attempt_id IN "
            "(SELECT attempt_id FROM new_attempts WHERE reason IS DISTINCT FROM ?)",
            [*days, INTERRUPTED, INTERRUPTED],
        )
        present = {
            attempt_id
            for (attempt_id,) in connection.execute(
                f"SELECT attempt_id FROM {TABLE} WHERE {of_days} AND attempt_id IN (SELECT attempt_id FROM "
                "new_attempts)",
                days,
            ).fetchall()
        }
        fresh = frame[~frame["attempt_id"].isin(present)].drop_duplicates("attempt_id")
        connection.register("fresh_attempts", fresh)
        connection.execute(f"INSERT INTO {TABLE} BY NAME SELECT {_SELECT_EXACT} FROM fresh_attempts")
        connection.commit()
        return len(fresh)


def load_spools(
    database: str | Path,
    book: PriceBook,
    only: Path | None = None,
    log: Callable[[str], None] | None = None,
    lock_timeout_s: float = 120.0,
    on_spend: Callable[[Decimal], None] | None = None,
) -> int:
    """Load spool files into `llm_attempts` (`only` one, or every spool whose writer is gone); returns rows added.

    A file is deleted only after its rows are committed; a crash in between loads it again
    next time, and `_insert` keeps each attempt once. A dead writer's file also gives the
    response cache the answers it paid for (`AttemptSpool.answer`), each kept once, so its
    re-run repeats only the calls that were in flight.
    """
    folder = spool_folder(database)
    paths = [only] if only else sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    added = 0
    for path in paths:
        try:
            handle = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            continue  # another loader got there first
        with handle:
            try:
                # Held until the file is gone, so two loaders never load one file at once.
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being written, or being loaded by someone else
            lines = handle.read().splitlines()
            rows = attempt_rows(lines)
            if only is None:  # a dead run's paid answers, which its last checkpoint may not have written
                ResponseCache(database).write_missing(answer_entries(lines), lock_timeout_s)
            if rows:
                frame = priced_frame(rows, book, recovered=only is None)
                added += _insert(database, frame, log, lock_timeout_s)
                if on_spend:  # what these attempts were billed, for progress logs (the ledger stays the record)
                    on_spend(sum((Decimal(cost) for cost in frame["cost_usd"] if cost is not None), Decimal(0)))
            path.unlink(missing_ok=True)
        if log and only is None:
            log(f"recovered {len(rows)} attempts from {path.name}, a spool that no running writer holds")
    return added


def spent_so_far(database: str | Path, day: str, month_start: datetime):
    """What the ledger says was spent already: on the data day `day`, and per evaluation since `month_start` and ever.

    Unknown costs (billing unknown, no price) count as 0 here: a budget cannot hold money it cannot see.
    """
    from cost_pipeline.money.budgets import Spent
    from cost_pipeline.storage.tables import table_exists

    if not store_exists(database):
        return Spent()
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", TABLE):
            return Spent()
        (day_spent,) = one_row(
            connection, f"SELECT coalesce(sum(cost_usd), 0) FROM {TABLE} WHERE partition_date = ?", [day]
        )
        rows = connection.execute(
            f"SELECT evaluation_id, coalesce(sum(cost_usd) FILTER (WHERE sent_at >= ?), 0), coalesce(sum(cost_usd), 0) "
            f"FROM {TABLE} GROUP BY ALL",
            [month_start],
        ).fetchall()
    return Spent(Decimal(day_spent), {e: Decimal(m) for e, m, _ in rows}, {e: Decimal(t) for e, _, t in rows})


def attempt_cost(attempt: Attempt, book: PriceBook) -> Decimal | None:
    """What one attempt was billed, priced as its ledger row will be: 0 when not billed, None when unknown."""
    if attempt.billed is False:
        return Decimal(0)
    if attempt.billed is None:
        return None
    return book.cost(
        attempt.model,
        attempt.usage,
        datetime.fromtimestamp(attempt.sent_at, timezone.utc),
        attempt.model_version,
        Tier(attempt.processing, attempt.served_tier),
    ).total_cost


@dataclass(frozen=True)
class RunSpend:
    """What one run's checkpointed attempts were billed: `billed_usd` over the priced ones, and how many are not."""

    attempts: int
    billed_usd: Decimal
    unknown: int  # attempts whose cost is unknown (billing unknown, or no price): never counted as 0

    def text(self) -> str:
        unknown = f" + {self.unknown} attempt(s) of unknown cost" if self.unknown else ""
        return f"${self.billed_usd:,.6f}{unknown}"


def spend_by_run(database: str | Path, run_ids: list[str], lock_timeout_s: float = 120.0) -> dict[str, RunSpend]:
    """Each run's spend as the ledger holds it now (a running day's, as of its last checkpoint).

    Raises `DatabaseBusy` when the file stays locked `lock_timeout_s`; runs with no attempt are absent.
    """
    from cost_pipeline.storage.tables import table_exists

    if not run_ids or not store_exists(database):
        return {}
    with connect(database, read_only=True, timeout_s=lock_timeout_s) as connection:
        if not table_exists(connection, "main", TABLE):
            return {}
        rows = connection.execute(
            f"SELECT run_id, count(*), coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL) "
            f"FROM {TABLE} WHERE run_id IN (SELECT unnest(?)) GROUP BY run_id",
            [run_ids],
        ).fetchall()
    return {run_id: RunSpend(attempts, Decimal(billed), unknown) for run_id, attempts, billed, unknown in rows}
