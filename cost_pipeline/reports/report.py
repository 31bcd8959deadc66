"""Read-only views of the DuckDB store for people at a terminal: row counts and the cost report.

The report reads `daily_cost_rollup` through a read-only connection, which waits for a
writer's short transaction instead of blocking it, and keeps money as `Decimal` all the
way to the printed figure.
"""

import csv
import io
import json
from datetime import date
from decimal import Decimal

import pandas as pd

from cost_pipeline.storage.connect import connect, one_row, query_frame
from cost_pipeline.storage.tables import PARTITION_COLUMN, qualified, table_exists

DIMENSIONS = {"day": "partition_date", "evaluation": "evaluation_id", "model": "model", "stage": "stage"}
MEASURES = [
    "calls",
    "cache_hits",
    "total_tokens",
    "spend_usd",
    "total_cost_usd",
    "saved_cost_usd",
    "unpriced_calls",
    "billing_unknown_attempts",
    "provisioned_tokens",
]
"""`spend_usd` is money out (every billed attempt of every run); `total_cost_usd` the cost of the data as it stands;
`provisioned_tokens` the billed tokens Vertex AI served from provisioned throughput (prepaid: $0 in every figure)."""


def incomplete_note(unpriced: int, unknown: int) -> str:
    """The words a total carries when it leaves something out; empty when it does not."""
    parts = [
        f"{unpriced:,} calls without a price" if unpriced else "",
        f"{unknown:,} attempts billed for usage never seen" if unknown else "",
    ]
    parts = [p for p in parts if p]
    return f"incomplete: leaves out {' and '.join(parts)}" if parts else ""


def rollup_completeness(rollup: pd.DataFrame) -> str:
    """`complete`, or what a total of these daily_cost_rollup rows leaves out."""
    unpriced = int(rollup["missing_price_calls"].sum() + rollup["unpriced_attempts"].sum())
    return incomplete_note(unpriced, int(rollup["billing_unknown_attempts"].sum())) or "complete"


def table_counts(database: str, day: date) -> dict[str, int]:
    """Rows per table for one day (all rows of an unpartitioned table), read without taking the writer's lock."""
    with connect(database, read_only=True) as connection:
        tables = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.columns WHERE column_name = ? ORDER BY 1, 2",
            [PARTITION_COLUMN],
        ).fetchall()
        return {
            table: one_row(
                connection,
                f"SELECT count(*) FROM {qualified(schema, table)} "
                f"WHERE {PARTITION_COLUMN} = ? OR {PARTITION_COLUMN} IS NULL",
                [day],
            )[0]
            for schema, table in tables
        }


def dimensions(by: str) -> list[str]:
    """`day`, `evaluation,model` ...: the report's grouping, any combination of DIMENSIONS, in the order given."""
    names = [name.strip() for name in by.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIMENSIONS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--by takes a comma-separated combination of {', '.join(DIMENSIONS)}; got {by!r}")
    return names


def cost_report(database: str, start: date, end: date, by: str) -> pd.DataFrame:
    """Calls, tokens and cost per `by` (day, evaluation, model, stage or any combination) between two days,
    inclusive."""
    names = dimensions(by)
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", "daily_cost_rollup"):
            return pd.DataFrame(columns=[*names, *MEASURES])
        keys = ", ".join(f"{DIMENSIONS[name]} AS {name}" for name in names)
        return query_frame(
            connection,
            f"""
            SELECT {keys}, sum(calls)::BIGINT AS calls, sum(cache_hits)::BIGINT AS cache_hits,
                   sum(total_tokens)::BIGINT AS total_tokens, sum(spend_usd) AS spend_usd,
                   sum(total_cost_usd) AS total_cost_usd, sum(saved_cost_usd) AS saved_cost_usd,
                   (sum(missing_price_calls) + sum(unpriced_attempts))::BIGINT AS unpriced_calls,
                   sum(billing_unknown_attempts)::BIGINT AS billing_unknown_attempts,
                   sum(provisioned_tokens)::BIGINT AS provisioned_tokens
            FROM daily_cost_rollup WHERE partition_date BETWEEN ? AND ?
            GROUP BY ALL ORDER BY ALL""",
            [start, end],
        )


def daily_cost_by_model(database: str, start: date, end: date) -> pd.DataFrame:
    """Daily spend per model, one column per model, for the chart."""
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", "daily_cost_rollup"):
            return pd.DataFrame()
        frame = query_frame(
            connection,
            """
            SELECT partition_date AS day, model, sum(spend_usd) AS cost FROM daily_cost_rollup
            WHERE partition_date BETWEEN ? AND ? GROUP BY ALL ORDER BY ALL""",
            [start, end],
        )
    return frame.pivot(index="day", columns="model", values="cost").fillna(Decimal(0))


def render(report: pd.DataFrame, fmt: str) -> str:
    """The report as an aligned table with a total line, or as JSON or CSV."""
    rows = [{k: _plain(v) for k, v in row.items()} for row in report.to_dict("records")]
    totals = _totals(report)
    note = incomplete_note(totals["unpriced_calls"], totals["billing_unknown_attempts"])
    if fmt == "json":
        return json.dumps(
            {"rows": rows, "total": {**_plain_dict(totals), "complete": not note, "note": note or None}}, indent=2
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(report.columns))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    provisioned = totals["provisioned_tokens"]
    return (
        _table(report if provisioned else report.drop(columns="provisioned_tokens"))
        + (f"\nTOTAL is {note}: it is a lower bound" if note else "")
        + (f"\n{provisioned_note(provisioned)}" if provisioned else "")
    )


def provisioned_note(tokens: int) -> str:
    """What provisioned throughput served, said apart from the spend it is not in."""
    return f"served on provisioned throughput: {tokens:,} tokens ($0 marginal, prepaid capacity: in no spend figure)"


def write_chart(by_model: pd.DataFrame, path: str) -> None:
    """A stacked bar chart of daily spend by model, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    by_model.astype(float).plot.bar(stacked=True, ax=axes)
    axes.set_ylabel("spend (USD)")
    axes.set_xlabel("day")
    axes.set_title("Daily Gemini spend by model")
    axes.set_xticklabels([str(day) for day in by_model.index], rotation=45, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _totals(report: pd.DataFrame) -> dict:
    return {
        m: sum((v for v in report[m] if v is not None), Decimal(0) if m.endswith("_usd") else 0)
        for m in MEASURES
        if m in report
    }


def _table(report: pd.DataFrame) -> str:
    header = list(report.columns)
    body = [[_cell(v) for v in row] for row in report.itertuples(index=False)]
    totals = _totals(report)
    keys = [name for name in header if name not in MEASURES]
    body.append(["TOTAL", *([""] * (len(keys) - 1)), *(_cell(totals[m]) for m in header[len(keys) :])])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < len(keys) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])


def _cell(value) -> str:
    if isinstance(value, Decimal):
        return f"{value:,.6f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def _plain_dict(values: dict) -> dict:
    return {k: _plain(v) for k, v in values.items()}
