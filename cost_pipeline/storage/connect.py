"""Opening the DuckDB file when another process may hold it.

DuckDB lets one process write a database file, or several read it, never both: a second
process gets an `IOException` ("Could not set lock on file") at connect time. Our writers
hold the file only for one short transaction, so waiting with jittered exponential
backoff lets concurrent runs (and a report reading mid-run) take turns instead of
failing. After `timeout_s` the error names the file and the lock holder.
"""

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from cost_pipeline.storage.lake import is_lake, lake_connection

LOCK_MESSAGE = "Could not set lock on file"
STEP_MEMORY = "64MB"
"""DuckDB's memory_limit for the short reads and writes a step makes while its calls run (a chunk's cache read,
a checkpoint). Unset, DuckDB may keep up to 80% of RAM in its buffer pool, and reading a chunk's answers from a
large response cache would take memory that grows with the cache (bench/ledger_growth.py). It is the instance's
setting, shared by every connection the process has open to the file, so all of a running step's
connections ask for the same value."""


LAKE_MEMORY = "256MB"
"""The memory_limit on the lake wherever the file's would be lower: DuckLake reads Parquet a row group (122,880 rows
of a column) at a time per thread, so a response-cache read of 3,000,000 rows runs out at 64MB (128MB suffices);
a DuckDB file streams 256KB blocks."""


class DatabaseBusy(TimeoutError):
    """Another process kept the DuckDB file locked for longer than we were willing to wait."""


@contextmanager
def connect(
    database: str | Path,
    *,
    read_only: bool = False,
    timeout_s: float = 120.0,
    first_delay_s: float = 0.02,
    max_delay_s: float = 1.0,
    on_wait: Callable[[str], None] | None = None,
    memory_limit: str | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to `database`, retried while another process holds its lock; closed on exit.

    Seven parameters: the database, then keyword-only options that each have a default.

    `on_wait` hears one sentence when the connection had to wait, so runs can log contention.
    `memory_limit` (say `STEP_MEMORY`) bounds DuckDB's memory while the connection is open; it spills beyond.
    A `ducklake:postgres:...` database is the shared lake (`lake.py`), whose writers take turns the same way.
    """
    if is_lake(database):
        with lake_connection(str(database), read_only=read_only, timeout_s=timeout_s, on_wait=on_wait) as connection:
            connection.execute("SET TimeZone = 'UTC'")
            if memory_limit:
                larger = max(memory_limit, LAKE_MEMORY, key=size_bytes)
                connection.execute(f"SET memory_limit = '{larger}'")
            yield connection
        return
    path = Path(database)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + timeout_s
    delay = first_delay_s
    attempts = 0
    while True:
        attempts += 1
        try:
            connection = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if LOCK_MESSAGE not in str(err):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseBusy(
                    f"DuckDB file {path} stayed locked by another process for {timeout_s:.0f}s "
                    f"({attempts} attempts): {err}"
                ) from None
            time.sleep(min(remaining, random.uniform(0, delay)))
            delay = min(max_delay_s, delay * 2)
    if attempts > 1 and on_wait:
        on_wait(f"waited {time.monotonic() - started:.1f}s ({attempts} attempts) for the lock on DuckDB file {path}")
    try:
        connection.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            connection.execute(f"SET memory_limit = '{memory_limit}'")
        yield connection
    finally:
        connection.close()


_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def size_bytes(size: str) -> float:
    """`100MB`, `1GiB` ... in bytes, as DuckDB reads a memory_limit (`KiB` and the like in powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*", size, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size like 100MB or 1GiB: {size!r}")
    number, unit, binary = match.groups()
    scale = 1024 ** "KMGT".index(unit.upper()) * 1024 if binary and unit else _UNITS[unit.upper()]
    return float(number) * scale


def query_frame(connection: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pd.DataFrame:
    """Run `sql` and return a frame whose DECIMAL columns hold `Decimal`s."""
    result = connection.execute(sql, params or [])
    names = [column[0] for column in result.description]
    decimal_columns = [column[0] for column in result.description if str(column[1]).startswith("DECIMAL")]
    frame = pd.DataFrame(result.fetchall(), columns=names)
    for name in decimal_columns:
        frame[name] = frame[name].astype(object)
    return frame


def one_row(connection: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> tuple:
    """The row of a query that always returns one (an aggregate, a cast): a missing row is an error, not None."""
    row = connection.execute(sql, params or []).fetchone()
    if row is None:
        raise LookupError(f"no row from a query that always returns one: {sql[:200]}")
    return row
