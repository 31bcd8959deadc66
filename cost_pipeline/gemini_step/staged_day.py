"""A day's finished rows, priced and staged chunk by chunk: by the step's writer process, or by the step itself.

Why. The Gemini step's rows must reach the commit without the day in memory
(`storage/staging.py`), and each call must carry its exact cost. Pricing a chunk of calls,
building its frames and writing its Parquet would hold the event loop's GIL; handed to the
writer process (`writer_process.py`) they cost it the pickling of the chunk's rows.

Guarantees. A chunk holds every call of its turns (a conversation's rows arrive
together), so each cleaned turn's cost is complete when it is staged. Chunk `n` becomes
one Parquet file per table, `<table>-<n>.parquet`, written under a temporary name and
renamed, so a chunk's file is whole or absent. The staged tables are those files in
chunk order (a table with no rows gets one empty file), with the declared column types
whatever the values. A chunk whose writer died before confirming it is staged by the
step from the rows it kept; a chunk that failed to stage fails the day. No Dagster here.
"""

import pickle
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

from cost_pipeline.gemini_step.staged_chunk import chunk_path, stage_chunk, write_whole
from cost_pipeline.gemini_step.tables import COLUMN_TYPES, TABLES
from cost_pipeline.gemini_step.writer_process import WriterGone, WriterProcess
from cost_pipeline.money.pricing import PriceBook
from cost_pipeline.storage.staging import StagedTable, StagingArea, arrow_schema


class StagedDay:
    """Takes finished conversations' rows and stages them every `chunk_rows` calls, in the writer process if any."""

    def __init__(
        self,
        area: StagingArea,
        book: PriceBook,
        chunk_rows: int,
        writer: WriterProcess | None = None,
    ):
        self.area, self.book, self.chunk_rows = area, book, chunk_rows
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
        if self._writer is None or self._sender is None:
            self._rows.update(stage_chunk(self.area.folder, number, self.book, *chunk))
            return
        rows = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending.append((number, rows, self._sender.submit(self._writer.stage, self.area.folder, number, rows)))
        self._settle(wait=False)

    def _settle(self, wait: bool) -> None:
        """Count the chunks the writer confirmed; stage here those it could not (it died); raise if one failed."""
        pending = []
        for number, rows, future in self._pending:
            if not wait and not future.done():
                pending.append((number, rows, future))
                continue
            try:
                self._rows.update(future.result())
            except WriterGone:
                self._rows.update(stage_chunk(self.area.folder, number, self.book, *pickle.loads(rows)))
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
                write_whole(arrow_schema(COLUMN_TYPES[table]).empty_table(), paths[0])
            tables.append(StagedTable(paths, self._rows[table], list(COLUMN_TYPES[table]), self.area))
        return tables[0], tables[1], tables[2]
