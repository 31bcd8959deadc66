"""The cost dashboard: one self-contained HTML page of what a date range cost, for people.

Everything comes from the store through a read-only connection (`daily_cost_rollup`,
`llm_calls` for latency, budgets from `costs.toml`) and lands in one HTML file: figure
tiles, charts drawn by matplotlib as inline SVG (no JavaScript, no CDN, opens offline),
and the day x evaluation x model x stage table. Money stays `Decimal` until it is
printed; charts plot floats, every number a person reads comes from the Decimals.
"""

import calendar
import html
import io
import os
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd

from cost_pipeline.reports.markdown import money, money_sum
from cost_pipeline.reports.report import rollup_completeness
from cost_pipeline.storage.connect import connect, one_row, query_frame
from cost_pipeline.storage.tables import table_exists

BILLED_TOKEN_PARTS = ["uncached input", "cached input", "output", "thinking", "tool prompt"]
"""Parts that add up to the billed tokens: the prompt count includes its cached part, so that part is taken out."""
DEFAULT_DAYS = 60
"""A dashboard shows this many days, ending on the latest, unless told otherwise."""
PROJECTION_DAYS = 7
"""Budget projections extrapolate the average spend of the last this many days with data."""


@dataclass
class DashboardData:
    start: date
    end: date
    rollup: pd.DataFrame
    """daily_cost_rollup rows of the range (Decimals for money)."""
    latency: pd.DataFrame
    """Per day: p50 and p95 latency of answered API calls."""
    latency_overall: tuple[float | None, float | None]
    """p50 and p95 over every answered API call of the range."""
    spend_to_date: pd.DataFrame
    """Per evaluation and day, all-time spend up to and including that day (for budget burn-down)."""
    budgets: dict[str, Decimal]


def load(database: str | Path, start: date, end: date, budgets: dict[str, Decimal]) -> DashboardData:
    """The range's figures, read without taking the writer's lock."""
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", "daily_cost_rollup"):
            raise LookupError(f"no daily_cost_rollup in {database}: run a day first (make demo)")
        rollup = query_frame(
            connection,
            """SELECT * EXCLUDE (run_id) FROM daily_cost_rollup
            WHERE partition_date BETWEEN ? AND ? ORDER BY partition_date, evaluation_id, model, stage""",
            [start, end],
        )
        latency = query_frame(
            connection,
            """
            SELECT partition_date, quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms
            FROM llm_calls WHERE partition_date BETWEEN ? AND ? AND NOT cache_hit AND status = 'ok'
            GROUP BY 1 ORDER BY 1""",
            [start, end],
        )
        overall = one_row(
            connection,
            """
            SELECT quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95) FROM llm_calls
            WHERE partition_date BETWEEN ? AND ? AND NOT cache_hit AND status = 'ok'""",
            [start, end],
        )
        spend_to_date = query_frame(
            connection,
            """
            SELECT partition_date, evaluation_id,
                   sum(sum(spend_usd)) OVER (PARTITION BY evaluation_id ORDER BY partition_date) AS spend_to_date
            FROM daily_cost_rollup WHERE partition_date <= ? GROUP BY 1, 2 ORDER BY 2, 1""",
            [end],
        )
    return DashboardData(start, end, rollup, latency, tuple(overall), spend_to_date, budgets)


def figures(data: DashboardData) -> dict[str, str]:
    """The headline numbers, as shown on the page (each also carries a `data-figure` name for tests)."""
    rollup = data.rollup
    calls, billed = int(rollup["calls"].sum()), int(rollup["billed_attempts"].sum())
    return {
        "spend": money(money_sum(rollup["spend_usd"])),
        "data_cost": money(money_sum(rollup["total_cost_usd"])),
        "saved": money(money_sum(rollup["saved_cost_usd"])),
        "calls": f"{calls:,}",
        "cache_hit_rate": _share(int(rollup["cache_hits"].sum()), calls),
        "failure_rate": _share(int(rollup["failures"].sum()), calls),
        "rejection_rate": _share(int(rollup["rejected_attempts"].sum()), billed),
        "latency_p50": _ms(data.latency_overall[0]),
        "latency_p95": _ms(data.latency_overall[1]),
        "completeness": rollup_completeness(rollup),
    }


def render(data: DashboardData, generated_at: datetime | None = None) -> str:
    """The whole page: figure tiles, charts, budget burn-down and the detail table."""
    generated_at = generated_at or datetime.now(timezone.utc)
    shown = figures(data)
    labels = {
        "spend": "Spend (billed attempts)",
        "data_cost": "Cost of the data",
        "saved": "Saved by the cache",
        "calls": "Calls",
        "cache_hit_rate": "Cache hits",
        "failure_rate": "Failed calls",
        "rejection_rate": "Rejected answers",
        "latency_p50": "Latency p50",
        "latency_p95": "Latency p95",
    }
    tiles = "".join(
        f'<div class="tile"><div class="label">{html.escape(label)}</div>'
        f'<div class="value" data-figure="{name}">{html.escape(shown[name])}</div></div>'
        for name, label in labels.items()
    )
    charts = "".join(f"<section><h2>{html.escape(title)}</h2>{svg}</section>" for title, svg in _charts(data))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gemini costs {data.start} to {data.end}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #1f2328; background: #fafafa; }}
h1 {{ margin: 0 0 4px; font-size: 22px; }} h2 {{ font-size: 16px; margin: 0 0 8px; }}
.note {{ color: #57606a; margin-bottom: 16px; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px;
          margin-bottom: 20px; }}
.tile {{ background: white; border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 12px; }}
.tile .label {{ color: #57606a; font-size: 12px; }}
.tile .value {{ font-size: 20px; font-weight: 600; margin-top: 2px; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }}
section {{ background: white; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px; }}
section svg {{ width: 100%; height: auto; }}
table {{ border-collapse: collapse; width: 100%; background: white; font-size: 13px; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }}
th {{ background: #f6f8fa; }} td.key {{ text-align: left; }}
</style></head><body>
<h1>Gemini costs, {data.start} to {data.end}</h1>
<div class="note">Totals: <span data-figure="completeness">{html.escape(shown["completeness"])}</span>.
Spend is every billed attempt of every run (what the invoice says); the cost of the data is what the
rows as they stand cost (a cache hit costs nothing). Generated {generated_at:%Y-%m-%d %H:%M} UTC.</div>
<div class="tiles">{tiles}</div>
<div class="charts">{charts}</div>
<section style="margin-top:16px"><h2>Day x evaluation x model x stage</h2>{_detail_table(data.rollup)}</section>
</body></html>
"""


def write(
    database: str | Path, path: str | Path, start: date, end: date, budgets: dict[str, Decimal]
) -> tuple[Path, DashboardData]:
    """Load the range and write the page to `path` (its folder created); returns the path and the figures' data.

    Written to a temporary file and renamed, so a browser, or a second writer (the asset
    and the CLI may run at once), never sees half a page.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load(database, start, end, budgets)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(render(data), encoding="utf-8")
    os.replace(partial, path)
    return path, data


def burn_down(data: DashboardData) -> pd.DataFrame:
    """Per evaluation with a budget: budget, spent to date, left, and left projected at the end of the month.

    The projection spends the average of the last `PROJECTION_DAYS` days with data every
    day until the month of the range's last day ends.
    """
    rows = []
    month_end = data.end.replace(day=calendar.monthrange(data.end.year, data.end.month)[1])
    default = data.budgets.get("default")
    for evaluation, days in data.spend_to_date.groupby("evaluation_id"):
        budget = data.budgets.get(evaluation, default)
        if budget is None:
            continue
        days = days.sort_values("partition_date")
        spent = days["spend_to_date"].iloc[-1] or Decimal(0)
        daily = days["spend_to_date"].diff().fillna(days["spend_to_date"]).tail(PROJECTION_DAYS)
        per_day = money_sum(daily) / len(daily) if len(daily) else Decimal(0)
        days_left = (month_end - data.end).days
        rows.append(
            {
                "evaluation_id": evaluation,
                "budget_usd": budget,
                "spent_usd": spent,
                "left_usd": budget - spent,
                "per_day_usd": per_day,
                "projected_left_usd": budget - spent - per_day * days_left,
                "month_end": month_end,
            }
        )
    return pd.DataFrame(rows)


def _charts(data: DashboardData) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    rollup = data.rollup.assign(day=data.rollup["partition_date"].astype(str))
    days = sorted(rollup["day"].unique())

    def money_by(column, by):
        return (
            rollup.groupby(["day", by])[column]
            .agg(money_sum)
            .unstack(fill_value=Decimal(0))
            .reindex(days)
            .astype(float)
        )

    tokens = billed_token_parts(rollup).groupby(rollup["day"]).sum().reindex(days)
    grouped = rollup.groupby("day")[["calls", "failures", "billed_attempts", "rejected_attempts"]].sum().reindex(days)
    rates = (
        pd.DataFrame(
            {
                "failed calls": grouped["failures"] / grouped["calls"].where(grouped["calls"] > 0),
                "rejected answers": grouped["rejected_attempts"]
                / grouped["billed_attempts"].where(grouped["billed_attempts"] > 0),
            }
        ).fillna(0.0)
        * 100
    )
    latency = data.latency.assign(day=data.latency["partition_date"].astype(str)).set_index("day")[["p50_ms", "p95_ms"]]
    saved = pd.DataFrame(
        {
            "saved by the cache": rollup.groupby("day")["saved_cost_usd"].agg(money_sum).astype(float),
            "cost of the data": rollup.groupby("day")["total_cost_usd"].agg(money_sum).astype(float),
        }
    ).reindex(days)
    return [
        ("Spend per day by model (USD)", _bars(money_by("spend_usd", "model"), "USD")),
        ("Spend per day by evaluation (USD)", _bars(money_by("spend_usd", "evaluation_id"), "USD")),
        ("Cost of the data per day by model (USD)", _bars(money_by("total_cost_usd", "model"), "USD")),
        ("Billed tokens per day by kind", _bars(tokens, "tokens")),
        ("Cache savings per day (USD)", _bars(saved, "USD", stacked=False)),
        ("Failure and rejection rates per day (%)", _lines(rates, "%")),
        (
            "Latency of answered API calls (ms)",
            _lines(latency.rename(columns={"p50_ms": "p50", "p95_ms": "p95"}), "ms"),
        ),
        ("Budget left per evaluation, projected to the month's end (USD)", _burn_down_chart(data)),
    ]


def _bars(frame: pd.DataFrame, unit: str, stacked: bool = True) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.2))
    if frame.empty or not frame.columns.size:
        axes.text(0.5, 0.5, "no data", ha="center", va="center")
    else:
        frame.plot.bar(stacked=stacked, ax=axes, width=0.8)
        axes.legend(fontsize=7, loc="upper left", frameon=False)
    axes.set_ylabel(unit)
    axes.set_xlabel("")
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _svg(figure)


def _lines(frame: pd.DataFrame, unit: str) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.2))
    if frame.empty:
        axes.text(0.5, 0.5, "no data", ha="center", va="center")
    else:
        frame.plot(ax=axes, marker="o")
        axes.legend(fontsize=7, frameon=False)
    axes.set_ylabel(unit)
    axes.set_xlabel("")
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _svg(figure)


def _burn_down_chart(data: DashboardData) -> str:
    import matplotlib.pyplot as plt

    plan = burn_down(data)
    figure, axes = plt.subplots(figsize=(7, 3.2))
    if plan.empty:
        axes.text(0.5, 0.5, "no budgets in costs.toml", ha="center", va="center")
        return _svg(figure)
    default = data.budgets.get("default")
    for evaluation, days in data.spend_to_date[data.spend_to_date["evaluation_id"].isin(plan["evaluation_id"])].groupby(
        "evaluation_id"
    ):
        budget = data.budgets.get(evaluation, default)
        when = pd.to_datetime(days["partition_date"])
        left = [float(budget - spent) for spent in days["spend_to_date"]]
        (line,) = axes.plot(when, left, marker="o", label=evaluation)
        row = plan[plan["evaluation_id"] == evaluation].iloc[0]
        axes.plot(
            [when.iloc[-1], pd.Timestamp(row["month_end"])],
            [left[-1], float(row["projected_left_usd"])],
            linestyle="--",
            color=line.get_color(),
        )
    axes.axhline(0, color="#cf222e", linewidth=1)
    axes.legend(fontsize=7, frameon=False)
    axes.set_ylabel("USD left")
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _svg(figure)


def billed_token_parts(rollup: pd.DataFrame) -> pd.DataFrame:
    """Each rollup row's billed tokens in parts that add up to them (`BILLED_TOKEN_PARTS`)."""
    return pd.DataFrame(
        {
            "uncached input": rollup["spend_input_tokens"] - rollup["spend_cached_tokens"],
            "cached input": rollup["spend_cached_tokens"],
            "output": rollup["spend_output_tokens"],
            "thinking": rollup["spend_thinking_tokens"],
            "tool prompt": rollup["spend_tool_prompt_tokens"],
        },
        columns=BILLED_TOKEN_PARTS,
    )


def _detail_table(rollup: pd.DataFrame) -> str:
    header = [
        "day",
        "evaluation",
        "model",
        "stage",
        "calls",
        "cache hits",
        "failed",
        "billed tokens",
        "spend",
        "cost of the data",
    ]
    rows = []
    for row in rollup.itertuples(index=False):
        tokens = sum(
            int(getattr(row, f"spend_{kind}_tokens")) for kind in ("input", "output", "thinking", "tool_prompt")
        )
        cells = [
            str(row.partition_date),
            row.evaluation_id,
            row.model,
            row.stage,
            f"{row.calls:,}",
            f"{row.cache_hits:,}",
            f"{row.failures:,}",
            f"{tokens:,}",
            money(row.spend_usd),
            money(row.total_cost_usd),
        ]
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="key">{html.escape(c)}</td>' if i < 4 else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    return f'<table data-table="detail"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML prolog or DOCTYPE inside HTML


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def default_path(database: str | Path) -> Path:
    """Where the dashboard lives unless told otherwise: `dashboard.html` beside the DuckDB file."""
    return Path(database).resolve().parent / "dashboard.html"


def latest_day(database: str | Path) -> date:
    """The latest day with a rollup (today when there is none): where a dashboard's range ends by default."""
    with connect(database, read_only=True) as connection:
        latest = (
            one_row(connection, "SELECT max(partition_date) FROM daily_cost_rollup")[0]
            if table_exists(connection, "main", "daily_cost_rollup")
            else None
        )
    return latest or datetime.now(timezone.utc).date()
