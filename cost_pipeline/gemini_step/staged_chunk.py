"""One chunk of a day's finished rows, priced and written as Parquet: the work a chunk is, wherever it is done.

The step's writer process does it for the step (`writer_process.py`), or the step does it
itself when there is none or it died (`staged_day.py`). A chunk's calls are priced, each
cleaned turn gets its calls' costs, and each table's rows are written under a temporary
name and renamed, so a chunk's file is whole or absent. No Dagster here.
"""

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cost_pipeline.gemini.call_ids import call_id
from cost_pipeline.gemini_step.tables import CALLS, CLEANED, COLUMN_TYPES, FUNCTIONS
from cost_pipeline.money.pricing import ZERO, PriceBook, price_calls
from cost_pipeline.storage.staging import arrow_schema


def chunk_path(folder: Path, table: str, number: int) -> Path:
    return folder / f"{table}-{number:06d}.parquet"


def stage_chunk(
    folder: Path,
    number: int,
    book: PriceBook,
    cleaned: list[dict],
    functions: list[dict],
    calls: list[dict],
) -> dict[str, int]:
    """Price `calls`, give each cleaned turn its costs, and write chunk `number` of the three tables; rows per table."""
    priced = _columns(price_calls(pd.DataFrame(calls), book), COLUMN_TYPES[CALLS])
    frames = {
        CLEANED: _columns(_with_turn_costs(pd.DataFrame(cleaned), priced), COLUMN_TYPES[CLEANED]),
        FUNCTIONS: _columns(pd.DataFrame(functions), COLUMN_TYPES[FUNCTIONS]),
        CALLS: priced,
    }
    for table, frame in frames.items():
        if len(frame):
            write_whole(
                pa.Table.from_pandas(frame, schema=arrow_schema(COLUMN_TYPES[table]), preserve_index=False),
                chunk_path(folder, table, number),
            )
    return {table: len(frame) for table, frame in frames.items()}


def write_whole(table: pa.Table, path: Path) -> None:
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
