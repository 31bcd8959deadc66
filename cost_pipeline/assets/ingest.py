"""raw_turns and quarantined_turns: a day's landing files, validated line by line.

Both tables come from one step and are committed in one transaction, so a day's good
and quarantined lines always add up to the lines that landed. A day with no landing
files is not an error in a backfill: the step yields neither table, Dagster skips the
day's downstream steps and checks, and the run succeeds saying the day was skipped; a
run launched for that one day fails with that one sentence as its reason. The day streams from the
landing files to Parquet staging chunk by chunk (`storage.staging`), so a day of any
size validates in flat memory; the IO manager inserts the staged rows at commit.
"""

from collections import Counter

import dagster as dg
import pandas as pd

from cost_pipeline.landing import LandingFolderMissing, Turn
from cost_pipeline.markdown import markdown_table
from cost_pipeline.partitions import DUCKDB_POOL, daily_partitions
from cost_pipeline.resources import LandingResource
from cost_pipeline.storage.io_manager import BATCH_KEY, column_types
from cost_pipeline.storage.staging import StagedTable, StagingArea, query_staged, staging_name, staging_root
from cost_pipeline.storage.warehouse import DuckDBWarehouse

RAW_TURNS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("turn_id", "VARCHAR", description="Given in the file, or derived from evaluation, conversation, index."),
        dg.TableColumn("evaluation_id", "VARCHAR"),
        dg.TableColumn("conversation_id", "VARCHAR"),
        dg.TableColumn("turn_index", "INTEGER"),
        dg.TableColumn("speaker", "VARCHAR", description="User or Assistant."),
        dg.TableColumn("text", "VARCHAR"),
        dg.TableColumn("created_at", "TIMESTAMPTZ", description="UTC; naive input is read as UTC."),
        dg.TableColumn("source_file", "VARCHAR"),
        dg.TableColumn("line_number", "INTEGER"),
    ]
)
QUARANTINED_TURNS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("source_file", "VARCHAR"),
        dg.TableColumn("line_number", "INTEGER"),
        dg.TableColumn("reason_code", "VARCHAR", description="The rule the line broke, e.g. not_json, duplicate_turn_id."),
        dg.TableColumn("reason", "VARCHAR", description="What is wrong, for a person."),
        dg.TableColumn("raw_content", "VARCHAR", description="The line as landed, truncated."),
    ]
)
QUARANTINE_PREVIEW_ROWS = 20
BACKFILL_TAG = "dagster/backfill"


@dg.multi_asset(
    outs={
        # Optional, so a day with nothing landed skips downstream instead of failing; one batch all the same.
        "raw_turns": dg.AssetOut(
            description="The day's valid turns, one row per landed line.",
            metadata={"dagster/column_schema": RAW_TURNS_SCHEMA, BATCH_KEY: "landed_turns"},
            kinds={"pandas", "duckdb"}, is_required=False,
        ),
        "quarantined_turns": dg.AssetOut(
            description="The day's landed lines that failed validation, each with its reason.",
            metadata={"dagster/column_schema": QUARANTINED_TURNS_SCHEMA, BATCH_KEY: "landed_turns"},
            kinds={"pandas", "duckdb"}, is_required=False,
        ),
    },
    partitions_def=daily_partitions,
    group_name="ingest",
    pool=DUCKDB_POOL,
)
def landed_turns(context: dg.AssetExecutionContext, landing: LandingResource, warehouse: DuckDBWarehouse):
    """Validate the day's landing files into raw_turns and quarantined_turns."""
    try:
        reader = landing.reader(context.partition_key)
    except LandingFolderMissing as missing:
        if BACKFILL_TAG not in context.run.tags:
            raise dg.Failure(description=f"{missing}. Nothing was written; the late_landing_sensor runs the day "
                                         "when its files arrive.") from None
        context.log.warning(f"skipped {context.partition_key}: {missing}; its downstream steps are skipped too, "
                            "and the late_landing_sensor runs the day when its files arrive")
        return
    area = StagingArea(staging_root(warehouse.database), staging_name(context.run.run_id, "landed_turns"))
    turns = area.writer("raw_turns", column_types(RAW_TURNS_SCHEMA))
    quarantine = area.writer("quarantined_turns", column_types(QUARANTINED_TURNS_SCHEMA))
    reasons: Counter = Counter()
    preview: list[dict] = []
    for item in reader:
        if isinstance(item, Turn):
            turns.append(item.__dict__)
            continue
        quarantine.append(item.__dict__)
        reasons[item.reason_code] += 1
        if len(preview) < QUARANTINE_PREVIEW_ROWS:
            preview.append(item.__dict__)
    staged_turns, staged_quarantine = turns.close(), quarantine.close()
    if staged_quarantine.rows:
        context.log.warning(f"{staged_quarantine.rows} of {staged_turns.rows + staged_quarantine.rows} lines quarantined")
    yield dg.Output(staged_turns, "raw_turns",
                    metadata=_turn_metadata(staged_turns, len(reader.files), staged_quarantine.rows))
    yield dg.Output(staged_quarantine, "quarantined_turns", metadata=_quarantine_metadata(reasons, preview))


def _turn_metadata(turns: StagedTable, files: int, quarantined: int) -> dict:
    ((evaluations, conversations, user_turns),) = query_staged(
        "SELECT count(DISTINCT evaluation_id), count(DISTINCT (evaluation_id, conversation_id)), "
        "count(*) FILTER (WHERE speaker = 'User') FROM turns", turns=turns)
    return {"rows": turns.rows, "quarantined": quarantined, "evaluations": evaluations, "conversations": conversations,
            "files": files, "user_turns": user_turns}


def _quarantine_metadata(reasons: Counter, preview: list[dict]) -> dict:
    metadata: dict = {"rows": sum(reasons.values())}
    if reasons:
        metadata["reasons"] = dg.MetadataValue.json(dict(reasons.most_common()))
        metadata["preview"] = dg.MetadataValue.md(
            markdown_table(pd.DataFrame(preview)[["source_file", "line_number", "reason"]], QUARANTINE_PREVIEW_ROWS))
    return metadata
