"""Small markdown tables for Dagster metadata, so people read results in the UI."""

import pandas as pd


def markdown_table(frame: pd.DataFrame, limit: int = 20) -> str:
    """The first `limit` rows of `frame` as a GitHub-style markdown table."""
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(limit).itertuples(index=False)]
    return "\n".join([header, rule, *rows])
