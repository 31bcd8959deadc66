"""raw_turns and quarantined_turns: a day's landing files, validated line by line.

Both tables come from one step and are committed in one transaction, so a day's good
and quarantined lines always add up to the lines that landed.
"""

from collections import Counter

import dagster as dg
import pandas as pd

from cost_pipeline.landing import LandingDay
from cost_pipeline.markdown import markdown_table
from cost_pipeline.partitions import DUCKDB_POOL, daily_partitions
from cost_pipeline.resources import LandingResource

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


@dg.multi_asset(
    outs={
        "raw_turns": dg.AssetOut(
            description="The day's valid turns, one row per landed line.",
            metadata={"dagster/column_schema": RAW_TURNS_SCHEMA},
            kinds={"pandas", "duckdb"},
        ),
        "quarantined_turns": dg.AssetOut(
            description="The day's landed lines that failed validation, each with its reason.",
            metadata={"dagster/column_schema": QUARANTINED_TURNS_SCHEMA},
            kinds={"pandas", "duckdb"},
        ),
    },
    partitions_def=daily_partitions,
    group_name="ingest",
    pool=DUCKDB_POOL,
)
def landed_turns(context: dg.AssetExecutionContext, landing: LandingResource):
    """Validate the day's landing files into raw_turns and quarantined_turns."""
    day = landing.read_day(context.partition_key)
    turns = day.turns_frame()
    quarantined = day.quarantine_frame()
    context.add_output_metadata(_turn_metadata(day, turns), output_name="raw_turns")
    context.add_output_metadata(_quarantine_metadata(quarantined), output_name="quarantined_turns")
    if len(quarantined):
        context.log.warning(f"{len(quarantined)} of {len(turns) + len(quarantined)} lines quarantined")
    return turns, quarantined


def _turn_metadata(day: LandingDay, turns: pd.DataFrame) -> dict:
    return {
        "rows": len(turns),
        "quarantined": len(day.quarantined),
        "evaluations": int(turns["evaluation_id"].nunique()),
        "conversations": int(turns[["evaluation_id", "conversation_id"]].drop_duplicates().shape[0]),
        "files": len(day.files),
        "user_turns": int((turns["speaker"] == "User").sum()),
    }


def _quarantine_metadata(quarantined: pd.DataFrame) -> dict:
    metadata: dict = {"rows": len(quarantined)}
    if len(quarantined):
        kinds = Counter(quarantined["reason_code"])
        metadata["reasons"] = dg.MetadataValue.json(dict(kinds.most_common()))
        metadata["preview"] = dg.MetadataValue.md(
            markdown_table(quarantined[["source_file", "line_number", "reason"]], QUARANTINE_PREVIEW_ROWS))
    return metadata
