"""A table's declared columns (`storage/columns.py`) as the `dg.TableSchema` its asset page shows."""

from collections.abc import Iterable

import dagster as dg

from cost_pipeline.storage.columns import Column


def table_schema(columns: Iterable[Column]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(column.name, column.sql_type.replace(" NOT NULL", ""), description=column.meaning)
            for column in columns
        ]
    )
