"""raw_turns and quarantined_turns: a day's landing files, validated line by line.

Both tables come from one step and are committed in one transaction, so a day's good
and quarantined lines always add up to the lines that landed. A day with no landing
files is not an error in a backfill: the day is written empty (its metadata and a warning
say why), so the backfill stays green and the late_landing_sensor runs the day again when
its files arrive; a run launched for that one day fails with that one sentence as its
reason, and the schedule skips the day. The day streams from the
landing files to Parquet staging chunk by chunk (`storage.staging`), so a day of any
size validates in flat memory; the IO manager inserts the staged rows at commit.
"""

from collections import Counter

import dagster as dg
import pandas as pd

from cost_pipeline.defs.partitions import DUCKDB_POOL, daily_partitions
from cost_pipeline.defs.resources import LandingResource
from cost_pipeline.defs.table_schema import table_schema
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.ingest.landing import LANDED, LandingReader, Turn
from cost_pipeline.ingest.tables import QUARANTINED_TURNS, RAW_TURNS
from cost_pipeline.reports.markdown import markdown_table
from cost_pipeline.storage.arrow_memory import use_system_allocator
from cost_pipeline.storage.columns import sql_types
from cost_pipeline.storage.staging import StagedTable, StagingArea, query_staged, staging_name, staging_root

QUARANTINE_PREVIEW_ROWS = 20
BACKFILL_TAG = "dagster/backfill"


@dg.multi_asset(
    outs={
        "raw_turns": dg.AssetOut(
            description="The day's valid turns, one row per landed line.",
            metadata={"dagster/column_schema": table_schema(RAW_TURNS)},
            kinds={"pandas", "duckdb"},
        ),
        "quarantined_turns": dg.AssetOut(
            description="The day's landed lines that failed validation, each with its reason.",
            metadata={"dagster/column_schema": table_schema(QUARANTINED_TURNS)},
            kinds={"pandas", "duckdb"},
        ),
    },
    partitions_def=daily_partitions,
    group_name="ingest",
    pool=DUCKDB_POOL,
)
def landed_turns(context: dg.AssetExecutionContext, landing: LandingResource, warehouse: DuckDBWarehouse):
    """Validate the day's landing files into raw_turns and quarantined_turns."""
    use_system_allocator()
    missing = landing.missing(context.partition_key)
    if missing and BACKFILL_TAG not in context.run.tags:
        raise dg.Failure(
            description=f"{missing}. Nothing was written; the late_landing_sensor runs the day when its files arrive."
        )
    if missing:
        # Written empty rather than skipped: Dagster counts an asset backfill's unmaterialized days as failed.
        context.log.warning(
            f"{missing}: this backfill writes the day empty; the late_landing_sensor runs it again "
            "when its files arrive"
        )
    reader: LandingReader | None = None if missing else landing.reader(context.partition_key)
    area = StagingArea(staging_root(warehouse.database), staging_name(context.run.run_id, "landed_turns"))
    turns = area.writer("raw_turns", sql_types(RAW_TURNS))
    quarantine = area.writer("quarantined_turns", sql_types(QUARANTINED_TURNS))
    reasons: Counter = Counter()
    preview: list[dict] = []
    for item in reader or ():
        if isinstance(item, Turn):
            turns.append(item.__dict__)
            continue
        quarantine.append(item.__dict__)
        reasons[item.reason_code] += 1
        if len(preview) < QUARANTINE_PREVIEW_ROWS:
            preview.append(item.__dict__)
    staged_turns, staged_quarantine = turns.close(), quarantine.close()
    if staged_quarantine.rows:
        context.log.warning(
            f"{staged_quarantine.rows} of {staged_turns.rows + staged_quarantine.rows} lines quarantined"
        )
    yield dg.Output(
        staged_turns,
        "raw_turns",
        metadata={
            **_turn_metadata(staged_turns, len(reader.files) if reader else 0, staged_quarantine.rows),
            "landing": missing or LANDED,
        },
    )
    yield dg.Output(staged_quarantine, "quarantined_turns", metadata=_quarantine_metadata(reasons, preview))


def _turn_metadata(turns: StagedTable, files: int, quarantined: int) -> dict:
    ((evaluations, conversations, user_turns),) = query_staged(
        "SELECT count(DISTINCT evaluation_id), count(DISTINCT (evaluation_id, conversation_id)), "
        "count(*) FILTER (WHERE speaker = 'User') FROM turns",
        turns=turns,
    )
    return {
        "rows": turns.rows,
        "quarantined": quarantined,
        "evaluations": evaluations,
        "conversations": conversations,
        "files": files,
        "user_turns": user_turns,
    }


def _quarantine_metadata(reasons: Counter, preview: list[dict]) -> dict:
    metadata: dict = {"rows": sum(reasons.values())}
    if reasons:
        metadata["reasons"] = dg.MetadataValue.json(dict(reasons.most_common()))
        metadata["preview"] = dg.MetadataValue.md(
            markdown_table(pd.DataFrame(preview)[["source_file", "line_number", "reason"]], QUARANTINE_PREVIEW_ROWS)
        )
    return metadata
