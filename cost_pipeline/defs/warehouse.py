"""Read-only SQL over the DuckDB store, with money kept exact.

DuckDB hands DECIMAL columns to pandas as float64; here they come back as Python
`Decimal`s, so no cent is rounded on its way through a rollup, a check or a report.
Reads use read-only connections that wait out a writer's lock.
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from cost_pipeline.storage.connect import connect, query_frame
from cost_pipeline.storage.lake import store_exists


class DuckDBWarehouse(dg.ConfigurableResource):
    """The DuckDB file, for assets and checks that aggregate in SQL rather than in pandas."""

    database: str = Field(description="Path of the DuckDB file.")
    lock_timeout_s: float = Field(default=120.0, description="How long to wait for a writer to release the file.")

    def query(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        if not store_exists(self.database):
            raise FileNotFoundError(
                f"DuckDB file {self.database} does not exist yet: materialize upstream assets first"
            )
        with connect(self.database, read_only=True, timeout_s=self.lock_timeout_s) as connection:
            return query_frame(connection, sql, params)
