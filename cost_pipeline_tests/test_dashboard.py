"""The cost dashboard in Debian's Chromium: every figure and every chart's series is the tables' own, the range in
its title is the data's, it reads plainly (axes from 0, no exponent ticks, aligned totals), and it works offline.

The expected series are recomputed here with SQL of the test's own, never with the dashboard's query helpers.
"""

import http.client
import re
import subprocess
import sys
from collections import defaultdict
from datetime import date
from decimal import Decimal
from itertools import accumulate
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.reports import dashboard, dashboard_server

from .conftest import REPO, THREE_DAYS
from .test_ui import browser  # noqa: F401  (the Chromium fixture)

ARTIFACTS = REPO / "test-artifacts"
BUDGETS = {"default": Decimal("1.00"), "eval-voice-assistant-v1": Decimal("0.02")}
WINDOW = (date(2026, 10, 7), date(2026, 12, 5))
"""Wider than the data on both sides: the data runs from 2026-11-01 to 2026-11-03."""
DAYS = [day.isoformat() for day in THREE_DAYS]
TILES = ("spend", "data_cost", "saved", "calls", "cache_hit_rate", "failure_rate", "latency_p50", "completeness")
CHARTS = {
    "spend_by_evaluation",
    "spend_by_model",
    "budget",
    "data_cost_by_model",
    "cache_savings",
    "tokens_by_kind",
    "rates",
    "latency",
}
MONEY_CHARTS = {"spend_by_evaluation", "spend_by_model", "budget", "data_cost_by_model", "cache_savings"}
PLOTTED = """() => Object.fromEntries([...document.querySelectorAll("[data-chart]")].map(div => [div.dataset.chart, {
    data: div.data.map(trace => ({name: trace.name, x: trace.x, y: trace.y, meta: trace.meta || null,
                                  colour: (trace.marker && trace.marker.color) || (trace.line && trace.line.color)})),
    layout: div.layout,
    xticks: [...div.querySelectorAll(".xaxislayer-above text")].map(text => text.textContent),
    yticks: [...div.querySelectorAll(".yaxislayer-above text")].map(text => text.textContent),
    svgs: div.querySelectorAll("svg.main-svg").length}]))"""
"""What plotly actually drew in each chart container: its traces, layout and tick labels."""


def fetch(database, sql, params=()):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql, list(params)).fetchall()


def rerun_and_fail(database):
    """As the pipeline left them, the three days' spend equals the cost of their data and no call failed. In this
    test's copy 2026-11-03 ran twice (its billed attempts again in the ledger and in the rollup's spend) and a
    quarter of 2026-11-02's function calls failed, so a chart reading the wrong column, or a rate, cannot pass."""
    kinds = ["input", "cached", "output", "thinking", "tool_prompt", "total"]
    with duckdb.connect(str(database)) as connection:
        connection.execute(
            """INSERT INTO llm_attempts SELECT * REPLACE (attempt_id || '-again' AS attempt_id, 'again' AS run_id)
               FROM llm_attempts WHERE partition_date = ? AND billed""",
            [THREE_DAYS[2]],
        )
        connection.execute(
            f"""
            UPDATE daily_cost_rollup AS r SET spend_usd = r.spend_usd + again.usd,
                {", ".join(f"spend_{kind}_tokens = r.spend_{kind}_tokens + again.{kind}" for kind in kinds)}
            FROM (SELECT evaluation_id, model, stage, sum(cost_usd) AS usd,
                         {", ".join(f"sum(coalesce({kind}_tokens, 0)) AS {kind}" for kind in kinds)}
                  FROM llm_attempts WHERE run_id = 'again' GROUP BY ALL) AS again
            WHERE r.partition_date = ? AND (r.evaluation_id, r.model, r.stage)
                  = (again.evaluation_id, again.model, again.stage)""",
            [THREE_DAYS[2]],
        )
        connection.execute(
            "UPDATE daily_cost_rollup SET failures = calls // 4 WHERE partition_date = ? AND stage = 'function'",
            [THREE_DAYS[1]],
        )


def embedded(text: str) -> dict[str, dict]:
    """Each chart's figure as the page embeds it (`<script id="figure-<name>">`)."""
    import json

    found = re.findall(r'<script type="application/json" id="figure-(\w+)">(.*?)</script>', text, re.S)
    return {name: json.loads(figure) for name, figure in found}


def series(traces: list[dict]) -> dict[str, dict[str, float | None]]:
    """Each trace's values by day."""
    return {trace["name"]: dict(zip(trace["x"], trace["y"])) for trace in traces}


def by_day(rows, days=DAYS) -> dict[str, dict[str, float]]:
    """`(series, day, value)` rows as series -> day -> float, 0 on a day with data but no row of that series."""
    found: dict[str, dict[str, float]] = defaultdict(lambda: {day: 0.0 for day in days})
    for name, day, value in rows:
        found[name][str(day)] = float(value)
    return dict(found)


@pytest.fixture
def page_path(three_days, database, tmp_path):
    rerun_and_fail(database)
    return dashboard.write(database, tmp_path / "dashboard.html", *WINDOW, BUDGETS)[0]


@pytest.fixture
def opened(page_path, browser):  # noqa: F811
    """The page in an offline Chromium at 1400 px: the page, the URLs it requested and the errors it logged."""
    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requested, errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_path.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {len(CHARTS)}")
    yield page, requested, errors
    context.close()


def test_the_tiles_show_the_tables_figures_and_the_page_works_offline(page_path, database, opened):
    page, requested, errors = opened
    text = page_path.read_text()
    assert "<link" not in text and "<script src" not in text, "plotly.js is inlined, nothing is fetched"
    assert text.count("<script>") == 2, "plotly.js once, then the page's own script"
    spend, data_cost, saved, calls, hits, failures = fetch(
        database,
        """
        SELECT sum(spend_usd), sum(total_cost_usd), sum(saved_cost_usd), sum(calls), sum(cache_hits), sum(failures)
        FROM daily_cost_rollup""",
    )[0]
    (p50,) = fetch(
        database, "SELECT quantile_cont(latency_ms, 0.5) FROM llm_calls WHERE NOT cache_hit AND status = 'ok'"
    )[0]
    shown = {name: page.locator(f'[data-figure="{name}"]').inner_text() for name in TILES}
    assert shown["spend"] == f"${spend:,.6f}" and shown["data_cost"] == f"${data_cost:,.6f}"
    assert shown["saved"] == f"${saved:,.6f}" and shown["calls"] == f"{calls:,}"
    assert shown["cache_hit_rate"] == f"{hits / calls:.1%}" and shown["failure_rate"] == f"{failures / calls:.1%}"
    assert (
        spend > data_cost
        and failures > 0
        and shown["latency_p50"] == f"{p50:,.0f} ms"
        and shown["completeness"] == "complete"
    )

    plotted = page.evaluate(PLOTTED)
    assert set(plotted) == CHARTS
    for name, chart in plotted.items():
        assert chart["svgs"] >= 1 and chart["data"], f"{name} is drawn"
    assert page.locator('[data-chart="spend_by_evaluation"] .barlayer .point path').count() > 0
    assert page.locator('[data-chart="budget"]').bounding_box()["width"] > 1000, "the budgets take the full width"
    assert all(url.startswith("file://") for url in requested), [u for u in requested if not u.startswith("file:")]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_each_chart_plots_the_series_the_tables_give(page_path, database, opened):
    page, _, _ = opened
    plotted = {name: series(chart["data"]) for name, chart in page.evaluate(PLOTTED).items()}
    assert plotted == {name: series(figure["data"]) for name, figure in embedded(page_path.read_text()).items()}

    def grouped(value: str, by: str):
        return by_day(fetch(database, f"SELECT {by}, partition_date, sum({value}) FROM daily_cost_rollup GROUP BY ALL"))

    assert plotted["spend_by_evaluation"] == grouped("spend_usd", "evaluation_id")
    assert plotted["spend_by_model"] == grouped("spend_usd", "model")
    assert plotted["data_cost_by_model"] == grouped("total_cost_usd", "model")
    assert plotted["cache_savings"] == {
        **grouped("total_cost_usd", "'cost of the data'"),
        **grouped("saved_cost_usd", "'saved by the cache'"),
    }

    tokens = fetch(
        database,
        """
        SELECT partition_date, sum(spend_input_tokens - spend_cached_tokens), sum(spend_cached_tokens),
               sum(spend_output_tokens), sum(spend_thinking_tokens), sum(spend_tool_prompt_tokens)
        FROM daily_cost_rollup GROUP BY ALL""",
    )
    kinds = ["uncached input", "cached input", "output", "thinking", "tool prompt"]
    assert plotted["tokens_by_kind"] == by_day(
        (kind, day, row[n]) for day, *row in tokens for n, kind in enumerate(kinds)
    )
    ledger = fetch(
        database,
        """
        SELECT partition_date, sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0) + coalesce(thinking_tokens, 0)
                                   + coalesce(tool_prompt_tokens, 0)), sum(coalesce(cached_tokens, 0))
        FROM llm_attempts WHERE billed GROUP BY ALL""",
    )
    for day, billed, cached in ledger:
        assert sum(plotted["tokens_by_kind"][kind][str(day)] for kind in kinds) == billed, "the parts add up"
        assert plotted["tokens_by_kind"]["cached input"][str(day)] == cached

    counts = fetch(
        database,
        """SELECT partition_date, sum(failures), sum(calls), sum(rejected_attempts), sum(billed_attempts)
           FROM daily_cost_rollup GROUP BY ALL""",
    )
    assert plotted["rates"] == {
        "failed calls": {str(day): failed / calls for day, failed, calls, _, _ in counts},
        "rejected answers": {str(day): rejected / billed for day, _, _, rejected, billed in counts},
    }
    assert max(plotted["rates"]["failed calls"].values()) > 0

    latency = fetch(
        database,
        """SELECT partition_date, quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95) FROM llm_calls
           WHERE NOT cache_hit AND status = 'ok' GROUP BY ALL""",
    )
    assert plotted["latency"] == {
        "p50": {str(day): p50 for day, p50, _ in latency},
        "p95": {str(day): p95 for day, _, p95 in latency},
    }

    spent: dict[str, list[tuple[str, Decimal]]] = defaultdict(list)
    for evaluation, day, amount in fetch(
        database,
        "SELECT evaluation_id, partition_date, sum(spend_usd) FROM daily_cost_rollup GROUP BY ALL ORDER BY 1, 2",
    ):
        spent[evaluation].append((str(day), amount))
    to_date = {
        evaluation: dict(zip([day for day, _ in days], accumulate(amount for _, amount in days)))
        for evaluation, days in spent.items()
    }
    budget_traces = page.evaluate(PLOTTED)["budget"]["data"]
    assert {
        trace["meta"]["evaluation"]: dict(zip(trace["x"], trace["y"]))
        for trace in budget_traces
        if trace["meta"]["series"] == "spent to date"
    } == {evaluation: {day: float(total) for day, total in days.items()} for evaluation, days in to_date.items()}


def test_the_budget_chart_draws_each_evaluations_own_budget_line(page_path, database, opened):
    page, _, _ = opened
    budget = page.evaluate(PLOTTED)["budget"]
    evaluations = [
        evaluation for (evaluation,) in fetch(database, "SELECT DISTINCT evaluation_id FROM daily_cost_rollup")
    ]
    lines = {trace["meta"]["evaluation"]: trace for trace in budget["data"] if trace["meta"]["series"] == "budget"}
    assert sorted(lines) == sorted(evaluations), "one budget line per evaluation"
    month_end = "2026-12-31"
    for evaluation, line in lines.items():
        assert line["y"] == [float(BUDGETS.get(evaluation, BUDGETS["default"]))] * 2 and line["x"][-1] == month_end
    panels = {
        trace["meta"]["evaluation"]: trace["colour"]
        for trace in budget["data"]
        if trace["meta"]["series"] == "spent to date"
    }
    assert len(set(panels.values())) == len(evaluations), "each evaluation has its own colour"
    spend_colours = {trace["name"]: trace["colour"] for trace in page.evaluate(PLOTTED)["spend_by_evaluation"]["data"]}
    assert panels == spend_colours, "an evaluation has the same colour in every chart"
    titles = [note["text"] for note in budget["layout"]["annotations"]]
    assert all(any(evaluation in title for title in titles) for evaluation in evaluations)
    yaxes = [key for key in budget["layout"] if key.startswith("yaxis")]
    assert len(yaxes) == len(evaluations), "small multiples: a panel, and its own scale, per evaluation"
    (spent,) = fetch(
        database, "SELECT sum(spend_usd) FROM daily_cost_rollup WHERE evaluation_id = 'eval-voice-assistant-v1'"
    )[0]
    (title,) = [title for title in titles if "eval-voice-assistant-v1" in title]
    assert f"${spent:,.6f} of $0.02" in title and "over budget" in title


def test_the_title_gives_the_datas_range_not_the_requested_window(page_path, database, tmp_path):
    text = page_path.read_text()
    text = text[: text.index("<script")]  # the page's own markup, before plotly.js
    (title,) = re.findall(r"<title>(.*?)</title>", text)
    (heading,) = re.findall(r"<h1>(.*?)</h1>", text)
    assert title == heading == "Gemini costs, 2026-11-01 to 2026-11-03"
    assert "3 days with data in the requested window 2026-10-07 to 2026-12-05" in text

    empty, _ = dashboard.write(database, tmp_path / "empty.html", date(2026, 6, 1), date(2026, 6, 30), BUDGETS)
    text = empty.read_text()
    assert re.findall(r"<h1>(.*?)</h1>", text) == ["Gemini costs, no data from 2026-06-01 to 2026-06-30"]
    assert all(f'data-figure="{name}"' in text for name in TILES)
    figures = embedded(text)
    assert set(figures) == CHARTS and all(figure["data"] == [] for figure in figures.values())


def test_a_day_without_data_is_a_gap_on_a_time_axis(three_days, database, tmp_path):
    with duckdb.connect(str(database)) as connection:
        for table in ("daily_cost_rollup", "llm_calls"):
            connection.execute(f"DELETE FROM {table} WHERE partition_date = ?", [THREE_DAYS[1]])
    page, _ = dashboard.write(database, tmp_path / "gap.html", *WINDOW, BUDGETS)
    figures = embedded(page.read_text())
    for name in CHARTS - {"budget"}:
        figure = figures[name]
        assert figure["layout"]["xaxis"]["type"] == "date"
        assert figure["layout"]["xaxis"]["range"] == ["2026-10-31 12:00:00", "2026-11-03 12:00:00"]
        for trace in figure["data"]:
            assert trace["x"] == DAYS and trace["y"][1] is None, f"{name}: 2026-11-02 is a gap, not a zero"
            assert trace["y"][0] is not None and trace["y"][2] is not None
    rates = figures["rates"]["layout"]["yaxis"]
    assert rates["range"] == [0, 0.01] and rates["tickformat"].endswith("%"), "no failures: a 0 to 1% axis"


def test_the_detail_table_totals_its_columns_and_aligns_text_left_and_numbers_right(database, opened):
    page, _, _ = opened
    (rows,) = fetch(database, "SELECT count(*) FROM daily_cost_rollup")[0]
    assert page.locator('table[data-table="detail"] tbody tr').count() == rows
    calls, hits, failed, tokens, spend, data_cost, saved = fetch(
        database,
        """
        SELECT sum(calls), sum(cache_hits), sum(failures),
               sum(spend_input_tokens + spend_output_tokens + spend_thinking_tokens + spend_tool_prompt_tokens),
               sum(spend_usd), sum(total_cost_usd), sum(saved_cost_usd)
        FROM daily_cost_rollup""",
    )[0]
    totals = page.locator('table[data-table="detail"] tfoot tr[data-row="totals"] td').all_inner_texts()
    assert totals[0] == "Total"
    assert totals[4:] == [
        f"{calls:,}",
        f"{hits:,}",
        f"{failed:,}",
        f"{tokens:,}",
        f"${spend:,.6f}",
        f"${data_cost:,.6f}",
        f"${saved:,.6f}",
    ]
    assert tokens > 1000 and "," in totals[7], "thousands separated"
    alignment = page.evaluate(
        """() => [...document.querySelectorAll('table[data-table="detail"] tr')].map(
            row => [...row.children].map(cell => getComputedStyle(cell).textAlign))"""
    )
    texts = ["left"] * 4
    numbers = ["right"] * 7
    assert alignment and all(row == texts + numbers for row in alignment), alignment[:2]
    body = page.locator('table[data-table="detail"] tbody tr').first.locator("td").all_inner_texts()
    assert all(re.fullmatch(r"\$?\d{1,3}(,\d{3})*(\.\d+)?", cell) for cell in body[4:]), body


def test_axes_start_at_zero_and_their_ticks_read_plainly(opened):
    page, _, _ = opened
    for name, chart in page.evaluate(PLOTTED).items():
        layout = chart["layout"]
        for key in [key for key in layout if key.startswith("yaxis")]:
            low, high = layout[key]["range"]
            assert low == 0 < high, f"{name} {key}: a non-negative quantity starts at 0"
            assert layout[key].get("exponentformat", "B") in ("B", "none"), f"{name} {key}: no 1e6 ticks"
        assert chart["yticks"], f"{name} has tick labels"
        for tick in chart["xticks"] + chart["yticks"]:
            assert not re.search(r"\d[eE][+-]?\d|×10|^[-−]", tick), f"{name}: tick {tick!r}"
        if name in MONEY_CHARTS:
            assert all(tick.startswith("$") for tick in chart["yticks"]), (name, chart["yticks"])
    rates = page.evaluate(PLOTTED)["rates"]
    assert rates["yticks"][0] == "0%" and all(tick.endswith("%") for tick in rates["yticks"])
    assert any(tick.endswith("k") for tick in page.evaluate(PLOTTED)["tokens_by_kind"]["yticks"]), "20k, not 20000"
    assert all(re.fullmatch(r"Nov \d+", tick) for tick in page.evaluate(PLOTTED)["spend_by_evaluation"]["xticks"])


def test_budget_burn_down_projects_the_recent_daily_spend_to_the_months_end(three_days, database):
    data = dashboard.load(database, THREE_DAYS[0], THREE_DAYS[-1], BUDGETS)
    plan = dashboard.burn_down(data).set_index("evaluation_id")
    per_day = fetch(
        database,
        """SELECT evaluation_id, sum(spend_usd), count(DISTINCT partition_date)
                                 FROM daily_cost_rollup GROUP BY 1""",
    )
    for evaluation, spent, days in per_day:
        row = plan.loc[evaluation]
        budget = BUDGETS.get(evaluation, BUDGETS["default"])
        days_left = (row["month_end"] - THREE_DAYS[-1]).days
        assert row["spent_usd"] == spent and row["left_usd"] == budget - spent
        assert row["per_day_usd"] == spent / days  # its days with data, all within the projection window
        assert row["projected_left_usd"] == budget - spent - spent / days * days_left


def test_the_cli_writes_the_dashboard_beside_the_database(three_days, database, tmp_path):
    cli = Path(sys.executable).parent / "cost-pipeline"
    run = subprocess.run(
        [str(cli), "dashboard", "--database", str(database), "--out", str(tmp_path / "d.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"dashboard of {THREE_DAYS[0]} to {THREE_DAYS[-1]} written to" in run.stdout  # the data's range
    assert 'data-figure="spend"' in (tmp_path / "d.html").read_text()
    missing = subprocess.run(
        [str(cli), "dashboard", "--database", str(tmp_path / "none.duckdb")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "no DuckDB file" in missing.stderr


def test_the_dashboard_asset_writes_the_page_and_links_it(three_days, landing_root, database, model_server):
    import dagster as dg

    from cost_pipeline.definitions import all_assets

    from .conftest import local_resources

    result = dg.materialize(
        all_assets, selection=["cost_dashboard"], resources=local_resources(landing_root, database, model_server)
    )
    (materialization,) = result.asset_materializations_for_node("cost_dashboard")
    link = materialization.metadata["dashboard"].value
    page = dashboard.default_path(database)
    assert link == "http://127.0.0.1:3001/" and page.exists()  # served by make ui; a file:// link is dead in a browser
    (spend,) = fetch(database, "SELECT sum(spend_usd) FROM daily_cost_rollup")[0]
    assert materialization.metadata["spend"].value == f"${spend:,.6f}"
    assert f'data-figure="spend">${spend:,.6f}<' in page.read_text()


def test_billed_tokens_by_kind_add_up_to_the_ledgers_billed_tokens(three_days, database):
    with duckdb.connect(str(database), read_only=True) as connection:
        rollup = connection.execute("SELECT * FROM daily_cost_rollup").df()
        (ledger, cached), *_ = connection.execute(
            """SELECT sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0) + coalesce(thinking_tokens, 0)
                          + coalesce(tool_prompt_tokens, 0)), sum(coalesce(cached_tokens, 0))
               FROM llm_attempts WHERE billed"""
        ).fetchall()
    parts = dashboard.billed_token_parts(rollup)
    assert list(parts.columns) == dashboard.BILLED_TOKEN_PARTS
    assert int(parts.to_numpy().sum()) == ledger, "the prompt count includes its cached part: counted once"
    assert int(parts["cached input"].sum()) == cached


def get(server: dashboard_server.DashboardServer, path: str) -> tuple[int, str, bytes]:
    """A raw GET of `path`, sent as written (no client-side normalising of `..`)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_serve_answers_the_page_at_the_root_and_nothing_else_of_the_disk(tmp_path):
    import urllib.request

    (tmp_path / "secret.txt").write_text("not for the browser")
    with dashboard_server.serve(tmp_path, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0/")
        status, _, body = get(server, "/")
        assert status == 404 and b"cost-pipeline dashboard" in body, "no page written yet"
        page = tmp_path / "dashboard.html"
        page.write_text('<!doctype html><title>costs</title><div data-figure="spend">$1.000000</div>')
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200 and response.read() == page.read_bytes()
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert get(server, "/dashboard.html?fresh=1")[0] == 200
        for path in ("/../pyproject.toml", "/etc/passwd", "/secret.txt", "/%2e%2e/secret.txt", "//etc/passwd", "/x/"):
            status, kind, body = get(server, path)
            assert status == 404 and b"not for the browser" not in body and b"root:" not in body, path
    with dashboard_server.serve(page, port=0) as server:
        assert get(server, "/")[2] == page.read_bytes(), "a file given directly is served too"
