"""`cost-pipeline report` in every format, read-only, against a real three-day store."""

import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.cli import main

from .test_connect import hold_lock

CLI = str(Path(sys.executable).with_name("cost-pipeline"))


def report(database, *args) -> str:
    result = subprocess.run(
        [CLI, "report", "--database", str(database), "--start", "2026-11-01", "--end", "2026-11-03", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def expected(database, column: str) -> dict:
    with duckdb.connect(str(database), read_only=True) as connection:
        return {
            str(k): (calls, cost)
            for k, calls, cost in connection.execute(
                f"SELECT {column}, sum(calls), sum(total_cost_usd) FROM daily_cost_rollup GROUP BY 1"
            ).fetchall()
        }


@pytest.mark.parametrize(
    "by,column", [("day", "partition_date"), ("evaluation", "evaluation_id"), ("model", "model"), ("stage", "stage")]
)
def test_json_and_csv_match_the_rollup_exactly(three_days, database, by, column):
    truth = expected(database, column)
    data = json.loads(report(database, "--by", by, "--format", "json"))
    assert {row[by]: (row["calls"], Decimal(row["total_cost_usd"])) for row in data["rows"]} == truth
    assert Decimal(data["total"]["total_cost_usd"]) == sum(cost for _, cost in truth.values())
    rows = list(csv.DictReader(io.StringIO(report(database, "--by", by, "--format", "csv"))))
    assert {row[by]: (int(row["calls"]), Decimal(row["total_cost_usd"])) for row in rows} == truth


def test_the_table_is_aligned_with_a_total_line(three_days, database):
    lines = report(database, "--by", "model").splitlines()
    assert lines[0].split()[:3] == ["model", "calls", "cache_hits"]
    assert lines[-1].startswith("TOTAL")
    assert len({len(line) for line in lines if line.strip()}) == 1, "every line has the same width"
    total = sum(cost for _, cost in expected(database, "model").values())
    assert f"{total:,.6f}" in lines[-1]


def test_a_chart_is_written_as_png(three_days, database, tmp_path):
    chart = tmp_path / "costs.png"
    report(database, "--chart", str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_range_without_data_says_so(three_days, database, capsys):
    assert main(["report", "--database", str(database), "--start", "2025-01-01", "--end", "2025-01-31"]) == 0
    assert "no cost data between 2025-01-01 and 2025-01-31" in capsys.readouterr().out


def test_the_report_waits_out_a_writers_transaction_instead_of_failing(three_days, database):
    writer = hold_lock(database, 1.5)
    try:
        assert "TOTAL" in report(database)
    finally:
        writer.wait()


def test_any_combination_of_dimensions_groups_the_rollup_exactly(three_days, database):
    with duckdb.connect(str(database), read_only=True) as connection:
        truth = {
            (str(day), evaluation, model): (calls, cost)
            for day, evaluation, model, calls, cost in connection.execute(
                "SELECT partition_date, evaluation_id, model, sum(calls), sum(total_cost_usd) FROM daily_cost_rollup "
                "GROUP BY ALL"
            ).fetchall()
        }
    data = json.loads(report(database, "--by", "day,evaluation,model", "--format", "json"))
    assert {
        (r["day"], r["evaluation"], r["model"]): (r["calls"], Decimal(r["total_cost_usd"])) for r in data["rows"]
    } == truth
    lines = report(database, "--by", "model,stage").splitlines()
    assert lines[0].split()[:3] == ["model", "stage", "calls"] and lines[-1].startswith("TOTAL")
    assert len({len(line) for line in lines if line.strip()}) == 1, "every line has the same width"


def test_the_closing_table_names_attempts_of_unknown_cost_instead_of_counting_them_as_zero():
    from cost_pipeline.money.ledger import RunSpend
    from cost_pipeline.reports.spend_vs_forecast import DayOutcome, render

    table = render(
        [
            DayOutcome("2026-11-01", "SUCCESS", RunSpend(10, Decimal("0.0125"), 0)),
            DayOutcome("2026-11-02", "FAILURE", RunSpend(4, Decimal("0.0031"), 2)),
            DayOutcome("2026-11-03", "FAILURE", None),
        ],
        forecast=None,
    )
    rows = {line.split()[0]: line for line in table.splitlines() if line[:1].isalnum()}
    assert "no forecast" in rows["2026-11-01"] and "$0.012500" in rows["2026-11-01"]
    assert "$0.000000" in rows["2026-11-03"]
    assert "$0.015600" in rows["TOTAL"]
    assert table.splitlines()[-1] == (
        "The spend leaves out 2 attempt(s) of unknown cost (see llm_attempts.price_status)."
    )
