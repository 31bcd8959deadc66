"""The record of Batch API jobs: written before any waiting, so no job is ever submitted (and paid for) twice.

`llm_batch_jobs` has one row per job: the data day and stage it answers, the model and
endpoint, the digest of its set of request hashes, its name at the provider, and its state.
A step of a day and stage first collects every job of that day, stage and endpoint that
has not failed and was never collected (a run killed while the job was pending resumes the
same job; a day whose requests changed since still records what the old job was billed);
a job's answers go to the ledger and the response cache, and only then is it marked
collected.
"""

import hashlib
from dataclasses import astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path

from cost_pipeline.storage.connect import connect, one_row
from cost_pipeline.storage.lake import store_exists
from cost_pipeline.storage.tables import drop_primary_key

TABLE = "llm_batch_jobs"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    job_name VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    stage VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    request_set VARCHAR NOT NULL,
    requests INTEGER NOT NULL,
    part INTEGER NOT NULL,
    run_id VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    submitted_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    collected_at TIMESTAMPTZ
)
"""
FAILED_STATES = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")


@dataclass(frozen=True)
class SubmittedJob:
    """A job as submitted: one row of the table, in its column order."""

    job_name: str
    day: str
    stage: str
    model: str
    endpoint: str
    request_set: str
    requests: int
    part: int
    run_id: str
    state: str


@dataclass(frozen=True)
class JobRecord:
    job_name: str
    part: int
    state: str


def request_set(request_hashes: list[str]) -> str:
    """One digest for a set of requests: the same day and stage asks for the same set again after a kill."""
    return hashlib.sha256("\n".join(sorted(request_hashes)).encode()).hexdigest()


def _read(database: str | Path, sql: str, parameters: list) -> list[tuple]:
    """Rows of a read-only query on the jobs table; none when the database or the table does not exist yet."""
    if not store_exists(database):
        return []
    with connect(database, read_only=True) as connection:
        if not one_row(connection, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE])[0]:
            return []
        return connection.execute(sql, parameters).fetchall()


def uncollected(database: str | Path, day: str, stage: str, endpoint: str) -> list[JobRecord]:
    """Every job of this day and stage at this endpoint (any model, any request set) that was submitted, has not
    failed and was never collected: paid for or about to be, so the next step of the stage collects it first."""
    rows = _read(
        database,
        f"SELECT job_name, part, state FROM {TABLE} "
        f"WHERE partition_date = ? AND stage = ? AND endpoint = ? AND collected_at IS NULL "
        f"AND state NOT IN (SELECT unnest(?::VARCHAR[])) ORDER BY submitted_at, part",
        [day, stage, endpoint, list(FAILED_STATES)],
    )
    return [JobRecord(name, part, state) for name, part, state in rows]


def record(database: str | Path, job: SubmittedJob) -> None:
    """Write a submitted job down at once, in its own short transaction."""
    with connect(database) as connection:
        connection.execute(DDL)
        drop_primary_key(connection, TABLE)  # a table from before the key was dropped
        connection.execute("BEGIN")  # one row per job name, without a key (a DuckLake table has none)
        connection.execute(f"DELETE FROM {TABLE} WHERE job_name = ?", [job.job_name])
        connection.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            [*astuple(job), datetime.now(timezone.utc)],
        )
        connection.execute("COMMIT")


def update(database: str | Path, job_name: str, state: str, collected: bool = False) -> None:
    now = datetime.now(timezone.utc)
    with connect(database) as connection:
        connection.execute(
            f"UPDATE {TABLE} SET state = ?, finished_at = coalesce(finished_at, CASE WHEN ? THEN ?::TIMESTAMPTZ END), "
            f"collected_at = CASE WHEN ? THEN ?::TIMESTAMPTZ ELSE collected_at END WHERE job_name = ?",
            [state, state.endswith(("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")), now, collected, now, job_name],
        )


def mark_collected(database: str | Path, job_names: list[str]) -> None:
    """Jobs whose answers are now in the ledger and the cache (a step's final write had the deferred ones)."""
    for name in job_names:
        update(database, name, "JOB_STATE_SUCCEEDED", collected=True)


def pending(database: str | Path) -> list[tuple[str, str]]:
    """(job name, data day) of every job submitted and not collected: what a later run of the day resumes."""
    return [
        (name, str(day))
        for name, day in _read(
            database,
            f"SELECT job_name, partition_date FROM {TABLE} WHERE collected_at IS NULL "
            f"AND state NOT IN (SELECT unnest(?::VARCHAR[])) ORDER BY submitted_at",
            [list(FAILED_STATES)],
        )
    ]
