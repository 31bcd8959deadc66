"""Staged rows: a step's output written to Parquet chunk by chunk while it runs, committed later at once.

Why. A day can be far larger than memory should allow. A step appends its rows to a
`ChunkWriter`, which keeps at most `chunk_rows` of them in Python and writes each full
chunk as a Parquet row group; its output is a `StagedTable` (paths and a row count, no
rows). The IO manager inserts staged tables straight from Parquet in its one
transaction (`storage.tables.replace_partitions`), so the atomic swap of a day's tables
is unchanged while memory stays flat.

Guarantees. Staging lives in `<database>.staging/<step-run>/`, one folder per step run,
held under an exclusive `flock` on `<step-run>.lock` beside it by the process writing it
(the lock is taken before the folder exists, so a sweep can never remove a folder being
created). It is only ever read by the
commit of that same step run, which deletes it afterwards. A folder whose lock is free
belongs to a run that died or failed before its commit: the next `StagingArea` under the
same root removes it, so staging from a killed run is never read as data and never
piles up. Column types come from the table's declared schema, so every chunk has the
same Arrow schema whatever its values (an all-null chunk included).
"""

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cost_pipeline.storage.lake import local_folder

LOCK_SUFFIX = ".lock"
DEFAULT_CHUNK_ROWS = 8192
_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")
_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "TIMESTAMP": pa.timestamp("us"),
}


def staging_root(database: str | Path) -> Path:
    """Where the staging folders of the steps writing `database` live."""
    return local_folder(database, ".staging")


def arrow_schema(declared: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema of a table declared as column -> DuckDB type (DECIMAL(p,s) kept exact)."""
    fields = []
    for name, sql_type in declared.items():
        decimal = _DECIMAL.fullmatch(sql_type.upper())
        if decimal:
            arrow_type = pa.decimal128(int(decimal.group(1)), int(decimal.group(2)))
        elif sql_type.upper() in _ARROW_TYPES:
            arrow_type = _ARROW_TYPES[sql_type.upper()]
        else:
            raise ValueError(f"column {name}: no Arrow type for DuckDB type {sql_type!r}")
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields)


@dataclass
class StagedTable:
    """A table's rows as Parquet files in a staging folder: what a step hands the IO manager instead of a frame."""

    paths: list[Path]
    rows: int
    columns: list[str]
    area: "StagingArea | None" = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.rows

    def release(self) -> None:
        """After the commit: the staging folder goes (once, whichever of its tables asks first)."""
        if self.area is not None:
            self.area.discard()


class StagingArea:
    """One step run's staging folder, locked for as long as this object (or its process) lives."""

    def __init__(self, root: Path, name: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = self.root / name
        self._lock_path = self.root / f"{name}{LOCK_SUFFIX}"
        self._lock = open(self._lock_path, "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.folder.mkdir()
        self.removed_stale = remove_stale(self.root)

    def writer(self, table: str, declared: Mapping[str, str], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> "ChunkWriter":
        return ChunkWriter(self, table, arrow_schema(declared), chunk_rows)

    def discard(self) -> None:
        if self._lock.closed:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def remove_stale(root: Path) -> int:
    """Delete every staging folder under `root` whose writer is gone (its lock is free); returns how many."""
    removed = 0
    for lock in sorted(root.glob(f"*{LOCK_SUFFIX}")) if root.is_dir() else []:
        try:
            handle = os.open(lock, os.O_RDWR)  # never created here: a lock file exists only once its writer made it
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's folder
            shutil.rmtree(root / lock.name.removesuffix(LOCK_SUFFIX), ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(handle)
    return removed


class ChunkWriter:
    """Appends rows to one Parquet file, holding at most `chunk_rows` of them in memory."""

    def __init__(self, area: StagingArea, table: str, schema: pa.Schema, chunk_rows: int):
        self.area, self.table, self.schema, self.chunk_rows = area, table, schema, chunk_rows
        self.path = area.folder / f"{table}.parquet"
        self._writer = pq.ParquetWriter(self.path, schema)
        self._buffer: list[dict] = []
        self.rows = 0

    def append(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.chunk_rows:
            self.flush()

    def extend(self, rows: list[dict]) -> None:
        for row in rows:
            self.append(row)

    def flush(self) -> None:
        if not self._buffer:
            return
        columns = {name: [row.get(name) for row in self._buffer] for name in self.schema.names}
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.rows += len(self._buffer)
        self._buffer = []

    def close(self) -> StagedTable:
        self.flush()
        self._writer.close()
        return StagedTable([self.path], self.rows, list(self.schema.names), self.area)


def parquet_source(staged: StagedTable) -> str:
    """`read_parquet([...])` over a staged table's files, for use in SQL."""
    files = ", ".join("'" + str(path).replace("'", "''") + "'" for path in staged.paths)
    return f"read_parquet([{files}])"


def query_staged(sql: str, **tables: StagedTable) -> list[tuple]:
    """Run `sql` in an in-memory DuckDB over staged tables, each a view named by its keyword (no file lock taken)."""
    with duckdb.connect() as connection:
        for name, staged in tables.items():
            connection.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {parquet_source(staged)}')
        return connection.execute(sql).fetchall()


def staging_name(run_id: str, step: str) -> str:
    """A fresh folder name per step attempt: a retry never collides with its predecessor's locked folder."""
    return f"{run_id}-{step}-{uuid.uuid4().hex[:8]}"
