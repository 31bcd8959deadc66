"""The ingest step's two tables, declared once (`storage/columns.py`)."""

from cost_pipeline.storage.columns import Column

RAW_TURNS = [
    Column("turn_id", "VARCHAR"),
    Column("evaluation_id", "VARCHAR"),
    Column("conversation_id", "VARCHAR"),
    Column("turn_index", "INTEGER"),
    Column("speaker", "VARCHAR"),
    Column("text", "VARCHAR"),
    Column("created_at", "TIMESTAMPTZ", "UTC; naive input is read as UTC."),
    Column("source_file", "VARCHAR"),
    Column("line_number", "INTEGER"),
]
QUARANTINED_TURNS = [
    Column("source_file", "VARCHAR"),
    Column("line_number", "INTEGER"),
    Column("reason_code", "VARCHAR", "The rule the line broke, e.g. not_json, duplicate_turn_id."),
    Column("reason", "VARCHAR", "What is wrong, for a person."),
    Column("raw_content", "VARCHAR", "The line as landed, truncated."),
]
