"""Read-only views of the DuckDB store for people at a terminal."""

from datetime import date

from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.tables import PARTITION_COLUMN, qualified


def table_counts(database: str, day: date) -> dict[str, int]:
    """Rows per partitioned table for one day, read without taking the writer's lock."""
    with connect(database, read_only=True) as connection:
        tables = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.columns WHERE column_name = ? ORDER BY 1, 2",
            [PARTITION_COLUMN],
        ).fetchall()
        return {
            table: connection.execute(
                f"SELECT count(*) FROM {qualified(schema, table)} WHERE {PARTITION_COLUMN} = ?", [day]
            ).fetchone()[0]
            for schema, table in tables
        }
