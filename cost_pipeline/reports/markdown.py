"""Small markdown tables and money for Dagster metadata, so people read results in the UI."""

from decimal import Decimal

import pandas as pd


def money(value: Decimal | None, places: int = 6) -> str:
    """Dollars as a person reads them: `$0.247333` (rounded for display; keep the exact value beside it)."""
    return "n/a" if value is None else f"${value:,.{places}f}"


def money_sum(values) -> Decimal:
    """The sum of Decimal amounts, leaving out nulls (callers say when a total is incomplete)."""
    return sum((v for v in values if v is not None and not pd.isna(v)), Decimal(0))


def money_entries(name: str, value: Decimal | None) -> dict:
    """A money figure three ways: `name` as text for people, `name_usd` as a float for the UI's plots, and
    `name_usd_exact` as the exact Decimal in text (floats never carry money)."""
    return {
        name: money(value),
        f"{name}_usd": float(value or 0),
        f"{name}_usd_exact": "n/a" if value is None else str(value),
    }


def markdown_table(frame: pd.DataFrame, limit: int = 20) -> str:
    """The first `limit` rows of `frame` as a GitHub-style markdown table."""

    def cell(value) -> str:
        return (
            ""
            if value is None or (isinstance(value, float) and pd.isna(value))
            else str(value).replace("|", "\\|").replace("\n", " ")
        )

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(limit).itertuples(index=False)]
    return "\n".join([header, rule, *rows])
