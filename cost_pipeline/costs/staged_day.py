"""A day's finished rows, priced and staged chunk by chunk: by the step's writer process, or by the step itself.

Why. The Gemini step's rows must reach the commit without the day in memory
(`storage/staging.py`), and each call must carry its exact cost. Pricing a chunk of calls,
building its frames and writing its Parquet cost the event loop 58 us per call at 20,000
turns; handed to the writer process (`writer_process.py`) they cost it the pickling of
the chunk's rows.

Guarantees. A chunk holds every call of its turns (a conversation's rows arrive
together), so each cleaned turn's cost is complete when it is staged. Chunk `n` becomes
one Parquet file per table, `<table>-<n>.parquet`, written under a temporary name and
renamed, so a chunk's file is whole or absent. The staged tables are those files in
chunk order (a table with no rows gets one empty file), with the declared column types
whatever the values. A chunk whose writer died before confirming it is staged by the
step from the rows it kept; a chunk that failed to stage fails the day. No Dagster here.
"""

import os
import pickle
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cost_pipeline.costs.pricing import ZERO, PriceBook, price_calls
from cost_pipeline.llm.call_ids import call_id
from cost_pipeline.storage.staging import StagedTable, StagingArea, arrow_schema

if TYPE_CHECKING:
    from cost_pipeline.costs.writer_process import WriterProcess

CLEANED, FUNCTIONS, CALLS = "cleaned_turns", "function_calls", "llm_calls"
TABLES = (CLEANED, FUNCTIONS, CALLS)


def chunk_path(folder: Path, table: str, number: int) -> Path:
    return folder / f"{table}-{number:06d}.parquet"


def stage_chunk(folder: Path, number: int, declared: dict[str, dict[str, str]], book: PriceBook,
                cleaned: list[dict], functions: list[dict], calls: list[dict]) -> dict[str, int]:
    """Price `calls`, give each cleaned turn its costs, and write chunk `number` of the three tables; rows per table."""
    priced = _columns(price_calls(pd.DataFrame(calls), book), declared[CALLS])
    frames = {CLEANED: _columns(_with_turn_costs(pd.DataFrame(cleaned), priced), declared[CLEANED]),
              FUNCTIONS: _columns(pd.DataFrame(functions), declared[FUNCTIONS]), CALLS: priced}
    for table, frame in frames.items():
        if len(frame):
            _write_whole(pa.Table.from_pandas(frame, schema=arrow_schema(declared[table]), preserve_index=False),
                         chunk_path(folder, table, number))
    return {table: len(frame) for table, frame in frames.items()}


def _write_whole(table: pa.Table, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


def _columns(rows: pd.DataFrame, declared: dict[str, str]) -> pd.DataFrame:
    """The declared columns in their order (absent ones empty)."""
    return rows.reindex(columns=list(declared))


def _with_turn_costs(cleaned: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """Each turn's cleaning and function costs, as the original system stored them per turn."""
    cost = dict(zip(calls["call_id"], calls["total_cost_usd"]))
    cleaning = [cost.get(i) for i in cleaned.get("call_id", [])]
    function = [cost.get(call_id(turn, "function"), ZERO) for turn in cleaned.get("turn_id", [])]
    total = [None if c is None or f is None else c + f for c, f in zip(cleaning, function)]
    return cleaned.assign(cleaning_cost_usd=cleaning, function_cost_usd=function, total_cost_usd=total)


class StagedDay:
    """Takes finished conversations' rows and stages them every `chunk_rows` calls, in the writer process if any."""

    def __init__(self, area: StagingArea, book: PriceBook, chunk_rows: int, declared: dict[str, dict[str, str]],
                 writer: "WriterProcess | None" = None):
        self.area, self.book, self.chunk_rows, self.declared = area, book, chunk_rows, declared
        self._writer = writer
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="staging") if writer else None
        self._pending: list[tuple[int, bytes, Future]] = []
        """Chunks handed to the writer and not yet confirmed, with their rows, in case it dies first."""
        self._rows: Counter = Counter()
        self._chunks = 0
        self._cleaned: list[dict] = []
        self._functions: list[dict] = []
        self._calls: list[dict] = []

    def __call__(self, cleaned: list[dict], functions: list[dict], calls: list[dict]) -> None:
        self._cleaned += cleaned
        self._functions += functions
        self._calls += calls
        if len(self._calls) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._calls:
            return
        number, chunk = self._chunks, (self._cleaned, self._functions, self._calls)
        self._chunks += 1
        self._cleaned, self._functions, self._calls = [], [], []
        if self._writer is None:
            self._rows.update(stage_chunk(self.area.folder, number, self.declared, self.book, *chunk))
            return
        rows = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending.append((number, rows, self._sender.submit(
            self._writer.stage, self.area.folder, number, self.declared, rows)))
        self._settle(wait=False)

    def _settle(self, wait: bool) -> None:
        """Count the chunks the writer confirmed; stage here those it could not (it died); raise if one failed."""
        from cost_pipeline.costs.writer_process import WriterGone

        pending = []
        for number, rows, future in self._pending:
            if not wait and not future.done():
                pending.append((number, rows, future))
                continue
            try:
                self._rows.update(future.result())
            except WriterGone:
                self._rows.update(stage_chunk(self.area.folder, number, self.declared, self.book, *pickle.loads(rows)))
        self._pending = pending

    def close(self) -> tuple[StagedTable, StagedTable, StagedTable]:
        """Every chunk staged (waiting for the writer's): the three staged tables, cleaned turns first."""
        self.flush()
        try:
            self._settle(wait=True)
        finally:
            if self._sender is not None:
                self._sender.shutdown()
        tables = []
        for table in TABLES:
            paths = [chunk_path(self.area.folder, table, number) for number in range(self._chunks)]
            paths = [path for path in paths if path.exists()]
            if not paths:  # no rows: one empty file, so the commit reads the declared columns all the same
                paths = [chunk_path(self.area.folder, table, 0)]
                _write_whole(arrow_schema(self.declared[table]).empty_table(), paths[0])
            tables.append(StagedTable(paths, self._rows[table], list(self.declared[table]), self.area))
        return tables[0], tables[1], tables[2]
