"""Small markdown tables and money for Dagster metadata, so people read results in the UI."""

from decimal import Decimal

import pandas as pd


def money(value: Decimal | None, places: int = 6) -> str:
    """Dollars as a person reads them: `$0.247333` (rounded for display; keep the exact value beside it)."""
    return "n/a" if value is None else f"${value:,.{places}f}"


def money_sum(values) -> Decimal:
    """The sum of Decimal amounts, leaving out nulls (callers say when a total is incomplete)."""
    return sum((v for v in values if v is not None and not pd.isna(v)), Decimal(0))


def percent(part: float | Decimal, whole: float | Decimal) -> float:
    """`part` of `whole` in percent, to two places (0.0 when `whole` is 0): a rate as people read it, and plottable."""
    return round(100 * float(part) / float(whole), 2) if whole else 0.0


def rounded(value: float | None, places: int = 1) -> float | None:
    """A measurement (milliseconds, megabytes, seconds) to the places a person reads."""
    return None if value is None else round(float(value), places)


def markdown_table(frame: pd.DataFrame, limit: int = 20) -> str:
    """The first `limit` rows of `frame` as a GitHub-style markdown table."""

    def cell(value) -> str:
        return (
            ""
            if value is None or (isinstance(value, float) and pd.isna(value))
            else str(value).replace("|", "\\|").replace("\n", " ")
        )

    shown = frame.head(limit)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "".join("---:|" if _numeric(shown[column]) else "---|" for column in shown.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _numeric(column: pd.Series) -> bool:
    """Whether a column holds numbers (or money and percentages as text), so it is right-aligned; text is left."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and pd.isna(v)) and v != ""]
    return bool(values) and all(
        (isinstance(v, (int, float, Decimal)) and not isinstance(v, bool))
        or (isinstance(v, str) and v.lstrip("-$").replace(",", "").replace(".", "").rstrip("%").isdigit())
        for v in values
    )
