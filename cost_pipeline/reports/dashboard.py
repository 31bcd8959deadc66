"""The cost dashboard: one self-contained HTML page of what a date range cost, for people.

Everything comes from the store through a read-only connection (`daily_cost_rollup`, `llm_calls` for
latency, budgets from `costs.toml`) and lands in one HTML file that opens offline: figure tiles,
interactive plotly charts on a real time axis (plotly.js inlined once, nothing fetched) and the day x
evaluation x model x stage table with its totals. Money stays `Decimal` until it is printed: tiles, hover
labels and table cells are formatted from the Decimals, the charts plot floats. Each chart's figure is
embedded as JSON beside its container (`data-chart="<name>"`, `<script id="figure-<name>">`), so what a
chart plots can be read back and checked against the tables.
"""

import calendar
import html
import os
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from cost_pipeline.reports.markdown import money, money_sum
from cost_pipeline.reports.report import provisioned_note, rollup_completeness
from cost_pipeline.storage.connect import connect, one_row, query_frame
from cost_pipeline.storage.lake import describe, is_lake, local_folder
from cost_pipeline.storage.tables import table_exists

BILLED_TOKEN_PARTS = ["uncached input", "cached input", "output", "thinking", "tool prompt"]
"""Parts that add up to the billed tokens: the prompt count includes its cached part, so that part is taken out."""
DEFAULT_DAYS = 60
"""A dashboard shows this many days, ending on the latest, unless told otherwise."""
PROJECTION_DAYS = 7
"""Budget projections extrapolate the average spend of the last this many days with data."""

FONT = '-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
INK, MUTED, GRID, AXIS = "#1f2933", "#616e7c", "#e9ecf0", "#cbd2d9"
EVALUATION_COLOURS = [
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
    "#e15759",
]
"""Tableau 10, a calm palette; an evaluation keeps its colour in every chart of the page."""
MODEL_COLOURS = ["#2f4b7c", "#ff7c43", "#665191", "#2a9d8f", "#d45087", "#a05195", "#ffa600", "#7a8b99"]
TOKEN_COLOURS = {
    "uncached input": "#4e79a7",
    "cached input": "#a0cbe8",
    "output": "#f28e2b",
    "thinking": "#ffbe7d",
    "tool prompt": "#59a14f",
}
"""Input in blues and output in oranges, so the cached part reads as part of the prompt."""
COST_OF_DATA, SAVED, BUDGET, FAILURE, REJECTION = "#2f4b7c", "#8cd17d", "#c0392b", "#e15759", "#b07aa1"
HALF_DAY = timedelta(hours=12)


@dataclass
class DashboardData:
    """What a page shows: the window asked for and the store's rows within it (budgets over all days)."""

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

    @property
    def days_with_data(self) -> list[date]:
        """The days of the range that have rollup rows, in order."""
        return sorted(set(self.rollup["partition_date"]))

    @property
    def days(self) -> list[date]:
        """Every calendar day from the first to the last day with data: a day without rows is a gap on the axis."""
        present = self.days_with_data
        if not present:
            return []
        return [present[0] + timedelta(days=n) for n in range((present[-1] - present[0]).days + 1)]


@dataclass(frozen=True)
class Chart:
    """One chart of the page: `name` is its `data-chart` and `figure-<name>` id, the figure is exactly what it plots."""

    name: str
    title: str
    figure: go.Figure
    note: str = ""
    wide: bool = False
    time_axis: bool = True
    """Zooming one time-axis chart, or picking days above the charts, shows the same days in all of them."""


def load(database: str | Path, start: date, end: date, budgets: dict[str, Decimal]) -> DashboardData:
    """The range's figures, read without taking the writer's lock."""
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", "daily_cost_rollup"):
            raise LookupError(f"no daily_cost_rollup in the {describe(database)}: run a day first (make demo)")
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
    return DashboardData(start, end, rollup, latency, (overall[0], overall[1]), spend_to_date, budgets)


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


def title_range(data: DashboardData) -> str:
    """The range the page is about: the first to the last day with data in the window, or that there is none."""
    present = data.days_with_data
    if not present:
        return f"no data from {data.start} to {data.end}"
    return f"{present[0]} to {present[-1]}"


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


def render(data: DashboardData, generated_at: datetime | None = None) -> str:
    """The whole page: header with the data's range, figure tiles, charts and the detail table with totals."""
    generated_at = generated_at or datetime.now(timezone.utc)
    present = data.days_with_data
    heading = f"Gemini costs, {title_range(data)}"
    about = (
        f"{len(present)} day{'s' * (len(present) != 1)} with data in the requested window {data.start} to {data.end}"
        if present
        else f"Nothing was run between {data.start} and {data.end}"
    )
    charts = "".join(_chart_section(chart) for chart in charts_of(data))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(heading)}</title>
<style>{CSS}</style></head><body>
<header>
<div><h1>{html.escape(heading)}</h1>
<p class="sub">{html.escape(about)} &middot; generated {generated_at:%Y-%m-%d %H:%M} UTC</p></div>
{_range_controls(data)}
</header>
<main>
<div class="tiles">{_tiles(data)}</div>
<p class="explain"><b>Spend</b> is every billed attempt of every run: what the invoice says.
<b>Cost of the data</b> is what the rows as they stand cost (a cache hit costs nothing, a retried day is counted once).
Hover a chart for the day's figures, click a legend entry to hide or show it, drag across a chart to zoom.</p>
<div class="charts">{charts}</div>
<section class="card wide"><h2>Day &times; evaluation &times; model &times; stage</h2>
<div class="table-scroll">{_detail_table(data.rollup)}</div></section>
</main>
<script>{get_plotlyjs()}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def charts_of(data: DashboardData) -> list[Chart]:
    """Every chart of the page, in reading order: spend, budgets, the cost of the data, tokens, health."""
    rollup, days = data.rollup, data.days
    evaluations = _colours(set(rollup["evaluation_id"]) | set(data.spend_to_date["evaluation_id"]), EVALUATION_COLOURS)
    models = _colours(set(rollup["model"]), MODEL_COLOURS)
    return [
        Chart(
            "spend_by_evaluation",
            "Spend per day by evaluation",
            _money_bars(_money_by(rollup, "spend_usd", "evaluation_id", days), days, evaluations),
            "billed attempts, as invoiced",
        ),
        Chart(
            "spend_by_model",
            "Spend per day by model",
            _money_bars(_money_by(rollup, "spend_usd", "model", days), days, models),
            "billed attempts, as invoiced",
        ),
        Chart(
            "budget",
            "Budgets: spent to date, projected to the month's end",
            _budget_figure(data, evaluations),
            f"solid: spent to date (all days) \u00b7 dashed: the average of the last {PROJECTION_DAYS} days with data,"
            " spent every day to the month's end \u00b7 red dotted: the evaluation's budget",
            wide=True,
            time_axis=False,
        ),
        Chart(
            "data_cost_by_model",
            "Cost of the data per day by model",
            _money_bars(_money_by(rollup, "total_cost_usd", "model", days), days, models),
            "the rows as they stand",
        ),
        Chart(
            "cache_savings",
            "Cost of the data and what the cache saved, per day",
            _money_bars(
                {
                    "cost of the data": _money_per_day(rollup, "total_cost_usd", days),
                    "saved by the cache": _money_per_day(rollup, "saved_cost_usd", days),
                },
                days,
                {"cost of the data": COST_OF_DATA, "saved by the cache": SAVED},
            ),
            "the bar's height is what the data would have cost without the cache",
        ),
        Chart(
            "tokens_by_kind",
            "Billed tokens per day by kind",
            _token_bars(rollup, days),
            "the billed attempts' tokens; cached input is the part of the prompt read from the context cache",
            wide=True,
        ),
        Chart("rates", "Failure and rejection rates per day", _rates_figure(rollup, days), "share of calls"),
        Chart(
            "latency",
            "Latency of answered API calls",
            _latency_figure(data.latency, days),
            "cache hits and failures left out",
        ),
    ]


def burn_down(data: DashboardData) -> pd.DataFrame:
    """Per evaluation with a budget: budget, spent to date, left, and left projected at the end of the month.

    The projection spends the average of the last `PROJECTION_DAYS` days with data every
    day until the month of the range's last day ends.
    """
    rows = []
    month_end = data.end.replace(day=calendar.monthrange(data.end.year, data.end.month)[1])
    default = data.budgets.get("default")
    for evaluation, days in data.spend_to_date.groupby("evaluation_id"):
        budget = data.budgets.get(str(evaluation), default)
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


def default_path(database: str | Path) -> Path:
    """Where the dashboard lives unless told otherwise: `dashboard.html` beside the DuckDB file, or in this
    machine's folder for the lake (`local_folder`)."""
    if is_lake(database):
        return local_folder(database, ".dashboard") / "dashboard.html"
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


# The series: Decimals per day, None on a day without rows (a gap, not a zero).


def _money_by(rollup: pd.DataFrame, column: str, by: str, days: list[date]) -> dict[str, list[Decimal | None]]:
    """`column` summed per day and value of `by`: 0 on a day with rows but none of that value, None on a day without."""
    present = set(rollup["partition_date"])
    sums = {key: money_sum(values) for key, values in rollup.groupby(["partition_date", by])[column]}
    return {
        name: [sums.get((day, name), Decimal(0)) if day in present else None for day in days]
        for name in sorted(set(rollup[by]))
    }


def _money_per_day(rollup: pd.DataFrame, column: str, days: list[date]) -> list[Decimal | None]:
    """`column` summed per day, None on a day without rows."""
    sums = {day: money_sum(values) for day, values in rollup.groupby("partition_date")[column]}
    return [sums.get(day) for day in days]


def _counts_per_day(rollup: pd.DataFrame, frame: pd.DataFrame, days: list[date]) -> dict[str, list[int | None]]:
    """Integer columns of `frame` (row-aligned with `rollup`) summed per day, None on a day without rows."""
    sums = frame.groupby(rollup["partition_date"]).sum()
    return {
        str(column): [int(sums.at[day, column]) if day in sums.index else None for day in days]
        for column in frame.columns
    }


# The figures.


def _money_bars(series: dict[str, list[Decimal | None]], days: list[date], colours: dict[str, str]) -> go.Figure:
    """Stacked bars of money per day; hover labels print the exact Decimals."""
    if not days:
        return _no_data("No data in this window")
    traces = [
        go.Bar(
            name=name,
            x=_x(days),
            y=[None if value is None else float(value) for value in values],
            customdata=[money(value) for value in values],
            hovertemplate="%{customdata}",
            marker={"color": colours[name], "line": {"width": 0}},
        )
        for name, values in series.items()
    ]
    top = max(
        (sum(float(values[i] or 0) for values in series.values()) for i in range(len(days))),
        default=0.0,
    )
    return _figure(traces, days, _y_axis(top, 0.01, tickprefix="$", exponentformat="none"))


def _token_bars(rollup: pd.DataFrame, days: list[date]) -> go.Figure:
    """Stacked bars of billed tokens per day in `billed_token_parts`, so a bar's height is the day's billed tokens."""
    if not days:
        return _no_data("No data in this window")
    parts = _counts_per_day(rollup, billed_token_parts(rollup), days)
    traces = [
        go.Bar(
            name=kind,
            x=_x(days),
            y=values,
            hovertemplate="%{y:,} tokens",
            marker={"color": TOKEN_COLOURS[kind], "line": {"width": 0}},
        )
        for kind, values in parts.items()
    ]
    top = max((sum(values[i] or 0 for values in parts.values()) for i in range(len(days))), default=0)
    return _figure(traces, days, _y_axis(float(top), 10, exponentformat="B"))


def _rates_figure(rollup: pd.DataFrame, days: list[date]) -> go.Figure:
    """Failed calls per call and rejected answers per billed attempt; a day without calls is a gap."""
    if not days:
        return _no_data("No data in this window")
    counts = _counts_per_day(
        rollup, rollup[["calls", "failures", "billed_attempts", "rejected_attempts"]].astype("int64"), days
    )
    traces = []
    for name, part, whole, noun, colour in (
        ("failed calls", "failures", "calls", "calls", FAILURE),
        ("rejected answers", "rejected_attempts", "billed_attempts", "billed attempts", REJECTION),
    ):
        pairs = [(p or 0, w or 0) for p, w in zip(counts[part], counts[whole])]
        traces.append(
            go.Scatter(
                name=name,
                x=_x(days),
                y=[p / w if w else None for p, w in pairs],
                customdata=[f"{p / w:.1%} ({p:,} of {w:,} {noun})" if w else "no calls" for p, w in pairs],
                hovertemplate="%{customdata}",
                mode="lines+markers",
                line={"color": colour, "width": 2},
                marker={"size": 7},
            )
        )
    top = max((y for trace in traces for y in trace.y if y is not None), default=0.0)
    return _figure(traces, days, _y_axis(top, 0.01, tickformat=".1~%", minimum_top=0.01))


def _latency_figure(latency: pd.DataFrame, days: list[date]) -> go.Figure:
    """p50 and p95 latency per day, in ms from 0; a day without answered API calls is a gap."""
    if not days or latency.empty:
        return _no_data("No answered API calls in this window")
    by_day = latency.set_index("partition_date")
    traces = [
        go.Scatter(
            name=name,
            x=_x(days),
            y=[float(by_day.at[day, column]) if day in by_day.index else None for day in days],
            hovertemplate="%{y:,.1f} ms",
            mode="lines+markers",
            line={"color": colour, "width": 2},
            marker={"size": 7},
        )
        for name, column, colour in (("p50", "p50_ms", "#4e79a7"), ("p95", "p95_ms", "#f28e2b"))
    ]
    top = max((y for trace in traces for y in trace.y if y is not None), default=0.0)
    return _figure(traces, days, _y_axis(top, 1.0, ticksuffix=" ms", exponentformat="none"))


def _budget_figure(data: DashboardData, colours: dict[str, str]) -> go.Figure:
    """Small multiples, one panel per evaluation with a budget: spent to date, the projection, its own budget line."""
    plan = burn_down(data)
    if plan.empty:
        return _no_data("No budgets in costs.toml")
    columns = min(len(plan), 5)
    rows = -(-len(plan) // columns)
    figure = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[_budget_title(row) for row in plan.itertuples(index=False)],
        horizontal_spacing=0.05,
        vertical_spacing=0.3 / rows,
    )
    for number, row in enumerate(plan.itertuples(index=False)):
        _budget_panel(figure, data, row, colours[str(row.evaluation_id)], number // columns + 1, number % columns + 1)
    figure.update_annotations(font={"size": 12, "color": INK})
    figure.update_layout(_layout(height=290 * rows), showlegend=False, hovermode="closest")
    figure.update_layout(margin={"t": 64})
    return figure


def _budget_panel(figure: go.Figure, data: DashboardData, row, colour: str, panel_row: int, panel_column: int) -> None:
    """One evaluation's panel: spend to date per day, flat to the window's end and then the projected rate, and
    its budget as a line across the panel."""
    evaluation = str(row.evaluation_id)
    history = data.spend_to_date[data.spend_to_date["evaluation_id"] == evaluation].sort_values("partition_date")
    days, spent = list(history["partition_date"]), [Decimal(value or 0) for value in history["spend_to_date"]]
    projected = row.spent_usd + row.per_day_usd * (row.month_end - data.end).days
    ahead = [(days[-1], row.spent_usd)] + [(data.end, row.spent_usd)] * (data.end > days[-1])
    ahead.append((row.month_end, projected))
    place = {"row": panel_row, "col": panel_column}
    for name, x, y, line_colour, dash in (
        ("spent to date", days, spent, colour, "solid"),
        ("projected", [day for day, _ in ahead], [value for _, value in ahead], colour, "dash"),
        ("budget", [days[0], row.month_end], [row.budget_usd] * 2, BUDGET, "dot"),
    ):
        meta = {"evaluation": evaluation, "series": name}
        figure.add_trace(_budget_line(name, x, y, line_colour, meta, dash), **place)
    top = float(max(row.budget_usd, projected, spent[-1]))
    figure.update_yaxes(_y_axis(top, 0.01, tickprefix="$", exponentformat="none"), **place)
    figure.update_xaxes(_time_axis([days[0], row.month_end], ticks=False), nticks=5, tickformat="%b %-d", **place)


def _budget_line(name: str, days: list, values: list[Decimal], colour: str, meta: dict, dash: str = "solid"):
    """A line of a budget panel; `meta` names its evaluation and series, hover labels print the exact Decimals."""
    return go.Scatter(
        name=name,
        x=_x(days),
        y=[float(value) for value in values],
        customdata=[money(value) for value in values],
        hovertemplate=f"{html.escape(meta['evaluation'])} {name}: %{{customdata}}<extra></extra>",
        mode="lines" if dash != "solid" else "lines+markers",
        line={"color": colour, "width": 2 if dash != "dot" else 1.5, "dash": dash},
        marker={"size": 6},
        meta=meta,
    )


def _budget_title(row) -> str:
    """A panel's title: the evaluation, spent of budget, and what is left (or over) at the month's end."""
    used = row.spent_usd / row.budget_usd if row.budget_usd else None
    projected_left = row.projected_left_usd
    state = "over budget" if projected_left < 0 else "left"
    return (
        f"<b>{html.escape(str(row.evaluation_id))}</b><br>"
        f"<span style='color:{MUTED}'>{money(row.spent_usd)} of {_budget_money(row.budget_usd)}"
        f"{f' ({used:.1%})' if used is not None else ''}</span><br>"
        f"<span style='color:{BUDGET if projected_left < 0 else MUTED}'>"
        f"{row.month_end:%b %-d}: {money(abs(projected_left))} {state}</span>"
    )


def _budget_money(value: Decimal) -> str:
    """A budget in cents when it is whole cents (`$1.00`), else to the micro-dollar."""
    return money(value, 2) if value == value.quantize(Decimal("0.01")) else money(value)


def _figure(traces: list, days: list[date], y_axis: dict) -> go.Figure:
    """A time-axis chart of `traces` with the page's look."""
    return go.Figure(traces, layout={**_layout(), "xaxis": _time_axis(days), "yaxis": y_axis})


def _layout(height: int = 320) -> dict:
    """The page's look: system fonts, white ground, stacked bars, one hover label per day, the legend above the plot."""
    return {
        "height": height,
        "margin": {"l": 8, "r": 8, "t": 8, "b": 8, "autoexpand": True},
        "font": {"family": FONT, "size": 12, "color": INK},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "barmode": "stack",
        "bargap": 0.3,
        "hovermode": "x unified",
        "hoverlabel": {"font": {"family": FONT, "size": 12}, "bgcolor": "white", "bordercolor": AXIS},
        "legend": {
            "orientation": "h",
            "traceorder": "normal",
            "x": 0,
            "xanchor": "left",
            "y": 1.0,
            "yanchor": "bottom",
            "font": {"size": 12},
        },
    }


def _time_axis(days: list[date], ticks: bool = True) -> dict:
    """A date axis over the days, half a day of room each side so the end bars are whole."""
    first, last = datetime.combine(days[0], time()), datetime.combine(days[-1], time())
    axis = {
        "type": "date",
        "range": [str(first - HALF_DAY), str(last + HALF_DAY)],
        "hoverformat": "%a %b %-d, %Y",
        "showgrid": False,
        "linecolor": AXIS,
        "ticks": "outside",
        "tickcolor": AXIS,
        "automargin": True,
    }
    if ticks and len(days) <= 14:
        axis.update(dtick=86_400_000, tickformat="%b %-d")
    return axis


def _y_axis(top: float, empty_top: float, minimum_top: float = 0.0, **formatting) -> dict:
    """An axis from 0 (every quantity here is non-negative) to just above `top`; `empty_top` when all are 0."""
    upper = max(top * 1.1, minimum_top) if top > 0 else empty_top
    return {
        "range": [0, upper],
        "rangemode": "nonnegative",
        "fixedrange": True,
        "gridcolor": GRID,
        "zeroline": True,
        "zerolinecolor": AXIS,
        "separatethousands": True,
        "automargin": True,
        **formatting,
    }


def _no_data(message: str) -> go.Figure:
    """An empty chart that says why it is empty."""
    return go.Figure(
        layout={
            **_layout(height=200),
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {"text": message, "showarrow": False, "font": {"size": 14, "color": MUTED}, "x": 0.5, "y": 0.5}
            ],
        }
    )


def _x(days: list) -> list[str]:
    """Days as ISO dates, which plotly reads as a time axis."""
    return [day.isoformat() for day in days]


def _colours(names: set[str], palette: list[str]) -> dict[str, str]:
    """One colour per name, by sorted name: the same name has the same colour in every chart of the page."""
    return {name: palette[number % len(palette)] for number, name in enumerate(sorted(map(str, names)))}


# The page's parts.


def _chart_section(chart: Chart) -> str:
    """A chart's card: title, note, its container and its figure as JSON (`</` escaped, so no name ends the script)."""
    figure = chart.figure.to_json().replace("</", "<\\/")
    synced = ' data-time-axis="true"' if chart.time_axis else ""
    return (
        f'<section class="card{" wide" * chart.wide}"><h2>{html.escape(chart.title)}</h2>'
        f'<p class="note">{html.escape(chart.note)}</p>'
        f'<div class="chart" data-chart="{chart.name}"{synced}></div>'
        f'<script type="application/json" id="figure-{chart.name}">{figure}</script></section>'
    )


def _range_controls(data: DashboardData) -> str:
    """The date pickers and quick ranges that set the days every time-axis chart shows (none without data)."""
    present = data.days_with_data
    if not present:
        return ""
    first, last = present[0].isoformat(), present[-1].isoformat()
    return f"""<form class="range" data-first="{first}" data-last="{last}" onsubmit="return false">
<label>From <input type="date" id="range-from" value="{first}"></label>
<label>to <input type="date" id="range-to" value="{last}"></label>
<button type="button" data-days="7">7 days</button><button type="button" data-days="30">30 days</button>
<button type="button" data-days="all">All</button></form>"""


def _tiles(data: DashboardData) -> str:
    """The eight headline tiles, each value carrying its `data-figure` name; the small print is counts behind it."""
    shown, rollup = figures(data), data.rollup
    calls, hits = int(rollup["calls"].sum()), int(rollup["cache_hits"].sum())
    failures, billed = int(rollup["failures"].sum()), int(rollup["billed_attempts"].sum())
    provisioned = int(rollup["provisioned_tokens"].fillna(0).sum()) if "provisioned_tokens" in rollup else 0
    spend_note = "billed attempts, as invoiced" + (f" \u00b7 {provisioned_note(provisioned)}" if provisioned else "")

    def figure(name: str) -> str:
        return f'<span data-figure="{name}">{html.escape(shown[name])}</span>'

    tiles = [
        ("spend", "Spend", spend_note),
        ("data_cost", "Cost of the data", "the rows as they stand"),
        ("saved", "Cache savings", "cache hits, priced but not paid"),
        ("calls", "Calls", f"{billed:,} billed attempts"),
        ("cache_hit_rate", "Cache-hit rate", f"{hits:,} of {calls:,} calls"),
        ("failure_rate", "Failure rate", f"{failures:,} failed \u00b7 {figure('rejection_rate')} answers rejected"),
        ("latency_p50", "Latency p50", f"p95 {figure('latency_p95')} \u00b7 answered API calls"),
        ("completeness", "Totals", "every call priced, all billing known"),
    ]
    incomplete = shown["completeness"] != "complete"
    return "".join(
        f'<div class="tile{" warn" * (name == "completeness" and incomplete)}">'
        f'<div class="label">{label}</div><div class="value">{figure(name)}</div>'
        f'<div class="small">{"" if name == "completeness" and incomplete else small}</div></div>'
        for name, label, small in tiles
    )


DETAIL_COLUMNS = [
    ("day", False),
    ("evaluation", False),
    ("model", False),
    ("stage", False),
    ("calls", True),
    ("cache hits", True),
    ("failed", True),
    ("billed tokens", True),
    ("spend", True),
    ("cost of the data", True),
    ("saved by the cache", True),
]
"""The detail table's columns and whether each holds a number (right-aligned) or text (left-aligned)."""


def _detail_table(rollup: pd.DataFrame) -> str:
    """One row per rollup row and a totals row of their sums; numbers right-aligned with thousands separators."""
    tokens = billed_token_parts(rollup).sum(axis=1).astype("int64")
    rows = [
        [
            str(row.partition_date),
            str(row.evaluation_id),
            str(row.model),
            str(row.stage),
            f"{row.calls:,}",
            f"{row.cache_hits:,}",
            f"{row.failures:,}",
            f"{billed:,}",
            money(row.spend_usd),
            money(row.total_cost_usd),
            money(row.saved_cost_usd),
        ]
        for row, billed in zip(rollup.itertuples(index=False), tokens)
    ]
    totals = [
        "Total",
        f"{rollup['evaluation_id'].nunique():,} evaluations",
        f"{rollup['model'].nunique():,} models",
        "",
        f"{int(rollup['calls'].sum()):,}",
        f"{int(rollup['cache_hits'].sum()):,}",
        f"{int(rollup['failures'].sum()):,}",
        f"{int(tokens.sum()):,}",
        money(money_sum(rollup["spend_usd"])),
        money(money_sum(rollup["total_cost_usd"])),
        money(money_sum(rollup["saved_cost_usd"])),
    ]

    def cells(values: list[str], tag: str) -> str:
        return "".join(
            f'<{tag} class="{"num" if number else "text"}">{html.escape(value)}</{tag}>'
            for value, (_, number) in zip(values, DETAIL_COLUMNS)
        )

    head = "".join(
        f'<th class="{"num" if number else "text"}" scope="col">{html.escape(name)}</th>'
        for name, number in DETAIL_COLUMNS
    )
    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    return (
        f'<table data-table="detail"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        f'<tfoot><tr data-row="totals">{cells(totals, "td")}</tr></tfoot></table>'
    )


def _share(part: int, whole: int) -> str:
    """A share as a percentage with one decimal, `n/a` of nothing."""
    return f"{part / whole:.1%}" if whole else "n/a"


def _ms(value: float | None) -> str:
    """Milliseconds, thousands separated, `n/a` when there were no answered calls."""
    return "n/a" if value is None else f"{value:,.0f} ms"


CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --accent: #2f4b7c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.45 -apple-system, BlinkMacSystemFont,
       "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; flex-wrap: wrap; gap: 12px 32px; align-items: flex-end; justify-content: space-between;
         padding: 24px 32px 16px; background: white; border-bottom: 1px solid var(--line); }
h1 { margin: 0; font-size: 22px; font-weight: 650; letter-spacing: -0.01em; }
.sub { margin: 4px 0 0; color: var(--muted); }
main { padding: 20px 32px 40px; max-width: 1600px; margin: 0 auto; }
.range { display: flex; gap: 8px; align-items: center; color: var(--muted); font-size: 13px; }
.range input, .range button { font: inherit; color: var(--ink); border: 1px solid #cbd2d9; border-radius: 6px;
                              background: white; padding: 4px 8px; }
.range button { cursor: pointer; } .range button:hover { background: #eef2f7; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }
.tile { background: white; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.tile .label { color: var(--muted); font-size: 12px; font-weight: 600; text-transform: uppercase;
               letter-spacing: 0.04em; }
.tile .value { font-size: 22px; font-weight: 650; margin-top: 4px; font-variant-numeric: tabular-nums;
               white-space: nowrap; }
.tile .small { color: var(--muted); font-size: 12px; margin-top: 2px; }
.tile.warn { border-color: #f0b429; background: #fffbea; } .tile.warn .value { font-size: 14px; white-space: normal; }
.explain { color: var(--muted); font-size: 13px; margin: 14px 2px 18px; max-width: 1100px; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
.card { background: white; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px 8px; }
.card.wide { grid-column: 1 / -1; } main > .card { margin-top: 16px; }
h2 { margin: 0; font-size: 15px; font-weight: 650; }
.note { margin: 2px 0 6px; color: var(--muted); font-size: 12px; }
.chart { min-height: 200px; }
@media (max-width: 900px) { .charts { grid-template-columns: 1fr; } }
.table-scroll { max-height: 560px; overflow: auto; margin: 10px 0 8px; border: 1px solid var(--line);
                border-radius: 8px; }
table { border-collapse: separate; border-spacing: 0; width: 100%; font-size: 13px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th.text, td.text { text-align: left; } th.num, td.num { text-align: right; }
thead th { position: sticky; top: 0; background: #f8fafc; color: var(--muted); font-weight: 600; z-index: 1; }
tbody tr:nth-child(even) { background: #fafbfc; } tbody tr:hover { background: #eef2f7; }
tfoot td { position: sticky; bottom: 0; background: #eef2f7; font-weight: 650; border-top: 2px solid #cbd2d9; }
"""

SCRIPT = """
(function () {
  var config = {displaylogo: false, responsive: true, typesetMath: false,
                modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "zoomIn2d", "zoomOut2d"]};
  var synced = [];
  document.querySelectorAll("[data-chart]").forEach(function (div) {
    var figure = JSON.parse(document.getElementById("figure-" + div.dataset.chart).textContent);
    Plotly.newPlot(div, figure.data, figure.layout, config);
    if (div.dataset.timeAxis) synced.push(div);
  });
  var form = document.querySelector("form.range");
  if (!form) return;
  var from = document.getElementById("range-from"), to = document.getElementById("range-to");
  var busy = false;
  function time(text) {
    return Date.parse(text.length <= 10 ? text + "T00:00:00Z" : text.slice(0, 19).replace(" ", "T") + "Z");
  }
  function stamp(ms) { return new Date(ms).toISOString().slice(0, 19).replace("T", " "); }
  function apply(range, source) {
    if (busy) return;
    busy = true;
    from.value = stamp(time(range[0]) + 12 * 3600e3).slice(0, 10);
    to.value = stamp(time(range[1]) - 12 * 3600e3).slice(0, 10);
    Promise.all(synced.filter(function (div) { return div !== source; }).map(function (div) {
      return Plotly.relayout(div, {"xaxis.range": range.slice()});
    })).finally(function () { busy = false; });
  }
  function pick(first, last) { apply([stamp(time(first) - 12 * 3600e3), stamp(time(last) + 12 * 3600e3)], null); }
  synced.forEach(function (div) {
    div.on("plotly_relayout", function (change) {
      if (busy) return;
      if (change["xaxis.autorange"]) pick(form.dataset.first, form.dataset.last);
      else if (change["xaxis.range[0]"]) apply([change["xaxis.range[0]"], change["xaxis.range[1]"]], div);
      else if (change["xaxis.range"]) apply(change["xaxis.range"], div);
    });
  });
  from.addEventListener("change", function () { pick(from.value, to.value); });
  to.addEventListener("change", function () { pick(from.value, to.value); });
  form.querySelectorAll("button").forEach(function (button) {
    button.addEventListener("click", function () {
      var days = button.dataset.days, last = form.dataset.last;
      pick(days === "all" ? form.dataset.first : stamp(time(last) - (Number(days) - 1) * 86400e3), last);
    });
  });
})();
"""
